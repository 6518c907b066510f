"""`--instructions`: a user's own JSONL or parquet instructions, from I->R to the final dataset."""

from __future__ import annotations

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.instructions_io import InstructionsError, check_instruction_files, instruction_of
from beam_pipeline.main import run
from tests.conftest import FNAPI
from tests.helpers import read_jsonl_dir
from tests.model_server.scripted import ScriptedServer

pytestmark = pytest.mark.timeout(300)  # pipeline runs

N_SAMPLES = 2


def _argv(out: pathlib.Path, url: str, *instructions: pathlib.Path) -> list[str]:
    return [
        *(f"--instructions={p}" for p in instructions),
        f"--output_dir={out}",
        f"--model_server_url={url}",
        "--model=scripted",
        f"--num_samples={N_SAMPLES}",
        "--max_new_tokens=128",
        "--request_timeout_s=30",
        "--num_shards=1",
        *FNAPI,
    ]


def test_row_outcomes_keep_provenance_and_name_bad_rows() -> None:
    good = instruction_of(
        {"instruction": "Reverse a list.", "difficulty": "easy", "origin": "mine", "n": 3}, "f:1"
    )
    assert good.instruction is not None
    assert good.instruction.difficulty == "easy"
    assert json.loads(good.instruction.provenance) == {"source": "f:1", "origin": "mine", "n": 3}
    assert instruction_of({"instruction": 7}, "f:2").reason == "bad_instruction"
    assert instruction_of({"instruction": "  "}, "f:3").reason == "empty_instruction"
    assert instruction_of(["instruction"], "f:4").reason == "not_an_object"


def test_a_file_without_the_column_stops_the_run_with_its_name(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"prompt": "Reverse a list."}) + "\n")
    with pytest.raises(InstructionsError, match=r"prompts.jsonl has no 'instruction' column"):
        check_instruction_files([str(bad)])
    table = pa.table({"text": ["x"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(InstructionsError, match=r"t.parquet has no 'instruction' column"):
        check_instruction_files([str(tmp_path / "t.parquet")])
    with pytest.raises(InstructionsError, match="matches no file"):
        check_instruction_files([str(tmp_path / "none-*.jsonl")])
    with pytest.raises(SystemExit, match="has no 'instruction' column"):
        run([f"--instructions={bad}", f"--output_dir={tmp_path / 'out'}", *FNAPI])


def test_jsonl_and_parquet_instructions_reach_the_final_dataset(tmp_path: pathlib.Path) -> None:
    jsonl = tmp_path / "mine.jsonl"
    lines = [
        json.dumps({"instruction": "Write a function that reverses a list.", "origin": "a"}),
        json.dumps({"instruction": "Write a function that sums a list.", "category": "function"}),
        json.dumps({"instruction": "Write a function that reverses a list."}),  # a copy
        "{not json",
        json.dumps({"instruction": 42}),
        json.dumps({"instruction": ""}),
        json.dumps(["a list"]),
    ]
    jsonl.write_text("\n".join(lines) + "\n")
    parquet = tmp_path / "more.parquet"
    pq.write_table(
        pa.table({"instruction": ["Write a function that counts vowels."], "tag": ["p"]}), parquet
    )
    out = tmp_path / "out"
    with ScriptedServer() as server:
        report = run(_argv(out, server.base_url, jsonl, parquet))
    assert report["invariant_ok"], report["problems"]
    assert report["runs"][-1]["inputs"] == [str(jsonl), str(parquet)]  # not the bundled shard
    given = report["stages"]["instructions"]
    assert given["in"] == 8 and given["out"] == 3
    assert given["rejected_by_reason"] == {
        "bad_instruction": 1,
        "duplicate_instruction": 1,
        "empty_instruction": 1,
        "not_an_object": 1,
        "not_json": 1,
    }
    assert "seeds" not in report["stages"] and "concepts" not in report["stages"]
    assert report["stages"]["responses"]["in"] == 3 * N_SAMPLES
    instructions = read_jsonl_dir(out / "instructions")
    assert sorted(r["instruction"] for r in instructions) == [
        "Write a function that counts vowels.",
        "Write a function that reverses a list.",
        "Write a function that sums a list.",
    ]
    reverse = next(r for r in instructions if "reverses" in r["instruction"])
    assert json.loads(reverse["provenance"])["origin"] == "a"  # the first copy is kept
    final = read_jsonl_dir(out / "final")
    assert {r["instruction"] for r in final} <= {r["instruction"] for r in instructions}
    assert len(final) == report["stages"]["final"]["out"] > 0
