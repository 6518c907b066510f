"""Generation-stage throughput (output tokens/s) on the real vLLM CPU server, three ways;
and (`--scheduling`) server utilisation under many client processes.

    .venv/bin/python bench/bench_generation.py [--items 32] [--n 4] [--runs 3]
    .venv/bin/python bench/bench_generation.py --scheduling [--sizes 1,4,16] [--runs 3]

All three send the same I->R prompts (our prompt builder, one few-shot example each, n
samples, temperature 0.7, stop strings) for SmolLM2-135M-Instruct:

(a) flood: every request sent straight to the server with asyncio + httpx at a fixed
    concurrency; a sweep picks the best concurrency first. The upper bound for any client.
(b) Beam's own `VLLMCompletionsModelHandler` in `RunInference` (FnApiRunner, one worker),
    batch size = (a)'s best concurrency (`--beam-default-batching` adds (b2): Beam's default,
    adaptive batch sizes). Its inference code is Beam's; only `load_model`
    returns the server (a) and (c) use instead of starting another one, so all three meet the
    same server process. `--beam-own-server` also runs it with the server Beam starts itself
    (same vLLM flags), timed from its first batch to its last so start-up is excluded.
(c) our `GenerateResponses` stage (FnApiRunner, one worker, `max_in_flight` = (a)'s best
    concurrency) against the same server as (a); its time is the whole pipeline run,
    pipeline start-up included.

(a) and (c) send identical requests with identical per-request seeds, so they generate the
same tokens; Beam sends one set of arguments per batch, so no per-request seed. Prefix caching
is off so that no run profits from an earlier one. Each round runs (a), (b) and (c) in a
rotating order; medians over `--runs` rounds are reported. (b) and (c) are timed over the
whole pipeline run. With `--beam-own-server`, Beam's handler runs in a child process group
that is killed at the end (Beam never stops the server it starts).

`--scheduling`: no model. `tests/model_server/scheduling.py`'s server models vLLM's scheduler
(64 sequence slots, FIFO queue, continuous batching at 0.1 s a step, 4-12 tokens a sequence,
abort on disconnect, `/metrics`). 1, 4 and 16 client processes each run the I->R stage's DoFn
(`GenerateResponsesFn`: setup, process per batch, finish_bundle, exactly as a Beam worker
calls it, default settings, n=4, request timeout 10 mean service times) on an equal share of
`--sched-items` instructions, started together. Figure: useful utilisation = slot-steps of
sequences whose answers were delivered / (slots x steps), from the first busy step until the
work left could no longer fill the slots (outstanding sequences < slots). Baseline, same run:
the same DoFn with `--no_admission_control` (every request a process holds, up to
`max_in_flight`, goes on the wire at once: the client before admission control).
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
from model_server.serve import (  # noqa: E402
    ServeConfig,
    VLLMServer,
    server_command,
    server_env,
    server_healthy,
)

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

    from beam_pipeline.config import GenerationConfig
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
# (b) Beam's VLLMCompletionsModelHandler


def _beam_pipeline(handler: object, prompts: list[str], body: dict) -> tuple[int, float, float]:
    """Runs RunInference(handler); (output tokens, pipeline seconds, first-to-last batch s)."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    output_tokens = Metrics.counter("bench", "output_tokens")
    start = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = (
        pipeline
        | beam.Create(prompts)
        | RunInference(handler, inference_args=body)
        | beam.Map(lambda r: output_tokens.inc(r.inference.usage.completion_tokens))
    )
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - start
    metrics = result.metrics().query(MetricsFilter().with_namespace("bench"))
    spans = {m.key.metric.name: m.committed for m in metrics["distributions"]}
    tokens = sum(m.committed for m in metrics["counters"])
    span = (spans["batch_end_ms"].max - spans["batch_start_ms"].min) / 1000
    return tokens, wall, span


