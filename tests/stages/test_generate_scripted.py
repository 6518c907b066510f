"""Generation stages against the scripted server: faults, accounting, cache, determinism."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.config import GenerationConfig, GenerationConfigError
from beam_pipeline.core.prompting import rebuild_prompt
from beam_pipeline.records import Concepts, Instruction, Sample, Seed
from beam_pipeline.stages.concepts import ExtractConcepts
from beam_pipeline.stages.instructions import GenerateInstructions
from beam_pipeline.stages.judge import JudgeSeeds
from beam_pipeline.stages.responses import GenerateResponses
from model_server import managed
from tests.conftest import FNAPI, MULTIPROCESS
from tests.helpers import make_instruction, make_seed, seed_function
from tests.model_server.scripted import ScriptedServer

pytestmark = pytest.mark.timeout(300)  # generation on worker processes

N = 3


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(slow_s=2.5, hang_s=60.0) as srv:
        yield srv


def config(server: ScriptedServer, **kw: object) -> GenerationConfig:
    settings = dict(
        model="scripted",
        model_server_url=server.base_url,
        num_samples=N,
        max_new_tokens=64,
        max_in_flight=8,
        batch_size=4,
        request_timeout_s=1.0,
        max_retries=3,
    )
    settings.update(kw)
    return GenerationConfig(**settings)


FAULT_CASES = {
    # instruction text -> (sample indexes kept, rejection reason for the others, dead letter?)
    "Write a.": (range(N), None, False),
    "Write b. FAULT:500x2": (range(N), None, False),
    "Write c. FAULT:429": (range(N), None, False),
    "Write d. FAULT:TIMEOUT": (range(N), None, False),
    "Write e. FAULT:DROP": (range(N), None, False),
    "Write f. FAULT:MALFORMED": (range(N), None, False),
    "Write g. FAULT:LENGTH": ((), "length_truncated", False),
    "Write h. FAULT:FEWER": (range(N - 1), "missing_choice", False),
    "Write i. FAULT:400": ((), None, True),
    "Write j. FAULT:ALWAYS500": ((), None, True),
    "Write k. FAULT:NOTESTS": ((), "missing_tests", False),
    "Write l. FAULT:NOCLOSE": ((), "unparseable", False),
    "Write m. FAULT:EMPTY": ((), "empty", False),
}


def test_responses_every_input_ends_once_as_sample_rejection_or_dead_letter(
    server: ScriptedServer,
) -> None:
    items = [make_instruction(i, text) for i, text in enumerate(FAULT_CASES)]
    want_main, want_rejected, want_errors = [], [], []
    for item, (kept, reason, dead) in zip(items, FAULT_CASES.values(), strict=True):
        if dead:
            want_errors.append(item.id)
            continue
        want_main += [Sample.make_id(item.id, j) for j in kept]
        want_rejected += [
            (Sample.make_id(item.id, j), reason) for j in range(N) if j not in set(kept)
        ]
    with TestPipeline(options=PipelineOptions(FNAPI)) as pipeline:
        out = pipeline | beam.Create(items) | GenerateResponses(config(server, max_retries=2))
        assert_that(out.main | "Ids" >> beam.Map(lambda s: s.id), equal_to(want_main))
        assert_that(
            out.rejected | "Reasons" >> beam.Map(lambda r: (r.id, r.reason)),
            equal_to(want_rejected),
            label="Rejected",
        )
        assert_that(
            out.errors | "ErrIds" >> beam.Map(lambda d: d.id), equal_to(want_errors), label="Errors"
        )
        assert_that(
            out.errors | "ErrText" >> beam.Map(lambda d: "maximum context length" in d.error
                                               or "gave up" in d.error),
            equal_to([True, True]),
            label="ErrorMessages",
        )  # fmt: skip


def test_samples_carry_every_field(server: ScriptedServer) -> None:
    item = make_instruction(1, "Write x.")
    with TestPipeline(options=PipelineOptions(FNAPI)) as pipeline:
        out = pipeline | beam.Create([item]) | GenerateResponses(config(server))

        def check(sample: Sample) -> bool:
            sampling = json.loads(sample.sampling)
            return (
                sample.seed == item.seed
                and sample.sha1 == item.sha1
                and sample.concepts == item.concepts
                and sample.instruction == item.instruction
                and sample.instruction_id == item.id
                and sample.model == "scripted"
                and sample.response.startswith("Return a constant.")
                and sample.tests.startswith("```python\nassert ")
                and "</response>" in sample.raw_response
                and sample.response_prompt.endswith("\nWrite x.\n</instruction>\n\n<response>")
                and sample.response_prompt_mode == "completion"
                and sampling["n"] == N
                and sampling["seed"] is not None
                and sampling["stop"] == ["## Example", "</tests>"]
            )  # fmt: skip

        assert_that(out.main | beam.Map(check), equal_to([True] * N))


def _chain(
    pipeline: beam.Pipeline, seeds: list[Seed], cfg: GenerationConfig, out_dir: str, gate: bool
) -> None:
    created = pipeline | beam.Create(seeds)
    judged = created | JudgeSeeds(cfg)
    # gate=False: the judge's verdicts are recorded but every seed goes on to S->C.
    concepts = (judged.main if gate else created) | ExtractConcepts(cfg)
    instructions = concepts.main | GenerateInstructions(cfg)
    responses = instructions.main | GenerateResponses(cfg)
    named = {
        "judge": judged,
        "concepts": concepts,
        "instructions": instructions,
        "responses": responses,
    }
    for stage, outputs in named.items():
        parts = (outputs.main, outputs.rejected, outputs.errors)
        for kind, pcoll in zip(("main", "rejected", "errors"), parts, strict=True):
            _ = (
                pcoll
                | f"Json{stage}{kind}" >> beam.Map(lambda r: r.to_json())
                | f"Write{stage}{kind}"
                >> beam.io.WriteToText(f"{out_dir}/{stage}-{kind}", shard_name_template="-SSSSS")
            )


def _read(out_dir: pathlib.Path) -> dict[str, list[dict]]:
    result: dict[str, list[dict]] = {}
    for path in sorted(out_dir.glob("*-*-*")):
        name = path.name.rsplit("-", 1)[0]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        result.setdefault(name, []).extend(rows)
    return {k: sorted(v, key=lambda r: r["id"]) for k, v in result.items()}


def run_chain(
    seeds: list[Seed],
    cfg: GenerationConfig,
    out_dir: pathlib.Path,
    argv: list[str],
    gate: bool = True,
) -> dict:
    with beam.Pipeline(options=PipelineOptions(argv)) as pipeline:
        _chain(pipeline, seeds, cfg, str(out_dir), gate)
    return _read(out_dir)


def test_chain_accounts_for_every_seed(server: ScriptedServer, tmp_path: pathlib.Path) -> None:
    seeds = [make_seed(i) for i in range(6)] + [
        make_seed(10, seed=seed_function(10, " BADDOC")),
        make_seed(11, seed=seed_function(11, " FAULT:400")),
    ]
    out = run_chain(seeds, config(server), tmp_path, FNAPI)
    ids = lambda key: [r["id"] for r in out.get(key, [])]  # noqa: E731
    judged_ok = {s.id for s in seeds[:6]}
    assert set(ids("judge-main")) == judged_ok
    assert [(r["id"], r["reason"]) for r in out["judge-rejected"]] == [
        (seeds[6].id, "docstring_rejected")
    ]
    assert ids("judge-errors") == [seeds[7].id]
    assert set(ids("concepts-main")) == judged_ok
    assert set(ids("instructions-main")) == judged_ok
    assert sorted(ids("responses-main")) == sorted(
        Sample.make_id(i, j) for i in judged_ok for j in range(N)
    )
    for key in (
        "concepts-rejected",
        "concepts-errors",
        "instructions-rejected",
        "responses-rejected",
    ):
        assert ids(key) == []
    concept = Concepts.from_dict(out["concepts-main"][0])
    assert out["concepts-main"][0]["concepts"][1:] == ["loops", "recursion"]  # a JSON list
    assert concept.concepts[0].startswith("concept ") and concept.concepts_prompt.endswith(
        "### Concepts"
    )
    instr = Instruction.from_dict(out["instructions-main"][0])
    assert instr.category in ("function", "class", "program") and instr.instruction
    assert instr.concepts == concept.concepts or instr.id != concept.id
    sample = Sample.from_dict(out["responses-main"][0])
    assert sample.seed and sample.concepts and sample.instruction and sample.concepts_prompt
    # No record stores a prompt: only the few-shot ids they were built from.
    for key in ("concepts-main", "instructions-main", "responses-main"):
        assert not any(name.endswith("_prompt") for row in out[key] for name in row)


def test_prompts_rebuilt_from_records_are_the_prompts_sent(
    server: ScriptedServer, tmp_path: pathlib.Path
) -> None:
    seeds = [make_seed(i, seed=seed_function(i, " rebuild")) for i in range(5)]
    server.reset_counts()
    out = run_chain(
        seeds, config(server, concepts_k=3, instruction_k=2, response_k=2), tmp_path, FNAPI
    )
    sent = set(server.prompts_seen)
    concepts = [Concepts.from_dict(r) for r in out["concepts-main"]]
    instructions = [Instruction.from_dict(r) for r in out["instructions-main"]]
    samples = [Sample.from_dict(r) for r in out["responses-main"]]
    assert len(concepts) == len(instructions) == 5 and len(samples) == 5 * N
    rebuilt = {
        "concepts": {c.concepts_prompt for c in concepts},
        "instructions": {i.instruction_prompt for i in instructions},
        "responses": {s.response_prompt for s in samples},
        "judge": {rebuild_prompt(s, "judge", judge_k=7) for s in seeds},
    }
    assert all(len(c.concepts_examples) == 3 for c in concepts)
    assert all(len(s.response_examples) == 2 for s in samples)
    for stage, prompts in rebuilt.items():
        assert len(prompts) == 5, stage
        assert prompts <= sent, stage
    # Every prompt the server saw is one of them (a sample's later records rebuild the same).
    assert sent == set().union(*rebuilt.values())
    assert {s.concepts_prompt for s in samples} == rebuilt["concepts"]


def test_chat_mode_sends_the_few_shot_content_as_chat_turns(
    server: ScriptedServer, tmp_path: pathlib.Path
) -> None:
    seeds = [make_seed(i, seed=seed_function(i, " chat")) for i in range(3)]
    seeds.append(make_seed(9, seed=seed_function(9, " FAULT:ECHO")))  # replies repeat the opener
    server.reset_counts()
    cfg = config(server, prompt_mode="chat", concepts_k=3, instruction_k=2, response_k=1)
    out = run_chain(seeds, cfg, tmp_path, FNAPI)
    assert {path for path, _ in server.requests_seen} == {"/v1/chat/completions"}
    sent = [body["messages"] for _, body in server.requests_seen]
    assert not any("prompt" in body for _, body in server.requests_seen)
    for messages in sent:
        roles = [m["role"] for m in messages]
        pairs = (len(roles) - 2) // 2
        assert roles == ["system", *["user", "assistant"] * pairs, "user"], roles
        assert not any("## Example" in m["content"] for m in messages)
    samples = [Sample.from_dict(r) for r in out["responses-main"]]
    # Every seed, the echoing one included, makes it through all four stages.
    assert len(samples) == 4 * N and not out.get("responses-rejected")
    assert {s.response_prompt_mode for s in samples} == {"chat"}
    assert {s.concepts_prompt_mode for s in samples} == {s.instruction_prompt_mode for s in samples}
    assert {s.concepts_prompt_mode for s in samples} == {"chat"}
    # The records rebuild the very messages sent, at every stage.
    rebuilt = [s.response_prompt for s in samples] + [s.instruction_prompt for s in samples]
    rebuilt += [s.concepts_prompt for s in samples]
    rebuilt += [rebuild_prompt(s, "judge", judge_k=7, mode="chat") for s in seeds]
    assert all(messages in sent for messages in rebuilt)
    assert len(sent) == 4 * len(seeds)
    # The judge's chat reply starts with its opener: it gets room for it beyond the answer.
    judge_tokens = {
        body["max_tokens"]
        for _, body in server.requests_seen
        if body["messages"][-1]["content"].startswith("### Function")
    }
    assert judge_tokens == {16}
    # The echoing seed's judge answer and concepts were read after the repeated opener.
    echoed = [s for s in samples if "ECHO" in s.seed]
    assert echoed and all(s.concepts[0].startswith("concept ") for s in echoed)
    assert all(s.response.startswith("Return a constant.") for s in samples)
    # The same seed's completion-mode prompt is one text with the same content.
    completion = rebuild_prompt(samples[0], "responses", mode="completion")
    assert isinstance(completion, str)
    assert all(m["content"] in completion for m in samples[0].response_prompt)


def test_chat_replies_that_repeat_the_opener_parse_like_the_others(server: ScriptedServer) -> None:
    items = [make_instruction(1, "Write y."), make_instruction(2, "Write z. FAULT:ECHO")]
    with TestPipeline(options=PipelineOptions(FNAPI)) as pipeline:
        out = pipeline | beam.Create(items) | GenerateResponses(config(server, prompt_mode="chat"))
        parsed = out.main | beam.Map(
            lambda s: (s.instruction_id, s.raw_response.startswith("<response>"), s.response)
        )
        assert_that(
            parsed | beam.Map(lambda t: (t[0], t[1], t[2].startswith("Return a constant."))),
            equal_to([(items[0].id, False, True)] * N + [(items[1].id, True, True)] * N),
        )


def test_rerun_with_cache_sends_no_generation_request(
    server: ScriptedServer, tmp_path: pathlib.Path
) -> None:
    cfg = config(server, cache_dir=str(tmp_path / "cache"))
    seeds = [make_seed(i) for i in range(4)]
    first = run_chain(seeds, cfg, tmp_path / "first", FNAPI)
    before = server.generation_requests
    second = run_chain(seeds, cfg, tmp_path / "second", FNAPI)
    assert server.generation_requests == before
    assert first == second
    assert len(first["responses-main"]) == 4 * N


def test_same_outputs_on_one_worker_and_two_worker_processes(
    server: ScriptedServer, tmp_path: pathlib.Path
) -> None:
    seeds = [make_seed(i) for i in range(8)]
    cfg = config(server)
    one = run_chain(seeds, cfg, tmp_path / "one", FNAPI)
    two = run_chain(seeds, cfg, tmp_path / "two", MULTIPROCESS)
    assert one == two
    assert len(one["responses-main"]) == 8 * N


def test_different_batch_sizes_give_the_same_prompts(
    server: ScriptedServer, tmp_path: pathlib.Path
) -> None:
    seeds = [make_seed(i) for i in range(5)]
    a = run_chain(seeds, config(server, batch_size=1), tmp_path / "a", FNAPI)
    b = run_chain(seeds, config(server, batch_size=16, max_in_flight=2), tmp_path / "b", FNAPI)
    assert a == b


def test_dead_engine_turns_pending_work_into_dead_letters(tmp_path: pathlib.Path) -> None:
    items = [make_instruction(0, "Write z. FAULT:DEAD")] + [
        make_instruction(i, f"w{i}") for i in range(1, 6)
    ]
    with ScriptedServer(hang_s=120.0) as srv:
        cfg = config(
            srv, request_timeout_s=300.0, max_in_flight=1, batch_size=1, health_interval_s=0.5,
            engine_down_max_s=2.0,
        )  # fmt: skip
        with TestPipeline(options=PipelineOptions(FNAPI)) as pipeline:
            out = pipeline | beam.Create(items) | GenerateResponses(cfg)
            assert_that(
                out.errors | beam.Map(lambda d: (d.id, d.error.split(":")[0])),
                equal_to([(item.id, "engine_dead") for item in items]),
            )
            assert_that(out.main, equal_to([]), label="NoSamples")


def test_managed_server_mode_starts_and_stops_a_server_per_worker(tmp_path: pathlib.Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    cfg = GenerationConfig(
        model=str(model_dir),
        served_model_name="stand-in",
        server_launcher=(sys.executable, "-m", "tests.model_server.scripted"),
        server_linger_s=0,
        num_samples=2,
    )
    seeds = [make_seed(i) for i in range(3)]
    out = run_chain(seeds, cfg, tmp_path / "out", FNAPI)
    assert len(out["responses-main"]) == 3 * 2
    assert {r["model"] for r in out["responses-main"]} == {"stand-in"}
    assert managed._SERVERS == {}  # teardown released and stopped it
    managed.shutdown_all()


def test_config_validation() -> None:
    with pytest.raises(GenerationConfigError, match="prompt_mode"):
        GenerationConfig(prompt_mode="instruct")
    with pytest.raises(GenerationConfigError):
        GenerationConfig(num_samples=0)
    with pytest.raises(GenerationConfigError):
        GenerationConfig(model_server_url="localhost:8000")
    with pytest.raises(GenerationConfigError):
        GenerationConfig(top_p=0)
