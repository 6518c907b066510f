"""Training examples from the pipeline's final dataset.

Input: final JSONL records (local path, glob or any fsspec URL such as gs://, possibly
compressed) or a hub dataset, each with at least `instruction` and `response`.
Output: `Example`s holding token ids and the length of the masked prompt.
Rejected records are kept with a reason (never dropped silently): invalid JSON, not a JSON
object, missing field, field not a string, empty instruction or response, prompt longer than
the sequence length. Examples longer than the sequence length are truncated and counted.

Masking contract, for every tokenizer: `input_ids[:prompt_length]` are the tokenizer's BOS id
(once, where it has one, whether or not its encoder adds it: the method always starts with BOS),
then the ids of the prompt text; that is what the saved chat template's generation prompt
tokenizes to. Labels are -100 on those and equal to the input ids on every later token; the
response is followed by one EOS id. Special-token strings inside the data are encoded as plain
text.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from sft.config import DataConfig
from sft.template import DEFAULT_SYSTEM, build_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_RAW_KEEP_CHARS = 2000
_ENCODE_CHUNK = 512


class RejectReason(StrEnum):
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    NOT_A_STRING = "not_a_string"
    EMPTY_INSTRUCTION = "empty_instruction"
    EMPTY_RESPONSE = "empty_response"
    PROMPT_TOO_LONG = "prompt_too_long"


@dataclass(frozen=True)
class Rejected:
    """A record that could not become a training example, and why."""

    source: str
    reason: RejectReason
    detail: str
    record_id: str | None = None
    raw: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "reason": self.reason.value,
                "detail": self.detail,
                "id": self.record_id,
                "raw": self.raw[:_RAW_KEEP_CHARS],
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class Pair:
    """A validated instruction/response pair and where it came from."""

    record_id: str
    instruction: str
    response: str


@dataclass(frozen=True, eq=False)
class Example:
    """Token ids of one training sequence; the first `prompt_length` ids carry no loss."""

    record_id: str
    input_ids: np.ndarray
    prompt_length: int
    truncated: bool

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def labels(self) -> np.ndarray:
        labels = self.input_ids.astype(np.int64)
        labels[: self.prompt_length] = IGNORE_INDEX
        return labels

    @property
    def num_targets(self) -> int:
        return len(self) - self.prompt_length


@dataclass
class DataStats:
    """Counts reported in the training log and written to data_stats.json."""

    records: int = 0
    examples: int = 0
    truncated: int = 0
    # How each response was split from its prompt (see Boundary).
    boundary: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    target_tokens: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "examples": self.examples,
            "truncated": self.truncated,
            "boundary": dict(sorted(self.boundary.items())),
            "prompt_tokens": self.prompt_tokens,
            "target_tokens": self.target_tokens,
            "rejected": dict(sorted(self.rejected.items())),
        }


@dataclass(frozen=True)
class SFTDataset:
    examples: tuple[Example, ...]
    rejected: tuple[Rejected, ...]
    stats: DataStats


# ----------------------------------------------------------------------------- reading


def iter_jsonl_lines(path: str) -> Iterator[tuple[str, str]]:
    """Yields (source, line) for every non-blank line of the files a path or glob names."""
    import fsspec

    files = fsspec.open_files(path, mode="rt", compression="infer", encoding="utf-8")
    if not files:
        raise FileNotFoundError(f"no data files match {path!r}")
    for of in sorted(files, key=lambda f: f.path):
        with of as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield f"{of.path}:{number}", line


def parse_line(source: str, line: str) -> dict[str, Any] | Rejected:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return Rejected(source, RejectReason.INVALID_JSON, str(error), raw=line)
    if not isinstance(value, dict):
        return Rejected(source, RejectReason.NOT_AN_OBJECT, type(value).__name__, raw=line)
    return value


def iter_records(config: DataConfig) -> Iterator[tuple[str, dict[str, Any] | Rejected]]:
    """Yields (source, record or rejection) from the configured path or hub dataset."""
    if config.path is not None:
        for source, line in iter_jsonl_lines(config.path):
            yield source, parse_line(source, line)
        return
    import datasets

    assert config.hub_dataset is not None  # DataConfig: exactly one of path and hub_dataset
    rows = datasets.load_dataset(
        config.hub_dataset, split=config.hub_split, revision=config.hub_revision
    )
    for index, row in enumerate(rows):
        yield f"{config.hub_dataset}[{config.hub_split}]#{index}", dict(row)


def to_pair(
    source: str,
    record: dict[str, Any],
    instruction_field: str = "instruction",
    response_field: str = "response",
) -> Pair | Rejected:
    """Validates one record's fields."""
    record_id = record.get("id")
    record_id = str(record_id) if record_id is not None else source
    raw = json.dumps(record, ensure_ascii=False, default=str)
    values: dict[str, str] = {}
    for name in (instruction_field, response_field):
        if name not in record:
            return Rejected(source, RejectReason.MISSING_FIELD, name, record_id, raw)
        if not isinstance(record[name], str):
            detail = f"{name} is {type(record[name]).__name__}"
            return Rejected(source, RejectReason.NOT_A_STRING, detail, record_id, raw)
        values[name] = record[name]
    if not values[instruction_field].strip():
        return Rejected(source, RejectReason.EMPTY_INSTRUCTION, "", record_id, raw)
    if not values[response_field].strip():
        return Rejected(source, RejectReason.EMPTY_RESPONSE, "", record_id, raw)
    return Pair(record_id, values[instruction_field], values[response_field])


