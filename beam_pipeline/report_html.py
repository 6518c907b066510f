"""report.html: the run as a person reads it (one self-contained page, no scripts).

Built from report.json (per-stage counts, metrics) and a few records of the final dataset:
the funnel from files to final pairs as a bar chart, rejections by reason, the pass rate by
category and difficulty, token and time totals, and example pairs with their code.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import fsspec

from beam_pipeline.shards import current_shards

# The funnel's steps: (label, stage, count key), in pipeline order; missing steps are skipped.
FUNNEL: tuple[tuple[str, str, str], ...] = (
    ("source files", "read", "out"),
    ("candidate functions", "seeds.extract", "functions"),
    ("seeds", "seeds", "out"),
    ("concepts", "concepts", "out"),
    ("instructions", "instructions", "out"),
    ("responses", "responses", "out"),
    ("executed", "execution", "out"),
    ("passed", "execution", "passed"),
    ("selected", "final.select", "out"),
    ("final pairs", "final", "out"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:right}th{background:#f5f5f7}td.l,th.l{text-align:left}
.bar{fill:#3b82f6}.lbl{font-size:12px}.ok{color:#15803d}.bad{color:#b91c1c}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:12px;border-radius:4px}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.meta{color:#555;font-size:.9rem}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def funnel_rows(stages: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    rows = []
    for label, stage, key in FUNNEL:
        entry = stages.get(stage)
        if entry is not None and isinstance(entry.get(key), int):
            rows.append((label, entry[key]))
    return rows


def funnel_svg(rows: Sequence[tuple[str, int]]) -> str:
    if not rows:
        return "<p>No stage ran.</p>"
    top = max(n for _, n in rows) or 1
    width, bar_h, gap, left = 760, 22, 8, 170
    height = len(rows) * (bar_h + gap)
    parts = [f'<svg role="img" aria-label="funnel" width="{width}" height="{height}">']
    for i, (label, n) in enumerate(rows):
        y = i * (bar_h + gap)
        w = max(1, int((width - left - 80) * n / top))
        parts.append(
            f'<text class="lbl" x="0" y="{y + 15}">{_esc(label)}</text>'
            f'<rect class="bar" x="{left}" y="{y}" width="{w}" height="{bar_h}"/>'
            f'<text class="lbl" x="{left + w + 6}" y="{y + 15}">{n:,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


STAGE_ORDER = ("read", "seeds", "concepts", "instructions", "responses", "execution", "final")


def _pipeline_order(name: str) -> tuple[int, str]:
    top = name.split(".", 1)[0]
    return (STAGE_ORDER.index(top) if top in STAGE_ORDER else len(STAGE_ORDER), name)


def stage_table(stages: dict[str, dict[str, Any]]) -> str:
    head = (
        "<tr><th class=l>stage</th><th>in</th><th>out</th><th>rejected</th><th>errors</th>"
        "<th class=l>balanced</th><th class=l>rejected by reason</th></tr>"
    )
    body = []
    for name, entry in sorted(stages.items(), key=lambda kv: _pipeline_order(kv[0])):
        reasons = ", ".join(
            f"{_esc(r)}: {n:,}" for r, n in sorted(entry.get("rejected_by_reason", {}).items())
        )
        balanced = entry.get("balanced")
        mark = (
            ""
            if balanced is None
            else ('<span class="ok">yes</span>' if balanced else '<span class="bad">NO</span>')
        )
        body.append(
            f"<tr><td class=l>{_esc(name)}</td><td>{entry.get('in', '')}</td>"
            f"<td>{entry.get('out', '')}</td><td>{entry.get('rejected', '')}</td>"
            f"<td>{entry.get('errors', '')}</td><td class=l>{mark}</td>"
            f"<td class=l>{reasons}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def pass_rate_table(by_group: dict[str, dict[str, int]]) -> str:
    """by_group: "category/difficulty" -> {status: count}."""
    if not by_group:
        return "<p>No samples were executed in this run.</p>"
    statuses = sorted({s for counts in by_group.values() for s in counts})
    head = (
        "<tr><th class=l>category / difficulty</th><th>executed</th><th>pass rate</th>"
        + "".join(f"<th>{_esc(s)}</th>" for s in statuses)
        + "</tr>"
    )
    rows = []
    for group, counts in sorted(by_group.items()):
        total = sum(counts.values())
        rate = counts.get("passed", 0) / total if total else 0.0
        cells = "".join(f"<td>{counts.get(s, 0):,}</td>" for s in statuses)
        rows.append(
            f"<tr><td class=l>{_esc(group)}</td><td>{total:,}</td><td>{rate:.1%}</td>{cells}</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _concepts_text(value: Any) -> str:
    return value if isinstance(value, str) else ", ".join(map(str, value))


def example_cards(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return "<p>The final dataset is empty.</p>"
    cards = []
    for rec in records:
        concepts = _concepts_text(rec.get("concepts", ""))
        cards.append(
            '<div class="card">'
            f'<div class="meta">{_esc(rec.get("id", ""))} · {_esc(rec.get("category", ""))} · '
            f"{_esc(rec.get('difficulty', ''))} · concepts: {_esc(concepts)}</div>"
            f"<h3>Instruction</h3><p>{_esc(rec.get('instruction', ''))}</p>"
            f"<h3>Response</h3><pre><code>{_esc(rec.get('response', ''))}</code></pre>"
            f"<h3>Tests</h3><pre><code>{_esc(rec.get('tests', ''))}</code></pre>"
            f"<details><summary>Seed</summary><pre><code>{_esc(rec.get('seed', ''))}</code></pre>"
            "</details></div>"
        )
    return "".join(cards)


def totals_table(report: dict[str, Any]) -> str:
    metrics = report.get("metrics", {})
    runs = report.get("runs", [])
    rows = [("runs", len(runs)), ("wall time (s)", round(sum(r.get("wall_s", 0) for r in runs), 1))]
    for key in sorted(metrics):
        rows.append((key, metrics[key]))
    body = "".join(
        f"<tr><td class=l>{_esc(k)}</td><td>{v:,}</td></tr>"
        if isinstance(v, int | float)
        else f"<tr><td class=l>{_esc(k)}</td><td>{_esc(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def render(report: dict[str, Any], examples: Sequence[dict[str, Any]]) -> str:
    stages = report.get("stages", {})
    status = (
        '<span class="ok">every record accounted for</span>'
        if report.get("invariant_ok")
        else '<span class="bad">accounting problems: '
        + _esc("; ".join(report.get("problems", [])))
        + "</span>"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>SelfCodeAlign run report</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>SelfCodeAlign run report</h1><p>{status}</p>"
        f"<h2>Funnel</h2>{funnel_svg(funnel_rows(stages))}"
        f"<h2>Pass rate by category and difficulty</h2>"
        f"{pass_rate_table(stages.get('execution', {}).get('by_group', {}))}"
        f"<h2>Totals</h2>{totals_table(report)}"
        f"<h2>Stages</h2>{stage_table(stages)}"
        f"<h2>Examples from the final dataset</h2>{example_cards(examples)}"
        "</body></html>"
    )


def load_examples(output_dir: str, limit: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in current_shards(f"{output_dir}/final"):
        with fsspec.open(path, "r", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    out.append(json.loads(line))
                if len(out) >= limit:
                    return out
    return out


def write_html(output_dir: str, report: dict[str, Any]) -> str:
    path = f"{output_dir}/report.html"
    with fsspec.open(path, "w", encoding="utf-8") as handle:
        handle.write(render(report, load_examples(output_dir)))
    return path
