"""Loading the model and tokenizer for training, precision, dropout, and FLOPs for MFU."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from sft.config import ModelConfig

log = logging.getLogger(__name__)

# Config attributes that hold dropout probabilities in common causal LM configurations.
_DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
    "embedding_dropout",
    "residual_dropout",
    "dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "activation_dropout",
    "classifier_dropout",
)

# Dense bf16 peak TFLOP/s per device, for MFU when training.peak_tflops is not set.
_PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 125.0),
    ("A10", 125.0),
)


@dataclass(frozen=True)
class Precision:
    """How weights are stored and whether the forward pass autocasts to bf16."""

    weight_dtype: torch.dtype
    autocast: bool

    @property
    def name(self) -> str:
        if self.autocast:
            return "bf16-mixed"
        return "bf16" if self.weight_dtype == torch.bfloat16 else "fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if requested == "auto":
        requested = "bf16" if bf16_ok else "fp32"
    if requested == "fp32":
        return Precision(torch.float32, autocast=False)
    if requested == "bf16":
        return Precision(torch.bfloat16, autocast=False)
    return Precision(torch.float32, autocast=True)


def load_tokenizer(config: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        config.tokenizer or config.name_or_path, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {config.name_or_path} has no EOS token")
    return tokenizer


def load_model(config: ModelConfig, precision: Precision) -> Any:
    """Loads the causal LM on CPU with every dropout probability set to zero."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(
        config.name_or_path, trust_remote_code=config.trust_remote_code
    )
    for key in _DROPOUT_KEYS:
        if isinstance(getattr(model_config, key, None), float):
            setattr(model_config, key, 0.0)
    model = AutoModelForCausalLM.from_pretrained(
        config.name_or_path,
        config=model_config,
        dtype=precision.weight_dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    # Some architectures build nn.Dropout modules from fields not listed above.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs: 6 per parameter per token plus attention scores and values."""

    matmul_params: int
    num_layers: int
    hidden_size: int

    def step_flops(self, sequence_lengths: list[int] | tuple[int, ...]) -> float:
        tokens = sum(sequence_lengths)
        # QK^T and AV are 2 * 2 * L * d * T flops per token forward, times 3 with backward.
        attention = 12 * self.num_layers * self.hidden_size * sum(n * n for n in sequence_lengths)
        return 6.0 * self.matmul_params * tokens + attention


def flops_model(model: Any) -> FlopsModel:
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embeddings
    # An untied input embedding is a lookup, not a matmul; a tied one is the output projection.
    matmul = total if tied else total - embeddings.numel()
    return FlopsModel(matmul, int(config.num_hidden_layers), int(config.hidden_size))


def peak_flops(
    device: torch.device, precision: Precision, configured: float | None
) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (MFU is then not reported)."""
    if configured is not None:
        return configured * 1e12
    if device.type != "cuda" or (
        precision.weight_dtype == torch.float32 and not precision.autocast
    ):
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in _PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    log.warning("unknown peak FLOP/s for %s; set training.peak_tflops to log MFU", name)
    return None
