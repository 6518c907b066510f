"""Admission control and outage recovery against a server that schedules like vLLM.

The stage tests run the generation stages (S->C, C->I, I->R) on FnApiRunner with four worker
processes, default client settings and `num_samples` 4, against `SchedulingServer`: 32
sequence slots, 0.1 s per decode step, 4-12 tokens a sequence. The request timeout is ten
mean service times: long enough for a short queue, far shorter than the queue the workers
would build without admission control (each would put every request it holds on the wire).
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections.abc import Iterator

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.config import GenerationConfig
from beam_pipeline.records import Sample, Seed
from beam_pipeline.stages.concepts import ExtractConcepts
from beam_pipeline.stages.instructions import GenerateInstructions
from beam_pipeline.stages.responses import GenerateResponses
from model_server import client as client_mod
from model_server.client import AdmissionLimit, ClientConfig, ModelClient, SamplingParams
from tests.helpers import make_seed
from tests.model_server.scheduling import SchedulingServer, sequence_length, utilisation
from tests.model_server.scripted import scripted_text

pytestmark = pytest.mark.timeout(600)  # four worker processes, a 15 s outage

FOUR_WORKERS = [
    "--runner=FnApiRunner",
    "--direct_num_workers=4",
    "--direct_running_mode=multi_processing",
]
ITEMS = 96
SAMPLES = 4


# -- the controller on its own --------------------------------------------------------------


def test_an_oversubscribed_pool_is_scaled_to_its_slots_plus_the_target_queue() -> None:
    # Four clients with 40 sequences each against 64 slots: 96 wait.
    limits = [AdmissionLimit(initial=40) for _ in range(4)]
    for limit in limits:
        limit.on_server_load(running=64, waiting=96, in_flight=40)
    for limit in limits:  # a queue counts once seen twice in a row
        limit.on_server_load(running=64, waiting=96, in_flight=40)
    total = sum(limit.limit for limit in limits)
    assert total == pytest.approx(64 + limits[0].queue_fraction * 64)
    # While the queue drains, repeated samples do not cut again below that.
    for limit in limits:
        limit.on_server_load(running=64, waiting=60, in_flight=40)
    assert sum(limit.limit for limit in limits) >= total


def test_growth_doubles_at_most_per_round_trip_and_only_when_limited() -> None:
    limit = AdmissionLimit(initial=8)
    limit.round_trip_s = 3600.0  # no new round trip within this test
    limit.on_server_load(running=8, waiting=0, in_flight=8)
    assert limit.on_completion(4, limited=False) == 8  # no work waits on the limit
    for _ in range(10):
        limit.on_completion(4, limited=True)
    assert limit.limit == 16  # slow start, capped at twice the load of this round trip
    limit.round_trip_s = 0.0  # a new round trip: the cap may double again
    limit.on_server_load(running=16, waiting=4, in_flight=16)
    limit.on_server_load(running=16, waiting=4, in_flight=16)  # 4 = q / 2 ... q: +n/limit
    assert limit.on_completion(4, limited=True) == pytest.approx(16.25)


def test_overload_and_latency_cut_the_limit() -> None:
    limit = AdmissionLimit(initial=100, cooldown_s=10.0)
    assert limit.on_overload(in_flight=80, now=0.0) == 60
    assert limit.on_overload(in_flight=60, now=1.0) == 60  # one cut per cool-down
    assert limit.on_latency(ratio=4.0, in_flight=60, now=20.0) == 30  # tolerance 2 / 4
    assert limit.on_latency(ratio=1.1, in_flight=30, now=21.0) == 30
    assert limit.growth == AdmissionLimit.SLOW


def test_gauges_are_summed_over_engines() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 12.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
        'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 7.0\n'
    )
    gauges = client_mod.parse_gauges(text, (client_mod.RUNNING_GAUGE, client_mod.WAITING_GAUGE))
    assert gauges == {client_mod.RUNNING_GAUGE: 15.0, client_mod.WAITING_GAUGE: 7.0}


# -- one client against the scheduling server -----------------------------------------------


@pytest.fixture
def server() -> Iterator[SchedulingServer]:
    with SchedulingServer(slots=32, step_s=0.1) as srv:
        yield srv


def test_the_server_schedules_n_weighted_fifo_and_answers_in_full(server: SchedulingServer) -> None:
    config = ClientConfig(base_url=server.base_url, model="scripted", admission=False)
    with ModelClient(config) as client:
        results = client.complete([f"p{i}" for i in range(12)], SamplingParams(n=4, seed=1))
    assert all(r.ok for r in results)
    for i, result in enumerate(results):
        assert [c.text for c in result.choices] == [scripted_text(f"p{i}", 1, j) for j in range(4)]
        lengths = [sequence_length(f"p{i}", 1, j, 4, 12) for j in range(4)]
        assert result.completion_tokens == sum(lengths)
    steps, spans, counts = server.snapshot()
    assert counts["sequences"] == 48 and counts["delivered"] == 12
    assert max(s.busy for s in steps) == 32  # 48 sequences at once: 32 run, the rest wait
    assert max(s.waiting for s in steps) == 16
    assert sum(span.end_step - span.start_step for span in spans) == sum(
        sequence_length(f"p{i}", 1, j, 4, 12) for i in range(12) for j in range(4)
    )
    assert utilisation(steps, spans, 32, steps[-1].t)["useful"] > 0


def test_a_client_that_hangs_up_aborts_its_sequences(server: SchedulingServer) -> None:
    server.slots = 1  # one long queue: the timeout hits requests still waiting
    config = ClientConfig(
        base_url=server.base_url, model="scripted", admission=False, timeout_s=0.5, max_retries=0
    )
    with ModelClient(config) as client:
        results = client.complete([f"a{i}" for i in range(6)], SamplingParams(n=2))
    assert any(r.error_kind == client_mod.EXHAUSTED for r in results)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, _, counts = server.snapshot()
        if counts.get("aborted", 0) + counts.get("delivered", 0) == 6:
            break
        time.sleep(0.1)
    assert counts["aborted"] == sum(not r.ok for r in results)


def test_admission_keeps_the_sequences_on_the_wire_near_the_slots(
    server: SchedulingServer,
) -> None:
    # 100 requests of n=4 (400 sequences) against 32 slots from one client; without admission
    # all 64 allowed requests (256 sequences) would be on the wire at once.
    config = ClientConfig(base_url=server.base_url, model="scripted", timeout_s=8.0)
    with ModelClient(config) as client:
        results = client.complete([f"w{i}" for i in range(100)], SamplingParams(n=4, seed=2))
        metrics = client.metrics.snapshot()
    steps, _, counts = server.snapshot()
    assert all(r.ok for r in results)
    assert counts.get("aborted", 0) == 0 and metrics["retries"] == 0
    # The limit follows the gauges: the queue stays a fraction of what the client held.
    assert max(s.busy + s.waiting for s in steps) < 256
    assert counts["metrics"] > 0


# -- the generation stages, four worker processes -------------------------------------------


def _seeds(count: int) -> list[Seed]:
    return [make_seed(i) for i in range(count)]


def _run_stages(server: SchedulingServer, out_dir: pathlib.Path) -> dict[str, list[dict]]:
    cfg = GenerationConfig(
        model="scripted",
        model_server_url=server.base_url,
        num_samples=SAMPLES,
        request_timeout_s=10 * server.mean_service_s,
    )
    with beam.Pipeline(options=PipelineOptions(FOUR_WORKERS)) as pipeline:
        concepts = pipeline | beam.Create(_seeds(ITEMS)) | ExtractConcepts(cfg)
        instructions = concepts.main | GenerateInstructions(cfg)
        responses = instructions.main | GenerateResponses(cfg)
        named = {"concepts": concepts, "instructions": instructions, "responses": responses}
        for stage, outputs in named.items():
            records = (outputs.main, outputs.rejected, outputs.errors)  # not the usage output
            for kind, pcoll in zip(("main", "rejected", "errors"), records, strict=True):
                _ = (
                    pcoll
                    | f"Json{stage}{kind}" >> beam.Map(lambda r: r.to_json())
                    | f"Write{stage}{kind}"
                    >> beam.io.WriteToText(f"{out_dir}/{stage}-{kind}", shard_name_template="")
                )
    return {
        path.name: [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in out_dir.iterdir()
    }


def _assert_complete(out: dict[str, list[dict]]) -> None:
    errors = {k: [r["error"] for r in v] for k, v in out.items() if k.endswith("errors") and v}
    assert errors == {}, errors
    seeds = {s.id for s in _seeds(ITEMS)}
    assert {r["id"] for r in out["concepts-main"]} == seeds
    assert {r["id"] for r in out["instructions-main"]} == seeds
    assert sorted(r["id"] for r in out["responses-main"]) == sorted(
        Sample.make_id(i, j) for i in seeds for j in range(SAMPLES)
    )
    assert all(not out[f"{stage}-rejected"] for stage in ("concepts", "instructions", "responses"))


def test_four_workers_finish_without_dead_letters_or_aborts(
    server: SchedulingServer, tmp_path: pathlib.Path
) -> None:
    out = _run_stages(server, tmp_path)
    _assert_complete(out)
    _, _, counts = server.snapshot()
    assert counts["delivered"] == ITEMS * 3  # one answered request per record and stage
    assert counts.get("aborted", 0) <= 0.01 * counts["requests"], counts


def test_four_workers_wait_through_a_15_s_outage_without_dead_letters(
    server: SchedulingServer, tmp_path: pathlib.Path
) -> None:
    seen: dict[str, int] = {}

    def outage_in_the_middle() -> None:
        while True:
            _, _, counts = server.snapshot()
            if counts.get("delivered", 0) >= ITEMS:  # S->C done or nearly: mid-run
                seen.update(counts)
                server.outage(15.0)
                return
            time.sleep(0.2)

    trigger = threading.Thread(target=outage_in_the_middle, daemon=True)
    trigger.start()
    out = _run_stages(server, tmp_path)
    trigger.join(timeout=1)
    _assert_complete(out)
    _, _, counts = server.snapshot()
    assert counts["outages"] == 1
    assert counts["delivered"] > seen["delivered"]  # work went on after the outage
    assert counts.get("failed", 0) > 0 or counts.get("aborted", 0) > 0  # it did hit requests
