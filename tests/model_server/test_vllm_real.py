"""The real vLLM CPU server with SmolLM2-135M: prepare, completions, chat, seeds under load."""

from __future__ import annotations

import pathlib
import time

import httpx
import pytest

from model_server.client import ClientConfig, ModelClient, SamplingParams
from model_server.prepare import MANIFEST, read_manifest, verify
from model_server.serve import ServeConfig, VLLMServer
from tests.vllm_fixture import prepared_model_dir

# A real vLLM CPU server starts (tens of seconds) and generates.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


def client_for(server: VLLMServer, **kw: object) -> ModelClient:
    return ModelClient(
        ClientConfig(base_url=server.base_url, model=server.model_name, timeout_s=600, **kw)
    )


def test_prepared_folder_is_checksummed_and_cached(vllm_server: VLLMServer) -> None:
    folder = prepared_model_dir()  # second call: must be the cached folder
    manifest = read_manifest(folder)
    assert manifest["source"]["model"] == "smollm2"
    assert manifest["dtype"] == "bfloat16" and manifest["has_chat_template"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert verify(folder, deep=False)
    assert (folder / MANIFEST).is_file()


def test_completions_are_reproducible_with_a_seed(vllm_server: VLLMServer) -> None:
    prompt = "def fibonacci(n):\n    "
    params = SamplingParams(temperature=0.8, max_tokens=24, n=2, seed=1234)
    with client_for(vllm_server) as client:
        first, second = client.complete([prompt, prompt], params)
        other = client.complete([prompt], SamplingParams(temperature=0.8, max_tokens=24, seed=99))
        metrics = client.metrics.snapshot()
    assert first.ok and second.ok, (first.error, second.error)
    assert len(first.choices) == 2
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert other[0].ok
    assert metrics["completion_tokens"] > 0 and metrics["prompt_tokens"] > 0


def test_stop_strings_and_length_finish(vllm_server: VLLMServer) -> None:
    with client_for(vllm_server) as client:
        (short,) = client.complete(["Count: 1, 2, 3,"], SamplingParams(max_tokens=3))
    assert short.ok and short.choices[0].finish_reason == "length"


def test_chat_mode_uses_the_chat_template(vllm_server: VLLMServer) -> None:
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    with client_for(vllm_server) as client:
        (result,) = client.chat([messages], SamplingParams(max_tokens=48, seed=1))
    assert result.ok and result.choices[0].text.strip()


def test_client_error_carries_vllms_message(vllm_server: VLLMServer) -> None:
    with client_for(vllm_server) as client:
        (result,) = client.complete(["x " * 5000], SamplingParams(max_tokens=8))
    assert result.error_kind == "client_error" and result.status_code == 400
    assert "context" in result.error.lower() or "token" in result.error.lower()


def test_per_request_seeds_survive_a_step_larger_than_the_chunk_budget(
    vllm_server: VLLMServer,
) -> None:
    """Many long seeded prompts at once: the batch is far over 2,048 tokens (see models.md)."""
    block = "def add(a, b):\n    return a + b\n\n"
    # With chunked prefill (vLLM's default) the third of these prompts is split across steps,
    # which kills the CPU engine when it carries a seed; ServeConfig turns chunking off on CPU.
    prompts = [f"# file {i}\n" + block * 70 for i in range(6)]  # ~1,000 tokens each
    params = [SamplingParams(temperature=0.7, max_tokens=8, seed=100 + i) for i in range(6)]
    with client_for(vllm_server, max_in_flight=6) as client:
        results = client.complete(prompts, params)
        healthy, detail = client.health()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:2]
    assert sum(r.prompt_tokens for r in results) > 2 * 2048
    assert healthy, detail
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert httpx.get(f"{vllm_server.base_url}/health", timeout=5).status_code == 200
        time.sleep(1)


@pytest.mark.slow
def test_seeded_chunked_prefill_kills_the_engine_and_the_client_notices(
    tmp_path: pathlib.Path,
) -> None:
    """The known CPU failure, reproduced on purpose: chunked prefill on, per-request seeds.

    The client must end every request with an error (dead engine) instead of hanging, and
    the server must still be stopped cleanly.
    """
    config = ServeConfig(
        model=str(prepared_model_dir()),
        served_model_name="smollm2",
        chunked_prefill=True,
        max_num_batched_tokens=2048,
        log_path=str(tmp_path / "chunked.log"),
    )
    block = "def add(a, b):\n    return a + b\n\n"
    prompts = [f"# file {i}\n" + block * 70 for i in range(6)]
    params = [SamplingParams(temperature=0.7, max_tokens=8, seed=100 + i) for i in range(6)]
    with (
        VLLMServer(config) as server,
        client_for(server, max_in_flight=6, max_retries=2, health_interval_s=2.0) as client,
    ):
        results = client.complete(prompts, params)
        assert client.engine_dead
    assert all(not r.ok for r in results)
    assert {r.error_kind for r in results} <= {"engine_dead", "exhausted"}
    assert "CPU Generator does not use offset" in (tmp_path / "chunked.log").read_text()
    assert not server.alive()
