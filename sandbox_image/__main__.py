"""Command line: run one file in the sandbox, or check the isolation on this machine.

    python -m sandbox_image run FILE [--timeout S] [--memory-mb M] [--backend B] [--stdin FILE]
    python -m sandbox_image selftest [--backend B]

`run` prints one JSON line (an ExecutionResult) and exits 0, or 2 on a sandbox_error.
`selftest` prints one line per check and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sandbox_image.config import BACKENDS, SANDBOX_ERROR, SandboxConfig
from sandbox_image.executor import run_program


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox_image", description=(__doc__ or "").split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run FILE in the sandbox and print one JSON result line")
    run.add_argument("file", type=Path)
    run.add_argument("--timeout", type=float, default=SandboxConfig.timeout_s, help="seconds")
    run.add_argument("--memory-mb", type=int, default=SandboxConfig.memory_mb)
    run.add_argument("--backend", choices=BACKENDS, default="auto")
    run.add_argument("--stdin", type=Path, default=None, help="file whose text is the stdin")
    run.add_argument("--python", default=None, help="interpreter for the program")
    selftest = sub.add_parser("selftest", help="check the isolation on this machine")
    selftest.add_argument("--backend", choices=BACKENDS, default="auto")
    selftest.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        try:
            source = args.file.read_text(encoding="utf-8", errors="surrogateescape")
            stdin = args.stdin.read_text(encoding="utf-8") if args.stdin else ""
            config = SandboxConfig(
                timeout_s=args.timeout,
                memory_mb=args.memory_mb,
                backend=args.backend,
                python=args.python,
            )
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        result = run_program(source, config, stdin=stdin)
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 2 if result.status == SANDBOX_ERROR else 0
    from sandbox_image.selftest import run_selftest

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    return run_selftest(args.backend)


if __name__ == "__main__":
    sys.exit(main())
