"""Greedy generation backends for evaluation.

`ServerGenerator` sends completion requests to a vLLM OpenAI-compatible server through the
project's one HTTP client (`model_server.client`); `start_vllm` launches such a server for a
model folder. `TransformersGenerator` runs `generate` in this process, for small models and
machines without vLLM. Both return one `Generation` per prompt, in prompt order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    error: str | None = None


class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str], max_tokens: int, stop: Sequence[str]
    ) -> list[Generation]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found."""
    end = len(text)
    for item in stop:
        index = text.find(item)
        if index != -1:
            end = min(end, index)
    return text[:end], end < len(text)


class ServerGenerator:
    """Completions from an OpenAI-compatible server via `model_server.client.ModelClient`."""

    def __init__(self, base_url: str, model: str, max_in_flight: int = 32) -> None:
        from model_server.client import ClientConfig, ModelClient

        self.model = model
        self.client = ModelClient(
            ClientConfig(base_url=base_url, model=model, max_in_flight=max_in_flight)
        )

    def generate(
        self, prompts: Sequence[str], max_tokens: int, stop: Sequence[str]
    ) -> list[Generation]:
        from model_server.client import SamplingParams

        params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop=tuple(stop))
        out = []
        for result in self.client.complete(list(prompts), params):
            if result.error is not None or not result.choices:
                out.append(Generation("", "error", result.error or "no choices"))
                continue
            choice = result.choices[0]
            text, _ = cut_at_stop(choice.text, stop)
            out.append(Generation(text, choice.finish_reason or ""))
        return out

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def start_vllm(model_dir: str, **serve_options: Any) -> Iterator[tuple[str, str]]:
    """Starts a vLLM server for a model folder; yields (base_url, served model name)."""
    from model_server.serve import ServeConfig, VLLMServer

    config = ServeConfig(model=model_dir, **serve_options)
    with VLLMServer(config) as server:
        name = getattr(server, "model_name", None) or getattr(config, "served_model_name", None)
        yield server.base_url, name or model_dir


class TransformersGenerator:
    """Batched greedy `generate` with left padding; stop strings end a completion."""

    def __init__(self, model_dir: str, batch_size: int = 8, dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        # Any: transformers types this result as a class that fails its own `generate`
        # protocol (GenerativePreTrainedModel) and its wrapped `to`.
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype)
        )
        self.model.to(self.device).eval()
        self.batch_size = batch_size

    def generate(
        self, prompts: Sequence[str], max_tokens: int, stop: Sequence[str]
    ) -> list[Generation]:
        import torch
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_id,
            stop_strings=list(stop) or None,
        )
        results: list[Generation | None] = [None] * len(prompts)
        # Similar lengths together keep left padding short.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            prompt_batch = [prompts[i] for i in batch]
            encoded = self.tokenizer(prompt_batch, return_tensors="pt", padding=True)
            encoded = encoded.to(self.device)
            with torch.no_grad():
                output = self.model.generate(
                    **encoded, generation_config=config, tokenizer=self.tokenizer
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for index, row in zip(batch, new_tokens, strict=True):
                ids = row.tolist()
                ended = self.tokenizer.eos_token_id in ids
                if ended:
                    ids = ids[: ids.index(self.tokenizer.eos_token_id)]
                text, stopped = cut_at_stop(
                    self.tokenizer.decode(ids, skip_special_tokens=True), stop
                )
                reason = "stop" if stopped or ended else "length"
                results[index] = Generation(text, reason)
        return [r if r is not None else Generation("", "error", "missing") for r in results]
