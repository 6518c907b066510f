"""The prompt template and the chat template saved with trained models render the same text."""

from __future__ import annotations

from typing import Any

import pytest

from sft.template import DEFAULT_SYSTEM, build_example, build_prompt, chat_template
from sft.tiny import build_tokenizer


def test_prompt_has_one_system_sentence_and_both_headers() -> None:
    prompt = build_prompt("  Sort a list.\n")
    assert prompt == f"{DEFAULT_SYSTEM}\n\n### Instruction\nSort a list.\n\n### Response\n"
    assert DEFAULT_SYSTEM.count(". ") == 0 and DEFAULT_SYSTEM.endswith(".")
    assert build_example("Sort a list.", "Use sorted().") == prompt + "Use sorted()."


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tokenizer = build_tokenizer("byte-bpe-bos")
    tokenizer.chat_template = chat_template()
    return tokenizer


@pytest.mark.parametrize("instruction", ["Sort a list.", "  padded\n\n", "multi\nline\n  text"])
def test_generation_prompt_equals_the_training_prompt(tokenizer: Any, instruction: str) -> None:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == tokenizer.bos_token + build_prompt(instruction)


def test_a_conversation_renders_as_training_examples_with_eos(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    first = tokenizer.bos_token + build_example("first", "one") + tokenizer.eos_token
    assert rendered == first + "\n\n### Instruction\nsecond\n\n### Response\n"


def test_a_system_message_replaces_the_default_sentence(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You answer in haiku."},
        {"role": "user", "content": "Sort a list."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == tokenizer.bos_token + build_prompt("Sort a list.", "You answer in haiku.")


def test_a_custom_default_system_is_baked_into_the_template() -> None:
    tokenizer = build_tokenizer("byte-bpe")
    tokenizer.chat_template = chat_template('A "quoted" system.')
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|begin|>" + build_prompt("x", 'A "quoted" system.')


@pytest.mark.parametrize("kind", ["byte-bpe", "starcoder2-style", "qwen-style"])
def test_the_template_starts_with_bos_where_the_tokenizer_has_one(kind: str) -> None:
    tokenizer = build_tokenizer(kind)
    tokenizer.chat_template = chat_template()
    messages = [{"role": "user", "content": "x"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (tokenizer.bos_token or "") + build_prompt("x")
    # Tokenized through the template, BOS is there once (byte-level families).
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    plain = tokenizer(build_prompt("x"), add_special_tokens=False)["input_ids"]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    assert list(ids["input_ids"]) == bos + plain
