"""The instruction template used for training, for the saved chat template and for evaluation.

One system sentence, then `### Instruction`, the instruction, then `### Response`, the response
and the tokenizer's EOS. The prompt (everything up to and including the newline after
`### Response`) is what a model sees at inference time; training masks exactly those tokens.
The Jinja chat template written next to a trained model renders the same text after the
tokenizer's BOS token (every training sequence starts with BOS where the tokenizer has one), so
`tokenizer.apply_chat_template(..., add_generation_prompt=True)` equals
`bos_token + build_prompt(...)`, and with `tokenize=True` it gives the masked prompt ids.
"""

from __future__ import annotations

import json

DEFAULT_SYSTEM = (
    "You are a careful programming assistant who answers every coding instruction "
    "with a correct, self-contained and well-tested solution."
)
INSTRUCTION_HEADER = "### Instruction"
RESPONSE_HEADER = "### Response"
# Generation should stop before the model starts a new template section.
SECTION_STOP = "\n### "


def build_prompt(instruction: str, system: str = DEFAULT_SYSTEM) -> str:
    """The text up to the point where the model starts writing its response."""
    return f"{system.strip()}\n\n{INSTRUCTION_HEADER}\n{instruction.strip()}\n\n{RESPONSE_HEADER}\n"


def build_example(instruction: str, response: str, system: str = DEFAULT_SYSTEM) -> str:
    """Prompt and response as one text (without EOS, which is added as a token id)."""
    return build_prompt(instruction, system) + response


def chat_template(system: str = DEFAULT_SYSTEM) -> str:
    """A Jinja chat template that renders conversations in the training format.

    The text starts with the BOS token where the tokenizer has one. A leading system message
    replaces the default system sentence. Each user turn becomes an instruction section and each
    assistant turn a response section ending in EOS; `add_generation_prompt` opens the response
    section.
    """
    default = json.dumps(system.strip())
    instruction = json.dumps(f"\n\n{INSTRUCTION_HEADER}\n")
    response = json.dumps(f"\n\n{RESPONSE_HEADER}\n")
    return (
        "{%- if bos_token -%}{{- bos_token -}}{%- endif -%}"
        "{%- set ns = namespace(system=" + default + ") -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns.system = messages[0]['content'] | trim -%}"
        "{%- endif -%}"
        "{{- ns.system -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- " + instruction + " + (message['content'] | trim) -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- " + response + " + message['content'] + eos_token -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + response + " -}}{%- endif -%}"
    )
