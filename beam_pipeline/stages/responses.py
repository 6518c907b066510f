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

from beam_pipeline.core import prompting
from beam_pipeline.records import Instruction, Sample
from beam_pipeline.stages.generation import ModelCallFn, ModelRequest, ModelStage, ModelStageSpec
from model_server.client import Choice

STAGE = "responses"


class GenerateResponsesFn(ModelCallFn):
    SPEC = ModelStageSpec(
        STAGE,
        prompting.parse_response,
        prompting.STAGE_RESPONSE,
        stop=(prompting.EXAMPLE_STOP, prompting.TESTS_STOP),
    )

    def samples(self) -> int:
        return self.config.num_samples

    def prompt(self, item: Instruction) -> prompting.ResponsePrompt:
        return prompting.response_prompt(
            item.id, item.instruction, k=self.config.response_k, mode=self.config.prompt_mode
        )

    def output_id(self, item: Instruction, index: int) -> str:
        return Sample.make_id(item.id, index)

    def build(
        self, item: Instruction, request: ModelRequest, choice: Choice, value: object
    ) -> Sample:
        params = request.params if self.config.request_seeds else request.params.without_seed()
        built: prompting.ResponsePrompt = request.context
        response, tests = value  # type: ignore[misc]
        return item.derive(
            Sample,
            id=self.output_id(item, choice.index),
            instruction_id=item.id,
            sample_index=choice.index,
            response=response,
            tests=tests,
            raw_response=choice.text,
            response_examples=built.example_ids,
            response_prompt_mode=self.config.prompt_mode,
            model=self._client.config.model,
            sampling=params.to_json(),
        )


class GenerateResponses(ModelStage):
    """Instruction -> Sample x num_samples; returns StageOutputs(main, rejected, errors)."""

    FN = GenerateResponsesFn
