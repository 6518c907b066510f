"""report.html renders in a real browser (headless Chromium): funnel, time per stage, model
calls, failure kinds, pass rate by category and difficulty, and examples."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile
from collections import Counter

import pytest

from beam_pipeline.report_html import funnel_rows, render

pytestmark = pytest.mark.timeout(300)  # headless Chromium

REPORT = {
    "invariant_ok": True,
    "problems": [],
    "metrics": {"seeds.FilterSeed_out": 2939},  # runner counters: not shown
    "runs": [{"wall_s": 61.5}],
    "stages": {
        "read": {"out": 654, "rejected_by_reason": {}},
        "seeds.extract": {
            "in": 654,
            "out": 651,
            "functions": 1600,
            "rejected": 3,
            "errors": 0,
            "balanced": True,
            "rejected_by_reason": {"empty": 3},
        },
        "seeds": {"out": 40, "rejected_by_reason": {}},
        "responses": {
            "in": 160,
            "out": 120,
            "rejected": 40,
            "errors": 0,
            "balanced": True,
            "rejected_by_reason": {"missing_tests": 40},
            "model": {
                "calls": 40,
                "cached_calls": 0,
                "prompt_tokens": 30000,
                "completion_tokens": 12345,
                "fresh_prompt_tokens": 30000,
                "fresh_completion_tokens": 12345,
            },
        },
        "execution": {
            "in": 120,
            "out": 120,
            "rejected": 0,
            "errors": 0,
            "balanced": True,
            "passed": 30,
            "rejected_by_reason": {},
            "by_group": {
                "function/easy": {"passed": 20, "failed": 10},
                "class/hard": {"passed": 10, "timeout": 5, "failed": 75},
            },
            "failures": {"assertion": 60, "exception: NameError": 25, "timeout": 5},
        },
        "final": {"out": 9, "rejected_by_reason": {}},
    },
    "timing": {
        "seeds": {
            "first": 1000.0,
            "last": 1025.0,
            "seconds": 25.0,
            "handled": 654,
            "records_per_s": 26.16,
        },
        "responses": {
            "first": 1025.0,
            "last": 1045.0,
            "seconds": 20.0,
            "handled": 160,
            "records_per_s": 8.0,
            "prompt_tokens_per_s": 1500.0,
            "completion_tokens_per_s": 617.25,
        },
        "execution": {
            "first": 1046.0,
            "last": 1050.0,
            "seconds": 4.0,
            "handled": 120,
            "records_per_s": 30.0,
        },
    },
}
EXAMPLE = {
    "id": "s1.0",
    "category": "function",
    "difficulty": "easy",
    "concepts": ["loops", "<dicts>"],  # a JSON list, as the final records hold it
    "instruction": "Write count_words(text).",
    "response": "```python\ndef count_words(text):\n    return len(text.split())\n```",
    "tests": "```python\nassert count_words('a b') == 2\n```",
    "seed": "def s(x): ...",
}


def test_funnel_follows_pipeline_order() -> None:
    rows = funnel_rows(REPORT["stages"])
    assert [label for label, _, _ in rows] == [
        "source files",
        "candidate functions",
        "seeds",
        "responses",
        "executed",
        "passed",
        "final pairs",
    ]
    assert {label: n for label, n, _ in rows}["passed"] == 30


def test_render_escapes_and_contains_sections() -> None:
    page = render(REPORT, [EXAMPLE])
    assert "loops, &lt;dicts&gt;" in page and "<dicts>" not in page
    assert "66.7%" in page  # function/easy pass rate
    assert "11.1%" in page  # class/hard: 10 of 90
    assert "every record accounted for" in page
    assert "2,939" not in page and "Totals" not in page  # runner counters stay in report.json
    assert 'data-k="summary|pairs_per_million_tokens" data-v="729.04">729.0<' in page  # 9/12,345
    assert 'data-k="timing|responses|completion_tokens_per_s" data-v="617.25">617.2<' in page
    assert 'data-k="stages|execution|failures|assertion" data-v="60">60<' in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_page_renders_in_headless_chromium(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(REPORT, [EXAMPLE]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}",
        "--window-size=1200,3000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "SelfCodeAlign run report" in dom.stdout
    charts = {name: _chart(dom.stdout, name) for name in CHARTS}
    assert charts["funnel"].count("<rect") == 7  # one bar per funnel step
    assert charts["timeline"].count("<rect") == 3  # seeds, responses, execution
    assert charts["failures"].count("<rect") == 3  # one bar per failure kind
    # category x2, difficulty x2, each a full (not passed) bar under its passed part
    assert charts["pass_rate"].count("<rect") == 8
    assert "exception: NameError" in charts["failures"]
    assert "def count_words(text):" in dom.stdout
    subprocess.run(
        [*flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20  # text, bars and code, not a blank page
    assert colours is not None
    painted = Counter({colour: n for n, colour in colours})
    for name, rgb in (
        ("funnel", (0x3B, 0x82, 0xF6)),
        ("timeline", (0x8B, 0x5C, 0xF6)),
        ("failures", (0xF5, 0x9E, 0x0B)),
        ("passed", (0x16, 0xA3, 0x4A)),
        ("not passed", (0xF8, 0x71, 0x71)),
    ):
        assert painted[rgb] > 500, f"the {name} bars were not painted"


CHARTS = ("funnel", "timeline", "failures", "pass_rate")


def _chart(dom: str, name: str) -> str:
    start = dom.index(f'data-chart="{name}"')
    return dom[start : dom.index("</svg>", start)]
