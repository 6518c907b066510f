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

from collections.abc import Iterator

import apache_beam as beam

from beam_pipeline.core import prompting
from beam_pipeline.records import Concepts, Rejection, Seed
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

STAGE = "concepts"


class ExtractConceptsFn(ModelCallFn):
    def __init__(self, config: GenerationConfig) -> None:
        super().__init__(STAGE, config)

    def request(self, seed: Seed) -> ModelRequest:
        built = prompting.concepts_prompt(seed.id, seed.seed, k=self.config.concepts_k)
        params = SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            n=1,
            stop=(prompting.EXAMPLE_STOP,),
            seed=prompting.sampler_seed(prompting.STAGE_CONCEPTS, seed.id),
        )
        return ModelRequest(built.prompt, params, context=built)

    def on_result(
        self, seed: Seed, request: ModelRequest, result: CompletionResult
    ) -> Iterator[Concepts | Rejection]:
        if not result.choices:
            yield rejection(STAGE, prompting.Reason.MISSING_CHOICE.value, seed, "no choice")
            return
        choice = result.choices[0]
        parsed = prompting.parse_concepts(choice.text, choice.finish_reason)
        if not parsed.ok:
            detail = f"{parsed.detail}; completion {completion_excerpt(choice.text)}"
            yield rejection(STAGE, parsed.reason.value, seed, detail)
            return
        built: prompting.ConceptsPrompt = request.context
        yield seed.derive(Concepts, concepts=parsed.value, concepts_examples=built.example_ids)


class ExtractConcepts(beam.PTransform):
    """Seed -> Concepts; returns StageOutputs(main, rejected, errors)."""

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, seeds: beam.PCollection) -> StageOutputs:
        batches = seeds | "Batch" >> batch_elements(self.config.batch_size)
        return apply_stage_fn(batches, "ExtractConcepts", ExtractConceptsFn(self.config))
