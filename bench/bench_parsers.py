"""ast vs tree-sitter for seed extraction: what each recovers, on Python 3 and Python 2 files.

    .venv/bin/python bench/bench_parsers.py [--input SHARD] [--py2 DIR]

For each parser mode (ast, tree_sitter, auto = ast then tree-sitter for files ast rejects)
prints files rejected as unparsable, functions extracted, seeds kept by the filters, and
seconds, on the bundled shard and on a directory of Python 2 files.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import pyarrow.parquet as pq

from beam_pipeline.core.seeds import check_seed, extract_functions
from beam_pipeline.options import bundled_shard

REPO = pathlib.Path(__file__).resolve().parents[1]


def measure(texts: list[str], parser: str) -> dict[str, float]:
    start = time.perf_counter()
    unparsable = functions = seeds = 0
    for text in texts:
        result = extract_functions(text, parser)
        if result.reason is not None:
            unparsable += 1
            continue
        functions += len(result.functions)
        seeds += sum(check_seed(f.text) is None for f in result.functions)
    return {
        "files": len(texts),
        "unparsable": unparsable,
        "functions": functions,
        "seeds": seeds,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=bundled_shard())
    parser.add_argument("--py2", default=str(REPO / "tests" / "fixtures" / "py2"))
    args = parser.parse_args()
    corpora = {
        "bundled shard": pq.read_table(args.input, columns=["content"])
        .column("content")
        .to_pylist(),
        "python 2 files": [p.read_text() for p in sorted(pathlib.Path(args.py2).glob("*.py"))],
    }
    print(
        f"{'corpus':16} {'parser':12} {'files':>6} {'unparsable':>10} {'functions':>9} "
        f"{'seeds':>6} {'seconds':>7}"
    )
    for name, texts in corpora.items():
        for mode in ("ast", "tree_sitter", "auto"):
            m = measure(texts, mode)
            print(
                f"{name:16} {mode:12} {m['files']:6} {m['unparsable']:10} "
                f"{m['functions']:9} {m['seeds']:6} {m['seconds']:7}"
            )


if __name__ == "__main__":
    main()
