"""Evaluation results as JSON, and the comparison table of several models (base vs fine-tuned)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sft.eval.harness import Score


@dataclass(frozen=True)
class BenchmarkSummary:
    benchmark: str
    n: int
    passed: int
    pass_at_1: float
    statuses: dict[str, int]
    # Per problem: task_id, passed, status, completion, duration_s, stderr_tail.
    problems: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_score(cls, score: Score) -> BenchmarkSummary:
        return cls(
            benchmark=score.benchmark,
            n=score.n,
            passed=score.passed,
            pass_at_1=score.pass_at_1,
            statuses=score.statuses,
            problems=[asdict(p) for p in score.problems],
        )


@dataclass(frozen=True)
class EvalResults:
    label: str
    model: str
    backend: str
    settings: dict[str, Any]
    benchmarks: dict[str, BenchmarkSummary]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> EvalResults:
        raw = json.loads(text)
        benchmarks = {k: BenchmarkSummary(**v) for k, v in raw.pop("benchmarks").items()}
        return cls(benchmarks=benchmarks, **raw)

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> EvalResults:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def comparison_table(results: Sequence[EvalResults], baseline_index: int = 0) -> str:
    """Markdown table: pass@1 (%) per benchmark and model, with the change from the baseline."""
    if not results:
        raise ValueError("nothing to compare")
    base = results[baseline_index]
    benchmarks = sorted({name for r in results for name in r.benchmarks})
    header = ["benchmark", *(r.label for r in results)]
    others = [r for i, r in enumerate(results) if i != baseline_index]
    header += [f"{r.label} - {base.label}" for r in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in benchmarks:
        cells = [name]
        for r in results:
            b = r.benchmarks.get(name)
            cells.append("n/a" if b is None else f"{100 * b.pass_at_1:.1f} ({b.passed}/{b.n})")
        for r in others:
            a, b = base.benchmarks.get(name), r.benchmarks.get(name)
            if a is None or b is None:
                cells.append("n/a")
            elif a.n != b.n:
                cells.append("different problem sets")
            else:
                cells.append(f"{100 * (b.pass_at_1 - a.pass_at_1):+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_files(paths: Sequence[str | Path], baseline_index: int = 0) -> str:
    return comparison_table([EvalResults.read(p) for p in paths], baseline_index)
