"""report.json: per-stage counts and the accounting invariant, built after the run.

Counts come from `OUT/_run/counts-*.jsonl` (written by the pipeline itself, so every runner
produces them). For each stage with `in` and `out`: in == out + rejected + errors. Known links
between stages (one stage's output is the next one's input) are checked too.
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
)


def load_counts(output_dir: str) -> dict[str, int]:
    fs, _, paths = fsspec.get_fs_token_paths(f"{output_dir}/_run/counts-*.jsonl")
    counts: dict[str, int] = {}
    for path in paths:
        with fs.open(path, "r") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    counts[row["key"]] = counts.get(row["key"], 0) + int(row["count"])
    return counts


def build_stages(counts: dict[str, int]) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for key, value in sorted(counts.items()):
        stage, _, what = key.partition("/")
        entry = stages.setdefault(stage, {"rejected_by_reason": {}})
        if what.startswith("rejected/"):
            entry["rejected_by_reason"][what.split("/", 1)[1]] = value
        elif what.startswith("by/"):  # by/<group>/<status>, e.g. by/function/easy/passed
            group, _, status = what[3:].rpartition("/")
            entry.setdefault("by_group", {}).setdefault(group, {})[status] = value
        else:
            entry[what] = value
    for entry in stages.values():
        if any("passed" in g for g in entry.get("by_group", {}).values()):
            entry["passed"] = sum(g.get("passed", 0) for g in entry["by_group"].values())
        if "in" in entry and "out" in entry:
            accounted = entry["out"] + entry.get("rejected", 0) + entry.get("errors", 0)
            entry["balanced"] = entry["in"] == accounted
    return stages


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
    stages = dict(previous.get("stages", {}))
    stages.update(build_stages(load_counts(output_dir)))
    problems = check(stages)
    merged_metrics = dict(previous.get("metrics", {}))
    for key, value in (metrics or {}).items():
        merged_metrics[key] = merged_metrics.get(key, 0) + value
    report = {
        "stages": stages,
        "invariant_ok": not problems,
        "problems": problems,
        "metrics": merged_metrics,
        "runs": [*previous.get("runs", []), {**run_info, "finished": time.time()}],
    }
    with fs.open(path, "w") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
    from beam_pipeline.report_html import write_html

    write_html(output_dir, report)
    return report


def collect_metrics(result: object) -> dict[str, int]:
    """Counter totals of the run (namespace selfcodealign) where the runner reports them."""
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
