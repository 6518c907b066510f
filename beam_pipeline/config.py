"""Frozen, validated configuration of each stage; built once from the pipeline options."""

from __future__ import annotations

import dataclasses
from typing import Any

from beam_pipeline.core.decontam import DecontamConfig
from beam_pipeline.core.seeds import DEFAULT_MAX_FILE_BYTES

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


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    timeout_s: float = 10.0
    memory_mb: int = 4096
    backend: str = "auto"
    workers: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb <= 0:
            raise ConfigError("--exec_timeout_s and --exec_memory_mb must be positive")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("--exec_workers must be >= 1")


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
    generation: Any = None  # stages.generation.GenerationConfig (validated there)
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
