"""Entry point: parses options, wires the stages, runs, writes report.json. Nothing else."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from beam_pipeline.config import STAGES, ConfigError, RunConfig
from beam_pipeline.core.decontam import BenchmarkUnavailable
from beam_pipeline.core.failures import failure_kind
from beam_pipeline.core.selection import code_representation
from beam_pipeline.instructions_io import InstructionsError, check_instruction_files
from beam_pipeline.options import SelfCodeAlignOptions
from beam_pipeline.progress import show_worker_progress
from beam_pipeline.publish import PublishError, push_final
from beam_pipeline.records import Concepts, Execution, Instruction, Sample, Seed
from beam_pipeline.report import collect_metrics, write_report
from beam_pipeline.shards import clear_outputs
from beam_pipeline.stack_io import InputError
from beam_pipeline.stages.common import (
    Accounting,
    ReadJsonl,
    StageOutputs,
    WriteJsonl,
    WriteStageOutputs,
    merge_outputs,
)
from beam_pipeline.stages.concepts import ExtractConcepts
from beam_pipeline.stages.cross_check import CrossCheck
from beam_pipeline.stages.decontaminate import Decontaminate, load_benchmark_items
from beam_pipeline.stages.dedup import NearDedup
from beam_pipeline.stages.execute import DEFAULT_SANDBOX, ExecuteSamples
from beam_pipeline.stages.instructions import GenerateInstructions
from beam_pipeline.stages.judge import JudgeSeeds
from beam_pipeline.stages.preference import PairPreferences
from beam_pipeline.stages.read import ReadSources
from beam_pipeline.stages.responses import GenerateResponses
from beam_pipeline.stages.seeds import ExtractSeeds, SampleSeeds
from beam_pipeline.stages.select import SelectSamples, ShowTestsInInstruction
from beam_pipeline.stages.stats import AttachExecutionStats
from beam_pipeline.stages.user_instructions import ReadInstructions
from sandbox_image import SandboxConfig

log = logging.getLogger("beam_pipeline")

# The record each stage writes, for restarting from its output.
STAGE_RECORDS = {
    "seeds": Seed,
    "concepts": Concepts,
    "instructions": Instruction,
    "responses": Sample,
    "execution": Execution,
}


def _runner(options: PipelineOptions) -> object | None:
    """DirectRunner means Beam's local portable engine here; its Prism attempt is skipped
    because Prism downloads a binary at start-up."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None


def instruction_and_response(record: object) -> str:
    """Method.md §4: the benchmark strings are searched in instruction + response."""
    return f"{record.instruction}\n{record.response}"  # type: ignore[attr-defined]


