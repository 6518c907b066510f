"""--push_to_hub: what is uploaded, and a clear error when the hub cannot be reached."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import socket
from typing import Any

import pytest
from huggingface_hub import HfApi

from beam_pipeline.publish import PublishError, dataset_card, push_final
from beam_pipeline.records import FinalPair

REPORT = {
    "stages": {
        "final": {"in": 9, "out": 2, "rejected": 7, "errors": 0},
        "final.tests_in_instruction": {"in": 2, "by_group": {}},
    }
}


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> None:
        self.calls.append(("create_commit", repo_id, {"operations": operations, **kwargs}))


def _write_final(out: pathlib.Path) -> list[dict]:
    rows = [
        {"id": "a.0", "instruction": "i", "model": "qwen", "sampling": '{"t": 0.7}'},
        {"id": "b.1", "instruction": "j", "model": "qwen", "sampling": '{"t": 0.7}'},
    ]
    (out / "final").mkdir(parents=True)
    for i, row in enumerate(rows):
        path = out / "final" / f"part-{i:05d}-of-00002.jsonl"
        path.write_text(json.dumps(row) + "\n")
    return rows


def test_push_uploads_every_shard_and_a_card_in_one_commit(tmp_path: pathlib.Path) -> None:
    rows = _write_final(tmp_path)
    api = RecordingApi()
    assert push_final(str(tmp_path), "lab/sca", REPORT, private=True, api=api) == "lab/sca"
    (kind, repo, kwargs), (kind2, repo2, commit) = api.calls
    assert (kind, repo, kwargs["repo_type"], kwargs["private"]) == (
        "create_repo",
        "lab/sca",
        "dataset",
        True,
    )
    assert (kind2, repo2, commit["repo_type"]) == ("create_commit", "lab/sca", "dataset")
    uploaded = {op.path_in_repo: op.path_or_fileobj for op in commit["operations"]}
    assert sorted(uploaded) == [
        "README.md",
        "data/part-00000-of-00002.jsonl",
        "data/part-00001-of-00002.jsonl",
    ]
    # local shards go up from disk, by path
    assert (
        json.loads(pathlib.Path(uploaded["data/part-00001-of-00002.jsonl"]).read_text()) == rows[1]
    )
    card = uploaded["README.md"].decode()
    assert "data_files: data/*.jsonl" in card
    assert "- records: 2" in card and "- model: qwen" in card
    assert "| final | 9 | 2 | 7 | 0 |" in card


def test_nothing_to_push_is_an_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "final").mkdir()
    with pytest.raises(PublishError, match="has no part-"):
        push_final(str(tmp_path), "lab/sca", REPORT, api=RecordingApi())


def test_unreachable_hub_gives_a_clear_error(tmp_path: pathlib.Path) -> None:
    _write_final(tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = HfApi(endpoint=f"http://127.0.0.1:{port}", token="hf_not_a_real_token")
    with pytest.raises(PublishError) as caught:
        push_final(str(tmp_path), "lab/sca", REPORT, api=api)
    message = str(caught.value)
    assert "lab/sca" in message and "dataset itself is written" in message
    assert len(list((tmp_path / "final").glob("part-*.jsonl"))) == 2


def test_card_documents_every_final_field() -> None:
    card = dataset_card("x/y", REPORT, None)
    names = [f.name for f in dataclasses.fields(FinalPair)]
    for name in names:
        row = next(line for line in card.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.removeprefix(f"| `{name}` |").strip(" |"), name  # described, not blank
    assert "| `concepts` | list of strings" in card


def test_card_without_sample_still_has_the_funnel() -> None:
    card = dataset_card("x/y", REPORT, None)
    assert card.startswith("---\n") and "| final | 9 | 2 | 7 | 0 |" in card
    assert "model:" not in card.split("---", 2)[2]
