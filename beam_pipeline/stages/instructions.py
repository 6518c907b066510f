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

from beam_pipeline.core import prompting
from beam_pipeline.records import Concepts, Instruction
from beam_pipeline.stages.generation import ModelCallFn, ModelRequest, ModelStage, ModelStageSpec
from model_server.client import Choice

STAGE = "instructions"


class GenerateInstructionFn(ModelCallFn):
    SPEC = ModelStageSpec(STAGE, prompting.parse_instruction, prompting.STAGE_INSTRUCTION)

    def prompt(self, item: Concepts) -> prompting.InstructionPrompt:
        return prompting.instruction_prompt(
            item.id, item.concepts, k=self.config.instruction_k, mode=self.config.prompt_mode
        )

    def build(
        self, item: Concepts, request: ModelRequest, choice: Choice, value: object
    ) -> Instruction:
        built: prompting.InstructionPrompt = request.context
        return item.derive(
            Instruction,
            category=built.category,
            difficulty=built.difficulty,
            instruction=value,
            instruction_examples=built.example_ids,
            instruction_prompt_mode=self.config.prompt_mode,
        )


class GenerateInstructions(ModelStage):
    """Concepts -> Instruction; returns StageOutputs(main, rejected, errors)."""

    FN = GenerateInstructionFn