def build(pipeline: beam.Pipeline, config: RunConfig, acct: Accounting) -> None:
    out = config.output_dir
    shards = config.num_shards
    gen = config.generation
    decontam = config.decontam if config.runs("seeds") or config.runs("final") else None
    try:  # loaded once, on the launcher: a missing benchmark fails before any work starts
        items = load_benchmark_items(decontam) if decontam is not None else []
    except BenchmarkUnavailable as exc:
        raise SystemExit(f"error: decontamination: {exc}") from exc

    def write(stage: str, outputs: StageOutputs, count_out: bool = False) -> None:
        outputs | f"Write{stage.capitalize()}" >> WriteStageOutputs(out, stage, shards)
        if count_out:  # composite stages count their steps; their total output counts here
            acct.count(outputs.main, stage, "out")

    def restart(stage: str) -> beam.PCollection:
        previous = STAGES[STAGES.index(stage) - 1]
        try:
            return pipeline | f"Read{previous.capitalize()}" >> ReadJsonl(
                f"{out}/{previous}", STAGE_RECORDS[previous]
            )
        except FileNotFoundError as exc:
            raise SystemExit(
                f"error: --from_stage {stage} reads the {previous} stage's output: {exc}"
            ) from exc

    current: beam.PCollection | None = None
    if config.runs("seeds"):
        files = pipeline | "ReadSources" >> ReadSources(list(config.inputs), acct)
        files.errors | "WriteReadErrors" >> WriteJsonl(f"{out}/errors/read", shards)
        steps = [files.main | "ExtractSeeds" >> ExtractSeeds(config.seeds, acct)]
        if items:
            steps.append(
                steps[-1].main
                | "DecontaminateSeeds"
                >> Decontaminate(
                    "seeds.decontaminate", "seed", decontam, items=items, accounting=acct
                )
            )
        if config.seeds.dedup_threshold > 0:
            steps.append(
                steps[-1].main
                | "NearDedupSeeds"
                >> NearDedup(
                    "seeds.near_dedup",
                    "seed",
                    config.seeds.dedup_threshold,
                    max_rounds=config.dedup_max_rounds,
                    accounting=acct,
                )
            )
        if config.seeds.max_seeds:
            steps.append(
                steps[-1].main | "SampleSeeds" >> SampleSeeds(config.seeds.max_seeds, acct)
            )
        if config.seeds.judge:
            judged = steps[-1].main | "JudgeSeeds" >> JudgeSeeds(gen)
            acct.count_stage("seeds.judge", steps[-1].main, judged)
            steps.append(judged)
        seeds = merge_outputs("AllSeedSteps", *steps)
        write("seeds", seeds, count_out=True)
        current = seeds.main

    for stage, transform in (
        ("concepts", ExtractConcepts),
        ("instructions", GenerateInstructions),
        ("responses", GenerateResponses),
    ):
        if not config.runs(stage):
            continue
        if current is None and stage == "responses" and config.instructions:
            given = pipeline | "ReadInstructions" >> ReadInstructions(
                list(config.instructions), acct
            )
            given | "WriteInstructions" >> WriteStageOutputs(out, "instructions", shards)
            current = given.main
        inputs = current if current is not None else restart(stage)
        result = inputs | transform.__name__ >> transform(gen)
        fan_out = gen.num_samples if stage == "responses" else 1
        acct.count_stage(stage, inputs, result, fan_out)
        write(stage, result)
        current = result.main

    if config.runs("execution"):
        inputs = current if current is not None else restart("execution")
        executed = inputs | "ExecuteSamples" >> ExecuteSamples(
            sandbox_config(config),
            config.execution.workers,
            config.execution.cache_dir,
            accounting=acct,
        )
        acct.count_by(
            executed.main, "execution", lambda e: f"{e.category}/{e.difficulty}/{e.status}"
        )
        acct.count_by(
            executed.main,
            "execution",
            lambda e: failure_kind(e.status, e.stderr, e.exit_code, e.signal),
            what="failures",
        )
        write("execution", executed)
        current = executed.main

    if config.runs("final"):
        inputs = current if current is not None else restart("final")
        cross = None
        if config.final.cross_check:
            cross = inputs | "CrossCheck" >> CrossCheck(
                sandbox_config(config),
                config.execution.workers,
                config.execution.cache_dir,
                accounting=acct,
            )
        steps = [
            inputs
            | "SelectSamples"
            >> SelectSamples(acct, cross.main if cross else None, select_by=config.final.select_by)
        ]
        if config.final.dedup_threshold > 0:
            steps.append(
                steps[-1].main
                | "NearDedupFinal"
                >> NearDedup(
                    "final.near_dedup",
                    ["instruction", "response", code_representation_of],
                    config.final.dedup_threshold,
                    config.final.num_perm,
                    max_rounds=config.dedup_max_rounds,
                    accounting=acct,
                )
            )
        if config.final.tests_in_instruction > 0:
            # After the dedup passes (which compare the method's instructions) and before
            # decontamination (which must see the text that is written).
            steps.append(
                steps[-1].main
                | "TestsInInstruction"
                >> ShowTestsInInstruction(config.final.tests_in_instruction, acct)
            )
        if items:
            steps.append(
                steps[-1].main
                | "DecontaminateFinal"
                >> Decontaminate(
                    "final.decontaminate",
                    instruction_and_response,
                    decontam,
                    items=items,
                    accounting=acct,
                )
            )
        # Every final pair with its instruction's execution statistics (and failing samples,
        # which the preference pairs take their rejected side from).
        with_stats = steps[-1].main | "ExecutionStats" >> AttachExecutionStats(
            inputs, acct, cross_checked=cross is not None
        )
        final = with_stats.main | "FinalPairs" >> beam.Map(lambda pair_stats: pair_stats[0])
        steps.append(StageOutputs(final, with_stats.rejected, with_stats.errors))
        side = [cross] if cross is not None else []
        write("final", merge_outputs("AllFinalSteps", *side, *steps), count_out=True)

        preference = [with_stats.main | "PairPreferences" >> PairPreferences(acct)]
        if items:
            preference.append(
                preference[-1].main
                | "DecontaminatePreference"
                >> Decontaminate(
                    "preference.decontaminate",
                    preference_texts,
                    decontam,
                    items=items,
                    accounting=acct,
                )
            )
        write("preference", merge_outputs("AllPreferenceSteps", *preference), count_out=True)


