"""The generation stages end to end on the real vLLM CPU server (SmolLM2-135M)."""

from __future__ import annotations

import pathlib

import pytest

from beam_pipeline.config import GenerationConfig
from beam_pipeline.records import Concepts, Seed
from model_server.serve import VLLMServer
from tests.conftest import FNAPI
from tests.stages.test_generate_scripted import run_chain
from tests.vllm_fixture import vllm_server  # noqa: F401 - the shared session fixture

# A real vLLM CPU server starts (tens of seconds) and generates.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

SEEDS = [
    '''def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    return sum(values) / len(values)''',
    '''def word_counts(text):
    """Return a dict mapping each lower-cased word of text to how often it occurs."""
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts''',
    '''def flatten(nested):
    """Return a flat list with the items of a list of lists, in order."""
    return [item for inner in nested for item in inner]''',
]


def test_judge_concepts_instructions_responses_on_vllm(
    vllm_server: VLLMServer,  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    seeds = [Seed(id=Seed.make_id(text), seed=text) for text in SEEDS]
    cfg = GenerationConfig(
        model=vllm_server.model_name,
        model_server_url=vllm_server.base_url,
        num_samples=2,
        max_new_tokens=256,
        max_in_flight=16,
        request_timeout_s=600,
        cache_dir=str(tmp_path / "cache"),
    )
    # A 135M model is a poor judge (it tends to answer "no" to everything): record its
    # verdicts, but send every seed on so the later stages have work.
    out = run_chain(seeds, cfg, tmp_path / "run", FNAPI, gate=False)

    def ids(key: str) -> list[str]:
        return [r["id"] for r in out.get(key, [])]

    # Every input of every stage ends exactly once as output, rejection or dead letter.
    judged = ids("judge-main")
    assert sorted(judged + ids("judge-rejected") + ids("judge-errors")) == sorted(
        s.id for s in seeds
    )
    assert sorted(
        ids("concepts-main") + ids("concepts-rejected") + ids("concepts-errors")
    ) == sorted(s.id for s in seeds)
    concepts = ids("concepts-main")
    assert sorted(
        ids("instructions-main") + ids("instructions-rejected") + ids("instructions-errors")
    ) == sorted(concepts)
    instructions = ids("instructions-main")
    sample_slots = sorted(f"{i}.{j}" for i in instructions for j in range(2))
    assert sorted(ids("responses-main") + ids("responses-rejected")) == sorted(
        s for s in sample_slots if s.split(".")[0] not in set(ids("responses-errors"))
    )
    for key in ("judge-errors", "concepts-errors", "instructions-errors", "responses-errors"):
        assert ids(key) == [], out[key][:1]
    # The model does produce usable concepts from a few-shot prompt.
    assert concepts, out.get("concepts-rejected")
    for row in out["concepts-main"]:
        assert row["concepts"] and Concepts.from_dict(row).concepts_prompt.endswith("### Concepts")
    for row in out.get("responses-main", []):
        assert row["model"] == vllm_server.model_name and row["tests"]


def test_chat_mode_prompts_through_the_models_own_chat_template(
    vllm_server: VLLMServer,  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    """The server renders chat turns with SmolLM2's template: the prompt tokens it counts are
    exactly the template's, applied by the tokenizer in the prepared folder; and the stages run
    in chat mode end to end."""
    from transformers import AutoTokenizer

    from beam_pipeline.core import prompting
    from model_server.client import ClientConfig, ModelClient, SamplingParams
    from tests.vllm_fixture import prepared_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(prepared_model_dir()))
    assert tokenizer.chat_template
    built = prompting.response_prompt("i1", "Write a function that doubles a number.", mode="chat")
    messages = built.prompt
    assert isinstance(messages, list)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    templated = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert rendered.count("<|im_start|>") == len(messages) + 1  # SmolLM2's own turn markers
    config = ClientConfig(
        base_url=vllm_server.base_url, model=vllm_server.model_name, timeout_s=600
    )
    with ModelClient(config) as client:
        (chat,) = client.chat([messages], SamplingParams(max_tokens=8, seed=3))
        text = prompting.response_prompt("i1", "Write a function that doubles a number.").prompt
        assert isinstance(text, str)
        (completion,) = client.complete([text], SamplingParams(max_tokens=8, seed=3))
    assert chat.ok and completion.ok, (chat.error, completion.error)
    assert chat.prompt_tokens == len(templated)
    assert completion.prompt_tokens != chat.prompt_tokens  # the template's own tokens

    seeds = [Seed(id=Seed.make_id(text), seed=text) for text in SEEDS[:2]]
    cfg = GenerationConfig(
        model=vllm_server.model_name,
        model_server_url=vllm_server.base_url,
        prompt_mode="chat",
        num_samples=2,
        max_new_tokens=192,
        concepts_k=2,
        instruction_k=2,
        max_in_flight=16,
        request_timeout_s=600,
    )
    out = run_chain(seeds, cfg, tmp_path / "run", FNAPI, gate=False)
    for key in ("judge-errors", "concepts-errors", "instructions-errors", "responses-errors"):
        assert not out.get(key), out[key][:1]
    assert sorted(
        r["id"] for r in out.get("concepts-main", []) + out.get("concepts-rejected", [])
    ) == sorted(s.id for s in seeds)
    assert out.get("concepts-main"), out.get("concepts-rejected")
    for row in out["concepts-main"]:
        assert row["concepts_prompt_mode"] == "chat" and row["concepts"]
    for row in out.get("responses-main", []):
        assert row["response_prompt_mode"] == "chat" and row["tests"]
