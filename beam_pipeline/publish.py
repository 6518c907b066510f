"""Optional upload of the final dataset to a Hugging Face dataset repo (`--push_to_hub`).

The shards of `OUT/final/` go to `data/` in one commit, with a dataset card built from the
run's report (counts per stage, model, sampling, fingerprints). The output may be on any fsspec
path: local shards are uploaded from disk, remote ones are read into memory one by one. A
failure never loses the dataset: it is already written, and the error says where.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from beam_pipeline.records import FinalPair
from beam_pipeline.shards import current_shards

if TYPE_CHECKING:
    from huggingface_hub import HfApi

log = logging.getLogger("beam_pipeline.publish")


# What each column of the final dataset holds (docs/schema.md has every record type).
FIELD_DOCS = {
    "id": "sample id (`<seed id>.<sample index>`)",
    "seed": "the seed function the task was drawn from",
    "sha1": "hash from the seed stage",
    "concepts": "list of strings: the concepts the model saw in the seed",
    "instruction": "the task, written by the model",
    "response": "the model's answer, with its code in fenced blocks",
    "tests": "the model's own tests, which the response passed in the sandbox",
    "prompt": "the few-shot prompt the response was generated from (chat: messages as JSON)",
    "prompt_mode": "how the prompt was sent: completion (one text) or chat (chat turns)",
    "category": "function, class or program",
    "difficulty": "easy, medium or hard",
    "model": "the model that wrote the data",
    "sampling": "JSON of the sampling parameters",
    "fingerprints": "JSON of the settings that produced the row",
    "licenses": "list of strings: licences of the seed's repository",
    "repo_name": "the seed's repository",
    "path": "the seed's file in that repository",
    "tests_in_instruction": "the instruction ends with some of the tests",
    "instruction_id": "the instruction the response answers",
    "num_samples": "the instruction's samples that ran in the sandbox",
    "num_passed": "of those, the ones that passed their own tests",
    "pass_rate": "num_passed / num_samples",
    "estimated_difficulty": "easy (pass rate >= 2/3), medium (>= 1/3) or hard",
    "agreement": "share of the sibling samples' test suites the response passes (--cross_check)",
    "agreement_suites": "how many sibling test suites the agreement is over",
}


class PublishError(RuntimeError):
    """The dataset could not be pushed; it is still written where the run put it."""


def dataset_card(repo_id: str, report: dict[str, Any], sample: dict[str, Any] | None) -> str:
    """A README.md for the dataset repo: what it is, how it was made, how many records."""
    stages = report.get("stages", {})
    final = stages.get("final", {})
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files: data/*.jsonl",
        "tags:",
        "- code",
        "- synthetic",
        "- selfcodealign",
        "---",
        "",
        f"# {repo_id}",
        "",
        "Instruction-response pairs for Python written by a model from seed functions, each",
        "response checked by executing it with its own tests in a sandbox (SelfCodeAlign).",
        "",
        f"- records: {final.get('out', 'unknown')}",
    ]
    if sample:
        lines += [
            f"- model: {sample.get('model', '')}",
            f"- sampling: `{sample.get('sampling', '')}`",
            f"- stage fingerprints: `{sample.get('fingerprints', '')}`",
        ]
    funnel = [
        f"| {name} | {entry.get('in', '')} | {entry.get('out', '')} | "
        f"{entry.get('rejected', '')} | {entry.get('errors', '')} |"
        for name, entry in sorted(stages.items())
        if "out" in entry
    ]
    lines += ["", "| stage | in | out | rejected | errors |", "|---|---|---|---|---|", *funnel]
    fields = [
        f"| `{f.name}` | {FIELD_DOCS.get(f.name, '')} |" for f in dataclasses.fields(FinalPair)
    ]
    lines += ["", "## Fields", "", "| field | content |", "|---|---|", *fields]
    return "\n".join(lines) + "\n"


def push_final(
    output_dir: str,
    repo_id: str,
    report: dict[str, Any],
    private: bool = False,
    api: HfApi | None = None,
) -> str:
    """Uploads OUT/final's current shard set and a dataset card; returns the repo id."""
    from huggingface_hub import CommitOperationAdd

    final_dir = f"{output_dir.rstrip('/')}/final"
    fs, _, _ = fsspec.get_fs_token_paths(final_dir)
    paths = current_shards(final_dir)  # this run's shards, never an earlier run's leftovers
    if not paths:
        raise PublishError(f"nothing to push: {output_dir}/final has no part-*.jsonl shards")
    local = isinstance(fs, LocalFileSystem)
    first: dict[str, Any] | None = None
    operations = []
    for path in paths:
        if first is None:
            with fs.open(path, "rb") as handle:
                line = handle.readline()
            first = json.loads(line) if line.strip() else None
        # A local shard is uploaded from disk; a remote one is read into memory first.
        source = path if local else fs.cat_file(path)
        name = path.rsplit("/", 1)[-1]
        operations.append(CommitOperationAdd(path_in_repo=f"data/{name}", path_or_fileobj=source))
    card = dataset_card(repo_id, report, first).encode()
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(
            repo_id,
            operations,
            repo_type="dataset",
            commit_message=f"SelfCodeAlign dataset: {len(paths)} shards",
        )
    except Exception as exc:
        raise PublishError(
            f"could not push {output_dir}/final to the hub repo {repo_id}: "
            f"{type(exc).__name__}: {exc}. The dataset itself is written and unchanged."
        ) from exc
    log.info("pushed %d shards of %s/final to hub dataset %s", len(paths), output_dir, repo_id)
    return repo_id
