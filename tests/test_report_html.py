"""report.html renders in a real browser (headless Chromium) with the funnel and examples."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile

import pytest

from beam_pipeline.report_html import funnel_rows, render

REPORT = {
    "invariant_ok": True,
    "problems": [],
    "metrics": {"tokens_out": 12345},
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
        },
        "final": {"out": 9, "rejected_by_reason": {}},
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
    assert [label for label, _ in rows] == [
        "source files",
        "candidate functions",
        "seeds",
        "executed",
        "passed",
        "final pairs",
    ]
    assert dict(rows)["passed"] == 30


def test_render_escapes_and_contains_sections() -> None:
    page = render(REPORT, [EXAMPLE])
    assert "loops, &lt;dicts&gt;" in page and "<dicts>" not in page
    assert "66.7%" in page  # function/easy pass rate
    assert "11.1%" in page  # class/hard: 10 of 90
    assert "every record accounted for" in page


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
        "--window-size=1200,1600",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "SelfCodeAlign run report" in dom.stdout
    assert dom.stdout.count("<rect") == 6  # one bar per funnel step
    assert "def count_words(text):" in dom.stdout
    subprocess.run(
        [*flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20  # text, bars and code, not a blank page
    blue = sum(n for n, (r, g, b) in (colours or []) if b > 200 and r < 100)
    assert colours is None or blue > 1000  # the funnel bars were painted