def _timed_handler_class() -> type:
    from apache_beam.metrics import Metrics
    from apache_beam.ml.inference.vllm_inference import VLLMCompletionsModelHandler

    # Metrics, not closures: RunInference works on unpickled copies of the handler.
    batch_start = Metrics.distribution("bench", "batch_start_ms")
    batch_end = Metrics.distribution("bench", "batch_end_ms")

    class TimedHandler(VLLMCompletionsModelHandler):
        """Records when batches start and end; inference is Beam's own code."""

        def run_inference(
            self, batch: list[str], model: object, inference_args: dict | None = None
        ) -> list:  # type: ignore[override]
            batch_start.update(int(time.time() * 1000))
            out = super().run_inference(batch, model, inference_args)
            batch_end.update(int(time.time() * 1000))
            return out

    return TimedHandler


class _ExistingServer:
    """Stands in for Beam's _VLLMModelServer: the server (a) and (c) use, already running."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get_server_port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def check_connectivity(self, retries: int = 3) -> None:
        """Beam calls this after a failed request; it cannot restart a server it does not
        own, so it only confirms the server still answers and raises if it does not."""
        for attempt in range(retries):
            if server_healthy(self.base_url, timeout_s=10):
                return
            time.sleep(2**attempt)
        raise RuntimeError(f"the shared vLLM server at {self.base_url} does not answer")


def beam_on_our_server(base_url: str, reqs: list[tuple[str, dict]], batch: int | None) -> tuple:
    """Beam's handler, unchanged except that load_model returns our running server.

    `batch` None keeps Beam's default batching (BatchElements sizes batches adaptively)."""
    timed = _timed_handler_class()

    class SharedServerHandler(timed):
        def load_model(self) -> _ExistingServer:  # type: ignore[override]
            return _ExistingServer(base_url)

        def share_model_across_processes(self) -> bool:
            return False

    sizes = {} if batch is None else {"min_batch_size": batch, "max_batch_size": batch}
    handler = SharedServerHandler(SERVED, **sizes)
    return _beam_pipeline(handler, [p for p, _ in reqs], _beam_body(reqs))


def _beam_body(reqs: list[tuple[str, dict]]) -> dict:
    body = dict(reqs[0][1])
    body.pop("seed", None)  # Beam sends the same arguments for every element of a batch
    return body


def beam_child(args: argparse.Namespace) -> None:
    """`--beam-child`: Beam's handler with the server it starts itself (own process group)."""
    reqs = requests_for(instructions(args.items), args.n, args.max_new_tokens)
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
    handler = _timed_handler_class()(
        args.model_dir, vllm_server_kwargs=flags,
        min_batch_size=args.beam_batch, max_batch_size=args.beam_batch,
    )  # fmt: skip
    results = []
    for _ in range(args.runs):
        tokens, _wall, span = _beam_pipeline(handler, [p for p, _ in reqs], _beam_body(reqs))
        results.append({"tokens": tokens, "seconds": span})
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
# --scheduling: utilisation of a vLLM-like scheduler under 1, 4, 16 client processes


