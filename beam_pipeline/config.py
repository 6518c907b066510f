"""Frozen, validated configuration of each stage; built once from the pipeline options."""

from __future__ import annotations

import dataclasses

from beam_pipeline.core.decontam import DecontamConfig
from beam_pipeline.core.seeds import DEFAULT_MAX_FILE_BYTES
from model_server.client import ClientConfig
from model_server.serve import ServeConfig
from sandbox_image.config import SandboxConfig

STAGES = ("seeds", "concepts", "instructions", "responses", "execution", "final")
PARSERS = ("auto", "ast", "tree_sitter")


class ConfigError(ValueError):
    """An option value that cannot work; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class SeedConfig:
    parser: str = "auto"
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    static_check: bool = False
    static_check_batch: int = 250
    max_seeds: int = 0  # 0: all; otherwise a deterministic sample by id
    judge: bool = False  # the docstring quality judge (needs the model)
    dedup_threshold: float = 0.5  # MinHash near-dedup of seeds; 0 turns it off

    def __post_init__(self) -> None:
        if self.parser not in PARSERS:
            raise ConfigError(f"--parser must be one of {PARSERS}, got {self.parser!r}")
        if self.max_file_bytes <= 0:
            raise ConfigError("--max_file_bytes must be positive")
        if self.static_check_batch <= 0:
            raise ConfigError("--static_check_batch must be positive")
        if self.max_seeds < 0:
            raise ConfigError("--max_seeds must be >= 0")
        if not 0.0 <= self.dedup_threshold < 1.0:
            raise ConfigError("--seed_dedup_threshold must be in [0, 1)")


class GenerationConfigError(ConfigError):
    """A generation option that cannot work."""


PROMPT_MODES = ("completion", "chat")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Options of the model-calling stages (flags in brackets)."""

    model: str = "smollm2"  # [--model] served name (with a URL) or model to serve per worker
    model_server_url: str | None = None  # [--model_server_url]
    # Sampling (method.md §2)
    temperature: float = 0.7  # [--temperature]
    top_p: float = 1.0  # [--top_p]
    max_new_tokens: int = 1536  # [--max_new_tokens]
    num_samples: int = 10  # [--num_samples] I->R samples per instruction
    concepts_k: int = 8  # [--concepts_k]
    instruction_k: int = 8  # [--instruction_k]
    response_k: int = 1  # [--response_k]
    judge_k: int = 7  # [--judge_k]
    request_seeds: bool = True  # [--no_request_seeds] send the per-item sampler seed
    # [--prompt_mode] completion: the method's few-shot text on /v1/completions; chat: the same
    # few-shot content as chat turns on /v1/chat/completions (the model's chat template)
    prompt_mode: str = "completion"
    # Client
    max_in_flight: int = 64  # [--max_in_flight] requests on the wire per worker process, at most
    admission_control: bool = True  # [--no_admission_control] adaptive, n-weighted limit
    batch_size: int = 16  # [--batch_size] elements per BatchElements batch
    request_timeout_s: float = 900.0  # [--request_timeout_s]
    max_retries: int = 6  # [--max_retries]
    cache_dir: str | None = None  # [--cache_dir] response cache (any fsspec path)
    health_interval_s: float = 10.0  # how often in-flight work checks for a dead engine
    engine_down_max_s: float = 1800.0  # [--engine_down_max_s] wait for a down engine, then error
    # Managed server (when no URL is given)
    served_model_name: str | None = None  # [--served_model_name]
    max_model_len: int = 4096  # [--max_model_len]
    cpu_kvcache_gib: float = 2.0  # [--cpu_kvcache_gib]
    tensor_parallel_size: int = 1  # [--tensor_parallel_size]
    gpu_memory_utilization: float | None = None  # [--gpu_memory_utilization]
    max_num_seqs: int | None = None  # [--max_num_seqs]
    server_linger_s: float = 60.0  # keep an idle managed server this long for the next stage
    # A command that replaces vLLM's api_server for the managed server (same flags).
    server_launcher: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = ("max_new_tokens", "num_samples", "max_in_flight", "batch_size", "max_model_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise GenerationConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("concepts_k", "instruction_k", "response_k", "judge_k", "max_retries"):
            if getattr(self, name) < 0:
                raise GenerationConfigError(f"--{name} must be >= 0")
        if self.engine_down_max_s < 0:
            raise GenerationConfigError("--engine_down_max_s must be >= 0")
        if self.prompt_mode not in PROMPT_MODES:
            raise GenerationConfigError(
                f"--prompt_mode must be one of {', '.join(PROMPT_MODES)}, got {self.prompt_mode!r}"
            )
        if not 0.0 <= self.temperature <= 5.0:
            raise GenerationConfigError("--temperature must be in [0, 5]")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationConfigError("--top_p must be in (0, 1]")
        if not self.model:
            raise GenerationConfigError("--model is required")
        if self.model_server_url is not None and not self.model_server_url.startswith(
            ("http://", "https://")
        ):
            raise GenerationConfigError("--model_server_url must start with http:// or https://")

    @property
    def client_model_name(self) -> str:
        return self.served_model_name or self.model

    def client_config(self, base_url: str, model_name: str) -> ClientConfig:
        return ClientConfig(
            base_url=base_url,
            model=model_name,
            max_in_flight=self.max_in_flight,
            timeout_s=self.request_timeout_s,
            max_retries=self.max_retries,
            cache_dir=self.cache_dir,
            send_seed=self.request_seeds,
            health_interval_s=self.health_interval_s,
            engine_down_max_s=self.engine_down_max_s,
            admission=self.admission_control,
        )

    def serve_config(self, model_path: str) -> ServeConfig:
        return ServeConfig(
            model=model_path,
            served_model_name=self.client_model_name,
            max_model_len=self.max_model_len,
            cpu_kvcache_gib=self.cpu_kvcache_gib,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs,
            launcher=self.server_launcher,
        )


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    timeout_s: float = 10.0
    memory_mb: int = 4096
    backend: str = "auto"
    workers: int | None = None
    cache_dir: str | None = None
    # Execution records carry program output: keep it short, there are millions of them.
    max_output_bytes: int = 8192

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb <= 0:
            raise ConfigError("--exec_timeout_s and --exec_memory_mb must be positive")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("--exec_workers must be >= 1")

    def sandbox_config(self) -> SandboxConfig:
        """The sandbox every program of the execution and cross-check stages runs in."""
        return SandboxConfig(
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            backend=self.backend,
            max_output_bytes=self.max_output_bytes,
        )


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    dedup_threshold: float = 0.7
    num_perm: int = 250
    tests_in_instruction: float = 0.0  # fraction of final instructions that show their tests
    cross_check: bool = False  # run each candidate against its siblings' tests
    select_by: str = "shuffle"  # "agreement": the loop tries best-agreeing samples first

    def __post_init__(self) -> None:
        if self.select_by not in ("shuffle", "agreement"):
            raise ConfigError(f"--select_by must be shuffle or agreement, got {self.select_by!r}")
        if self.select_by == "agreement" and not self.cross_check:
            raise ConfigError("--select_by agreement needs --cross_check (it ranks by agreement)")
        if not 0.0 <= self.dedup_threshold < 1.0:
            raise ConfigError("--final_dedup_threshold must be in [0, 1)")
        if not 0.0 <= self.tests_in_instruction <= 1.0:
            raise ConfigError("--tests_in_instruction must be a fraction in [0, 1]")
        if self.num_perm < 16:
            raise ConfigError("--num_perm must be >= 16")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    inputs: tuple[str, ...]
    output_dir: str
    from_stage: str = "seeds"
    to_stage: str = "final"
    num_shards: int = 0
    seeds: SeedConfig = dataclasses.field(default_factory=SeedConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)
    final: FinalConfig = dataclasses.field(default_factory=FinalConfig)
    # None: no decontamination (--decontam_benchmarks none).
    decontam: DecontamConfig | None = dataclasses.field(
        default_factory=lambda: DecontamConfig.from_option("auto", {})
    )
    # Connected-component rounds of every near-dedup pass (stages/dedup.py).
    dedup_max_rounds: int = 6
    # --instructions: the user's own instruction files; the run then starts at I->R.
    instructions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("from_stage", "to_stage"):
            value = getattr(self, name)
            if value not in STAGES:
                raise ConfigError(f"--{name} must be one of {STAGES}, got {value!r}")
        if STAGES.index(self.from_stage) > STAGES.index(self.to_stage):
            raise ConfigError(
                f"--from_stage {self.from_stage} comes after --to_stage {self.to_stage}"
            )
        if not self.output_dir:
            raise ConfigError("--output_dir is required")
        if self.instructions and self.from_stage != "responses":
            raise ConfigError(
                "--instructions starts the run at the responses stage; "
                f"--from_stage {self.from_stage} contradicts it"
            )
        if self.from_stage == "seeds" and not self.inputs:
            raise ConfigError("--input is required when the run starts at the seeds stage")
        if self.num_shards < 0:
            raise ConfigError("--num_shards must be >= 0")
        if self.dedup_max_rounds < 1:
            raise ConfigError("--dedup_max_rounds must be >= 1")

    def runs(self, stage: str) -> bool:
        """Whether this run executes `stage`."""
        i = STAGES.index(stage)
        return STAGES.index(self.from_stage) <= i <= STAGES.index(self.to_stage)
