"""report.json: per-stage counts and the accounting invariant, built after the run.

Counts come from `OUT/_run/counts-*.jsonl` (written by the pipeline itself, so every runner
produces them). For each stage with `in` and `out`: in == out + rejected + errors. Known links
between stages (one stage's output is the next one's input) are checked too.

A model-calling stage's entry has `model`: calls, cache hits, prompt and completion tokens (all
calls, and `fresh_*` for those the server answered in this run); the execution stage's has
`failures` (kinds, see `core.failures`) and `by_group` (category/difficulty -> status). `stages`
holds counts only, the same on every runner. `timing` holds, per stage, its active span (the
wall-clock times of the first and last record that left it or any of its steps, as output,
rejection or dead letter, taken by the accounting on the workers), the records it handled per
second of that span and a model stage's tokens per second. `summary` is the run at a glance.
`metrics` holds the runner's counters (keyed by step), where the runner reports them: they are
diagnostics, not the accounting.
"""

from __future__ import annotations

import json
import time
from typing import Any

import fsspec

# (from stage, its count) must equal (to stage, its count) when both ran.
LINKS: tuple[tuple[str, str, str, str], ...] = (
    ("read", "out", "seeds.extract", "in"),
    ("seeds.extract", "functions", "seeds.filter", "in"),
    ("seeds.filter", "out", "seeds.exact_dedup", "in"),
    ("seeds", "out", "concepts", "in"),
    ("concepts", "out", "instructions", "in"),
    ("responses", "out", "execution", "in"),
    ("execution", "out", "final.format", "in"),
    ("final", "out", "final.stats", "in"),
    ("final", "out", "preference.pair", "in"),
)


# Composite stages have no `in` count of their own: their records handled are their first
# step's input.
FIRST_STEP = {"seeds": "seeds.extract", "final": "final.format"}
# Records leave a stage as one of these; a stage's active span runs from the first to the last.
LEAVING = ("out", "rejected", "errors")

Tally = tuple[int, float | None, float | None]


def load_tallies(output_dir: str) -> dict[str, Tally]:
    """key -> (count, first, last) from OUT/_run/counts-*.jsonl (times absent in old files)."""
    fs, _, paths = fsspec.get_fs_token_paths(f"{output_dir}/_run/counts-*.jsonl")
    tallies: dict[str, Tally] = {}
    for path in paths:
        with fs.open(path, "r") as handle:
            for line in handle:
                if not line.strip():
                    continue
                row = json.loads(line)
                count, first, last = tallies.get(row["key"], (0, None, None))
                f, t = row.get("first"), row.get("last")
                tallies[row["key"]] = (
                    count + int(row["count"]),
                    f if first is None or (f is not None and f < first) else first,
                    t if last is None or (t is not None and t > last) else last,
                )
    return tallies


def load_counts(output_dir: str) -> dict[str, int]:
    return {key: tally[0] for key, tally in load_tallies(output_dir).items()}


def _spans(tallies: dict[str, Tally]) -> dict[str, tuple[float, float]]:
    """stage -> (first, last) time a record left it or any of its steps (`stage.*`)."""
    own: dict[str, tuple[float, float]] = {}
    for key, (_, first, last) in tallies.items():
        stage, _, what = key.partition("/")
        if what not in LEAVING or first is None or last is None:
            continue
        f, t = own.get(stage, (first, last))
        own[stage] = (min(f, first), max(t, last))
    spans = {}
    for stage in {k.partition("/")[0] for k in tallies}:
        inner = [v for s, v in own.items() if s == stage or s.startswith(stage + ".")]
        if inner:
            spans[stage] = (min(f for f, _ in inner), max(t for _, t in inner))
    return spans


# Below this a span is one burst of records (e.g. all of a group's output at once): no rate.
MIN_SPAN_S = 0.1


def _rate(amount: int | None, seconds: float | None) -> float | None:
    if amount is None or seconds is None or seconds < MIN_SPAN_S:
        return None
    return round(amount / seconds, 3)


def build_stages(counts: dict[str, int] | dict[str, Tally]) -> dict[str, dict[str, Any]]:
    """Per stage: in/out/rejected/errors, rejected_by_reason, by_group, failures and model
    usage (calls, cache hits, tokens). Counts only: the same on every runner."""
    stages: dict[str, dict[str, Any]] = {}
    for key, value in sorted(counts.items()):
        n = value[0] if isinstance(value, tuple) else int(value)
        stage, _, what = key.partition("/")
        entry = stages.setdefault(stage, {"rejected_by_reason": {}})
        if what.startswith("rejected/"):
            entry["rejected_by_reason"][what.split("/", 1)[1]] = n
        elif what.startswith("by/"):  # by/<group>/<status>, e.g. by/function/easy/passed
            group, _, status = what[3:].rpartition("/")
            entry.setdefault("by_group", {}).setdefault(group, {})[status] = n
        elif what.startswith("failures/"):  # failures/<kind>, e.g. failures/assertion
            entry.setdefault("failures", {})[what.split("/", 1)[1]] = n
        elif what.startswith("model/"):  # model/<calls, tokens...>
            entry.setdefault("model", {})[what.split("/", 1)[1]] = n
        else:
            entry[what] = n
    for entry in stages.values():
        if any("passed" in g for g in entry.get("by_group", {}).values()):
            entry["passed"] = sum(g.get("passed", 0) for g in entry["by_group"].values())
        if "in" in entry and "out" in entry:
            accounted = entry["out"] + entry.get("rejected", 0) + entry.get("errors", 0)
            entry["balanced"] = entry["in"] == accounted
    return stages


