"""report.html tells the truth: a demo-like run (the bundled shard, a few seeds, n responses
each) against a scripted model server whose responses fail in every way a program can, then
every number on the page is recomputed from what the run wrote (OUT/<stage>/part-*.jsonl,
OUT/rejected/**, OUT/errors/**), from the input shard, and from the server's own record of the
tokens it sent. Times cannot be recomputed from records: for them the page must agree with
report.json, and every rate with its count over its time.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import threading
from collections import Counter
from html.parser import HTMLParser
from typing import Any

import pyarrow.parquet as pq
import pytest

from beam_pipeline.core.failures import failure_kind
from beam_pipeline.main import run
from beam_pipeline.options import bundled_shard
from beam_pipeline.report import MIN_SPAN_S
from tests.conftest import FNAPI, SHARED
from tests.helpers import read_jsonl_dir
from tests.model_server.scripted import ScriptedServer, item_part

# One pipeline run on the bundled shard (about 40 s on 2 cores) serves the module's tests.
pytestmark = pytest.mark.timeout(600)

N_SEEDS = 6
N_SAMPLES = 4

# What each response choice does when executed, in turn over all choices the server sends.
RESPONSE_KINDS = (
    "pass",
    "assertion",
    "name_error",
    "syntax",
    "timeout",
    "memory",
    "value_error",
    "no_tests",
)


# The scripted instructions read "Write a Python function `f_<h>()` that returns the string
# '<h>'."; a response answers the last one in its prompt.
TASK = re.compile(r"`(f_\w+)\(\)` that returns the string '(\w+)'")


def response_text(kind: str, prompt: str) -> str:
    name, value = TASK.findall(item_part(prompt))[-1]
    code = {
        "syntax": f"def {name}(:\n    return {value!r}",
        "timeout": f"def {name}():\n    while True:\n        pass",
        "value_error": f"def {name}():\n    raise ValueError({value!r})",
    }.get(kind, f"def {name}():\n    return {value!r}")
    tests = {
        "assertion": f"assert {name}() == {value[::-1]!r}",
        "name_error": f"assert {name}_helper() == {value!r}",
        "memory": f"block = bytearray(1 << 40)\nassert {name}() == {value!r}",
    }.get(kind, f"assert {name}() == {value!r}")
    body = f"\nReturn the string {value!r}.\n\n```python\n{code}\n```\n</response>\n\n"
    return body if kind == "no_tests" else f"{body}<tests>\n```python\n{tests}\n```\n"


def stage_of(prompt: str) -> str:
    tail = prompt.rstrip()
    for end, stage in (
        ("### Concepts", "concepts"),
        ("### Task", "instructions"),
        ("<response>", "responses"),
    ):
        if tail.endswith(end):
            return stage
    return "other"


class FailingResponsesServer(ScriptedServer):
    """The scripted server, plus: responses that fail in turn as RESPONSE_KINDS say, the first
    concepts request answered 400 (a dead letter), and a tally of what it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.tally: dict[str, Counter[str]] = {}
        self._choices = 0
        self._refused = False
        self._tally_lock = threading.Lock()

    def handle_generation(self, handler: Any, body: dict[str, Any]) -> None:
        prompt = body.get("prompt", "")
        stage = stage_of(prompt)
        send = type(handler)._send  # the class's: a kept-alive connection reuses the handler

        def counting_send(status: int, payload: bytes, headers: Any = None) -> None:
            usage = json.loads(payload).get("usage", {}) if status == 200 else {}
            with self._tally_lock:
                counts = self.tally.setdefault(stage, Counter())
                counts["calls"] += 1
                counts["prompt_tokens"] += usage.get("prompt_tokens", 0)
                counts["completion_tokens"] += usage.get("completion_tokens", 0)
            send(handler, status, payload, headers)

        handler._send = counting_send
        try:
            self._answer(handler, body, prompt, stage)
        finally:
            del handler._send

    def _answer(self, handler: Any, body: dict[str, Any], prompt: str, stage: str) -> None:
        with self._tally_lock:
            refuse = stage == "concepts" and not self._refused
            self._refused = self._refused or refuse
        if refuse:
            handler._send(400, b'{"error": {"message": "prompt refused (scripted)"}}')
            return
        if stage != "responses":
            super().handle_generation(handler, body)
            return
        choices = []
        for index in range(int(body.get("n", 1))):
            with self._tally_lock:
                i = self._choices
                self._choices += 1
            text = response_text(RESPONSE_KINDS[i % len(RESPONSE_KINDS)], prompt)
            choices.append({"index": index, "text": text, "finish_reason": "stop"})
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": sum(len(c["text"].split()) for c in choices),
        }
        handler._send(200, json.dumps({"choices": choices, "usage": usage}).encode())


