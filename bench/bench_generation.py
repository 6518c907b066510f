"""Generation-stage throughput (output tokens/s) on the real vLLM CPU server, three ways.

    .venv/bin/python bench/bench_generation.py [--items 32] [--n 4] [--runs 3]

All three send the same I->R prompts (our prompt builder, one few-shot example each, n
samples, temperature 0.7, stop strings) for SmolLM2-135M-Instruct:

(a) flood: every request sent straight to the server with asyncio + httpx at a fixed
    concurrency; a sweep picks the best concurrency first. The upper bound for any client.
(b) Beam's own `VLLMCompletionsModelHandler` in `RunInference` (FnApiRunner, one worker),
    with the same vLLM flags and its batch size set to (a)'s best concurrency. It starts its
    own server; its time runs from its first batch to its last, so start-up is excluded.
(c) our `GenerateResponses` stage (FnApiRunner, one worker, `max_in_flight` = (a)'s best
    concurrency) against the same server as (a); its time is the whole pipeline run,
    pipeline start-up included.

(a) and (c) send identical requests with identical per-request seeds, so they generate the
same tokens. Prefix caching is off on both servers so that no run profits from an earlier
one. (a) and (c) alternate for `--runs` rounds; medians are reported. The Beam baseline runs
in a child process group that is killed at the end (its server is never stopped by Beam).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from beam_pipeline.core import prompting  # noqa: E402
from beam_pipeline.records import Instruction  # noqa: E402
from model_server.client import SamplingParams  # noqa: E402
from model_server.prepare import prepare  # noqa: E402
from model_server.serve import ServeConfig, VLLMServer, server_command, server_env  # noqa: E402

SERVED = "smollm2"
MBPP = REPO.parent / "shared" / "data" / "mbpp.jsonl"


def instructions(count: int) -> list[Instruction]:
    texts: list[str] = []
    if MBPP.exists():
        with open(MBPP) as f:
            texts = [json.loads(line)["text"] for line in f][:count]
    pool = [ex.instruction for ex in prompting.fewshot_pool()]
    while len(texts) < count:
        texts.append(pool[len(texts) % len(pool)] + f" (variant {len(texts)})")
    return [
        Instruction(
            id=f"bench{i:04d}",
            seed="",
            concepts="",
            category="function",
            difficulty="easy",
            instruction=text,
        )
        for i, text in enumerate(texts)
    ]


def requests_for(items: list[Instruction], n: int, max_tokens: int) -> list[tuple[str, dict]]:
    """The exact (prompt, body) pairs GenerateResponses sends."""
    out = []
    for item in items:
        prompt = prompting.response_prompt(item.id, item.instruction, k=1).prompt
        params = SamplingParams(
            temperature=0.7, max_tokens=max_tokens, n=n,
            stop=(prompting.EXAMPLE_STOP, prompting.TESTS_STOP),
            seed=prompting.sampler_seed(prompting.STAGE_RESPONSE, item.id),
        )  # fmt: skip
        out.append((prompt, params.to_request()))
    return out


def serve_config(model_dir: str, log_path: str) -> ServeConfig:
    return ServeConfig(
        model=model_dir, served_model_name=SERVED, enable_prefix_caching=False, log_path=log_path
    )


# ----------------------------------------------------------------------------------------------
# (a) flood


async def _flood(
    base_url: str, reqs: list[tuple[str, dict]], concurrency: int
) -> tuple[int, float]:
    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
    )
    async with httpx.AsyncClient(timeout=1800, limits=limits) as http:

        async def one(prompt: str, body: dict) -> None:
            nonlocal tokens
            async with sem:
                r = await http.post(
                    f"{base_url}/v1/completions", json={"model": SERVED, "prompt": prompt, **body}
                )
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        start = time.monotonic()
        await asyncio.gather(*(one(p, b) for p, b in reqs))
        return tokens, time.monotonic() - start


def flood(base_url: str, reqs: list[tuple[str, dict]], concurrency: int) -> tuple[int, float]:
    return asyncio.run(_flood(base_url, reqs, concurrency))


# ----------------------------------------------------------------------------------------------
# (c) our stage


def run_stage(base_url: str, items: list[Instruction], n: int, max_tokens: int,
              max_in_flight: int) -> tuple[int, float]:  # fmt: skip
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.stages.generation import GenerationConfig
    from beam_pipeline.stages.responses import GenerateResponses

    cfg = GenerationConfig(
        model=SERVED, model_server_url=base_url, num_samples=n, max_new_tokens=max_tokens,
        max_in_flight=max_in_flight, request_timeout_s=1800,
    )  # fmt: skip
    start = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = pipeline | beam.Create(items) | GenerateResponses(cfg)
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.monotonic() - start
    counters = result.metrics().query(MetricsFilter().with_name("responses_completion_tokens"))
    tokens = sum(c.committed or c.attempted or 0 for c in counters["counters"])
    return tokens, elapsed


# ----------------------------------------------------------------------------------------------
# (b) Beam's VLLMCompletionsModelHandler (runs in a child process: `--beam-child`)


def beam_child(args: argparse.Namespace) -> None:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.ml.inference.vllm_inference import VLLMCompletionsModelHandler
    from apache_beam.options.pipeline_options import PipelineOptions

    # Metrics, not closures: the handler and the lambdas below run as unpickled copies.
    batch_start = Metrics.distribution("bench", "batch_start_ms")
    batch_end = Metrics.distribution("bench", "batch_end_ms")
    output_tokens = Metrics.counter("bench", "output_tokens")

    class TimedHandler(VLLMCompletionsModelHandler):
        """Only records when batches start and end; behaviour is Beam's."""

        def run_inference(
            self, batch: list[str], model: object, inference_args: dict | None = None
        ) -> list:  # type: ignore[override]
            batch_start.update(int(time.time() * 1000))
            out = super().run_inference(batch, model, inference_args)
            batch_end.update(int(time.time() * 1000))
            return out

    items = instructions(args.items)
    reqs = requests_for(items, args.n, args.max_new_tokens)
    body = dict(reqs[0][1])
    body.pop("seed", None)  # Beam sends the same arguments for every element of a batch
    cmd = server_command(serve_config(args.model_dir, ""), 0, "cpu")
    flags: dict[str, str | None] = {}
    i = cmd.index("--port") + 2
    while i < len(cmd):  # the same vLLM flags as our server (minus model, host, port)
        key = cmd[i].removeprefix("--")
        if i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            flags[key] = cmd[i + 1]
            i += 2
        else:
            flags[key] = None
            i += 1
    flags.pop("served-model-name", None)  # Beam asks for the model by its path
    os.environ.update(server_env(serve_config(args.model_dir, ""), "cpu"))
    handler = TimedHandler(
        args.model_dir, vllm_server_kwargs=flags,
        min_batch_size=args.beam_batch, max_batch_size=args.beam_batch,
    )  # fmt: skip
    results = []
    for _ in range(args.runs):
        pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
        _ = (
            pipeline
            | beam.Create([p for p, _ in reqs])
            | RunInference(handler, inference_args=body)
            | beam.Map(lambda r: output_tokens.inc(r.inference.usage.completion_tokens))
        )
        result = pipeline.run()
        result.wait_until_finish()
        metrics = result.metrics().query(MetricsFilter().with_namespace("bench"))
        by_name = {m.key.metric.name: m.committed for m in metrics["distributions"]}
        tokens = sum(m.committed for m in metrics["counters"])
        seconds = (by_name["batch_end_ms"].max - by_name["batch_start_ms"].min) / 1000
        results.append({"tokens": tokens, "seconds": seconds})
    print("BEAM_RESULT " + json.dumps(results), flush=True)


