"""Data quality of the selection, measured against hidden ground-truth tests (docs/quality.md).

    .venv/bin/python bench/bench_quality.py [--mbpp ../shared/data/mbpp.jsonl] [--problems 120]
        [--modes completion,chat] [--model qwen-coder-0.5b] [--num_samples 4] [--work DIR]

MBPP's test split (task ids 11-510, the first `--problems` of them) goes in as `--instructions`:
each instruction is the problem's text plus its first assert, which names the function and
shows its signature. For each prompt mode the pipeline runs once (I->R with n samples, the
sandbox, `--cross_check`, decontamination off because the instructions *are* a benchmark) and
once more from its own executions with `--select_by agreement`. Every way of choosing one
response per instruction is then scored on all of the problem's asserts (`test_list`, the
`challenge_test_list` and `test_setup_code`), run in the same sandbox:

(a) random: a parsed response chosen at random (a seeded hash of its id), no execution filter;
(b) reference: the final dataset of the reference selection (`--select_by shuffle`);
(c) agreement: the final dataset with `--select_by agreement`;
(d) failing: a response that failed its own tests (for reference), where one exists;
and, beside them, (a) restricted to the instructions (b) kept (the execution filter's effect
without the effect of keeping only instructions where some sample passed), and as a ceiling
the share of instructions with at least one parsed response that passes.

Precision = passing / chosen, with a 95% Wilson interval. Throughput of each mode: accepted
pairs per million generated tokens and per hour of the first (uncached) run; `WORK/runs.json`
keeps those figures, and the model calls are cached under `WORK/cache`, so a rerun repeats no
model call (its report shows every request as a cache hit) and prints the same table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beam_pipeline.core.program import build_program  # noqa: E402
from beam_pipeline.main import run  # noqa: E402
from sandbox_image import SandboxConfig, SandboxPool  # noqa: E402

TEST_SPLIT = range(11, 511)  # MBPP's test split: task ids 11..510
MODES = ("completion", "chat")


# ----------------------------------------------------------------------------------------------
# Instructions


def mbpp_problems(path: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` problems of MBPP's test split, by task id."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    split = sorted((r for r in rows if r["task_id"] in TEST_SPLIT), key=lambda r: r["task_id"])
    if len(split) < count:
        raise SystemExit(f"{path}: {len(split)} test-split problems, fewer than {count}")
    return split[:count]


def instruction_text(problem: dict[str, Any]) -> str:
    """The problem's text and its first assert (the only way to know the function's name)."""
    check = problem["test_list"][0]
    return f"{problem['text'].strip()}\n\nYour function must pass this check:\n{check}"


def write_instructions(problems: list[dict[str, Any]], path: Path) -> None:
    with path.open("w") as fh:
        for p in problems:
            row = {"instruction": instruction_text(p), "task_id": p["task_id"]}
            fh.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------------------------
# Pipeline runs


@contextlib.contextmanager
def model_server(model: str, log_path: Path) -> Iterator[str]:
    from model_server.prepare import prepare
    from model_server.serve import ServeConfig, VLLMServer

    config = ServeConfig(model=str(prepare(model)), served_model_name=model, log_path=str(log_path))
    with VLLMServer(config) as server:
        yield f"{server.base_url}/v1"


def pipeline_args(args: argparse.Namespace, mode: str, out: Path, url: str) -> list[str]:
    return [
        f"--output_dir={out}",
        f"--model_server_url={url}",
        f"--model={args.model}",
        f"--prompt_mode={mode}",
        f"--num_samples={args.num_samples}",
        "--max_new_tokens=1024",
        "--max_model_len=4096",
        "--max_in_flight=16",
        "--batch_size=8",
        "--request_timeout_s=1800",
        "--cross_check",
        "--decontam_benchmarks=none",
        f"--cache_dir={args.work / 'cache' / mode}",
    ]


def run_mode(args: argparse.Namespace, mode: str, url: str) -> dict[str, Any]:
    """Both selections of one mode; the first one's throughput figures."""
    base = args.work / mode
    shuffle, agreement = base / "shuffle", base / "agreement"
    instructions = f"--instructions={args.work / 'instructions.jsonl'}"
    report = run([*pipeline_args(args, mode, shuffle, url), instructions])
    # (c): the same executions, selected again by agreement (no model call, no execution).
    shutil.rmtree(agreement, ignore_errors=True)
    agreement.mkdir(parents=True)
    shutil.copytree(shuffle / "execution", agreement / "execution")
    run([*pipeline_args(args, mode, agreement, url), "--from_stage=final", "--select_by=agreement"])
    return run_figures(report)


def run_figures(report: dict[str, Any]) -> dict[str, Any]:
    """This run's wall time (report.json lists every run into the same directory), its final
    pairs and the I->R stage's calls and tokens."""
    return {
        "wall_s": report["runs"][-1]["wall_s"],
        "final_pairs": report["summary"]["final_pairs"],
        **report_usage(report),
    }


def report_usage(report: dict[str, Any]) -> dict[str, Any]:
    """The I->R stage's calls and tokens (all, and those the server computed in this run)."""
    model = report["stages"]["responses"].get("model", {})
    keys = ("calls", "cached_calls", "completion_tokens", "fresh_completion_tokens")
    return {key: int(model.get(key, 0)) for key in keys}


# ----------------------------------------------------------------------------------------------
# Scoring


