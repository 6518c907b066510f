"""Configuration of a training run: frozen dataclasses, validated once, loaded from YAML recipes.

A recipe has three sections, `model`, `data` and `training`, matching the three dataclasses
below. Unknown keys are errors (a typo must not silently fall back to a default).
`--set section.key=value` overrides on the command line are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from sft.template import DEFAULT_SYSTEM

Precision = Literal["auto", "bf16", "bf16-mixed", "fp32"]
Strategy = Literal["auto", "single", "ddp", "fsdp"]
# token: every target token of a step weighs the same (transformers' Trainer since 4.46).
# sequence: the mean of per-sequence token means (the reference: batch 1 x 64 accumulation
# steps under transformers 4.40, each micro-step's loss a token mean over one sequence).
LossWeighting = Literal["token", "sequence"]
LOSS_WEIGHTINGS: tuple[str, ...] = ("token", "sequence")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to fine-tune and how to hold its weights."""

    name_or_path: str
    tokenizer: str | None = None
    # auto: bf16 weights on a GPU with bf16 (the method's recipe), fp32 elsewhere.
    # bf16-mixed: fp32 weights with bf16 autocast.
    precision: Precision = "auto"
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ValueError("model.name_or_path is required")
        if self.precision not in ("auto", "bf16", "bf16-mixed", "fp32"):
            raise ValueError(f"model.precision must be auto|bf16|bf16-mixed|fp32: {self.precision}")


@dataclass(frozen=True)
class DataConfig:
    """Where the final dataset lives and how examples are built from it."""

    # A local path, glob or any fsspec URL (gs://bucket/final/*.jsonl, hf://datasets/...).
    path: str | None = None
    # Or a dataset on the hub, read with `datasets.load_dataset`.
    hub_dataset: str | None = None
    hub_split: str = "train"
    hub_revision: str | None = None
    instruction_field: str = "instruction"
    response_field: str = "response"
    system: str = DEFAULT_SYSTEM
    max_length: int = 1280
    limit: int | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub_dataset is None):
            raise ValueError("data: set exactly one of data.path and data.hub_dataset")
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be at least 8: {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be positive: {self.limit}")


@dataclass(frozen=True)
class TrainingConfig:
    """The optimisation recipe, batching, distribution and checkpointing."""

    output_dir: str
    learning_rate: float = 1e-5
    warmup_ratio: float = 0.05
    global_batch_size: int = 64
    micro_batch_size: int = 4
    num_epochs: int = 4
    # When set, the run lasts this many optimizer steps instead of num_epochs.
    max_steps: int | None = None
    # Padding-free packing: each micro-batch is one row of at most pack_max_tokens tokens.
    packing: bool = False
    pack_max_tokens: int | None = None
    loss_weighting: LossWeighting = "token"
    strategy: Strategy = "auto"
    seed: int = 42
    # Checkpoints for exact resume (model, optimizer, scheduler, RNG, data position).
    save_every_steps: int | None = 200
    keep_checkpoints: int = 2
    resume: bool = True
    # Stop after this many optimizer steps in this process (a checkpoint is written first);
    # the schedule still spans the whole run. For time-boxed or preemptible jobs.
    stop_after_steps: int | None = None
    log_every_steps: int = 1
    # Peak dense FLOP/s of one device in TFLOP/s for MFU; guessed for known GPUs when unset.
    peak_tflops: float | None = None
    deterministic: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("training.output_dir is required")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"training.learning_rate out of range: {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"training.warmup_ratio must be in [0, 1): {self.warmup_ratio}")
        for name in ("global_batch_size", "micro_batch_size", "num_epochs", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be positive: {getattr(self, name)}")
        for name in ("max_steps", "save_every_steps", "stop_after_steps", "pack_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"training.{name} must be positive when set: {value}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"training.loss_weighting must be token|sequence: {self.loss_weighting}"
            )
        if self.strategy not in ("auto", "single", "ddp", "fsdp"):
            raise ValueError(f"training.strategy must be auto|single|ddp|fsdp: {self.strategy}")


@dataclass(frozen=True)
class Recipe:
    """A whole training run."""

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of every setting that shapes the training trajectory (not logging or pacing)."""
        values = self.to_dict()
        values.pop("description")
        for key in _NOT_IN_FINGERPRINT:
            values["training"].pop(key)
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Settings that may change between a run and its resume.
_NOT_IN_FINGERPRINT = (
    "output_dir",
    "strategy",
    "resume",
    "stop_after_steps",
    "save_every_steps",
    "keep_checkpoints",
    "log_every_steps",
    "peak_tflops",
    "progress_bar",
)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
}


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) in {section}: {unknown}; valid keys: {sorted(known)}")
    return cls(**values)


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Builds and validates a recipe from a plain mapping (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ValueError("a recipe must be a mapping with model, data and training sections")
    unknown = sorted(set(raw) - {*_SECTIONS, "description"})
    if unknown:
        raise ValueError(f"unknown recipe section(s): {unknown}")
    missing = [name for name in _SECTIONS if name not in raw]
    if missing:
        raise ValueError(f"recipe is missing section(s): {missing}")
    sections = {name: _build(cls, dict(raw[name] or {}), name) for name, cls in _SECTIONS.items()}
    return Recipe(description=str(raw.get("description", "")), **sections)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `section.key=value` overrides; values are parsed as YAML scalars."""
    result = {name: dict(raw.get(name) or {}) for name in _SECTIONS}
    if "description" in raw:
        result["description"] = raw["description"]
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in _SECTIONS or not name:
            raise ValueError(f"override must look like section.key=value: {item!r}")
        result[section][name] = yaml.safe_load(value) if value.strip() else None
    return result


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Reads a YAML recipe, applies overrides, validates."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return recipe_from_dict(apply_overrides(raw, overrides or []))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


__all__ = [
    "LOSS_WEIGHTINGS",
    "DataConfig",
    "LossWeighting",
    "ModelConfig",
    "Recipe",
    "TrainingConfig",
    "apply_overrides",
    "dump_recipe",
    "load_recipe",
    "recipe_from_dict",
]