# ----------------------------------------------------------------------------- tokenizing


def _encode(tokenizer: Any, texts: Sequence[str], special: bool) -> list[list[int]]:
    # split_special_tokens: a literal "<|endoftext|>" in generated data is text, not an EOS.
    encoded = tokenizer(
        list(texts),
        add_special_tokens=special,
        split_special_tokens=True,
        return_attention_mask=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


@dataclass(frozen=True)
class SpecialAffixes:
    """Special ids the tokenizer adds around any text (e.g. BOS before, sometimes EOS after)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]


def special_affixes(tokenizer: Any) -> SpecialAffixes:
    probe = "### probe text"
    plain = _encode(tokenizer, [probe], special=False)[0]
    full = _encode(tokenizer, [probe], special=True)[0]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return SpecialAffixes(tuple(full[:start]), tuple(full[start + len(plain) :]))
    raise ValueError("cannot locate the text ids inside the tokenizer's special-token wrapping")


def sequence_affixes(tokenizer: Any) -> SpecialAffixes:
    """The special ids a training sequence starts with: the encoder's own, led by BOS.

    Tokenizers such as SmolLM2's or StarCoder2's define a BOS token that their encoder does not
    add; the sequence still starts with it. One whose encoder adds BOS keeps it once.
    """
    affixes = special_affixes(tokenizer)
    bos_id = tokenizer.bos_token_id
    if bos_id is None or bos_id in affixes.prefix:
        return affixes
    return SpecialAffixes((bos_id, *affixes.prefix), affixes.suffix)


def bos_text(tokenizer: Any) -> str:
    """The BOS token's text when the encoder does not add it, else "".

    Prepended to a prompt sent as text (a completions request encodes with special tokens on),
    it makes the model see at inference the ids it was trained on.
    """
    bos_id = tokenizer.bos_token_id
    if bos_id is None or bos_id in special_affixes(tokenizer).prefix:
        return ""
    return str(tokenizer.bos_token)


class Boundary(StrEnum):
    """How the response ids were obtained."""

    # ids of prompt+response start with the prompt's ids: the response ids are the rest.
    EXACT = "exact"
    # A token merged the prompt's final newline with leading whitespace of the response; with
    # that whitespace removed the split is exact again.
    LSTRIPPED = "lstripped"
    # Still merged: the (left-stripped) response was tokenized on its own.
    SEPARATE = "separate"


def response_ids(
    tokenizer: Any, prompt_ids: Sequence[int], prompt: str, response: str
) -> tuple[list[int], Boundary]:
    """Ids of the response as they follow `prompt_ids` (plain ids of `prompt`)."""
    full = _encode(tokenizer, [prompt + response], special=False)[0]
    return _split_response(tokenizer, prompt_ids, full, prompt, response)


def _split_response(
    tokenizer: Any, prompt_ids: Sequence[int], full: Sequence[int], prompt: str, response: str
) -> tuple[list[int], Boundary]:
    n = len(prompt_ids)
    if list(full[:n]) == list(prompt_ids):
        return list(full[n:]), Boundary.EXACT
    stripped = response.lstrip()
    full = _encode(tokenizer, [prompt + stripped], special=False)[0]
    if list(full[:n]) == list(prompt_ids):
        return list(full[n:]), Boundary.LSTRIPPED
    return _encode(tokenizer, [stripped], special=False)[0], Boundary.SEPARATE


def assemble_example(
    record_id: str,
    affixes: SpecialAffixes,
    prompt_ids: Sequence[int],
    response: Sequence[int],
    eos_id: int,
    max_length: int,
) -> Example | None:
    """Joins prompt ids (plain), response ids and EOS; None when the prompt alone is too long."""
    prompt = [*affixes.prefix, *prompt_ids]
    if len(prompt) >= max_length:
        return None
    ids = [*prompt, *response, eos_id]
    truncated = len(ids) > max_length
    return Example(record_id, np.asarray(ids[:max_length], dtype=np.int32), len(prompt), truncated)


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[Pair],
    max_length: int,
    system: str = DEFAULT_SYSTEM,
) -> tuple[list[Example], list[Rejected], DataStats]:
    """Tokenizes pairs in chunks (fast tokenizers batch in Rust) following the masking contract."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token; set one before training")
    affixes = sequence_affixes(tokenizer)
    examples: list[Example] = []
    rejected: list[Rejected] = []
    stats = DataStats()
    for start in range(0, len(pairs), _ENCODE_CHUNK):
        chunk = pairs[start : start + _ENCODE_CHUNK]
        prompts = [build_prompt(p.instruction, system) for p in chunk]
        prompt_ids = _encode(tokenizer, prompts, special=False)
        full_ids = _encode(
            tokenizer, [t + p.response for t, p in zip(prompts, chunk, strict=True)], False
        )
        for pair, prompt, p_ids, f_ids in zip(chunk, prompts, prompt_ids, full_ids, strict=True):
            r_ids, boundary = _split_response(tokenizer, p_ids, f_ids, prompt, pair.response)
            stats.boundary[boundary.value] += 1
            example = assemble_example(pair.record_id, affixes, p_ids, r_ids, eos_id, max_length)
            if example is None:
                detail = f"prompt has {len(affixes.prefix) + len(p_ids)} tokens, max {max_length}"
                rejected.append(
                    Rejected(pair.record_id, RejectReason.PROMPT_TOO_LONG, detail, pair.record_id)
                )
                stats.rejected[RejectReason.PROMPT_TOO_LONG.value] += 1
                continue
            examples.append(example)
            stats.examples += 1
            stats.truncated += int(example.truncated)
            stats.prompt_tokens += example.prompt_length
            stats.target_tokens += example.num_targets
    return examples, rejected, stats


