"""Entry point: parses options, wires the stages, runs, writes report.json. Nothing else."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from beam_pipeline.config import STAGES, ConfigError, RunConfig
from beam_pipeline.core.decontam import BenchmarkUnavailable
from beam_pipeline.core.failures import failure_kind
from beam_pipeline.instructions_io import InstructionsError, check_instruction_files
from beam_pipeline.options import SelfCodeAlignOptions
from beam_pipeline.progress import show_worker_progress
from beam_pipeline.publish import PublishError, push_final
from beam_pipeline.records import Concepts, Execution, Instruction, Sample, Seed
from beam_pipeline.report import collect_metrics, write_report
from beam_pipeline.shards import clear_outputs
from beam_pipeline.stack_io import InputError
from beam_pipeline.stages.chains import FinalChain, SeedChain
from beam_pipeline.stages.common import (
    Accounting,
    ReadJsonl,
    StageOutputs,
    WriteJsonl,
    WriteStageOutputs,
)
from beam_pipeline.stages.concepts import ExtractConcepts
from beam_pipeline.stages.decontaminate import load_benchmark_items
from beam_pipeline.stages.execute import ExecuteSamples
from beam_pipeline.stages.instructions import GenerateInstructions
from beam_pipeline.stages.read import ReadSources
from beam_pipeline.stages.responses import GenerateResponses
from beam_pipeline.stages.user_instructions import ReadInstructions

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


def benchmark_items(config: RunConfig) -> list[Any]:
    """The decontamination benchmarks' items, loaded once on the launcher (a missing benchmark
    fails before any work starts); none when no stage that decontaminates runs."""
    if config.decontam is None or not (config.runs("seeds") or config.runs("final")):
        return []
    try:
        return load_benchmark_items(config.decontam)
    except BenchmarkUnavailable as exc:
        raise SystemExit(f"error: decontamination: {exc}") from exc


def run_inputs(config: RunConfig) -> list[str]:
    """What the run read: the user's instructions, the source shards, or the output of the
    stage before the one it started from."""
    if config.instructions:
        return list(config.instructions)
    if config.from_stage == STAGES[0]:
        return list(config.inputs)
    return [f"{config.output_dir}/{STAGES[STAGES.index(config.from_stage) - 1]}"]


def build(pipeline: beam.Pipeline, config: RunConfig, acct: Accounting) -> None:
    out, shards, gen = config.output_dir, config.num_shards, config.generation
    items = benchmark_items(config)

    def write(stage: str, outputs: StageOutputs) -> None:
        outputs | f"Write{stage.capitalize()}" >> WriteStageOutputs(out, stage, shards)

    def restart(stage: str) -> beam.PCollection:
        """The previous stage's output, read back, for a run that starts at `stage`."""
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
        seeds = files.main | "Seeds" >> SeedChain(config, acct, items)
        write("seeds", seeds)
        current = seeds.main

    if config.instructions:  # the user's instructions: the run starts at the responses stage
        given = pipeline | "ReadInstructions" >> ReadInstructions(list(config.instructions), acct)
        write("instructions", given)
        current = given.main

    for stage, transform in (
        ("concepts", ExtractConcepts),
        ("instructions", GenerateInstructions),
        ("responses", GenerateResponses),
    ):
        if not config.runs(stage):
            continue
        inputs = current if current is not None else restart(stage)
        result = inputs | transform.__name__ >> transform(gen)
        fan_out = gen.num_samples if stage == "responses" else 1
        acct.count_stage(stage, inputs, result, fan_out)
        write(stage, result)
        current = result.main

    if config.runs("execution"):
        inputs = current if current is not None else restart("execution")
        executed = inputs | "ExecuteSamples" >> ExecuteSamples(
            config.execution.sandbox_config(),
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
        final = inputs | "Final" >> FinalChain(config, acct, items)
        write("final", final.final)
        write("preference", final.preference)


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
            "inputs": run_inputs(config),
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