def run_beam_baseline(args: argparse.Namespace) -> list[dict]:
    cmd = [
        sys.executable, __file__, "--beam-child", "--model-dir", args.model_dir,
        "--items", str(args.items), "--n", str(args.n), "--max-new-tokens",
        str(args.max_new_tokens), "--runs", str(args.runs), "--beam-batch", str(args.beam_batch),
    ]  # fmt: skip
    log_path = Path(args.log_dir) / "beam-baseline.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=3600)
        finally:
            # Beam never stops the vLLM server it started: end the whole process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for line in out.splitlines():
        if line.startswith("BEAM_RESULT "):
            return json.loads(line.removeprefix("BEAM_RESULT "))
    raise RuntimeError(f"Beam baseline failed; see {log_path}")


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="8,16,32")
    parser.add_argument("--skip-beam", action="store_true")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--log-dir", default="/tmp/selfcodealign-bench")
    parser.add_argument("--beam-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--beam-batch", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.beam_child:
        beam_child(args)
        return
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    args.model_dir = args.model_dir or str(prepare("smollm2"))
    items = instructions(args.items)
    reqs = requests_for(items, args.n, args.max_new_tokens)
    print(
        f"items {args.items} x n={args.n}, max_new_tokens {args.max_new_tokens}, runs {args.runs}"
    )
    config = serve_config(args.model_dir, str(Path(args.log_dir) / "server.log"))
    with VLLMServer(config) as server:
        flood(server.base_url, reqs[:4], 4)  # warm-up
        sweep = {}
        for c in (int(x) for x in args.concurrency.split(",")):
            tokens, seconds = flood(server.base_url, reqs, c)
            sweep[c] = tokens / seconds
            print(f"sweep: flood concurrency {c:3d}: {sweep[c]:7.1f} tok/s ({tokens} tokens)")
        best = max(sweep, key=sweep.get)
        flood_runs, stage_runs = [], []
        for run in range(args.runs):
            order = ("flood", "stage") if run % 2 == 0 else ("stage", "flood")
            for what in order:
                if what == "flood":
                    tokens, seconds = flood(server.base_url, reqs, best)
                    flood_runs.append(tokens / seconds)
                else:
                    tokens, seconds = run_stage(
                        server.base_url, items, args.n, args.max_new_tokens, best
                    )
                    stage_runs.append(tokens / seconds)
                print(f"run {run}: {what:5s} {tokens / seconds:7.1f} tok/s ({tokens} tokens, "
                      f"{seconds:.1f} s)", flush=True)  # fmt: skip
    flood_med = statistics.median(flood_runs)
    stage_med = statistics.median(stage_runs)
    print(f"(a) flood, concurrency {best}: {flood_med:7.1f} tok/s  runs {fmt(flood_runs)}")
    print(f"(c) GenerateResponses stage:   {stage_med:7.1f} tok/s  runs {fmt(stage_runs)}")
    print(f"ratio (c)/(a): {stage_med / flood_med:.3f}")
    if args.skip_beam:
        return
    args.beam_batch = best
    beam_runs = [r["tokens"] / r["seconds"] for r in run_beam_baseline(args)]
    beam_med = statistics.median(beam_runs)
    print(f"(b) Beam VLLMCompletionsModelHandler, batch {best}: {beam_med:7.1f} tok/s  "
          f"runs {fmt(beam_runs)}")  # fmt: skip
    print(f"ratio (c)/(b): {stage_med / beam_med:.3f}")


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


if __name__ == "__main__":
    main()