def read_dir(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(path.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def ground_truth_program(response: str, problem: dict[str, Any]) -> str:
    """The response's code (the pipeline's own program rule) followed by the hidden asserts."""
    hidden = [problem.get("test_setup_code") or "", *problem["test_list"]]
    hidden += problem.get("challenge_test_list") or []
    tests = "```python\n" + "\n".join(t for t in hidden if t.strip()) + "\n```"
    code = build_program(response).source
    return build_program(response, tests).source if code else ""


def pick(rows: list[dict[str, Any]], salt: str) -> dict[str, Any]:
    """One row, chosen by a seeded hash of its id (the same choice on every rerun)."""
    return min(rows, key=lambda r: hashlib.sha256(f"{salt}:{r['id']}".encode()).hexdigest())


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def share(passed: int, n: int) -> dict[str, Any]:
    return {
        "n": n,
        "passed": passed,
        "precision": passed / n if n else 0.0,
        "ci95": wilson(passed, n),
    }


def score_mode(base: Path, problems: dict[int, dict[str, Any]], pool: Any) -> dict[str, Any]:
    samples = read_dir(base / "shuffle" / "responses")
    executions = read_dir(base / "shuffle" / "execution")
    task_of = {}
    for s in samples:
        task_of[s["instruction_id"]] = json.loads(s.get("provenance") or "{}").get("task_id")
    by_instruction: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        by_instruction.setdefault(s["instruction_id"], []).append(s)
    failing: dict[str, list[dict[str, Any]]] = {}
    for e in executions:
        if e["status"] != "passed":
            failing.setdefault(e["instruction_id"], []).append(e)

    chosen = {
        "a_random": [pick(rows, "random") for rows in by_instruction.values()],
        "b_reference": read_dir(base / "shuffle" / "final"),
        "c_agreement": read_dir(base / "agreement" / "final"),
        "d_failing": [pick(rows, "failing") for rows in failing.values()],
    }
    # (a) on (b)'s instructions only: the filter's effect without the easier-instruction effect
    selected = {r["instruction_id"] for r in chosen["b_reference"]}
    chosen["a_random_same_instructions"] = [
        pick(by_instruction[iid], "random") for iid in sorted(selected) if iid in by_instruction
    ]
    # Every parsed response is scored once; the ways of choosing look the verdicts up.
    verdict: dict[tuple[str, str], bool] = {}
    todo = [(s["instruction_id"], s["response"]) for s in samples]
    todo += [(r["instruction_id"], r["response"]) for rows in chosen.values() for r in rows]
    programs = {}
    for iid, response in todo:
        if (iid, response) not in programs:
            programs[(iid, response)] = ground_truth_program(response, problems[task_of[iid]])
    runnable = [(key, src) for key, src in programs.items() if src]
    results = pool.run_many([src for _, src in runnable]) if runnable else []
    for (key, _), result in zip(runnable, results, strict=True):
        verdict[key] = result.status == "passed"

    def passes(iid: str, response: str) -> bool:
        return verdict.get((iid, response), False)

    table: dict[str, Any] = {}
    for name, rows in chosen.items():
        k = sum(passes(r["instruction_id"], r["response"]) for r in rows)
        table[name] = share(k, len(rows))
    ceiling = sum(
        any(passes(iid, s["response"]) for s in rows) for iid, rows in by_instruction.items()
    )
    table["any_correct"] = share(ceiling, len(problems))
    table["parsed_responses"] = len(samples)
    table["instructions_with_a_parsed_response"] = len(by_instruction)
    table["own_tests_passed"] = sum(e["status"] == "passed" for e in executions)
    return table


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mbpp", type=Path, default=REPO.parent / "shared" / "data" / "mbpp.jsonl")
    parser.add_argument("--problems", type=int, default=120)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--model", default="qwen-coder-0.5b")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "_quality")
    parser.add_argument("--model_server_url", default=None, help="use this server instead")
    parser.add_argument("--score_only", action="store_true", help="score the runs in WORK")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    args.work.mkdir(parents=True, exist_ok=True)
    problems = mbpp_problems(args.mbpp, args.problems)
    write_instructions(problems, args.work / "instructions.jsonl")

    runs_path = args.work / "runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    if not args.score_only:
        with contextlib.ExitStack() as stack:
            url = args.model_server_url or stack.enter_context(
                model_server(args.model, args.work / "vllm.log")
            )
            for mode in modes:
                figures = run_mode(args, mode, url)
                # A cached rerun keeps the first run's figures (its own are kept beside them).
                if figures["fresh_completion_tokens"] > 0 or mode not in runs:
                    runs[mode] = dict(figures)
                runs[mode]["last_rerun"] = dict(figures)
                runs_path.write_text(json.dumps(runs, indent=2))

    by_task = {p["task_id"]: p for p in problems}
    results: dict[str, Any] = {}
    with SandboxPool(SandboxConfig(timeout_s=10.0)) as pool:
        for mode in modes:
            table = score_mode(args.work / mode, by_task, pool)
            figures = runs.get(mode, {})
            accepted = table["b_reference"]["n"]
            tokens, wall = figures.get("completion_tokens", 0), figures.get("wall_s", 0.0)
            table["pairs_per_m_tokens"] = accepted / tokens * 1e6 if tokens else None
            table["pairs_per_hour"] = accepted / wall * 3600 if wall else None
            table["run"] = figures
            results[mode] = table
    (args.work / "quality.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    rows = ("a_random", "a_random_same_instructions", "b_reference", "c_agreement", "d_failing",
            "any_correct")  # fmt: skip
    modes = list(results)
    print("| choice | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for row in rows:
        cells = []
        for mode in modes:
            r = results[mode][row]
            lo, hi = r["ci95"]
            cells.append(f"{r['precision']:.3f} [{lo:.3f}, {hi:.3f}] ({r['passed']}/{r['n']})")
        print(f"| {row} | " + " | ".join(cells) + " |")
    for key in ("pairs_per_m_tokens", "pairs_per_hour"):
        cells = [f"{results[m][key]:.1f}" if results[m][key] else "-" for m in modes]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
