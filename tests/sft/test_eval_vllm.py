"""Evaluation of SmolLM2-135M through the real vLLM CPU server (shared test server)."""

from __future__ import annotations

from typing import Any

import pytest

from sft.eval.run import EvalConfig, evaluate
from tests.vllm_fixture import vllm_server  # noqa: F401 - the session's shared server


@pytest.mark.vllm
@pytest.mark.timeout(900)  # a real vLLM CPU server starts and generates
def test_smollm2_humaneval_through_vllm(vllm_server: Any, pool: Any) -> None:  # noqa: F811
    config = EvalConfig(
        base_url=vllm_server.base_url,
        served_model=vllm_server.model_name,
        label="smollm2",
        limit=4,
        max_tokens=160,
    )
    results = evaluate(config, pool=pool)
    summary = results.benchmarks["humaneval"]
    assert summary.n == 4
    assert "generation_error" not in summary.statuses
    # A real model writes code: every completion is non-empty and was executed.
    assert all(p["completion"].strip() for p in summary.problems)
    assert set(summary.statuses) <= {"passed", "failed", "timeout", "memory", "crashed"}