# -- reading the page ------------------------------------------------------------------------


class PageNumbers(HTMLParser):
    """Every `data-k` element (key, raw value, text) and every number outside one."""

    SKIP = ("style", "title")
    NUMBER = re.compile(r"(?<![\w.\-/])\d[\d,]*(?:\.\d+)?%?(?![\w.])")

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[dict[str, str]] = []
        self.loose: list[str] = []
        self._stack: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            self._stack.append((tag, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """<rect/>, <line/>: no text, so nothing to record (and nothing to pop later)."""

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, attrs = self._stack.pop()
            if "data-k" in attrs:
                self.numbers.append({**attrs, "text": attrs.get("_text", "")})
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if any(
            t in self.SKIP or a.get("data-part") == "examples" or "data-label" in a
            for t, a in self._stack
        ):
            return
        owner = next((a for _, a in reversed(self._stack) if "data-k" in a), None)
        if owner is not None:
            owner["_text"] = owner.get("_text", "") + data
        else:
            self.loose += self.NUMBER.findall(data)


def shown_value(text: str) -> float | None:
    text = text.strip()
    if text == "—":
        return None
    scale = 100.0 if text.endswith("%") else 1.0
    return float(text.rstrip("%").replace(",", "")) / scale


def decimals(text: str) -> int:
    digits = text.strip().rstrip("%").replace(",", "")
    places = len(digits.split(".")[1]) if "." in digits else 0
    return places + (2 if text.strip().endswith("%") else 0)


# -- what the records say --------------------------------------------------------------------

# seeds.extract turns files into their functions: the chain below it starts at its functions.
SEED_STEPS = (
    "seeds.filter",
    "seeds.exact_dedup",
    "seeds.decontaminate",
    "seeds.near_dedup",
    "seeds.sample",
)
FINAL_STEPS = (
    "final.format",
    "final.select",
    "final.near_dedup.instruction",
    "final.near_dedup.response",
    "final.near_dedup.code_representation_of",
    "final.decontaminate",
)
# Rejections whose `stage` is their written stage name: the step is told by the reason.
FILE_REASONS = {"empty", "not_utf8", "binary", "too_large", "syntax_error", "too_deep"}
BY_REASON = {
    "seeds": {"duplicate": "seeds.exact_dedup", "over_max_seeds": "seeds.sample"},
    "final": {
        reason: "final.select"
        for reason in (
            "duplicate_instruction",
            "duplicate_response",
            "duplicate_defined_names",
            "first_block_unparsable",
            "code_unparsable",
        )
    },
}


def step_of(rejection: dict[str, Any], written: str) -> str:
    if rejection["stage"] != written:
        return rejection["stage"]  # a step that names itself (dedup, decontamination)
    reason = rejection["reason"]
    if written == "seeds" and reason in FILE_REASONS:
        return "seeds.extract"
    default = {"seeds": "seeds.filter", "final": "final.format"}[written]
    return BY_REASON[written].get(reason, default)


def entry(n_in: int, out: int, rejections: list[dict], errors: int) -> dict[str, Any]:
    reasons = Counter(r["reason"] for r in rejections)
    return {
        "in": n_in,
        "out": out,
        "rejected": len(rejections),
        "errors": errors,
        "rejected_by_reason": dict(reasons),
        "handled": n_in,
    }


def chain(
    written: str, steps: tuple[str, ...], first_in: int | None, out: int, rejected: list[dict]
) -> dict[str, dict[str, Any]]:
    """Each step's counts, walking back from the stage's written output: a step's input is its
    output plus what it rejected; its output is the next step's input. The first step's input
    must be `first_in` when it is known."""
    by_step: dict[str, list[dict]] = {s: [] for s in steps}
    by_step["seeds.extract"] = []  # file-level rejections, counted before the functions
    for rejection in rejected:
        step = step_of(rejection, written)
        assert step in by_step, f"a {written} rejection from an unknown step: {rejection}"
        by_step[step].append(rejection)
    stages = {}
    for step in reversed(steps):
        n_in = out + len(by_step[step])
        stages[step] = entry(n_in, out, by_step[step], 0)
        out = n_in
    if first_in is not None:
        assert out == first_in, f"{written}: the records account for {out} inputs, not {first_in}"
    if by_step["seeds.extract"]:
        stages["seeds.extract"] = entry(0, 0, by_step["seeds.extract"], 0)
    return stages


def expected_from_records(
    out: pathlib.Path, tally: dict[str, Counter[str]]
) -> dict[str, dict[str, Any]]:
    records = {
        s: read_jsonl_dir(out / s)
        for s in ("seeds", "concepts", "instructions", "responses", "execution", "final")
    }
    rejected = {s: read_jsonl_dir(p) for p in (out / "rejected").iterdir() for s in [p.name]}
    errors = {s: read_jsonl_dir(p) for p in (out / "errors").iterdir() for s in [p.name]}
    for stage in ("seeds", "final", "read"):
        assert not errors.get(stage), f"dead letters in {stage}: the test cannot place them"
    n = {s: len(r) for s, r in records.items()}
    files = pq.read_metadata(bundled_shard()).num_rows

    stages: dict[str, dict[str, Any]] = {
        "read": {"out": files, "errors": 0, "rejected_by_reason": {}, "handled": files},
        "seeds": {"out": n["seeds"], "rejected_by_reason": {}, "handled": files},
        "final": {"out": n["final"], "rejected_by_reason": {}, "handled": n["execution"]},
    }
    stages |= chain("seeds", SEED_STEPS, None, n["seeds"], rejected.get("seeds", []))
    unreadable = stages.get("seeds.extract", {}).get("rejected_by_reason", {})
    stages["seeds.extract"] = entry(files, files - sum(unreadable.values()), [], 0)
    stages["seeds.extract"] |= {
        "rejected": sum(unreadable.values()),
        "rejected_by_reason": unreadable,
        "functions": stages["seeds.filter"]["in"],
    }
    stages |= chain("final", FINAL_STEPS, n["execution"], n["final"], rejected.get("final", []))
    # Every final pair gets its statistics; the preference pairs are made from them.
    stages["final.stats"] = entry(n["final"], n["final"], [], 0)
    pairs = len(read_jsonl_dir(out / "preference"))
    by_stage: dict[str, list[dict]] = {}
    for rejection in rejected.get("preference", []):
        by_stage.setdefault(rejection["stage"], []).append(rejection)
    contaminated = by_stage.pop("preference.decontaminate", [])
    paired = n["final"] - len(by_stage.get("preference", []))
    stages["preference.pair"] = entry(n["final"], paired, by_stage.get("preference", []), 0)
    stages["preference.decontaminate"] = entry(paired, pairs, contaminated, 0)
    stages["preference"] = {"out": pairs, "rejected_by_reason": {}, "handled": n["final"]}
    previous = n["seeds"]
    for stage in ("concepts", "instructions", "responses"):
        fan_out = N_SAMPLES if stage == "responses" else 1
        rej, err = rejected.get(stage, []), len(errors.get(stage, [])) * fan_out
        stages[stage] = entry(previous * fan_out, n[stage], rej, err)
        previous = n[stage]
        calls = tally[stage]
        stages[stage]["model"] = {
            "calls": calls["calls"],
            "cached_calls": 0,
            "prompt_tokens": calls["prompt_tokens"],
            "completion_tokens": calls["completion_tokens"],
            "fresh_prompt_tokens": calls["prompt_tokens"],
            "fresh_completion_tokens": calls["completion_tokens"],
        }
    executions = records["execution"]
    stages["execution"] = entry(
        n["responses"], n["execution"], rejected.get("execution", []), len(errors["execution"])
    )
    statuses = Counter(e["status"] for e in executions)
    stages["execution"] |= {s: statuses.get(s, 0) for s in ("passed", "failed", "timeout")}
    stages["execution"]["memory"] = statuses.get("memory", 0)
    stages["execution"]["crashed"] = statuses.get("crashed", 0)
    groups: dict[str, Counter[str]] = {}
    for e in executions:
        groups.setdefault(f"{e['category']}/{e['difficulty']}", Counter())[e["status"]] += 1
    stages["execution"]["by_group"] = {g: dict(c) for g, c in groups.items()}
    kinds = [
        failure_kind(e["status"], e["stderr"], e["exit_code"], e["signal"]) for e in executions
    ]
    stages["execution"]["failures"] = dict(Counter(k for k in kinds if k is not None))
    stages["_executions"] = {"list": executions}
    return stages


def lookup(stages: dict[str, Any], report: dict[str, Any], key: str) -> float | int | None:
    """The value the records give for a page key (spans come from report.json)."""
    parts = key.split("|")
    executions = stages["_executions"]["list"]
    if parts[0] == "timing":  # times from report.json, counts from the records
        name, field = parts[1:]
        times = report["timing"][name]
        seconds = times["seconds"]
        if field in ("seconds", "first", "last"):
            return times[field]
        if field == "handled":
            return stages[name]["handled"]
        if seconds < MIN_SPAN_S:  # one burst: no rate
            return None
        if field == "records_per_s":
            return stages[name]["handled"] / seconds
        fresh = stages[name]["model"]["fresh_" + field.removesuffix("_per_s")]
        return fresh / seconds if fresh else None
    if parts[0] == "stages":
        name, *path = parts[1:]
        value: Any = stages[name]
        for p in path:
            value = value.get(p, 0) if p not in ("by_group", "failures") else value[p]
        if path[:1] == ["by_group"] and not isinstance(value, int):
            raise AssertionError(key)
        return value
    if parts[0] == "pass_rate":
        section, name = parts[1], parts[2]
        field = {"category": "category", "difficulty": "difficulty"}.get(section)
        chosen = [
            e
            for e in executions
            if (f"{e['category']}/{e['difficulty']}" == name if field is None else e[field] == name)
        ]
        passed = sum(e["status"] == "passed" for e in chosen)
        if parts[3:] == ["passed"]:
            return passed
        if parts[3:] == ["executed"]:
            return len(chosen)
        return passed / len(chosen)
    if parts[0] == "failure_share":
        failures = stages["execution"]["failures"]
        return failures[parts[1]] / sum(failures.values())
    if parts[0] == "timeline":
        spans = [t for s, t in report["timing"].items() if "." not in s]
        return max(s["last"] for s in spans) - min(s["first"] for s in spans)
    if parts[0] == "summary":
        final = stages["final"]["out"]
        tokens = sum(
            stages[s]["model"]["completion_tokens"]
            for s in ("concepts", "instructions", "responses")
        )
        wall_s = sum(r["wall_s"] for r in report["runs"])
        passed = sum(e["status"] == "passed" for e in executions)
        return {
            "final_pairs": final,
            "executed": len(executions),
            "passed": passed,
            "pass_rate": passed / len(executions),
            "generated_tokens": tokens,
            "pairs_per_million_tokens": final * 1e6 / tokens,
            "pairs_per_hour": final * 3600 / wall_s,
            "wall_s": wall_s,
        }[parts[1]]
    raise AssertionError(f"the page shows a number the test does not know: {key}")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict, dict]:
    out = tmp_path_factory.mktemp("demo") / "out"
    mbpp = SHARED / "data" / "mbpp.jsonl"
    with FailingResponsesServer() as server:
        argv = [
            f"--output_dir={out}",
            f"--model_server_url={server.base_url}",
            "--model=scripted",
            f"--max_seeds={N_SEEDS}",
            f"--num_samples={N_SAMPLES}",
            "--max_new_tokens=128",
            "--concepts_k=2",
            "--instruction_k=2",
            "--max_in_flight=4",
            "--batch_size=4",
            "--num_shards=2",
            "--dedup_max_rounds=8",
            "--exec_timeout_s=1",
            *([f"--decontam_mbpp_path={mbpp}"] if mbpp.exists() else []),
            *FNAPI,
        ]
        report = run(argv)
        tally = {stage: Counter(c) for stage, c in server.tally.items()}
    return out, report, tally


def test_every_number_on_the_page_agrees_with_the_records(demo_run) -> None:
    out, report, tally = demo_run
    assert report["invariant_ok"], report["problems"]
    expected = expected_from_records(out, tally)
    page = PageNumbers()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert page.loose == [], "numbers on the page without a data-k the test can check"
    checked = Counter()
    for shown in page.numbers:
        key, text = shown["data-k"], shown["text"]
        want = lookup(expected, report, key)
        raw = None if shown["data-v"] == "" else float(shown["data-v"])
        if want is None:
            assert raw is None and shown_value(text) is None, (key, text)
            continue
        # the raw value, to report.json's 3 decimals; the text, to its own decimals
        assert raw is not None and math.isclose(raw, want, rel_tol=1e-3, abs_tol=6e-4), (
            key,
            raw,
            want,
        )
        value = shown_value(text)
        assert value is not None, (key, text)
        assert abs(value - want) <= 0.5 * 10 ** -decimals(text) + 1e-3 * abs(want), (
            key,
            text,
            want,
        )
        checked[key.split("|")[0]] += 1
    assert checked["stages"] > 100 and checked["summary"] >= 8 and checked["timing"] > 40
    assert checked["pass_rate"] > 0 and checked["failure_share"] > 0


def test_report_json_counts_agree_with_the_records(demo_run) -> None:
    out, report, tally = demo_run
    expected = expected_from_records(out, tally)
    stages = report["stages"]
    for name, want in expected.items():
        if name.startswith("_"):
            continue
        got = stages[name]
        want = {k: v for k, v in want.items() if k != "handled"}  # in timing, not a count
        for key, value in want.items():
            if key == "model":
                assert {k: got["model"][k] for k in value} == value, name
            else:
                assert got.get(key, 0 if key in ("rejected", "errors") else None) == value, (
                    name,
                    key,
                )


def test_the_run_shows_each_kind_of_failure(demo_run) -> None:
    _, report, _ = demo_run
    failures = report["stages"]["execution"]["failures"]
    assert {"assertion", "syntax error", "timeout", "memory"} <= set(failures)
    assert {"exception: NameError", "exception: ValueError"} <= set(failures)
    assert report["stages"]["responses"]["rejected_by_reason"].get("missing_tests", 0) > 0
    assert report["stages"]["concepts"]["errors"] == 1
    # The runner's counters are keyed by step: two steps of one stage never share one.
    metrics = report["metrics"]
    assert (
        "seeds_out" not in metrics
        and metrics.get("seeds.FilterSeed_out") == (report["stages"]["seeds.filter"]["out"])
    )
