"""Command-line options: one PipelineOptions subclass, turned into frozen configs once."""

from __future__ import annotations

from importlib import resources

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import stack_io
from beam_pipeline.config import (
    PARSERS,
    PROMPT_MODES,
    STAGES,
    ExecutionConfig,
    FinalConfig,
    GenerationConfig,
    RunConfig,
    SeedConfig,
)
from beam_pipeline.core.decontam import DecontamConfig
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
            "--instructions",
            action="append",
            default=None,
            metavar="PATH",
            help="Your own instructions instead of generated ones: JSONL or parquet files "
            "(path, glob or directory; any fsspec URL) with an 'instruction' column "
            "('category', 'difficulty' used when present, other columns kept as provenance). "
            "The run starts at the responses stage. Repeat for several.",
        )
        group.add_argument(
            "--hf_token_secret",
            default=None,
            metavar="SECRET_VERSION",
            help="Secret Manager secret version holding a Hugging Face token for hf:// input "
            "(The Stack is gated), e.g. projects/P/secrets/hf-token/versions/latest; each "
            "worker fetches it once. Without it or --hf_token, workers use their own HF_TOKEN "
            "or cached login.",
        )
        group.add_argument(
            "--hf_token",
            default=None,
            help="A Hugging Face token for hf:// input, passed to the workers in the job's "
            "options (visible to whoever can view the job: prefer --hf_token_secret).",
        )
        group.add_argument(
            "--read_rows_per_task",
            type=int,
            default=stack_io.ROWS_PER_TASK,
            help="Parquet row groups with more rows are split into row ranges read as separate "
            f"tasks (at most {stack_io.MAX_RANGES_PER_GROUP} per row group).",
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
            "--push_to_hub",
            default=None,
            metavar="REPO_ID",
            help="After a run that wrote final/, upload its shards and a dataset card to this "
            "Hugging Face dataset repo (created if missing; token from HF_TOKEN or the cached "
            "login).",
        )
        group.add_argument(
            "--hub_private",
            action="store_true",
            help="Create the --push_to_hub repo as private.",
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

        gen = parser.add_argument_group("generation (method.md §2)")
        gen.add_argument(
            "--model",
            default="smollm2",
            help="Served model name when --model_server_url is given; otherwise "
            "the model each worker serves itself: smollm2, qwen-coder-0.5b, a "
            "prepared folder or a hub id.",
        )
        gen.add_argument(
            "--model_server_url",
            default=None,
            help="An OpenAI-compatible server shared by all workers, e.g. "
            "http://127.0.0.1:8000/v1. Without it each worker starts its own vLLM.",
        )
        gen.add_argument("--temperature", type=float, default=0.7)
        gen.add_argument("--top_p", type=float, default=1.0)
        gen.add_argument("--max_new_tokens", type=int, default=1536)
        gen.add_argument(
            "--num_samples",
            type=int,
            default=10,
            help="Responses sampled per instruction (I->R n).",
        )
        gen.add_argument("--concepts_k", type=int, default=8, help="Few-shot examples for S->C.")
        gen.add_argument("--instruction_k", type=int, default=8, help="Few-shot examples for C->I.")
        gen.add_argument("--response_k", type=int, default=1, help="Few-shot examples for I->R.")
        gen.add_argument(
            "--judge_seeds",
            action="store_true",
            default=False,
            help="Run the docstring quality judge on seeds (the same model).",
        )
        gen.add_argument("--judge_k", type=int, default=7)
        gen.add_argument(
            "--prompt_mode",
            choices=PROMPT_MODES,
            default="completion",
            help="completion (the method's few-shot prompts on /v1/completions, for base "
            "models) or chat (the same few-shot content as chat turns on /v1/chat/completions, "
            "with the model's own chat template, for instruct models).",
        )
        gen.add_argument(
            "--no_request_seeds",
            action="store_true",
            default=False,
            help="Do not send the per-item sampler seed with requests.",
        )
        gen.add_argument(
            "--max_in_flight", type=int, default=64, help="Concurrent requests per worker process."
        )
        gen.add_argument(
            "--batch_size",
            type=int,
            default=16,
            help="Records per batch handed to a model-calling DoFn.",
        )
        gen.add_argument("--request_timeout_s", type=float, default=900.0)
        gen.add_argument(
            "--engine_down_max_s",
            type=float,
            default=1800.0,
            help="How long requests wait for a model server that is down before they fail.",
        )
        gen.add_argument(
            "--no_admission_control",
            action="store_true",
            default=False,
            help="Send up to --max_in_flight requests per process without the adaptive limit.",
        )
        gen.add_argument("--max_retries", type=int, default=6)
        gen.add_argument(
            "--max_model_len", type=int, default=4096, help="Context window of a managed server."
        )
        gen.add_argument("--cpu_kvcache_gib", type=float, default=2.0)
        gen.add_argument("--tensor_parallel_size", type=int, default=1)
        gen.add_argument("--gpu_memory_utilization", type=float, default=None)
        gen.add_argument("--max_num_seqs", type=int, default=None)

        exe = parser.add_argument_group("execution (method.md §3)")
        exe.add_argument("--exec_timeout_s", type=float, default=10.0)
        exe.add_argument("--exec_memory_mb", type=int, default=4096)
        exe.add_argument(
            "--sandbox_backend",
            choices=("auto", "bwrap", "rlimits"),
            default="auto",
            help="bwrap (namespaces) or rlimits (weaker; for hosts without user "
            "namespaces); auto picks bwrap when it works.",
        )
        exe.add_argument(
            "--exec_workers",
            type=int,
            default=None,
            help="Sandbox supervisors per tier per worker process (default: twice the CPU count).",
        )

        sel = parser.add_argument_group("dedup, decontamination, cache (method.md §1, §4)")
        sel.add_argument(
            "--seed_dedup_threshold",
            type=float,
            default=0.5,
            help="MinHash near-dedup threshold for seeds (0 turns it off).",
        )
        sel.add_argument(
            "--final_dedup_threshold",
            type=float,
            default=0.7,
            help="Near-dedup threshold for final pairs (instruction, response, "
            "code), 0 turns it off.",
        )
        sel.add_argument("--num_perm", type=int, default=250)
        sel.add_argument(
            "--dedup_max_rounds",
            type=int,
            default=6,
            help="Connected-component rounds unrolled in each near-dedup pass; what is still "
            "unsettled after them is finished exactly in one step (counted as "
            "components_leftover_nodes), so the result does not depend on it. Each round adds "
            "a fixed cost to a run.",
        )
        sel.add_argument(
            "--tests_in_instruction",
            type=float,
            default=0.0,
            help="Fraction of final instructions (chosen by a hash of the id) that end with up "
            "to three of their own test asserts; 0 (default) leaves every instruction as is.",
        )
        sel.add_argument(
            "--cross_check",
            action="store_true",
            default=False,
            help="Also run every passing response against the tests of its instruction's other "
            "samples (n x n programs per instruction, same sandbox and cache); each final pair "
            "gets `agreement`, the share of sibling test suites it passes.",
        )
        sel.add_argument(
            "--select_by",
            choices=("shuffle", "agreement"),
            default="shuffle",
            help="Order of the selection pass: shuffle (the reference's seeded order) or "
            "agreement (within each instruction, higher agreement first; needs --cross_check).",
        )
        sel.add_argument(
            "--decontam_benchmarks",
            default="auto",
            help="Comma-separated of humaneval, mbpp, ds1000, gsm8k (a benchmark without "
            "a --decontam_<name>_path file comes from the Hugging Face hub); 'auto' "
            "(default): HumanEval plus every other one whose file is given, never the hub; "
            "'none' turns decontamination off.",
        )
        sel.add_argument("--decontam_mbpp_path", default=None)
        sel.add_argument("--decontam_humaneval_path", default=None)
        sel.add_argument("--decontam_ds1000_path", default=None)
        sel.add_argument("--decontam_gsm8k_path", default=None)
        sel.add_argument(
            "--cache_dir",
            default=None,
            help="Response and execution caches (any fsspec path). Default: "
            "OUTPUT_DIR/_cache, so a rerun repeats no completed call.",
        )
        sel.add_argument("--no_cache", action="store_true", default=False)

    def read_settings(self) -> stack_io.ReadSettings:
        """How the workers read --input (token, task sizes)."""
        opts = self.view_as(SelfCodeAlignOptions)
        return stack_io.ReadSettings(
            hf_token=opts.hf_token,
            hf_token_secret=opts.hf_token_secret,
            rows_per_task=opts.read_rows_per_task,
        )

    def to_config(self) -> RunConfig:
        opts = self.view_as(SelfCodeAlignOptions)
        inputs = tuple(opts.input) if opts.input else (bundled_shard(),)
        output_dir = (opts.output_dir or "").rstrip("/")
        cache_dir = None if opts.no_cache else (opts.cache_dir or f"{output_dir}/_cache")
        generation = GenerationConfig(
            model=opts.model,
            model_server_url=opts.model_server_url,
            temperature=opts.temperature,
            top_p=opts.top_p,
            max_new_tokens=opts.max_new_tokens,
            num_samples=opts.num_samples,
            concepts_k=opts.concepts_k,
            instruction_k=opts.instruction_k,
            response_k=opts.response_k,
            judge_k=opts.judge_k,
            request_seeds=not opts.no_request_seeds,
            prompt_mode=opts.prompt_mode,
            max_in_flight=opts.max_in_flight,
            batch_size=opts.batch_size,
            request_timeout_s=opts.request_timeout_s,
            engine_down_max_s=opts.engine_down_max_s,
            admission_control=not opts.no_admission_control,
            max_retries=opts.max_retries,
            cache_dir=f"{cache_dir}/responses" if cache_dir else None,
            max_model_len=opts.max_model_len,
            cpu_kvcache_gib=opts.cpu_kvcache_gib,
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            max_num_seqs=opts.max_num_seqs,
        )
        return RunConfig(
            inputs=inputs,
            output_dir=output_dir,
            # --instructions starts at I->R (the default first stage, seeds, then moves there).
            from_stage="responses"
            if opts.instructions and opts.from_stage == "seeds"
            else opts.from_stage,
            instructions=tuple(opts.instructions or ()),
            to_stage=opts.to_stage,
            num_shards=opts.num_shards,
            seeds=SeedConfig(
                parser=opts.parser,
                max_file_bytes=opts.max_file_bytes,
                static_check=opts.static_check,
                static_check_batch=opts.static_check_batch,
                max_seeds=opts.max_seeds,
                judge=opts.judge_seeds,
                dedup_threshold=opts.seed_dedup_threshold,
            ),
            generation=generation,
            execution=ExecutionConfig(
                timeout_s=opts.exec_timeout_s,
                memory_mb=opts.exec_memory_mb,
                backend=opts.sandbox_backend,
                workers=opts.exec_workers,
                cache_dir=f"{cache_dir}/executions" if cache_dir else None,
            ),
            dedup_max_rounds=opts.dedup_max_rounds,
            final=FinalConfig(
                dedup_threshold=opts.final_dedup_threshold,
                num_perm=opts.num_perm,
                tests_in_instruction=opts.tests_in_instruction,
                cross_check=opts.cross_check,
                select_by=opts.select_by,
            ),
            decontam=DecontamConfig.from_option(
                opts.decontam_benchmarks,
                {
                    "humaneval": opts.decontam_humaneval_path,
                    "mbpp": opts.decontam_mbpp_path,
                    "ds1000": opts.decontam_ds1000_path,
                    "gsm8k": opts.decontam_gsm8k_path,
                },
            ),
        )
