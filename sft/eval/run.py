"""`python -m sft evaluate`: generate greedily, execute in the sandbox, write a results JSON.

Generation goes through a vLLM server (an existing one with --base-url, or one started for
--model) or, with --backend transformers, through `generate` in this process. Every program
runs in `sandbox_image.SandboxPool`. A problem whose generation failed is reported with status
`generation_error` (and counts as not passed), never silently dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sft.eval.generate import (
    Generation,
    Generator,
    ServerGenerator,
    TransformersGenerator,
    start_vllm,
)
from sft.eval.harness import RESPONSE_PREFIX, STOP_SEQUENCES, Score, generation_prompt, score
from sft.eval.problems import MBPP_SPLITS, Problem, load_humaneval, load_mbpp
from sft.eval.results import BenchmarkSummary, EvalResults
from sft.template import DEFAULT_SYSTEM

log = logging.getLogger(__name__)

BENCHMARKS = ("humaneval", "mbpp")


@dataclass(frozen=True)
class EvalConfig:
    model: str | None = None
    label: str = ""
    backend: str = "vllm"
    base_url: str | None = None
    served_model: str | None = None
    benchmarks: tuple[str, ...] = ("humaneval",)
    humaneval_path: str | None = None
    mbpp_path: str | None = None
    mbpp_split: str = "test"
    limit: int | None = None
    max_tokens: int = 512
    batch_size: int = 8
    sandbox_workers: int = 2
    timeout_s: float = 10.0
    memory_mb: int = 4096
    system: str = DEFAULT_SYSTEM

    def __post_init__(self) -> None:
        if self.backend not in ("vllm", "transformers"):
            raise ValueError(f"backend must be vllm or transformers: {self.backend}")
        if self.model is None and (self.backend == "transformers" or self.base_url is None):
            raise ValueError("--model is required unless --base-url names a running server")
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        if unknown or not self.benchmarks:
            raise ValueError(f"benchmarks must be among {BENCHMARKS}: {self.benchmarks}")
        if "mbpp" in self.benchmarks and not self.mbpp_path:
            raise ValueError("MBPP needs --mbpp-path (e.g. ../shared/data/mbpp.jsonl)")
        if self.mbpp_split not in MBPP_SPLITS:
            raise ValueError(f"mbpp split must be one of {sorted(MBPP_SPLITS)}")


def load_problems(config: EvalConfig) -> dict[str, list[Problem]]:
    problems: dict[str, list[Problem]] = {}
    for name in config.benchmarks:
        if name == "humaneval":
            items = load_humaneval(config.humaneval_path)
        else:
            items = load_mbpp(config.mbpp_path or "", config.mbpp_split)
        problems[name] = items[: config.limit] if config.limit else items
    return problems


def prompt_bos(config: EvalConfig) -> str:
    """BOS text to put before each prompt, so the model sees the ids it was trained on.

    Training starts every sequence with BOS; a completions request only adds what the encoder
    adds. Without a local model (an existing server named by --base-url alone) nothing is added.
    """
    if config.model is None:
        return ""
    from transformers import AutoTokenizer

    from sft.data import bos_text

    return bos_text(AutoTokenizer.from_pretrained(config.model))


@contextlib.contextmanager
def open_generator(config: EvalConfig) -> Iterator[Generator]:
    if config.backend == "transformers":
        yield TransformersGenerator(config.model or "", batch_size=config.batch_size)
        return
    if config.base_url is not None:
        generator = ServerGenerator(config.base_url, config.served_model or config.model or "")
        try:
            yield generator
        finally:
            generator.close()
        return
    with start_vllm(config.model or "") as (base_url, name):
        generator = ServerGenerator(base_url, name)
        try:
            yield generator
        finally:
            generator.close()


@contextlib.contextmanager
def open_pool(config: EvalConfig) -> Iterator[Any]:
    from sandbox_image import SandboxConfig, SandboxPool

    sandbox = SandboxConfig(timeout_s=config.timeout_s, memory_mb=config.memory_mb)
    with SandboxPool(sandbox, workers=config.sandbox_workers) as pool:
        yield pool


def score_generations(
    problems: Sequence[Problem], generations: Sequence[Generation], pool: Any
) -> Score:
    result = score(problems, [g.text for g in generations], pool)
    rows = tuple(
        replace(row, status="generation_error", passed=False) if g.error is not None else row
        for row, g in zip(result.problems, generations, strict=True)
    )
    return Score(result.benchmark, rows)


def evaluate(
    config: EvalConfig, generator: Generator | None = None, pool: Any | None = None
) -> EvalResults:
    """Runs the configured benchmarks; opens a generator and a sandbox pool when not given."""
    problems = load_problems(config)
    bos = prompt_bos(config)
    with contextlib.ExitStack() as stack:
        if generator is None:
            generator = stack.enter_context(open_generator(config))
        if pool is None:
            pool = stack.enter_context(open_pool(config))
        summaries: dict[str, BenchmarkSummary] = {}
        for name, items in problems.items():
            prompts = [generation_prompt(p, config.system, bos) for p in items]
            log.info("%s: generating %d completions", name, len(prompts))
            generations = generator.generate(prompts, config.max_tokens, STOP_SEQUENCES)
            log.info("%s: executing %d programs in the sandbox", name, len(items))
            result = score_generations(items, generations, pool)
            summaries[name] = BenchmarkSummary.from_score(result)
            log.info(
                "%s: pass@1 %.1f%% (%d/%d) %s",
                name,
                100 * result.pass_at_1,
                result.passed,
                result.n,
                result.statuses,
            )
    settings = {
        "greedy": True,
        "max_tokens": config.max_tokens,
        "stop": list(STOP_SEQUENCES),
        "response_prefix": RESPONSE_PREFIX,
        "system": config.system,
        "mbpp_split": config.mbpp_split if "mbpp" in config.benchmarks else None,
        "limit": config.limit,
        "sandbox_timeout_s": config.timeout_s,
    }
    label = config.label or Path(config.model or config.served_model or "model").name
    return EvalResults(
        label=label,
        model=config.model or config.served_model or "",
        backend=config.backend,
        settings=settings,
        benchmarks=summaries,
    )


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (served with vLLM or loaded locally)")
    parser.add_argument("--label", default="", help="name in the comparison table")
    parser.add_argument("--backend", default="vllm", choices=("vllm", "transformers"))
    parser.add_argument("--base-url", help="use a running OpenAI-compatible server")
    parser.add_argument("--served-model", help="model name on that server (default: --model)")
    parser.add_argument("--benchmarks", default="humaneval", help="comma-separated: humaneval,mbpp")
    parser.add_argument("--humaneval-path", help="HumanEval .jsonl(.gz) (default: bundled)")
    parser.add_argument("--mbpp-path", help="MBPP JSONL, e.g. ../shared/data/mbpp.jsonl")
    parser.add_argument("--mbpp-split", default="test", choices=sorted(MBPP_SPLITS))
    parser.add_argument("--limit", type=int, help="first N problems of each benchmark")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers backend")
    parser.add_argument("--sandbox-workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--out", required=True, help="results JSON path")


def evaluate_from_args(args: argparse.Namespace) -> int:
    config = EvalConfig(
        model=args.model,
        label=args.label,
        backend=args.backend,
        base_url=args.base_url,
        served_model=args.served_model,
        benchmarks=tuple(b.strip() for b in args.benchmarks.split(",") if b.strip()),
        humaneval_path=args.humaneval_path,
        mbpp_path=args.mbpp_path,
        mbpp_split=args.mbpp_split,
        limit=args.limit,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        sandbox_workers=args.sandbox_workers,
        timeout_s=args.timeout_s,
    )
    results = evaluate(config)
    results.write(args.out)
    for name, summary in results.benchmarks.items():
        print(
            f"{results.label} {name}: pass@1 {100 * summary.pass_at_1:.1f}% "
            f"({summary.passed}/{summary.n})"
        )
    print(args.out)
    return 0
