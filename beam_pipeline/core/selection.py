"""Selection of the final pairs (method.md §4), pure functions.

The reference selects with one loop over the passing samples in a seeded shuffle order: drop
instructions over 200 words, then keep a sample only if its normalised instruction, then its
normalised response, then its set of defined names was not seen before, each set growing only
with samples that passed the checks before it. That loop equals three keep-the-lowest-rank
passes in sequence (one per key, each over the previous pass's survivors), which is how the
Beam stage runs it: each pass is a GroupByKey, so no worker holds the whole dataset.
"""

from __future__ import annotations

import ast
import hashlib
from enum import StrEnum

from beam_pipeline.core.program import PYTHON_TAGS, fenced_blocks

SHUFFLE_SEED = 6666
MAX_INSTRUCTION_WORDS = 200
PLACEHOLDERS = (
    "todo",
    "fixme",
    "your code here",
    "your code goes here",
    "insert your code",
    "notimplemented",
)


class SelectReason(StrEnum):
    NOT_PASSED = "not_passed"
    NO_CODE_BLOCK = "no_code_block"
    NO_TEST_BLOCK = "no_test_block"
    NO_ASSERT = "tests_without_assert"
    TRIVIAL_TESTS = "tests_only_definitions"
    PLACEHOLDER = "placeholder"
    LONG_INSTRUCTION = "instruction_over_200_words"
    SAME_INSTRUCTION = "duplicate_instruction"
    SAME_RESPONSE = "duplicate_response"
    SAME_NAMES = "duplicate_defined_names"


def python_blocks(markdown: str) -> list[str]:
    """Fenced blocks tagged python/py or untagged (the blocks execution runs)."""
    return [body for tag, body in fenced_blocks(markdown) if tag in PYTHON_TAGS]


def _only_definitions(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False  # unparsable tests fail in execution; not this check's business
    definitions = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return all(isinstance(node, definitions) for node in tree.body)


def format_problem(response: str, tests: str) -> tuple[SelectReason, str] | None:
    """Why a response/tests pair is malformed, or None."""
    code = python_blocks(response)
    if not code:
        return SelectReason.NO_CODE_BLOCK, ""
    test_code = python_blocks(tests)
    if not test_code:
        return SelectReason.NO_TEST_BLOCK, ""
    joined_tests = "\n\n".join(test_code)
    if "assert" not in joined_tests:
        return SelectReason.NO_ASSERT, ""
    if _only_definitions(joined_tests):
        return SelectReason.TRIVIAL_TESTS, ""
    lowered = (response + "\n" + tests).lower()
    for marker in PLACEHOLDERS:
        if marker in lowered:
            return SelectReason.PLACEHOLDER, marker.strip()
    return None


def normalise_ws(text: str) -> str:
    return " ".join(text.split())


def instruction_too_long(instruction: str) -> bool:
    return len(instruction.split()) > MAX_INSTRUCTION_WORDS


def shuffle_rank(sample_id: str, seed: int = SHUFFLE_SEED) -> str:
    """Position in the seeded shuffle: a hash, so any worker computes it alone."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def _top_level_defs(code: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node for node in tree.body if isinstance(node, kinds)]


def defined_names(response: str) -> tuple[str, ...]:
    """Sorted top-level function and class names of the response code, lower-cased, no '_'."""
    code = "\n\n".join(python_blocks(response))
    return tuple(sorted({n.name.lower().replace("_", "") for n in _top_level_defs(code)}))


def _strip_docstrings(node: ast.AST) -> None:
    for child in ast.walk(node):
        body = getattr(child, "body", None)
        if (
            isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            child.body = body[1:] or [ast.Pass()]


def code_representation(response: str) -> str:
    """Top-level functions and classes of the response code, docstrings removed, unparsed."""
    code = "\n\n".join(python_blocks(response))
    parts = []
    for node in _top_level_defs(code):
        _strip_docstrings(node)
        parts.append(ast.unparse(node))
    return "\n\n".join(parts)


# Optional augmentation: a fraction of the final instructions show some of their own tests,
# so the fine-tuned model also learns to follow "your code should pass these tests" prompts
# (the format of MBPP-style benchmarks).
MAX_SHOWN_ASSERTS = 3
TESTS_HEADER = "Your code should pass the following {noun}:"


def top_level_asserts(tests: str, limit: int = MAX_SHOWN_ASSERTS) -> list[str]:
    """Up to `limit` top-level assert statements of the tests' python blocks, unparsed."""
    found: list[str] = []
    for block in python_blocks(tests):
        try:
            tree = ast.parse(block)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        found.extend(ast.unparse(node) for node in tree.body if isinstance(node, ast.Assert))
        if len(found) >= limit:
            break
    return found[:limit]


def shows_tests(record_id: str, fraction: float) -> bool:
    """Whether this record is in the augmented fraction: a hash of its id, so any worker and
    any rerun decide alike."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"tests-in-instruction:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def instruction_with_tests(instruction: str, asserts: list[str]) -> str:
    noun = "test" if len(asserts) == 1 else "tests"
    shown = "\n".join(asserts)
    header = TESTS_HEADER.format(noun=noun)
    return f"{instruction.rstrip()}\n\n{header}\n```python\n{shown}\n```"
