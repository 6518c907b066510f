"""JudgeSeeds: Seed -> Seed, the optional docstring quality judge (method.md §1).

The same model sees `judge_k` shuffled yes/no demonstrations (shuffle seeded by the seed's
id), then the seed; greedy, at most 5 tokens (16 in chat mode, where the reply first repeats
`### Good docstring:`), stop at a newline. The seed is kept when "yes"
outnumbers "no" in the answer. The prompt is not stored; `core.prompting.rebuild_prompt(seed,
"judge", judge_k)` gives it back. It runs inside the seed stage, so its rejections and dead
letters are written with the seeds' (stage `judge`, report key `seeds.judge`). Rejections
(`rejected/seeds/`): docstring_rejected (detail: the counts and the answer), missing_choice.
Dead letters (`errors/seeds/`): client errors, exhausted retries, a dead engine, unexpected
exceptions.
"""

from __future__ import annotations

import dataclasses

from beam_pipeline.core import prompting
from beam_pipeline.records import Seed
from beam_pipeline.stages.generation import ModelCallFn, ModelRequest, ModelStage, ModelStageSpec
from model_server.client import Choice, SamplingParams

STAGE = "judge"
JUDGE_PARAMS = SamplingParams(temperature=0.0, max_tokens=5, n=1, stop=("\n",))
# Chat replies start with the section's opener (about 5 tokens) before the answer.
CHAT_JUDGE_PARAMS = dataclasses.replace(JUDGE_PARAMS, max_tokens=16)


def parse_verdict(text: str, finish_reason: str | None) -> prompting.Parsed:
    """A "no" is a rejection; the answer is short, so its length is no reason."""
    verdict = prompting.parse_judge(text)
    if verdict.value:
        return verdict
    return prompting.Parsed(reason=prompting.Reason.DOCSTRING_REJECTED, detail=verdict.detail)


class JudgeSeedFn(ModelCallFn):
    SPEC = ModelStageSpec(STAGE, parse_verdict)

    def prompt(self, seed: Seed) -> prompting.JudgePrompt:
        mode = self.config.prompt_mode
        return prompting.judge_request(seed.id, seed.seed, k=self.config.judge_k, mode=mode)

    def sampling(self, seed: Seed) -> SamplingParams:
        chat = self.config.prompt_mode == prompting.MODE_CHAT
        return CHAT_JUDGE_PARAMS if chat else JUDGE_PARAMS

    def build(self, seed: Seed, request: ModelRequest, choice: Choice, value: object) -> Seed:
        return seed


class JudgeSeeds(ModelStage):
    """Seed -> Seed (kept); returns StageOutputs(main, rejected, errors)."""

    FN = JudgeSeedFn
