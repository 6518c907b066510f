"""Reading the final dataset: local, compressed, globbed and fsspec URLs; bad records rejected."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import fsspec
import pytest

from sft.config import DataConfig
from sft.data import RejectReason, build_dataset, iter_jsonl_lines, parse_line, to_pair
from sft.tiny import build_tokenizer

from .conftest import FINAL_JSONL

FIXTURE_ROWS = FINAL_JSONL.read_text().splitlines()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer("byte-bpe")


def test_the_fixture_has_the_final_record_fields() -> None:
    from beam_pipeline.records import FinalPair

    for line in FIXTURE_ROWS:
        record = FinalPair.from_json(line)
        assert record.instruction and record.response and record.tests and record.sha1


def test_local_jsonl(tokenizer: Any) -> None:
    dataset = build_dataset(DataConfig(path=str(FINAL_JSONL)), tokenizer)
    assert len(dataset.examples) == len(FIXTURE_ROWS) == dataset.stats.records
    assert [e.record_id for e in dataset.examples] == [json.loads(r)["id"] for r in FIXTURE_ROWS]
    assert not dataset.rejected


def test_gzip_and_glob_over_several_shards(tokenizer: Any, tmp_path: Path) -> None:
    half = len(FIXTURE_ROWS) // 2
    (tmp_path / "final-00000-of-00002.jsonl").write_text("\n".join(FIXTURE_ROWS[:half]) + "\n")
    with gzip.open(tmp_path / "final-00001-of-00002.jsonl.gz", "wt") as handle:
        handle.write("\n".join(FIXTURE_ROWS[half:]) + "\n")
    dataset = build_dataset(DataConfig(path=str(tmp_path / "final-*")), tokenizer)
    assert len(dataset.examples) == len(FIXTURE_ROWS)


def test_fsspec_urls_are_read(tokenizer: Any) -> None:
    # memory:// goes through the same fsspec code path as gs:// and hf://.
    with fsspec.open("memory://sft-test/final.jsonl", "w") as handle:
        handle.write("\n".join(FIXTURE_ROWS[:3]) + "\n")
    dataset = build_dataset(DataConfig(path="memory://sft-test/*.jsonl"), tokenizer)
    assert len(dataset.examples) == 3


def test_a_local_dataset_through_the_hub_loader(tokenizer: Any, tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    shutil.copy(FINAL_JSONL, folder / "train.jsonl")
    dataset = build_dataset(DataConfig(hub_dataset=str(folder), hub_split="train"), tokenizer)
    assert len(dataset.examples) == len(FIXTURE_ROWS)


def test_missing_files_are_a_clear_error(tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no data files"):
        build_dataset(DataConfig(path=str(tmp_path / "nothing-*.jsonl")), tokenizer)


BAD_LINES = {
    "{not json": RejectReason.INVALID_JSON,
    "[1, 2]": RejectReason.NOT_AN_OBJECT,
    '{"id": "a", "response": "r"}': RejectReason.MISSING_FIELD,
    '{"id": "b", "instruction": null, "response": "r"}': RejectReason.NOT_A_STRING,
    '{"id": "c", "instruction": "  ", "response": "r"}': RejectReason.EMPTY_INSTRUCTION,
    '{"id": "d", "instruction": "i", "response": "\\n"}': RejectReason.EMPTY_RESPONSE,
}


@pytest.mark.parametrize(("line", "reason"), BAD_LINES.items())
def test_each_bad_record_has_its_reason(line: str, reason: RejectReason) -> None:
    parsed = parse_line("f:1", line)
    item = parsed if not isinstance(parsed, dict) else to_pair("f:1", parsed)
    assert item.reason == reason
    assert item.source == "f:1"


def test_bad_records_are_kept_out_counted_and_reported(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([FIXTURE_ROWS[0], *BAD_LINES, "", FIXTURE_ROWS[1]]) + "\n")
    dataset = build_dataset(DataConfig(path=str(path)), tokenizer)
    assert len(dataset.examples) == 2
    assert dataset.stats.records == 2 + len(BAD_LINES)
    assert dataset.stats.rejected == {reason.value: 1 for reason in BAD_LINES.values()}
    assert sorted(r.reason for r in dataset.rejected) == sorted(BAD_LINES.values())
    for rejected in dataset.rejected:
        row = json.loads(rejected.to_json())
        assert row["source"].startswith(str(path)) and row["raw"]


def test_no_usable_record_is_an_error_not_an_empty_run(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n")
    with pytest.raises(ValueError, match="no usable training examples"):
        build_dataset(DataConfig(path=str(path)), tokenizer)


def test_limit_and_custom_field_names(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "renamed.jsonl"
    rows = [json.loads(r) for r in FIXTURE_ROWS]
    path.write_text(
        "".join(json.dumps({"q": r["instruction"], "a": r["response"]}) + "\n" for r in rows)
    )
    config = DataConfig(path=str(path), instruction_field="q", response_field="a", limit=5)
    dataset = build_dataset(config, tokenizer)
    assert len(dataset.examples) == 5 and dataset.stats.records == 5


def test_lines_keep_their_source_position(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [s for s, _ in iter_jsonl_lines(str(path))] == [f"{path}:1", f"{path}:3"]
