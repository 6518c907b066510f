"""Saving the trained model as a Hugging Face folder with the training template as chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from sft.distributed import DistEnv, unwrap
from sft.template import DEFAULT_SYSTEM, chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def full_state_dict(model: torch.nn.Module, strategy: str) -> dict[str, Any] | None:
    """The whole model's weights on CPU (gathered from shards under FSDP; every rank calls)."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    return None


def save_hf_folder(
    out_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    env: DistEnv,
    strategy: str,
    system: str = DEFAULT_SYSTEM,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes weights, config, generation config and tokenizer with the chat template."""
    out = Path(out_dir)
    state = full_state_dict(model, strategy)
    if not env.is_main:
        return out
    out.mkdir(parents=True, exist_ok=True)
    # The module inside any DDP/FSDP wrapping is the Hugging Face model training started from.
    inner = cast("PreTrainedModel", unwrap(model))
    inner.config.use_cache = True
    inner.save_pretrained(out, state_dict=state)  # safetensors is the default format
    if getattr(inner, "generation_config", None) is not None:
        inner.generation_config.eos_token_id = tokenizer.eos_token_id
        inner.generation_config.save_pretrained(out)
    tokenizer.chat_template = chat_template(system)
    tokenizer.save_pretrained(out)
    if extra:
        (out / "sft_training.json").write_text(json.dumps(extra, indent=2, default=str))
    return out
