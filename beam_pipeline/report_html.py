"""report.html: the run as a person reads it (one self-contained page, no scripts).

Every number on the page comes from report.json, whose counts come from the accounting
(`OUT/_run/counts-*.jsonl`); the runner's own counters stay in report.json. Sections: the run
at a glance, the funnel from files to final pairs, time per stage, model calls and tokens, why
executions failed, the pass rate by category and difficulty, every stage's counts, and
example pairs with their code. Charts are inline SVG.

Labels (stage, reason, category names) carry `data-label`. Each displayed number carries
`data-k` (where it lives in report.json, `|`-separated, e.g.
`stages|seeds.filter|rejected_by_reason|too_long`, or a derived figure such as
`pass_rate|category|function`) and `data-v` (its unrounded value), so a program can check the
page against the records.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, cast

import fsspec

from beam_pipeline.report import MIN_SPAN_S, summarize
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

STAGE_ORDER = ("read", "seeds", "concepts", "instructions", "responses", "execution", "final")
MODEL_STAGES = ("seeds.judge", "concepts", "instructions", "responses")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:right}th{background:#f5f5f7}td.l,th.l{text-align:left}
table.stages{font-size:.85rem}td.reasons{text-align:left;min-width:13rem}
.bar{fill:#3b82f6}.pass{fill:#16a34a}.fail{fill:#f87171}.span{fill:#8b5cf6}.kind{fill:#f59e0b}
.lbl{font-size:12px}.axis{stroke:#bbb}.ok{color:#15803d}.bad{color:#b91c1c}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:12px;border-radius:4px}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.meta,.note{color:#555;font-size:.9rem}
.tiles{display:flex;flex-wrap:wrap;gap:.8rem}.tile{border:1px solid #ddd;border-radius:6px;
padding:.5rem .9rem;min-width:150px}.tile b{display:block;font-size:1.4rem}
.tile small{color:#555}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits if abs(value) >= 10 else max(digits, 2)}f}"


def num(
    key: str, value: float | int | None, digits: int = 1, tag: str = "span", attrs: str = ""
) -> str:
    """One displayed number with its place in report.json (`data-k`) and raw value."""
    raw = "" if value is None else repr(value)
    return f'<{tag}{attrs} data-k="{_esc(key)}" data-v="{_esc(raw)}">{_fmt(value, digits)}</{tag}>'


def pct(key: str, part: int, whole: int, attrs: str = "", tag: str = "span") -> str:
    rate = part / whole if whole else None
    shown = "—" if rate is None else f"{rate:.1%}"
    raw = "" if rate is None else repr(rate)
    return f'<{tag}{attrs} data-k="{_esc(key)}" data-v="{_esc(raw)}">{shown}</{tag}>'


# Stages and their steps as the graph runs them; a step not listed sorts after its stage's.
STEP_ORDER = (
    "read",
    "seeds",
    "seeds.extract",
    "seeds.filter",
    "seeds.exact_dedup",
    "seeds.static_check",
    "seeds.decontaminate",
    "seeds.near_dedup",
    "seeds.sample",
    "seeds.judge",
    "concepts",
    "instructions",
    "responses",
    "execution",
    "final",
    "final.format",
    "final.select",
    "final.near_dedup",
    "final.tests_in_instruction",
    "final.decontaminate",
)


def _pipeline_order(name: str, timing: dict[str, dict[str, Any]]) -> tuple[int, float, str]:
    """Known steps in graph order; passes of one step (near dedup's) by when they ran."""
    top = name.split(".", 1)[0]
    known = [i for i, s in enumerate(STEP_ORDER) if name == s or name.startswith(s + ".")]
    if name != top and known and STEP_ORDER[max(known)] == top:
        # a step this list does not name: after its stage's known steps
        known = [i for i, s in enumerate(STEP_ORDER) if s == top or s.startswith(top + ".")]
    index = max(known, default=len(STEP_ORDER))
    return (index, timing.get(name, {}).get("first", 0.0), name)


# -- at a glance ---------------------------------------------------------------------------


def glance(summary: dict[str, Any]) -> str:
    executed, passed = summary.get("executed"), summary.get("passed")
    tiles = [
        ("final pairs", num("summary|final_pairs", summary.get("final_pairs")), ""),
        (
            "pass rate",
            pct("summary|pass_rate", passed or 0, executed or 0),
            f"{num('summary|passed', passed)} of {num('summary|executed', executed)} executed",
        ),
        (
            "generated tokens",
            num("summary|generated_tokens", summary.get("generated_tokens")),
            "completion tokens of every model call, cache hits included",
        ),
        (
            "pairs per million generated tokens",
            num("summary|pairs_per_million_tokens", summary.get("pairs_per_million_tokens")),
            "",
        ),
        (
            "pairs per hour",
            num("summary|pairs_per_hour", summary.get("pairs_per_hour")),
            "of wall time, every run in this report",
        ),
        ("wall time (s)", num("summary|wall_s", summary.get("wall_s")), ""),
    ]
    body = "".join(
        f'<div class="tile"><small>{_esc(label)}</small><b>{value}</b>'
        + (f"<small>{sub}</small>" if sub else "")
        + "</div>"
        for label, value, sub in tiles
    )
    return f'<div class="tiles">{body}</div>'


# -- funnel ----------------------------------------------------------------------------------


def funnel_rows(stages: dict[str, dict[str, Any]]) -> list[tuple[str, int, str]]:
    """(label, count, data key) per funnel step that ran."""
    rows = []
    for label, stage, key in FUNNEL:
        entry = stages.get(stage)
        if entry is not None and isinstance(entry.get(key), int):
            rows.append((label, entry[key], f"stages|{stage}|{key}"))
    return rows


def bar_chart(
    name: str, rows: Sequence[tuple[str, float | int, str, str]], bar_class: str = "bar"
) -> str:
    """Horizontal bars: (label, value, data key, extra markup) per row."""
    if not rows:
        return "<p>Nothing to show.</p>"
    top = max(v for _, v, _, _ in rows) or 1
    width, bar_h, gap, left = 760, 22, 8, 190
    height = len(rows) * (bar_h + gap)
    parts = [
        f'<svg role="img" aria-label="{_esc(name)}" data-chart="{_esc(name)}" '
        f'width="{width}" height="{height}">'
    ]
    for i, (label, value, key, extra) in enumerate(rows):
        y = i * (bar_h + gap)
        w = max(1, int((width - left - 170) * value / top))
        parts.append(
            f'<text class="lbl" x="0" y="{y + 15}" data-label>{_esc(label)}</text>'
            f'<rect class="{bar_class}" x="{left}" y="{y}" width="{w}" height="{bar_h}"/>'
            f'<text class="lbl" x="{left + w + 6}" y="{y + 15}">'
            f"{num(key, value, tag='tspan')}{' · ' + extra if extra else ''}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def funnel_svg(rows: Sequence[tuple[str, int, str]]) -> str:
    if not rows:
        return "<p>No stage ran.</p>"
    return bar_chart("funnel", [(label, n, key, "") for label, n, key in rows])


# -- time per stage --------------------------------------------------------------------------


def timeline_svg(timing: dict[str, dict[str, Any]]) -> str:
    """One bar per pipeline stage from its first to its last record leaving it."""
    rows = [(n, timing[n]) for n in STAGE_ORDER if n in timing]
    if not rows:
        return "<p>No stage recorded its times.</p>"
    start = min(e["first"] for _, e in rows)
    end = max(e["last"] for _, e in rows)
    total = max(end - start, 1e-9)
    width, bar_h, gap, left, right = 900, 22, 8, 110, 300
    plot = width - left - right
    height = len(rows) * (bar_h + gap) + 18
    parts = [
        f'<svg role="img" aria-label="time per stage" data-chart="timeline" width="{width}" '
        f'height="{height}">'
    ]
    for i, (name, entry) in enumerate(rows):
        y = i * (bar_h + gap)
        x = left + int(plot * (entry["first"] - start) / total)
        w = max(2, int(plot * entry["seconds"] / total))
        key = f"timing|{name}"
        parts.append(
            f'<text class="lbl" x="0" y="{y + 15}" data-label>{_esc(name)}</text>'
            f'<rect class="span" x="{x}" y="{y}" width="{w}" height="{bar_h}"/>'
            f'<text class="lbl" x="{left + plot + 8}" y="{y + 15}">'
            f"{num(f'{key}|seconds', entry['seconds'], tag='tspan')} s · "
            f"{num(f'{key}|handled', entry.get('handled'), tag='tspan')} records · "
            f"{num(f'{key}|records_per_s', entry.get('records_per_s'), tag='tspan')}"
            "/s</text>"
        )
    y = len(rows) * (bar_h + gap)
    parts.append(
        f'<line class="axis" x1="{left}" y1="{y}" x2="{left + plot}" y2="{y}"/>'
        f'<text class="lbl" x="{left}" y="{y + 14}">start</text>'
        f'<text class="lbl" x="{left + plot - 40}" y="{y + 14}">'
        f'<tspan data-k="timeline|total_s" data-v="{total!r}">{total:,.1f}</tspan> s</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


# -- model calls -----------------------------------------------------------------------------


def model_table(stages: dict[str, dict[str, Any]], timing: dict[str, dict[str, Any]]) -> str:
    names = [n for n in MODEL_STAGES if "model" in stages.get(n, {})]
    names += sorted(n for n in stages if "model" in stages[n] and n not in names)
    if not names:
        return "<p>No model was called in this run.</p>"
    counts = (
        ("calls", "calls"),
        ("cache hits", "cached_calls"),
        ("prompt tokens", "prompt_tokens"),
        ("completion tokens", "completion_tokens"),
    )
    rates = (
        ("prompt tok/s", "prompt_tokens_per_s"),
        ("completion tok/s", "completion_tokens_per_s"),
    )
    head = (
        "<tr><th class=l>stage</th>"
        + "".join(f"<th>{c}</th>" for c, _ in (*counts, *rates))
        + "</tr>"
    )
    body = []
    for name in names:
        model = stages[name]["model"]
        times = timing.get(name, {})
        cells = "".join(
            num(f"stages|{name}|model|{key}", model.get(key), tag="td") for _, key in counts
        ) + "".join(num(f"timing|{name}|{key}", times.get(key), tag="td") for _, key in rates)
        body.append(f"<tr><td class=l data-label>{_esc(name)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


# -- executions ------------------------------------------------------------------------------


def failures_svg(failures: dict[str, int]) -> str:
    rows = sorted(((k, n) for k, n in failures.items() if n), key=lambda kv: (-kv[1], kv[0]))
    if not rows:
        return "<p>No execution failed.</p>"
    total = sum(n for _, n in rows)
    return bar_chart(
        "failures",
        [
            (
                kind,
                n,
                f"stages|execution|failures|{kind}",
                pct(f"failure_share|{kind}", n, total, tag="tspan") + " of failures",
            )
            for kind, n in rows
        ],
        "kind",
    )


def _pass_groups(by_group: dict[str, dict[str, int]]) -> list[tuple[str, str, int, int]]:
    """(section, name, passed, executed) by category, by difficulty, then by both."""
    out: list[tuple[str, str, int, int]] = []
    for section, part in (("category", 0), ("difficulty", 1)):
        totals: dict[str, list[int]] = {}
        for group, counts in by_group.items():
            category, _, difficulty = group.rpartition("/")
            name = (category, difficulty)[part]
            t = totals.setdefault(name, [0, 0])
            t[0] += counts.get("passed", 0)
            t[1] += sum(counts.values())
        out += [(section, n, p, e) for n, (p, e) in sorted(totals.items())]
    return out


def pass_rate_svg(by_group: dict[str, dict[str, int]]) -> str:
    """Stacked bars, passed (green) and not passed (red), by category and by difficulty."""
    rows = _pass_groups(by_group)
    if not rows:
        return ""
    width, bar_h, gap, left, plot = 760, 20, 6, 230, 360
    height = len(rows) * (bar_h + gap)
    parts = [
        f'<svg role="img" aria-label="pass rate" data-chart="pass_rate" width="{width}" '
        f'height="{height}">'
    ]
    for i, (section, name, passed, executed) in enumerate(rows):
        y = i * (bar_h + gap)
        w_pass = int(plot * passed / executed) if executed else 0
        key = f"pass_rate|{section}|{name}"
        parts.append(
            f'<text class="lbl" x="0" y="{y + 14}" data-label>{_esc(section)}: {_esc(name)}</text>'
            f'<rect class="fail" x="{left}" y="{y}" width="{plot}" height="{bar_h}"/>'
            f'<rect class="pass" x="{left}" y="{y}" width="{w_pass}" height="{bar_h}"/>'
            f'<text class="lbl" x="{left + plot + 8}" y="{y + 14}">'
            f"{pct(key, passed, executed, tag='tspan')} · "
            f"{num(f'{key}|passed', passed, tag='tspan')} of "
            f"{num(f'{key}|executed', executed, tag='tspan')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


AGREEMENT_STEP = "final.stats.agreement"


def agreement_svg(stages: dict[str, dict[str, Any]]) -> str:
    """With --cross_check: the final pairs by the share of sibling test suites they pass, in
    tenths ("none": no sibling suite to check against)."""
    histogram = stages.get(AGREEMENT_STEP, {}).get("by_group", {}).get("agreement")
    if not histogram:
        return ""
    order = [f"{i / 10:.1f}" for i in range(11)] + ["none"]
    rows = [b for b in order if histogram.get(b)] + sorted(set(histogram) - set(order))
    total = sum(histogram.values())
    chart = bar_chart(
        "agreement",
        [
            (
                bucket if bucket in ("none", "1.0") else f"{bucket}-{float(bucket) + 0.1:.1f}",
                histogram[bucket],
                f"stages|{AGREEMENT_STEP}|by_group|agreement|{bucket}",
                pct(f"agreement_share|{bucket}", histogram[bucket], total, tag="tspan")
                + " of pairs",
            )
            for bucket in rows
        ],
    )
    title = "<h2>Agreement with sibling tests (--cross_check)</h2>"
    return f"{title}{chart}<p class=note>{NOTES['agreement']}</p>"


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
        key = f"stages|execution|by_group|{group}"
        cells = "".join(num(f"{key}|{s}", counts.get(s, 0), tag="td") for s in statuses)
        rows.append(
            f"<tr><td class=l data-label>{_esc(group)}</td>"
            f"{num(f'pass_rate|group|{group}|executed', total, tag='td')}"
            f"{pct(f'pass_rate|group|{group}', counts.get('passed', 0), total, tag='td')}"
            f"{cells}</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _concepts_text(value: Any) -> str:
    return value if isinstance(value, str) else ", ".join(map(str, value))


# -- stages ----------------------------------------------------------------------------------


def stage_table(
    stages: dict[str, dict[str, Any]], timing: dict[str, dict[str, Any]] | None = None
) -> str:
    timing = timing or {}
    head = (
        "<tr><th class=l>stage</th><th>in</th><th>out</th><th>rejected</th><th>errors</th>"
        "<th class=l>balanced</th><th>active s</th><th>records/s</th>"
        "<th class=l>rejected by reason</th></tr>"
    )
    body = []
    for name in sorted(stages, key=lambda n: _pipeline_order(n, timing)):
        entry = stages[name]
        key = f"stages|{name}"
        reasons = ", ".join(
            f"<span data-label>{_esc(r)}</span>: {num(f'{key}|rejected_by_reason|{r}', n)}"
            for r, n in sorted(entry.get("rejected_by_reason", {}).items())
        )
        balanced = entry.get("balanced")
        mark = (
            ""
            if balanced is None
            else ('<span class="ok">yes</span>' if balanced else '<span class="bad">NO</span>')
        )
        counts = "".join(
            num(f"{key}|{what}", entry[what], tag="td") if what in entry else "<td></td>"
            for what in ("in", "out", "rejected", "errors")
        )
        times = timing.get(name)
        rate = (
            num(f"timing|{name}|seconds", times["seconds"], tag="td")
            + num(f"timing|{name}|records_per_s", times.get("records_per_s"), tag="td")
            if times
            else "<td></td><td></td>"
        )
        body.append(
            f"<tr><td class=l data-label>{_esc(name)}</td>{counts}<td class=l>{mark}</td>{rate}"
            f"<td class=reasons>{reasons}</td></tr>"
        )
    return f"<table class=stages>{head}{''.join(body)}</table>"


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


NOTES = {
    "time": "Active span: from the first to the last record leaving the stage or any of its "
    "steps (as output, rejection or dead letter), clocked on the workers by the accounting; "
    "stages overlap where records stream through. Records/s: records handled (a stage's input; "
    "a several-step stage's first input) over its active span; none for a span under "
    f"<span data-label>{MIN_SPAN_S} s</span>, where the records left in one burst.",
    "model": "Tokens as the model server reported them. Tok/s counts only the calls the server "
    "answered in this run (cache hits excluded) over the stage's active span.",
    "failures": "One kind per execution that did not pass: its sandbox verdict (timeout, "
    "memory, crashed) or the exception its traceback ends with.",
    "agreement": "Each final pair's response was also run against the tests of its "
    "instruction's other parsed samples; the bars count pairs by the share of those test suites "
    "it passes (1.0: every one).",
    "counts": "Every count on this page comes from the pipeline's accounting "
    "(OUT/_run/counts-*.jsonl). The runner's own counters, keyed by step, are in report.json "
    "under metrics.",
}


def render(report: dict[str, Any], examples: Sequence[dict[str, Any]]) -> str:
    stages = report.get("stages", {})
    summary = report.get("summary") or summarize(stages, report.get("runs", []))
    status = (
        '<span class="ok">every record accounted for</span>'
        if report.get("invariant_ok")
        else '<span class="bad">accounting problems: '
        + _esc("; ".join(report.get("problems", [])))
        + "</span>"
    )
    timing = report.get("timing", {})
    execution = stages.get("execution", {})
    by_group = execution.get("by_group", {})
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>SelfCodeAlign run report</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>SelfCodeAlign run report</h1><p>{status}</p>"
        f"<h2>At a glance</h2>{glance(summary)}"
        f"<h2>Funnel</h2>{funnel_svg(funnel_rows(stages))}"
        f"<h2>Time per stage</h2>{timeline_svg(timing)}<p class=note>{NOTES['time']}</p>"
        f"<h2>Model calls</h2>{model_table(stages, timing)}<p class=note>{NOTES['model']}</p>"
        f"<h2>Why executions failed</h2>{failures_svg(execution.get('failures', {}))}"
        f"<p class=note>{NOTES['failures']}</p>"
        "<h2>Pass rate by category and difficulty</h2>"
        f"{pass_rate_svg(by_group)}{pass_rate_table(by_group)}"
        f"{agreement_svg(stages)}"
        f"<h2>Stages</h2>{stage_table(stages, timing)}<p class=note>{NOTES['counts']}</p>"
        f'<h2>Examples from the final dataset</h2><div data-part="examples">'
        f"{example_cards(examples)}</div>"
        "</body></html>"
    )


def _open_text(path: str, mode: str) -> fsspec.core.OpenFile:
    # fsspec.open returns one OpenFile; unannotated, it reads as `OpenFiles | ...` to a checker.
    return cast(fsspec.core.OpenFile, fsspec.open(path, mode, encoding="utf-8"))


def load_examples(output_dir: str, limit: int = 5) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in current_shards(f"{output_dir}/final"):
        with _open_text(path, "r") as handle:
            for line in handle:
                if line.strip():
                    out.append(json.loads(line))
                if len(out) >= limit:
                    return out
    return out


def write_html(output_dir: str, report: dict[str, Any]) -> str:
    path = f"{output_dir}/report.html"
    with _open_text(path, "w") as handle:
        handle.write(render(report, load_examples(output_dir)))
    return path