def handled(name: str, stages: dict[str, dict[str, Any]]) -> int:
    """Records a stage handled: its input; a several-step stage's first step's input; a stage
    without an input count (read) its outputs and dead letters."""
    entry = stages[name]
    value = entry.get("in", stages.get(FIRST_STEP.get(name, ""), {}).get("in"))
    return value if value is not None else entry.get("out", 0) + entry.get("errors", 0)


def build_timing(
    tallies: dict[str, Tally], stages: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per stage with times: its active span, records handled per second over it and, for a
    model-calling stage, the tokens per second of the calls the server answered in this run."""
    timing: dict[str, dict[str, Any]] = {}
    for name, (first, last) in _spans(tallies).items():
        seconds = round(last - first, 3)
        count = handled(name, stages)
        entry = {
            "first": first,
            "last": last,
            "seconds": seconds,
            "handled": count,
            "records_per_s": _rate(count, seconds),
        }
        model = stages.get(name, {}).get("model")
        if model is not None:
            entry["prompt_tokens_per_s"] = _rate(model.get("fresh_prompt_tokens"), seconds)
            entry["completion_tokens_per_s"] = _rate(model.get("fresh_completion_tokens"), seconds)
        timing[name] = entry
    return timing


def summarize(stages: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run at a glance: final pairs, generated tokens, and the pairs per million generated
    tokens and per hour of wall time (every run recorded in the report)."""
    final = stages.get("final", {}).get("out")
    tokens = sum(e.get("model", {}).get("completion_tokens", 0) for e in stages.values())
    prompt = sum(e.get("model", {}).get("prompt_tokens", 0) for e in stages.values())
    wall_s = round(sum(float(r.get("wall_s", 0)) for r in runs), 2)
    executed = stages.get("execution", {})
    return {
        "final_pairs": final,
        "generated_tokens": tokens,
        "prompt_tokens": prompt,
        "wall_s": wall_s,
        "runs": len(runs),
        "pairs_per_million_tokens": (
            round(final * 1e6 / tokens, 3) if final is not None and tokens else None
        ),
        "pairs_per_hour": round(final * 3600 / wall_s, 3) if final is not None and wall_s else None,
        "executed": executed.get("out"),
        "passed": executed.get("passed"),
    }


def check(stages: dict[str, dict[str, Any]]) -> list[str]:
    """Violations of the invariant, as sentences; empty when every record is accounted for."""
    problems = []
    for name, entry in stages.items():
        if entry.get("balanced") is False:
            problems.append(
                f"{name}: in={entry['in']} but out+rejected+errors="
                f"{entry['out'] + entry.get('rejected', 0) + entry.get('errors', 0)}"
            )
    for src, src_key, dst, dst_key in LINKS:
        if src in stages and dst in stages:
            a, b = stages[src].get(src_key), stages[dst].get(dst_key)
            if a is not None and b is not None and a != b:
                problems.append(f"{src}.{src_key}={a} but {dst}.{dst_key}={b}")
    return problems


def write_report(
    output_dir: str, run_info: dict[str, Any], metrics: dict[str, int] | None = None
) -> dict[str, Any]:
    """Merges this run's stages into OUT/report.json (a resumed run keeps earlier stages),
    and renders OUT/report.html from it."""
    fs, _, (path,) = fsspec.get_fs_token_paths(f"{output_dir}/report.json")
    previous: dict[str, Any] = {}
    if fs.exists(path):
        with fs.open(path, "r") as handle:
            previous = json.load(handle)
    tallies = load_tallies(output_dir)
    current = build_stages(tallies)
    stages = {**previous.get("stages", {}), **current}
    timing = {**previous.get("timing", {}), **build_timing(tallies, current)}
    problems = check(stages)
    merged_metrics = dict(previous.get("metrics", {}))
    for key, value in (metrics or {}).items():
        merged_metrics[key] = merged_metrics.get(key, 0) + value
    runs = [*previous.get("runs", []), {**run_info, "finished": time.time()}]
    report = {
        "stages": stages,
        "summary": summarize(stages, runs),
        "timing": timing,
        "invariant_ok": not problems,
        "problems": problems,
        "metrics": merged_metrics,
        "runs": runs,
    }
    with fs.open(path, "w") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
    from beam_pipeline.report_html import write_html

    write_html(output_dir, report)
    return report


def collect_metrics(result: object) -> dict[str, int]:
    """Counter totals of the run (namespace selfcodealign) where the runner reports them:
    keyed by step (see `StageFn`), kept in report.json only."""
    try:
        counters = result.metrics().query()["counters"]  # type: ignore[attr-defined]
    except Exception:
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        if counter.key.metric.namespace != "selfcodealign":
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals
