"""ExtractConcepts: Seed -> Concepts (S->C, method.md §2).

One completion per seed (n=1) from a few-shot prompt: `concepts_k` examples of `### Snippet`
and `### Concepts`, then the seed. The few-shot choice and the sampler seed come from the
seed's id only. Output: the seed's fields plus `concepts` (a list of strings: the completion
split on commas) and `concepts_examples` (the few-shot ids, from which `concepts_prompt`
rebuilds the prompt). Rejections (`rejected/concepts/`): length_truncated, empty,
missing_choice. Dead letters (`errors/concepts/`): client errors (4xx with the server's
message), exhausted retries, a dead engine, unexpected exceptions.
"""

from __future__ import annotations

from beam_pipeline.core import prompting
from beam_pipeline.records import Concepts, Seed
from beam_pipeline.stages.generation import ModelCallFn, ModelRequest, ModelStage, ModelStageSpec
from model_server.client import Choice

STAGE = "concepts"


class ExtractConceptsFn(ModelCallFn):
    SPEC = ModelStageSpec(STAGE, prompting.parse_concepts, prompting.STAGE_CONCEPTS)

    def prompt(self, seed: Seed) -> prompting.ConceptsPrompt:
        mode = self.config.prompt_mode
        return prompting.concepts_prompt(seed.id, seed.seed, k=self.config.concepts_k, mode=mode)

    def build(self, seed: Seed, request: ModelRequest, choice: Choice, value: object) -> Concepts:
        built: prompting.ConceptsPrompt = request.context
        return seed.derive(
            Concepts,
            concepts=value,
            concepts_examples=built.example_ids,
            concepts_prompt_mode=self.config.prompt_mode,
        )


class ExtractConcepts(ModelStage):
    """Seed -> Concepts; returns StageOutputs(main, rejected, errors)."""

    FN = ExtractConceptsFn
