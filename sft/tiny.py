"""Tiny random models and tokenizers built locally, for tests, smoke runs and benchmarks.

Tokenizers are trained with `tokenizers` on a few standard-library sources in about a second;
models are small Llama or Qwen2 configurations with random weights. Nothing is downloaded.
Head size 32 is one that vLLM's CPU attention accepts, so the models can also be served.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

TokenizerKind = Literal[
    "byte-bpe", "byte-bpe-bos", "starcoder2-style", "qwen-style", "metaspace", "eos-appending"
]
# How each family treats BOS, as the real ones do: byte-bpe defines one its encoder does not
# add (as SmolLM2), starcoder2-style uses its EOS as BOS and does not add it, qwen-style has
# none, byte-bpe-bos and metaspace (Llama-like) add it, eos-appending appends EOS instead.
TOKENIZER_KINDS: tuple[str, ...] = (
    "byte-bpe",
    "byte-bpe-bos",
    "starcoder2-style",
    "qwen-style",
    "metaspace",
    "eos-appending",
)

# A GPT-4-like split pattern (digits one at a time, newlines kept together), as Qwen2 uses.
_QWEN_STYLE_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def training_corpus() -> list[str]:
    """Source text of a few standard-library modules."""
    import difflib
    import json.encoder
    import string
    import textwrap

    return [inspect.getsource(module) for module in (textwrap, json.encoder, string, difflib)]


def build_tokenizer(
    kind: TokenizerKind = "byte-bpe", vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` of the given family, trained on stdlib sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {TOKENIZER_KINDS}")
    corpus = training_corpus()
    if kind == "metaspace":
        bos, eos, pad = "<s>", "</s>", "<pad>"
        tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[pad, bos, eos], show_progress=False
        )
        tokenizer.train_from_iterator(corpus, trainer)
        tokenizer = _with_byte_fallback_tokens(tokenizer)
        tokenizer.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    else:
        bos, eos, pad = "<|begin|>", "<|endoftext|>", "<|pad|>"
        tokenizer = Tokenizer(models.BPE())
        if kind == "qwen-style":
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(_regex(_QWEN_STYLE_SPLIT), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[pad, bos, eos],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer)
        tokenizer.decoder = decoders.ByteLevel()
    if kind in ("byte-bpe-bos", "metaspace"):
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    elif kind == "eos-appending":
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
        )
    bos_token: str | None = bos
    if kind == "starcoder2-style":
        bos_token = eos
    elif kind == "qwen-style":
        bos_token = None
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos_token, eos_token=eos, pad_token=pad
    )


def _regex(pattern: str) -> Any:
    from tokenizers import Regex

    return Regex(pattern)


def _with_byte_fallback_tokens(tokenizer: Any) -> Any:
    """Adds the <0xNN> byte tokens that byte fallback needs as ordinary vocabulary."""
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    state["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(state))


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    arch: Literal["llama", "qwen2"] = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> PreTrainedModel:
    """A randomly initialised causal LM sized for the tokenizer (head size hidden/heads)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": initializer_range,
    }
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def save_tiny_model(
    out_dir: str | Path,
    kind: TokenizerKind = "byte-bpe",
    arch: Literal["llama", "qwen2"] = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Builds a tokenizer and a random model and saves both as one HF folder."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(kind)
    model = build_model(tokenizer, arch, hidden_size, num_layers, num_heads, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