def _sched_worker(tasks: object, results: object) -> None:
    """A client process: runs GenerateResponsesFn as a Beam worker would, once per task."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP

    from beam_pipeline.config import GenerationConfig
    from beam_pipeline.records import DeadLetter
    from beam_pipeline.stages.responses import GenerateResponsesFn

    logging.basicConfig(level=logging.ERROR)
    results.put(("ready", None))
    while True:
        task = tasks.get()
        if task is None:
            return
        cfg = GenerationConfig(
            model="scripted", model_server_url=task["url"], num_samples=task["n"],
            request_timeout_s=task["timeout_s"], admission_control=task["admission"],
        )  # fmt: skip
        items = instructions(task["items"])[task["lo"] : task["hi"]]
        fn = GenerateResponsesFn(cfg)
        fn.setup()
        time.sleep(max(0.0, task["start_at"] - time.time()))
        samples = dead = 0
        fn.start_bundle()

        def count(outputs: object) -> None:
            nonlocal samples, dead
            for out in outputs:
                value = getattr(out, "value", out)
                value = getattr(value, "value", value)
                if isinstance(value, DeadLetter):
                    dead += 1
                else:
                    samples += 1

        for i in range(0, len(items), cfg.batch_size):
            count(fn.process(items[i : i + cfg.batch_size], GlobalWindow(), MIN_TIMESTAMP))
        count(fn.finish_bundle())
        metrics = fn._client.metrics.snapshot()
        fn.teardown()
        results.put(("done", {"samples": samples, "dead": dead, "retries": metrics["retries"]}))


def _sched_round(server: object, workers: list, results: object, size: int, admission: bool,
                 items: int, n: int) -> dict:  # fmt: skip
    from tests.model_server.scheduling import utilisation

    server.reset()
    share = items // size
    start_at = time.time() + 0.5
    t0 = time.monotonic() + 0.5
    for i in range(size):
        workers[i][1].put({
            "url": server.base_url, "n": n, "timeout_s": 10 * server.mean_service_s,
            "admission": admission, "items": items, "lo": i * share, "hi": (i + 1) * share,
            "start_at": start_at,
        })  # fmt: skip
    done = [results.get()[1] for _ in range(size)]
    wall = time.monotonic() - t0
    steps, spans, counts = server.snapshot()
    total = share * size * n
    ends = sorted(steps[min(s.end_step, len(steps) - 1)].t for s in spans if s.delivered)
    # The work left could fill the slots until the (total - slots)-th delivered sequence.
    cut = total - server.slots
    end_t = ends[cut - 1] if 0 < cut <= len(ends) else steps[-1].t
    util = utilisation(steps, spans, server.slots, end_t)
    return {
        "useful": util["useful"], "busy": util["busy"], "wall": wall,
        "dead": sum(d["dead"] for d in done), "samples": sum(d["samples"] for d in done),
        "aborted": counts.get("aborted", 0), "requests": counts.get("requests", 0),
        "retries": sum(d["retries"] for d in done),
    }  # fmt: skip


def scheduling_bench(args: argparse.Namespace) -> None:
    import multiprocessing

    from tests.model_server.scheduling import SchedulingServer

    sizes = [int(x) for x in args.sizes.split(",")]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = []
    for _ in range(max(sizes)):
        tasks = ctx.Queue()
        proc = ctx.Process(target=_sched_worker, args=(tasks, results), daemon=True)
        proc.start()
        workers.append((proc, tasks))
    for _ in workers:
        results.get()  # every process has imported Beam and the stage
    modes = [("admission", True)] + ([("baseline", False)] if not args.no_baseline else [])
    load = os.getloadavg()[0]
    print(f"scheduling bench: {args.sched_items} instructions x n={args.n}, 64 slots, "
          f"step 0.1 s, runs {args.runs}, load average {load:.1f}", flush=True)  # fmt: skip
    table: dict[tuple[str, int], list[dict]] = {}
    with SchedulingServer(slots=64, step_s=0.1) as server:
        for run in range(args.runs):
            for size in sizes:
                order = modes if run % 2 == 0 else modes[::-1]
                for name, admission in order:
                    r = _sched_round(server, workers, results, size, admission,
                                     args.sched_items, args.n)  # fmt: skip
                    table.setdefault((name, size), []).append(r)
                    print(f"run {run}: {name:9s} {size:2d} processes: useful {r['useful']:.3f} "
                          f"busy {r['busy']:.3f} wall {r['wall']:5.1f} s aborted "
                          f"{r['aborted']}/{r['requests']} retries {r['retries']} "
                          f"dead letters {r['dead']} samples {r['samples']}")  # fmt: skip
    for _, tasks in workers:
        tasks.put(None)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    for size in sizes:
        line = []
        for name, _ in modes:
            rows = table[(name, size)]
            useful = statistics.median(r["useful"] for r in rows)
            aborted = statistics.median(r["aborted"] / max(1, r["requests"]) for r in rows)
            dead = statistics.median(r["dead"] for r in rows)
            wall = statistics.median(r["wall"] for r in rows)
            runs = fmt3(r["useful"] for r in rows)
            line.append(f"{name} useful {useful:.3f} (runs {runs}), aborted {aborted:.1%}, "
                        f"dead letters {dead:.0f}, wall {wall:.1f} s")  # fmt: skip
        if len(modes) == 2:
            a = statistics.median(r["useful"] for r in table[("admission", size)])
            b = statistics.median(r["useful"] for r in table[("baseline", size)])
            line.append(f"ratio {a / b:.2f}" if b else "ratio inf")
        print(f"{size:2d} processes: " + "; ".join(line))


def fmt3(values: object) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="8,16,32")
    parser.add_argument(
        "--beam-own-server",
        action="store_true",
        help="also run Beam's handler with the vLLM server it starts itself (after the rounds)",
    )
    parser.add_argument(
        "--beam-default-batching",
        action="store_true",
        help="also run Beam's handler with its default (adaptive) batch sizes in every round",
    )
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--log-dir", default="/tmp/selfcodealign-bench")
    parser.add_argument(
        "--scheduling",
        action="store_true",
        help="utilisation of the scheduling server under 1, 4 and 16 client processes",
    )
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--sched-items", type=int, default=512)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--beam-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--beam-batch", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.beam_child:
        beam_child(args)
        return
    if args.scheduling:
        scheduling_bench(args)
        return
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    args.model_dir = args.model_dir or str(prepare("smollm2"))
    items = instructions(args.items)
    reqs = requests_for(items, args.n, args.max_new_tokens)
    print(f"items {args.items} x n={args.n}, max_new_tokens {args.max_new_tokens}, "
          f"runs {args.runs}, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    config = serve_config(args.model_dir, str(Path(args.log_dir) / "server.log"))
    runs: dict[str, list[float]] = {"flood": [], "stage": [], "beam": [], "beam-default": []}
    with VLLMServer(config) as server:
        flood(server.base_url, reqs[:4], 4)  # warm-up
        sweep = {}
        for c in (int(x) for x in args.concurrency.split(",")):
            tokens, seconds = flood(server.base_url, reqs, c)
            sweep[c] = tokens / seconds
            print(f"sweep: flood concurrency {c:3d}: {sweep[c]:7.1f} tok/s ({tokens} tokens)",
                  flush=True)  # fmt: skip
        best = max(sweep, key=sweep.get)
        kinds = ["flood", "stage", "beam"] + (
            ["beam-default"] if args.beam_default_batching else []
        )
        for run in range(args.runs):
            turn = run % len(kinds)
            for what in kinds[turn:] + kinds[:turn]:  # rotate the order every round
                if what == "flood":
                    tokens, seconds = flood(server.base_url, reqs, best)
                    extra = ""
                elif what == "stage":
                    tokens, seconds = run_stage(
                        server.base_url, items, args.n, args.max_new_tokens, best
                    )
                    extra = " (whole pipeline)"
                else:
                    batch = best if what == "beam" else None
                    tokens, seconds, span = beam_on_our_server(server.base_url, reqs, batch)
                    extra = f" (whole pipeline; first-to-last batch {tokens / span:.1f} tok/s)"
                runs[what].append(tokens / seconds)
                print(f"run {run}: {what:5s} {tokens / seconds:7.1f} tok/s ({tokens} tokens, "
                      f"{seconds:.1f} s){extra}", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    labels = {
        "flood": f"(a) flood, concurrency {best}",
        "beam": f"(b) Beam VLLMCompletionsModelHandler, batch {best}",
        "beam-default": "(b2) the same, Beam's default adaptive batching",
        "stage": f"(c) GenerateResponses, max_in_flight {best}",
    }
    for kind, label in labels.items():
        if kind in med:
            print(f"{label:52s} {med[kind]:7.1f} tok/s  runs {fmt(runs[kind])}")
    print(f"ratio (c)/(a): {med['stage'] / med['flood']:.3f}")
    print(f"ratio (c)/(b): {med['stage'] / med['beam']:.3f}")
    if "beam-default" in med:
        print(f"ratio (c)/(b2): {med['stage'] / med['beam-default']:.3f}")
    if args.beam_own_server:
        args.beam_batch = best
        own = [r["tokens"] / r["seconds"] for r in run_beam_baseline(args)]
        print(f"(b') Beam handler with its own server, first-to-last batch: "
              f"{statistics.median(own):7.1f} tok/s  {fmt(own)}")  # fmt: skip


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


if __name__ == "__main__":
    main()
