"""Optional static check of seeds (method.md §1): add missing imports, keep Pyright-clean ones.

`autoimport` adds the imports a function uses but does not write (capped at 10 s per seed, in a
child process so a hang can be killed); Pyright then checks a whole batch in one run and a seed
is kept when it reports zero errors for its file. A batch whose Pyright run fails (crash,
timeout, unreadable output) is bisected down to single seeds, never dropped whole; a single seed
that still breaks the checker is reported as an infrastructure error for its caller to
dead-letter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

AUTOIMPORT_TIMEOUT_S = 10


class CheckerFailed(Exception):
    """Pyright or autoimport could not judge the input (not a verdict on the code)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    text: str  # the seed with the imports autoimport added
    errors: tuple[str, ...]  # Pyright's error messages; empty means clean

    @property
    def clean(self) -> bool:
        return not self.errors


def pyright_command() -> list[str]:
    exe = shutil.which("pyright", path=os.path.dirname(sys.executable)) or shutil.which("pyright")
    if exe is None:
        raise CheckerFailed("pyright is not installed (pip install '.[static]')")
    return [exe]


def add_imports(texts: Sequence[str], timeout_s: float = AUTOIMPORT_TIMEOUT_S) -> list[str]:
    """Each text with missing imports added; a text autoimport cannot fix in time is unchanged."""
    payload = "\n".join(json.dumps(t) for t in texts)
    proc = subprocess.run(
        [sys.executable, "-m", "beam_pipeline.static_check", "--autoimport", str(timeout_s)],
        input=payload,
        capture_output=True,
        text=True,
        timeout=timeout_s * len(texts) + 60,
    )
    if proc.returncode != 0:
        raise CheckerFailed(f"autoimport exited {proc.returncode}: {proc.stderr[-500:]}")
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(out) != len(texts):
        raise CheckerFailed(f"autoimport returned {len(out)} texts for {len(texts)}")
    return out


def run_pyright(texts: Sequence[str], timeout_s: float = 300) -> list[tuple[str, ...]]:
    """Pyright's error messages for each text, from one Pyright run over all of them."""
    with tempfile.TemporaryDirectory(prefix="seedcheck-") as tmp:
        for i, text in enumerate(texts):
            with open(os.path.join(tmp, f"s{i}.py"), "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        # Pyright's defaults, as the method runs it: an empty config in the batch's own folder,
        # so a project config in the working directory (ours relaxes rules for Beam glue)
        # cannot change a verdict.
        with open(os.path.join(tmp, "pyrightconfig.json"), "w", encoding="utf-8") as handle:
            handle.write("{}\n")
        try:
            proc = subprocess.run(
                [*pyright_command(), "--outputjson", "--pythonpath", sys.executable, tmp],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired as exc:
            raise CheckerFailed(f"pyright timed out after {timeout_s}s") from exc
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise CheckerFailed(
                f"pyright exited {proc.returncode} without JSON: {proc.stderr[-500:]}"
            ) from exc
        errors: list[list[str]] = [[] for _ in texts]
        for diag in report.get("generalDiagnostics", []):
            if diag.get("severity") != "error":
                continue
            name = os.path.basename(diag.get("file", ""))
            if name.startswith("s") and name.endswith(".py") and name[1:-3].isdigit():
                errors[int(name[1:-3])].append(diag.get("message", ""))
        analyzed = report.get("summary", {}).get("filesAnalyzed")
        if analyzed is not None and analyzed < len(texts):
            raise CheckerFailed(f"pyright analysed {analyzed} of {len(texts)} files")
        return [tuple(e) for e in errors]


def check_batch(texts: Sequence[str]) -> list[Verdict]:
    fixed = add_imports(texts)
    return [Verdict(t, e) for t, e in zip(fixed, run_pyright(fixed), strict=True)]


def check_with_bisect(
    texts: Sequence[str], check: Callable[[Sequence[str]], Sequence[Verdict]] | None = None
) -> list[Verdict | CheckerFailed]:
    """Verdicts for every text; a failing batch is split in halves until single texts."""
    run = check or check_batch
    try:
        return list(run(texts))
    except CheckerFailed as exc:
        if len(texts) == 1:
            return [exc]
    mid = len(texts) // 2
    return check_with_bisect(texts[:mid], run) + check_with_bisect(texts[mid:], run)


def _autoimport_main(timeout_s: float) -> None:
    """Child process: JSON strings in on stdin, the fixed strings out, one per line."""
    import signal

    from autoimport import fix_code

    def _timeout(signum: int, frame: object) -> None:
        raise TimeoutError

    signal.signal(signal.SIGALRM, _timeout)
    for line in sys.stdin:
        if not line.strip():
            continue
        text = json.loads(line)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            fixed = fix_code(text).rstrip()
        except Exception:
            fixed = text
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps(fixed), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--autoimport":
        _autoimport_main(float(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m beam_pipeline.static_check --autoimport TIMEOUT_S")
