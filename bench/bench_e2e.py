"""Pipeline overhead on generation, and end-to-end accepted samples per hour, on real vLLM.

    .venv/bin/python bench/bench_e2e.py [--model smollm2] [--seeds 12] [--n 4] [--runs 3]

One vLLM CPU server (prefix caching off, so no run profits from an earlier one) serves all
runs. Seeds come from the bundled shard (`--max_seeds`), once. Then, in rounds that alternate
their order:

- pipeline: `python -m beam_pipeline --from_stage concepts --to_stage responses` in-process
  (FnApiRunner, one worker), a fresh output folder and a fresh response cache, so every
  completion is generated. Timed over the whole `run()`: graph construction, the three
  generation stages, writing every stage's output and the report.
- direct: the same three stages without Beam: the stages' own request builders and result
  parsers (`ExtractConceptsFn.request/on_result`, ...) around one `ModelClient` with the same
  `max_in_flight`, every request of a stage submitted at once, stage after stage.

Both send identical requests with identical per-request seeds, so they generate the same
tokens (checked: the completion-token totals must match). Overhead = median pipeline time /
median direct time - 1.

Finally one full run from the bundled shard to `final/` (read, seeds, generation, sandboxed
execution, selection, dedup, decontamination) gives accepted samples per hour.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beam_pipeline.config import GenerationConfig  # noqa: E402
from beam_pipeline.main import run  # noqa: E402
from beam_pipeline.records import DeadLetter, Rejection, Seed  # noqa: E402
from beam_pipeline.stages.concepts import ExtractConceptsFn  # noqa: E402
from beam_pipeline.stages.instructions import GenerateInstructionFn  # noqa: E402
from beam_pipeline.stages.responses import GenerateResponsesFn  # noqa: E402
from model_server.client import ModelClient  # noqa: E402
from model_server.prepare import prepare  # noqa: E402
from model_server.serve import ServeConfig, VLLMServer  # noqa: E402

MBPP = REPO.parent / "shared" / "data" / "mbpp.jsonl"


def generation_flags(args: argparse.Namespace, url: str) -> list[str]:
    return [
        f"--model_server_url={url}",
        f"--model={args.model}",
        f"--num_samples={args.n}",
        f"--max_new_tokens={args.max_new_tokens}",
        f"--max_in_flight={args.max_in_flight}",
        f"--batch_size={args.batch_size}",
        f"--concepts_k={args.k}",
        f"--instruction_k={args.k}",
        "--runner=FnApiRunner",
    ]


def read_seeds(out: Path) -> list[Seed]:
    seeds = []
    for path in sorted((out / "seeds").glob("part-*.jsonl")):
        seeds += [Seed.from_json(line) for line in path.read_text().splitlines() if line]
    return seeds


def pipeline_run(args: argparse.Namespace, url: str, seeds_dir: Path, work: Path) -> tuple:
    out = work / f"pipeline-{time.monotonic_ns()}"
    shutil.copytree(seeds_dir / "seeds", out / "seeds")
    argv = [
        f"--output_dir={out}",
        "--from_stage=concepts",
        "--to_stage=responses",
        f"--cache_dir={out}/_cache",
        *generation_flags(args, url),
    ]
    start = time.monotonic()
    report = run(argv)
    seconds = time.monotonic() - start
    if not report["invariant_ok"]:
        raise RuntimeError(f"pipeline run not balanced: {report['problems']}")
    tokens = sum(
        report["metrics"].get(f"{stage}_completion_tokens", 0)
        for stage in ("concepts", "instructions", "responses")
    )
    shutil.rmtree(out)
    return seconds, tokens, report["stages"]["responses"]["out"]


def direct_run(args: argparse.Namespace, url: str, seeds: list[Seed]) -> tuple:
    config = GenerationConfig(
        model=args.model,
        model_server_url=url,
        num_samples=args.n,
        max_new_tokens=args.max_new_tokens,
        max_in_flight=args.max_in_flight,
        concepts_k=args.k,
        instruction_k=args.k,
        request_timeout_s=1800,
    )
    # The client the stages open (same limits, retries, seeds), without a response cache.
    client_config = config.client_config(url, args.model)
    fns = [ExtractConceptsFn(config), GenerateInstructionFn(config), GenerateResponsesFn(config)]
    tokens = 0
    start = time.monotonic()
    with ModelClient(client_config) as client:
        items: list[Any] = seeds
        for fn in fns:
            requests = [fn.request(item) for item in items]
            futures = [client.submit(r.prompt, r.params) for r in requests]
            concurrent.futures.wait(futures)
            outputs = []
            for item, request, future in zip(items, requests, futures, strict=True):
                result = future.result()
                tokens += result.completion_tokens
                if result.ok:
                    outputs += [
                        o
                        for o in fn.on_result(item, request, result)
                        if not isinstance(o, Rejection | DeadLetter)
                    ]
            items = outputs
    return time.monotonic() - start, tokens, len(items)


def full_run(args: argparse.Namespace, url: str, work: Path) -> dict:
    out = work / "full"
    argv = [
        f"--output_dir={out}",
        f"--max_seeds={args.seeds}",
        *generation_flags(args, url),
    ]
    if MBPP.exists():
        argv.append(f"--decontam_mbpp_path={MBPP}")
    start = time.monotonic()
    report = run(argv)
    seconds = time.monotonic() - start
    stages = report["stages"]
    return {
        "seconds": seconds,
        "final": stages["final"]["out"],
        "samples": stages["responses"]["in"],
        "passed": stages["execution"].get("passed", 0),
        "invariant_ok": report["invariant_ok"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--k", type=int, default=2, help="few-shot examples for S->C and C->I")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-full", action="store_true", help="skip the full end-to-end run")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SELFCODEALIGN_PROGRESS_S", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = str(prepare(args.model))
    print(f"model {args.model}, {args.seeds} seeds x n={args.n}, max_new_tokens "
          f"{args.max_new_tokens}, max_in_flight {args.max_in_flight}, runs {args.runs}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    seeds_dir = work / "seeds-run"
    run([f"--output_dir={seeds_dir}", f"--max_seeds={args.seeds}", "--to_stage=seeds",
         "--runner=FnApiRunner"])  # fmt: skip
    seeds = read_seeds(seeds_dir)
    config = ServeConfig(
        model=model_dir,
        served_model_name=args.model,
        enable_prefix_caching=False,
        log_path=str(work / "vllm.log"),
    )
    times: dict[str, list[float]] = {"pipeline": [], "direct": []}
    with VLLMServer(config) as server:
        url = server.base_url
        direct_run(args, url, seeds[:2])  # warm-up
        for round_ in range(args.runs):
            order = ["pipeline", "direct"] if round_ % 2 == 0 else ["direct", "pipeline"]
            for what in order:
                if what == "pipeline":
                    seconds, tokens, samples = pipeline_run(args, url, seeds_dir, work)
                else:
                    seconds, tokens, samples = direct_run(args, url, seeds)
                times[what].append(seconds)
                print(f"run {round_}: {what:8s} {seconds:7.1f} s  {tokens} completion tokens  "
                      f"{samples} samples  {tokens / seconds:6.1f} tok/s", flush=True)  # fmt: skip
        full = None if args.no_full else full_run(args, url, work)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"median pipeline {med['pipeline']:.1f} s, direct {med['direct']:.1f} s: "
          f"overhead {100 * (med['pipeline'] / med['direct'] - 1):+.1f}%")  # fmt: skip
    if full is not None:
        per_hour = full["final"] / full["seconds"] * 3600
        print(f"full run: {full['seconds']:.0f} s, {full['samples']} samples, {full['passed']} "
              f"passed, {full['final']} final: {per_hour:.0f} accepted samples/hour "
              f"(invariant_ok {full['invariant_ok']})")  # fmt: skip
    print(json.dumps({"times": times, "full": full}))


if __name__ == "__main__":
    main()