def preference_texts(record: object) -> str:
    """What the final dataset is searched in (method.md §4), plus the rejected response."""
    return f"{record.instruction}\n{record.chosen}\n{record.rejected}"  # type: ignore[attr-defined]


def sandbox_config(config: RunConfig) -> SandboxConfig:
    return dataclasses.replace(
        DEFAULT_SANDBOX,
        timeout_s=config.execution.timeout_s,
        memory_mb=config.execution.memory_mb,
        backend=config.execution.backend,
    )


def code_representation_of(record: object) -> str:
    return code_representation(record.response)  # type: ignore[attr-defined]


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Runs the pipeline; returns the report. Exits with a message on bad options."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    show_worker_progress()
    options = SelfCodeAlignOptions(argv if argv is not None else sys.argv[1:])
    try:
        config = options.to_config()
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    if config.instructions:
        try:  # on the launcher: a file without an 'instruction' column stops the run here
            files = check_instruction_files(list(config.instructions))
        except InstructionsError as exc:
            raise SystemExit(f"error: {exc}") from exc
        config = dataclasses.replace(config, instructions=tuple(files))
    accounting = Accounting()
    started = time.time()
    if not options.view_as(TestOptions).dry_run:
        # Before the job: a stage's directory then only ever holds this run's shards.
        written = [s for s in STAGES if config.runs(s)]
        written += ["preference"] if config.runs("final") else []
        clear_outputs(
            config.output_dir, written + (["instructions"] if config.instructions else [])
        )
    if test_pipeline is not None:
        pipeline = test_pipeline
    else:
        pipeline = beam.Pipeline(runner=_runner(options), options=options)
    try:
        build(pipeline, config, accounting)
    except InputError as exc:  # the launcher's input check: nothing was submitted
        raise SystemExit(f"error: {exc}") from exc
    accounting.write(pipeline, f"{config.output_dir}/_run/counts")
    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        job = getattr(result, "job", None)
        steps = len(job.proto.steps) if job is not None and hasattr(job, "proto") else None
        log.info("dry run: the job graph was built and validated, nothing was submitted")
        return {"dry_run": True, "invariant_ok": True, "steps": steps, "stages": {}}
    report = write_report(
        config.output_dir,
        {
            "from_stage": config.from_stage,
            "to_stage": config.to_stage,
            "inputs": list(config.inputs),
            "wall_s": round(time.time() - started, 2),
        },
        collect_metrics(result),
    )
    summary = {
        k: {kk: vv for kk, vv in v.items() if kk not in ("rejected_by_reason", "by_group")}
        for k, v in report["stages"].items()
    }
    log.info("stages: %s", json.dumps(summary))
    if not report["invariant_ok"]:
        log.error("accounting invariant violated: %s", "; ".join(report["problems"]))
    log.info("report: %s/report.json and report.html", config.output_dir)
    repo_id = options.push_to_hub
    if repo_id and not config.runs("final"):
        log.warning("--push_to_hub ignored: this run did not write final/")
    elif repo_id:
        try:
            push_final(config.output_dir, repo_id, report, options.hub_private)
        except PublishError as exc:
            raise SystemExit(f"error: {exc}") from exc
        report["pushed_to"] = repo_id
    return report
