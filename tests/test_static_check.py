"""The optional static check: autoimport + Pyright, batches bisected, never dropped."""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from beam_pipeline import static_check
from beam_pipeline.main import run
from tests.conftest import FNAPI
from tests.helpers import read_jsonl_dir

pytestmark = pytest.mark.timeout(600)  # Pyright runs

CLEAN = 'def root(x):\n    """Square root."""\n    return math.sqrt(x)'
BROKEN = 'def g(x):\n    """Uses a name nobody defines."""\n    return undefined_helper(x)'
ADDS_OS = 'def here(p):\n    """Joins."""\n    return os.path.join(p, "x")'


def _require_pyright() -> None:
    try:
        static_check.pyright_command()
    except static_check.CheckerFailed as exc:
        pytest.skip(str(exc))


def test_verdicts_ignore_the_working_directorys_pyright_config(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_pyright()
    wrong_type = 'def f(x: int) -> int:\n    """Id."""\n    return x\n\n\nf("a")'
    (tmp_path / "pyproject.toml").write_text('[tool.pyright]\nreportArgumentType = "none"\n')
    monkeypatch.chdir(tmp_path)
    [errors] = static_check.run_pyright([wrong_type])
    assert any("cannot be assigned to parameter" in e for e in errors)


def test_real_pyright_batch_verdicts() -> None:
    _require_pyright()
    verdicts = static_check.check_batch([CLEAN, BROKEN])
    assert verdicts[0].clean
    assert verdicts[0].text.startswith("import math")
    assert not verdicts[1].clean
    assert any("undefined_helper" in e for e in verdicts[1].errors)


def test_failed_batch_is_bisected_not_dropped() -> None:
    calls: list[int] = []

    def flaky(texts: list[str]) -> list[static_check.Verdict]:
        calls.append(len(texts))
        if "POISON" in texts:
            raise static_check.CheckerFailed("checker crashed")
        return [static_check.Verdict(t, ()) for t in texts]

    texts = [f"t{i}" for i in range(8)]
    texts[5] = "POISON"
    verdicts = static_check.check_with_bisect(texts, flaky)
    assert len(verdicts) == 8
    assert isinstance(verdicts[5], static_check.CheckerFailed)
    assert [v.text for i, v in enumerate(verdicts) if i != 5] == [
        t for i, t in enumerate(texts) if i != 5
    ]
    assert calls[0] == 8 and 1 in calls


def test_static_check_stage_end_to_end(tmp_path: pathlib.Path) -> None:
    _require_pyright()
    src = tmp_path / "src"
    src.mkdir()
    for name, body in (("a.py", CLEAN), ("b.py", BROKEN), ("c.py", ADDS_OS)):
        (src / name).write_text(body + "\n")
    out = tmp_path / "out"
    report = run(
        [
            f"--input={src}",
            f"--output_dir={out}",
            "--to_stage=seeds",
            "--static_check",
            "--static_check_batch=2",
            *FNAPI,
        ]
    )
    assert report["invariant_ok"], report["problems"]
    stage = report["stages"]["seeds.static_check"]
    assert stage["in"] == 3 and stage["out"] == 1
    assert stage["rejected_by_reason"] == {"static_check_failed": 1, "banned_import": 1}
    (seed,) = read_jsonl_dir(out / "seeds")
    assert seed["seed"].startswith("import math") and "def root" in seed["seed"]
    # sha1 follows the text the checker returns (imports added), as the reference's does
    assert seed["sha1"] == hashlib.sha1(seed["seed"].encode()).hexdigest()


def test_max_seeds_is_a_deterministic_sample(tmp_path: pathlib.Path, bundled_shard: str) -> None:
    report = run(
        [
            f"--input={bundled_shard}",
            f"--output_dir={tmp_path}",
            "--to_stage=seeds",
            "--max_seeds=40",
            *FNAPI,
        ]
    )
    sample = report["stages"]["seeds.sample"]
    assert sample["out"] == 40
    assert sample["rejected_by_reason"] == {"over_max_seeds": sample["in"] - 40}
    ids = sorted(s["id"] for s in read_jsonl_dir(tmp_path / "seeds"))
    rejected = [
        r["id"]
        for r in read_jsonl_dir(tmp_path / "rejected" / "seeds")
        if r["reason"] == "over_max_seeds"
    ]
    assert max(ids) < min(rejected)
