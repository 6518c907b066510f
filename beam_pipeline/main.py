"""Entry point: parses options, wires the stages, runs, writes report.json. Nothing else."""

from __future__ import annotations

import json
import logging
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pipeline.config import ConfigError, RunConfig
from beam_pipeline.options import SelfCodeAlignOptions
from beam_pipeline.records import Seed
from beam_pipeline.report import collect_metrics, write_report
from beam_pipeline.stages.common import Accounting, ReadJsonl, WriteJsonl, WriteStageOutputs
from beam_pipeline.stages.read import ReadSources
from beam_pipeline.stages.seeds import ExtractSeeds

log = logging.getLogger("beam_pipeline")


def _runner(options: PipelineOptions) -> object | None:
    """DirectRunner means Beam's local portable engine here; its Prism attempt is skipped
    because Prism downloads a binary at start-up."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None


def build(pipeline: beam.Pipeline, config: RunConfig, accounting: Accounting) -> None:
    out = config.output_dir
    seeds = None
    if config.runs("seeds"):
        files = pipeline | "ReadSources" >> ReadSources(list(config.inputs), accounting)
        files.errors | "WriteReadErrors" >> WriteJsonl(f"{out}/errors/read", 1)
        result = files.main | "ExtractSeeds" >> ExtractSeeds(config.seeds, accounting)
        result | "WriteSeeds" >> WriteStageOutputs(out, "seeds", config.num_shards)
        seeds = result.main
    elif config.runs("concepts"):
        seeds = pipeline | "ReadSeeds" >> ReadJsonl(f"{out}/seeds", Seed)
    del seeds  # later stages consume it


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Runs the pipeline; returns the report. Exit code 2 on bad options."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    options = SelfCodeAlignOptions(argv if argv is not None else sys.argv[1:])
    try:
        config = options.to_config()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from exc
    accounting = Accounting()
    started = time.time()
    if test_pipeline is not None:
        pipeline = test_pipeline
    else:
        pipeline = beam.Pipeline(runner=_runner(options), options=options)
    build(pipeline, config, accounting)
    accounting.write(pipeline, f"{config.output_dir}/_run/counts")
    result = pipeline.run()
    result.wait_until_finish()
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
        k: {kk: vv for kk, vv in v.items() if kk != "rejected_by_reason"}
        for k, v in report["stages"].items()
    }
    log.info("stages: %s", json.dumps(summary))
    if not report["invariant_ok"]:
        log.error("accounting invariant violated: %s", "; ".join(report["problems"]))
    log.info("report: %s/report.json", config.output_dir)
    return report
