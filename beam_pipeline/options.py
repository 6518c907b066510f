"""Command-line options: one PipelineOptions subclass, turned into frozen configs once."""

from __future__ import annotations

from importlib import resources

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.config import PARSERS, STAGES, RunConfig, SeedConfig
from beam_pipeline.core.seeds import DEFAULT_MAX_FILE_BYTES


def bundled_shard() -> str:
    """The default input: a Stack-format shard of the Python standard library."""
    return str(resources.files("beam_pipeline") / "data" / "stdlib-python.parquet")


class SelfCodeAlignOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("SelfCodeAlign")
        group.add_argument(
            "--input",
            action="append",
            default=None,
            help="Input: a parquet shard, glob or directory (local, gs://, hf://) or a directory "
            "of .py files. Repeat for several. Default: the bundled standard-library shard.",
        )
        group.add_argument(
            "--output_dir", default=None, help="Where every stage writes (required)."
        )
        group.add_argument(
            "--from_stage",
            choices=STAGES,
            default="seeds",
            help="First stage to run; earlier stages' outputs are read from --output_dir.",
        )
        group.add_argument("--to_stage", choices=STAGES, default="final", help="Last stage to run.")
        group.add_argument(
            "--num_shards",
            type=int,
            default=0,
            help="Exact number of JSONL shards per stage output (0: the runner decides).",
        )
        group.add_argument(
            "--parser",
            choices=PARSERS,
            default="auto",
            help="Seed extraction parser: ast (Python 3 only), tree_sitter, or auto (ast, then "
            "tree-sitter for files ast rejects, e.g. Python 2).",
        )
        group.add_argument(
            "--max_file_bytes",
            type=int,
            default=DEFAULT_MAX_FILE_BYTES,
            help="Files larger than this are rejected as too_large.",
        )
        group.add_argument(
            "--max_seeds",
            type=int,
            default=0,
            help="Keep at most this many seeds (a deterministic sample by id); 0 keeps all.",
        )
        group.add_argument(
            "--static_check",
            action="store_true",
            default=False,
            help="Keep only seeds on which Pyright reports no errors after autoimport.",
        )
        group.add_argument(
            "--static_check_batch",
            type=int,
            default=250,
            help="Seeds per Pyright run (a failed batch is bisected, never dropped).",
        )

    def to_config(self) -> RunConfig:
        opts = self.view_as(SelfCodeAlignOptions)
        inputs = tuple(opts.input) if opts.input else (bundled_shard(),)
        return RunConfig(
            inputs=inputs,
            output_dir=(opts.output_dir or "").rstrip("/"),
            from_stage=opts.from_stage,
            to_stage=opts.to_stage,
            num_shards=opts.num_shards,
            seeds=SeedConfig(
                parser=opts.parser,
                max_file_bytes=opts.max_file_bytes,
                static_check=opts.static_check,
                static_check_batch=opts.static_check_batch,
                max_seeds=opts.max_seeds,
            ),
        )
