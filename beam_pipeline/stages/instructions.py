"""GenerateInstructions: Concepts -> Instruction (C->I, method.md §2).

One completion per item (n=1). The category (function 50%, class 25%, program 25%), the
difficulty (uniform over easy/medium/hard), the `instruction_k` few-shot examples and the
sampler seed come from the record id only. The prompt shows the concepts joined with ", ".
Output: every upstream field plus `category`, `difficulty`, `instruction` and
`instruction_examples` (the few-shot ids, from which `instruction_prompt` rebuilds the
prompt). The instruction ends at the next example or at a `### ` heading outside a code
block. Rejections (`rejected/instructions/`):
length_truncated, empty, missing_choice. Dead letters (`errors/instructions/`): client
errors, exhausted retries, a dead engine, unexpected exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from beam_pipeline.core import prompting
from beam_pipeline.records import Concepts, Instruction, Rejection
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

STAGE = "instructions"


class GenerateInstructionFn(ModelCallFn):
    def __init__(self, config: GenerationConfig) -> None:
        super().__init__(STAGE, config)

    def request(self, item: Concepts) -> ModelRequest:
        built = prompting.instruction_prompt(item.id, item.concepts, k=self.config.instruction_k)
        params = SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            n=1,
            stop=(prompting.EXAMPLE_STOP,),
            seed=prompting.sampler_seed(prompting.STAGE_INSTRUCTION, item.id),
        )
        return ModelRequest(built.prompt, params, context=built)

    def on_result(
        self, item: Concepts, request: ModelRequest, result: CompletionResult
    ) -> Iterator[Instruction | Rejection]:
        if not result.choices:
            yield rejection(STAGE, prompting.Reason.MISSING_CHOICE.value, item, "no choice")
            return
        choice = result.choices[0]
        parsed = prompting.parse_instruction(choice.text, choice.finish_reason)
        if not parsed.ok:
            detail = f"{parsed.detail}; completion {completion_excerpt(choice.text)}"
            yield rejection(STAGE, parsed.reason.value, item, detail)
            return
        built: prompting.InstructionPrompt = request.context
        yield item.derive(
            Instruction,
            category=built.category,
            difficulty=built.difficulty,
            instruction=parsed.value,
            instruction_examples=built.example_ids,
        )


class GenerateInstructions(beam.PTransform):
    """Concepts -> Instruction; returns StageOutputs(main, rejected, errors)."""

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, items: beam.PCollection) -> StageOutputs:
        batches = items | "Batch" >> batch_elements(self.config.batch_size)
        return apply_stage_fn(batches, "GenerateInstructions", GenerateInstructionFn(self.config))
