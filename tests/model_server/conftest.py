"""Fixtures for model_server tests: the shared real vLLM server (tests marked `vllm`)."""

from tests.vllm_fixture import vllm_server  # noqa: F401 - re-exported as a fixture
