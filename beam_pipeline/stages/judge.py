"""JudgeSeeds: Seed -> Seed, the optional docstring quality judge (method.md §1).

The same model sees `judge_k` shuffled yes/no demonstrations (shuffle seeded by the seed's
id), then the seed; greedy, at most 5 tokens, stop at a newline. The seed is kept when "yes"
outnumbers "no" in the answer. The prompt is not stored; `core.prompting.rebuild_prompt(seed,
"judge", judge_k)` gives it back. Rejections (`rejected/judge/`): docstring_rejected (detail:
the counts and the answer), missing_choice. Dead letters (`errors/judge/`): client errors,
exhausted retries, a dead engine, unexpected exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from beam_pipeline.core import prompting
from beam_pipeline.records import Rejection, Seed
from beam_pipeline.stages.common import StageOutputs, apply_stage_fn
from beam_pipeline.stages.generation import (
    GenerationConfig,
    ModelCallFn,
    ModelRequest,
    batch_elements,
    completion_excerpt,
    rejection,
)
from model_server.client import CompletionResult, SamplingParams

STAGE = "judge"
JUDGE_PARAMS = SamplingParams(temperature=0.0, max_tokens=5, n=1, stop=("\n",))


class JudgeSeedFn(ModelCallFn):
    def __init__(self, config: GenerationConfig) -> None:
        super().__init__(STAGE, config)

    def request(self, seed: Seed) -> ModelRequest:
        prompt = prompting.judge_prompt(seed.id, seed.seed, k=self.config.judge_k)
        return ModelRequest(prompt, JUDGE_PARAMS)

    def on_result(
        self, seed: Seed, request: ModelRequest, result: CompletionResult
    ) -> Iterator[Seed | Rejection]:
        if not result.choices:
            yield rejection(STAGE, prompting.Reason.MISSING_CHOICE.value, seed, "no choice")
            return
        text = result.choices[0].text
        verdict = prompting.parse_judge(text)
        if verdict.value:
            yield seed
        else:
            detail = f"{verdict.detail}; answer {completion_excerpt(text, 60)}"
            yield rejection(STAGE, prompting.Reason.DOCSTRING_REJECTED.value, seed, detail)


class JudgeSeeds(beam.PTransform):
    """Seed -> Seed (kept) ; returns StageOutputs(main, rejected, errors)."""

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, seeds: beam.PCollection) -> StageOutputs:
        batches = seeds | "Batch" >> batch_elements(self.config.batch_size)
        return apply_stage_fn(batches, "JudgeSeeds", JudgeSeedFn(self.config))
