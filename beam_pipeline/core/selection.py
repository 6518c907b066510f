"""Selection of the final pairs (method.md §4), pure functions.

The reference selects with ONE loop over the passing samples in a seeded shuffle order, with a
set of seen keys shared by instruction and response keys and a set of seen name sets; an
instruction whose first sample is skipped gives its next sample a chance. Only the loop itself
is sequential, and it needs little of each sample: `selection_key` turns a sample into 80 bytes
(its rank in the shuffle and four 128-bit digests), computed anywhere; `select` runs the loop
over those keys on one worker. The Beam stage joins the verdicts back to the records.

Key layout (`KEY_WIDTH` bytes, compared bytewise so a sort orders by rank first):
rank (16) | instruction (16) | response (16) | function names (16) | class names (16).
An empty name set is all zero bytes and never blocks anything.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
from enum import StrEnum

import numpy as np

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
    FIRST_BLOCK_UNPARSABLE = "first_block_unparsable"
    CODE_UNPARSABLE = "code_unparsable"


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


def instruction_too_long(instruction: str) -> bool:
    return len(instruction.split()) > MAX_INSTRUCTION_WORDS


def candidate_problem(
    status: str, instruction: str, response: str, tests: str
) -> tuple[SelectReason, str] | None:
    """Why an executed sample cannot enter the selection loop, with a detail; None for a
    candidate (passed, well-formed, instruction of at most 200 words)."""
    if status != "passed":
        return SelectReason.NOT_PASSED, status
    problem = format_problem(response, tests)
    if problem is not None:
        return problem
    if instruction_too_long(instruction):
        return SelectReason.LONG_INSTRUCTION, str(len(instruction.split()))
    return None


def shuffle_rank(sample_id: str, seed: int = SHUFFLE_SEED) -> str:
    """Position in the seeded shuffle: a hash, so any worker computes it alone."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def whitespace_free(text: str) -> str:
    """The reference's exact-match key: the text with every whitespace character removed."""
    return "".join(text.split())


@dataclasses.dataclass(frozen=True)
class NameSets:
    """Names defined anywhere in a block (methods, nested and async functions included),
    lower-cased with underscores removed, as the reference compares them."""

    functions: frozenset[str]
    classes: frozenset[str]


def squash_name(name: str) -> str:
    return name.replace("_", "").lower()


def first_block_names(response: str) -> NameSets | str:
    """The name sets of the response's first Python block, or why there are none."""
    blocks = python_blocks(response)
    if not blocks:
        return "no python block"
    try:
        tree = ast.parse(blocks[0].strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    functions, classes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.add(squash_name(node.name))
        elif isinstance(node, ast.ClassDef):
            classes.add(squash_name(node.name))
    return NameSets(frozenset(functions), frozenset(classes))


# --- compact keys and the loop --------------------------------------------------------------

DIGEST_BYTES = 16
KEY_WIDTH = 5 * DIGEST_BYTES
NO_NAMES = bytes(DIGEST_BYTES)


def _digest(data: str, person: bytes) -> bytes:
    encoded = data.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(encoded, digest_size=DIGEST_BYTES, person=person).digest()


def text_digest(text: str) -> bytes:
    """Digest of the whitespace-free text; instructions and responses share one key space,
    as they share one set in the reference."""
    return _digest(whitespace_free(text), b"text")


def names_digest(names: frozenset[str]) -> bytes:
    """Digest of a name set (order-free); function and class sets share one space, as they
    share one set in the reference. The empty set is `NO_NAMES`."""
    if not names:
        return NO_NAMES
    return _digest("\n".join(sorted(names)), b"names")


def rank_bytes(sample_id: str, seed: int = SHUFFLE_SEED) -> bytes:
    """The first 16 bytes of `shuffle_rank`: sorting by them is sorting by the rank."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:DIGEST_BYTES]


def selection_key(
    sample_id: str,
    instruction: str,
    response: str,
    seed: int = SHUFFLE_SEED,
    rank: bytes | None = None,
) -> bytes | str:
    """The sample's compact key, or why it cannot take part (its first block does not parse:
    the reference skips such a sample without recording any of its keys). `rank` replaces the
    seeded rank (`agreement_ranks`)."""
    names = first_block_names(response)
    if isinstance(names, str):
        return names
    if rank is not None and len(rank) != DIGEST_BYTES:
        raise ValueError(f"a rank is {DIGEST_BYTES} bytes, got {len(rank)}")
    return b"".join(
        (
            rank if rank is not None else rank_bytes(sample_id, seed),
            text_digest(instruction),
            text_digest(response),
            names_digest(names.functions),
            names_digest(names.classes),
        )
    )


SELECT_BY = ("shuffle", "agreement")


def agreement_ranks(
    members: Iterable[tuple[str, float | None]], seed: int = SHUFFLE_SEED
) -> dict[str, bytes]:
    """`--select_by agreement` for ONE instruction's candidates (sample id, agreement): each
    sample's rank in the loop.

    The instruction keeps the places its samples hold in the seeded shuffle, and the samples
    are dealt into those places by agreement, highest first (ties, and samples without an
    agreement after all others, in the seeded order). Within the instruction the
    best-agreeing sample is tried first; across instructions the interleaving is the seeded
    one, so the loop is the reference's loop over a permutation of its own order, and with
    equal agreements it is exactly the reference's order.
    """
    ranked = [(sample_id, value, rank_bytes(sample_id, seed)) for sample_id, value in members]
    places = sorted(rank for _, _, rank in ranked)
    ranked.sort(key=lambda m: (m[1] is None, -(m[1] or 0.0), m[2]))
    return {sample_id: place for (sample_id, _, _), place in zip(ranked, places, strict=True)}


class Verdict(StrEnum):
    KEPT = "kept"
    INSTRUCTION_SEEN = "instruction"
    RESPONSE_SEEN = "response"
    FUNCTIONS_SEEN = "functions"
    CLASSES_SEEN = "classes"


REASON_OF_VERDICT = {
    Verdict.INSTRUCTION_SEEN: SelectReason.SAME_INSTRUCTION,
    Verdict.RESPONSE_SEEN: SelectReason.SAME_RESPONSE,
    Verdict.FUNCTIONS_SEEN: SelectReason.SAME_NAMES,
    Verdict.CLASSES_SEEN: SelectReason.SAME_NAMES,
}


class KeyTable:
    """Compact keys in one flat buffer (no Python object per sample), sorted in place."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def add(self, keys: bytes) -> None:
        """One key or several concatenated."""
        if len(keys) % KEY_WIDTH:
            raise ValueError(f"key bytes not a multiple of {KEY_WIDTH}: {len(keys)}")
        self._buffer += keys

    def __len__(self) -> int:
        return len(self._buffer) // KEY_WIDTH

    def in_order(self) -> Iterator[memoryview]:
        """The keys in shuffle order (bytewise, rank first); views into the buffer."""
        if self._buffer:
            view = np.frombuffer(self._buffer, dtype=f"S{KEY_WIDTH}")
            view.sort(kind="stable")
            del view  # release the export so the buffer stays usable
        flat = memoryview(self._buffer)
        for start in range(0, len(self._buffer), KEY_WIDTH):
            yield flat[start : start + KEY_WIDTH]


def select_in_order(keys: Iterable[bytes | memoryview]) -> Iterator[tuple[bytes, Verdict]]:
    """The reference's loop over keys already in shuffle order: each key with its verdict."""
    seen_keys: set[int] = set()
    seen_names: set[int] = set()
    no_names = int.from_bytes(NO_NAMES, "big")
    d = DIGEST_BYTES
    for key in keys:
        instruction = int.from_bytes(key[d : 2 * d], "big")
        response = int.from_bytes(key[2 * d : 3 * d], "big")
        functions = int.from_bytes(key[3 * d : 4 * d], "big")
        classes = int.from_bytes(key[4 * d : 5 * d], "big")
        if instruction in seen_keys:
            verdict = Verdict.INSTRUCTION_SEEN
        elif response in seen_keys:
            verdict = Verdict.RESPONSE_SEEN
        elif functions != no_names and functions in seen_names:
            verdict = Verdict.FUNCTIONS_SEEN
        elif classes != no_names and classes in seen_names:
            verdict = Verdict.CLASSES_SEEN
        else:
            verdict = Verdict.KEPT
            seen_names.update(n for n in (functions, classes) if n != no_names)
            seen_keys.add(instruction)
            seen_keys.add(response)
        yield bytes(key), verdict


def select(keys: Iterable[bytes]) -> Iterator[tuple[bytes, Verdict]]:
    """Sorts the keys into shuffle order, then runs the loop."""
    table = KeyTable()
    for key in keys:
        table.add(key)
    return select_in_order(table.in_order())


# --- code representation (near-dedup's third text) -------------------------------------------


def _python_code(response: str) -> ast.Module | str:
    """Every Python block of the response, stripped and joined by newlines, parsed; or the
    parse error."""
    code = "\n".join(block.strip() for block in python_blocks(response))
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]


def code_syntax_error(response: str) -> str | None:
    """Why the response's code has no representation (the sample is dropped), or None."""
    parsed = _python_code(response)
    return parsed if isinstance(parsed, str) else None


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:]  # may leave an empty body, unparsed as a bare header


def code_representation(response: str) -> str:
    """Top-level `def` and `class` statements (not `async def`) of the response code with
    their docstrings removed, unparsed; empty when the code does not parse (selection has
    dropped such samples)."""
    tree = _python_code(response)
    if isinstance(tree, str):
        return ""
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    _strip_docstrings(tree)
    return ast.unparse(tree)


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
