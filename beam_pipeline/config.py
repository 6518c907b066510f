"""Frozen, validated configuration of each stage; built once from the pipeline options."""

from __future__ import annotations

import dataclasses

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

    def __post_init__(self) -> None:
        if self.parser not in PARSERS:
            raise ConfigError(f"--parser must be one of {PARSERS}, got {self.parser!r}")
        if self.max_file_bytes <= 0:
            raise ConfigError("--max_file_bytes must be positive")
        if self.static_check_batch <= 0:
            raise ConfigError("--static_check_batch must be positive")
        if self.max_seeds < 0:
            raise ConfigError("--max_seeds must be >= 0")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    inputs: tuple[str, ...]
    output_dir: str
    from_stage: str = "seeds"
    to_stage: str = "final"
    num_shards: int = 0
    seeds: SeedConfig = dataclasses.field(default_factory=SeedConfig)

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
        if self.from_stage == "seeds" and not self.inputs:
            raise ConfigError("--input is required when the run starts at the seeds stage")
        if self.num_shards < 0:
            raise ConfigError("--num_shards must be >= 0")

    def runs(self, stage: str) -> bool:
        """Whether this run executes `stage`."""
        i = STAGES.index(stage)
        return STAGES.index(self.from_stage) <= i <= STAGES.index(self.to_stage)