def build_dataset(
    config: DataConfig, tokenizer: Any, records: Iterable[tuple[str, Any]] | None = None
) -> SFTDataset:
    """Reads, validates and tokenizes the configured data (or the given records)."""
    pairs: list[Pair] = []
    rejected: list[Rejected] = []
    counts: Counter[str] = Counter()
    total = 0
    source_records = iter_records(config) if records is None else records
    for source, record in source_records:
        if config.limit is not None and total >= config.limit:
            break
        total += 1
        if isinstance(record, Rejected):
            item: Pair | Rejected = record
        else:
            item = to_pair(source, record, config.instruction_field, config.response_field)
        if isinstance(item, Rejected):
            rejected.append(item)
            counts[item.reason.value] += 1
        else:
            pairs.append(item)
    examples, too_long, stats = encode_pairs(tokenizer, pairs, config.max_length, config.system)
    stats.records = total
    stats.rejected.update(counts)
    rejected.extend(too_long)
    if not examples:
        raise ValueError(f"no usable training examples in the data: {stats.to_dict()}")
    log.info("data: %s", json.dumps(stats.to_dict()))
    if stats.truncated:
        log.warning(
            "data: %d of %d examples truncated to %d tokens",
            stats.truncated,
            stats.examples,
            config.max_length,
        )
    return SFTDataset(tuple(examples), tuple(rejected), stats)
