"""GenerateResponses: Instruction -> Sample (I->R, method.md §2), `num_samples` per item.

One request per instruction with n=`num_samples` and the per-item sampler seed; prompt:
`response_k` few-shot examples of `<instruction>`, `<response>` and `<tests>`, then the
instruction and `<response>`; stops at `## Example` and `</tests>`. Each choice becomes a
Sample with id `<instruction id>.<index>`, carrying every upstream field plus `response`,
`tests`, `raw_response`, `response_examples` (the few-shot ids, from which `response_prompt`
rebuilds the prompt), `model` and `sampling` (JSON).

Rejections (`rejected/responses/`, one per dropped sample, under the sample's id):
length_truncated, unparseable (no `</response>`), empty, missing_tests, missing_choice (the
server returned fewer choices than asked). An instruction whose every sample is rejected
leaves only rejections. Dead letters (`errors/responses/`, under the instruction's id):
client errors, exhausted retries, a dead engine, unexpected exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from beam_pipeline.core import prompting
from beam_pipeline.records import Instruction, Rejection, Sample
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

STAGE = "responses"


class GenerateResponsesFn(ModelCallFn):
    def __init__(self, config: GenerationConfig) -> None:
        super().__init__(STAGE, config)

    def request(self, item: Instruction) -> ModelRequest:
        built = prompting.response_prompt(item.id, item.instruction, k=self.config.response_k)
        params = SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            n=self.config.num_samples,
            stop=(prompting.EXAMPLE_STOP, prompting.TESTS_STOP),
            seed=prompting.sampler_seed(prompting.STAGE_RESPONSE, item.id),
        )
        return ModelRequest(built.prompt, params, context=built)

    def on_result(
        self, item: Instruction, request: ModelRequest, result: CompletionResult
    ) -> Iterator[Sample | Rejection]:
        params = request.params
        if not self.config.request_seeds:
            params = params.without_seed()
        sampling = params.to_json()
        built: prompting.ResponsePrompt = request.context
        by_index = {choice.index: choice for choice in result.choices}
        for index in range(params.n):
            sample_id = Sample.make_id(item.id, index)
            choice = by_index.get(index)
            if choice is None:
                detail = f"server returned {len(result.choices)} of {params.n} choices"
                yield rejection(
                    STAGE, prompting.Reason.MISSING_CHOICE.value, item, detail, sample_id
                )
                continue
            parsed = prompting.parse_response(choice.text, choice.finish_reason)
            if not parsed.ok:
                detail = f"{parsed.detail}; completion {completion_excerpt(choice.text)}"
                yield rejection(STAGE, parsed.reason.value, item, detail, sample_id)
                continue
            response, tests = parsed.value
            yield item.derive(
                Sample,
                id=sample_id,
                instruction_id=item.id,
                sample_index=index,
                response=response,
                tests=tests,
                raw_response=choice.text,
                response_examples=built.example_ids,
                model=self._client.config.model,
                sampling=sampling,
            )


class GenerateResponses(beam.PTransform):
    """Instruction -> Sample x num_samples; returns StageOutputs(main, rejected, errors)."""

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, items: beam.PCollection) -> StageOutputs:
        batches = items | "Batch" >> batch_elements(self.config.batch_size)
        return apply_stage_fn(batches, "GenerateResponses", GenerateResponsesFn(self.config))
