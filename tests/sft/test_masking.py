"""Labels are -100 exactly on the prompt tokens, for several tokenizer families and edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sft.data import IGNORE_INDEX, Pair, RejectReason, bos_text, encode_pairs, special_affixes
from sft.template import build_prompt
from sft.tiny import TOKENIZER_KINDS, build_tokenizer

pytestmark = pytest.mark.timeout(300)  # tokenizers built from text

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "Write a function `f`.\n  The second line is indented.  "

EDGE_RESPONSES = {
    "plain": "Here is the code:\n```python\ndef f(x):\n    return x\n```\nDone.",
    "leading_space": " starts with a space",
    "leading_newlines": "\n\nstarts after blank lines",
    "leading_tab": "\tstarts with a tab",
    "trailing_whitespace": "ends with spaces   \n\n",
    "special_token_text": "literal <|endoftext|> </s> <s> <|begin|> <pad> in the text",
    "unicode": "emoji 😀, CJK 中文, accent é, Arabic مرحبا",
    "template_markers": "### Response\n### Instruction\nheaders inside a response",
    "single_char": "x",
    "crlf": "line one\r\nline two\r\n",
    "digits_and_punctuation": "3.14159!!! ... ``` ===",
}


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    built = {kind: build_tokenizer(kind) for kind in TOKENIZER_KINDS}
    from model_server.prepare import default_model_dir

    # The real SmolLM2 tokenizer, when a prepared folder is at hand (the vLLM tests make one).
    for folder in (REPO / "models" / "smollm2", default_model_dir("smollm2")):
        if (folder / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            built["smollm2"] = AutoTokenizer.from_pretrained(folder)
            break
    return built


def _kinds() -> list[str]:
    return [*TOKENIZER_KINDS, "smollm2"]


def _tokenizer(tokenizers: dict[str, Any], kind: str) -> Any:
    if kind not in tokenizers:
        pytest.skip("no prepared SmolLM2 folder (python -m model_server prepare --model smollm2)")
    return tokenizers[kind]


@pytest.mark.parametrize("case", sorted(EDGE_RESPONSES))
@pytest.mark.parametrize("kind", _kinds())
def test_labels_mask_exactly_the_prompt(tokenizers: dict[str, Any], kind: str, case: str) -> None:
    tokenizer = _tokenizer(tokenizers, kind)
    response = EDGE_RESPONSES[case]
    examples, rejected, stats = encode_pairs(tokenizer, [Pair("r1", INSTRUCTION, response)], 1280)
    assert not rejected
    (example,) = examples
    prompt = build_prompt(INSTRUCTION)
    n = example.prompt_length

    # The masked ids are exactly what the tokenizer gives the prompt text sent at inference
    # (BOS text in front where the encoder does not add it; an appended EOS excluded).
    suffix = len(special_affixes(tokenizer).suffix)
    inference_ids = tokenizer(bos_text(tokenizer) + prompt)["input_ids"]
    assert example.input_ids[:n].tolist() == inference_ids[: len(inference_ids) - suffix]

    labels = example.labels
    assert (labels[:n] == IGNORE_INDEX).all()
    assert (labels[n:] != IGNORE_INDEX).all()
    assert np.array_equal(labels[n:], example.input_ids[n:])
    assert not example.truncated

    # One EOS, at the end: special-token text inside the response stays text.
    eos = tokenizer.eos_token_id
    assert example.input_ids[-1] == eos
    assert (example.input_ids[n:-1] != eos).all()

    # The unmasked tokens spell the response (left-stripped only where a boundary merge forced it).
    expected = response.lstrip() if stats.boundary.get("lstripped") else response
    decoded = tokenizer.decode(example.input_ids[:-1].tolist(), skip_special_tokens=True)
    assert decoded == prompt + expected
    if not stats.boundary.get("lstripped"):
        assert stats.boundary == {"exact": 1}


# kind: (has a BOS token, its encoder adds it). The tiny families imitate the real ones.
BOS_HANDLING = {
    "byte-bpe": (True, False),
    "smollm2": (True, False),
    "starcoder2-style": (True, False),
    "byte-bpe-bos": (True, True),
    "metaspace": (True, True),
    "eos-appending": (True, False),
    "qwen-style": (False, False),
}


@pytest.mark.parametrize("kind", _kinds())
def test_every_sequence_starts_with_one_bos(tokenizers: dict[str, Any], kind: str) -> None:
    tokenizer = _tokenizer(tokenizers, kind)
    has_bos, adds_bos = BOS_HANDLING[kind]
    bos = tokenizer.bos_token_id
    plain = tokenizer(build_prompt(INSTRUCTION), add_special_tokens=False)["input_ids"]
    # The case this tokenizer stands for really holds.
    assert (bos is not None) == has_bos
    assert (tokenizer("x")["input_ids"][0] == bos) == adds_bos

    examples, _, _ = encode_pairs(tokenizer, [Pair("r1", INSTRUCTION, "ok")], 1280)
    (example,) = examples
    prompt_ids = example.input_ids[: example.prompt_length].tolist()
    if has_bos:
        assert prompt_ids == [bos, *plain]
    else:
        assert prompt_ids == plain
    if bos is not None and bos != tokenizer.eos_token_id:
        assert example.input_ids.tolist().count(bos) == 1


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_long_responses_are_truncated_and_counted(tokenizers: dict[str, Any], kind: str) -> None:
    tokenizer = tokenizers[kind]
    pairs = [Pair("long", INSTRUCTION, "word " * 2000), Pair("short", INSTRUCTION, "ok")]
    examples, rejected, stats = encode_pairs(tokenizer, pairs, max_length=256)
    long, short = examples
    assert len(long) == 256 and long.truncated
    assert long.input_ids[-1] != tokenizer.eos_token_id
    assert (long.labels[: long.prompt_length] == IGNORE_INDEX).all()
    assert (long.labels[long.prompt_length :] != IGNORE_INDEX).all()
    assert not short.truncated and short.input_ids[-1] == tokenizer.eos_token_id
    assert stats.truncated == 1 and not rejected


def test_prompt_longer_than_the_sequence_is_rejected_with_a_reason(
    tokenizers: dict[str, Any],
) -> None:
    tokenizer = tokenizers["byte-bpe"]
    pairs = [Pair("huge", "explain " * 500, "ok"), Pair("fine", "short", "ok")]
    examples, rejected, stats = encode_pairs(tokenizer, pairs, max_length=128)
    assert [e.record_id for e in examples] == ["fine"]
    assert [r.reason for r in rejected] == [RejectReason.PROMPT_TOO_LONG]
    assert rejected[0].record_id == "huge"
    assert stats.rejected == {"prompt_too_long": 1}


def test_a_tokenizer_without_eos_is_refused(tokenizers: dict[str, Any]) -> None:
    tokenizer = build_tokenizer("byte-bpe")
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="EOS"):
        encode_pairs(tokenizer, [Pair("a", "b", "c")], 64)
