"""Compares two lists of seed candidates: which functions each side extracts from the same files.

A list is a JSONL file with one line per extracted function, `{"path": ..., "text": ...}`;
a line `{"path": ..., "reason": ...}` (no text) marks a file the extractor rejected whole.
`extract` writes our own list from a Stack-format parquet shard; any other extractor (the
reference implementation, for one) writes its list in the same shape.

    python scripts/compare_seeds.py extract SHARD.parquet --out ours.jsonl
    python scripts/compare_seeds.py compare reference.jsonl ours.jsonl [--examples 3]

Functions are compared as sets of exact texts (exact-text dedup makes a text the unit). A text
one side lacks is attributed to a cause: the other side rejected its file, the other side has
a function with the same first line but different text, or a property of the text itself
(`async def`, a decorated definition, a prefixed docstring).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys

import pyarrow.parquet as pq

from beam_pipeline.core.seeds import check_file, decode_content, extract_functions

_PREFIX_BEFORE_QUOTES = re.compile(r"(?<![\w\"'])[rRuU]$")


def extract(shard: str, out: pathlib.Path, parser: str) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    with out.open("w", encoding="utf-8") as sink:
        table = pq.ParquetFile(shard)
        for batch in table.iter_batches(columns=["max_stars_repo_path", "content"]):
            for path, content in zip(
                batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True
            ):
                counts["files"] += 1
                text, valid = decode_content(content)
                size = len(text.encode("utf-8", "surrogateescape"))
                problem = check_file(text, valid, size)
                result = None if problem else extract_functions(text, parser)
                reason = problem[0].value if problem else (result and result.reason)
                if reason:
                    counts[f"file_{reason}"] += 1
                    sink.write(json.dumps({"path": path, "reason": str(reason)}) + "\n")
                    continue
                for fn in result.functions:
                    counts["functions"] += 1
                    counts[f"parser_{fn.parser}"] += 1
                    counts["decorated"] += bool(fn.decorators)
                    row = {"path": path, "text": fn.text, "decorators": list(fn.decorators)}
                    sink.write(json.dumps(row, ensure_ascii=True) + "\n")
    return dict(counts)


class Side:
    """One extractor's list: texts, where each text was found, rejected files."""

    def __init__(self, path: pathlib.Path) -> None:
        self.paths_of: dict[str, set[str]] = collections.defaultdict(set)
        self.first_lines: dict[str, set[str]] = collections.defaultdict(set)
        self.decorated: set[str] = set()
        self.rejected: dict[str, str] = {}
        self.occurrences = 0
        with path.open(encoding="utf-8") as rows:
            for line in rows:
                row = json.loads(line)
                if "text" not in row:
                    self.rejected[row["path"]] = row["reason"]
                    continue
                self.occurrences += 1
                self.paths_of[row["text"]].add(row["path"])
                self.first_lines[row["path"]].add(row["text"].split("\n", 1)[0])
                if row.get("decorators"):
                    self.decorated.add(row["text"])

    @property
    def texts(self) -> set[str]:
        return set(self.paths_of)


def cause(text: str, paths: set[str], other: Side) -> str:
    """Why `other` lacks a text found in `paths`."""
    reasons = {other.rejected[p] for p in paths if p in other.rejected}
    if len(reasons) == 1 and all(p in other.rejected for p in paths):
        return f"file rejected: {reasons.pop()}"
    first = text.split("\n", 1)[0]
    if any(first in other.first_lines.get(p, ()) for p in paths):
        return "same function, different text"
    if _PREFIX_BEFORE_QUOTES.search(text.split('"""', 1)[0]):
        return 'docstring with an r/u prefix before """'
    if first.startswith("async "):
        return "async def"
    return "other"


def compare(reference: pathlib.Path, ours: pathlib.Path, examples: int) -> dict[str, object]:
    ref, our = Side(reference), Side(ours)
    missed = ref.texts - our.texts
    extra = our.texts - ref.texts
    by_cause_missed = collections.Counter(cause(t, ref.paths_of[t], our) for t in missed)
    by_cause_extra = collections.Counter(cause(t, our.paths_of[t], ref) for t in extra)
    shown: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for label, texts, side in (("missed", missed, ref), ("extra", extra, our)):
        for text in sorted(texts):
            if len(shown[label]) < examples:
                path = sorted(side.paths_of[text])[0]
                shown[label].append({"path": path, "text": text[:400]})
    common = ref.texts & our.texts
    return {
        "reference_unique_texts": len(ref.texts),
        "reference_occurrences": ref.occurrences,
        "ours_unique_texts": len(our.texts),
        "ours_occurrences": our.occurrences,
        "ours_decorated_unique_texts": len(our.decorated),
        "reference_async_texts": sum(t.startswith("async ") for t in ref.texts),
        "reference_texts_ours_marks_decorated": len(ref.texts & our.decorated),
        "common": len(common),
        "recall": round(len(common) / len(ref.texts), 5) if ref.texts else None,
        "reference_not_ours": len(missed),
        "reference_not_ours_by_cause": dict(by_cause_missed.most_common()),
        "ours_not_reference": len(extra),
        "ours_not_reference_by_cause": dict(by_cause_extra.most_common()),
        "examples": dict(shown),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="write our candidates of a parquet shard as JSONL")
    ex.add_argument("shard")
    ex.add_argument("--out", type=pathlib.Path, required=True)
    ex.add_argument("--parser", default="auto", choices=["auto", "ast", "tree_sitter"])
    cmp = sub.add_parser("compare", help="compare two candidate lists")
    cmp.add_argument("reference", type=pathlib.Path)
    cmp.add_argument("ours", type=pathlib.Path)
    cmp.add_argument("--examples", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "extract":
        result = extract(args.shard, args.out, args.parser)
    else:
        result = compare(args.reference, args.ours, args.examples)
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
