"""Optional upload of the final dataset to a Hugging Face dataset repo (`--push_to_hub`).

The shards of `OUT/final/` go to `data/` in one commit, with a dataset card built from the
run's report (counts per stage, model, sampling, fingerprints). The output may be on any fsspec
path; files are streamed from there. A failure never loses the dataset: it is already written,
and the error says where.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import fsspec

log = logging.getLogger("beam_pipeline.publish")


class PublishError(RuntimeError):
    pass


class HubApi(Protocol):  # the part of huggingface_hub.HfApi used here
    def create_repo(self, repo_id: str, **kwargs: Any) -> Any: ...

    def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> Any: ...


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
    return "\n".join(lines) + "\n"


def push_final(
    output_dir: str,
    repo_id: str,
    report: dict[str, Any],
    private: bool = False,
    api: HubApi | None = None,
) -> str:
    """Uploads OUT/final/part-*.jsonl and a dataset card; returns the repo id."""
    from huggingface_hub import CommitOperationAdd

    fs, _, paths = fsspec.get_fs_token_paths(f"{output_dir.rstrip('/')}/final/part-*.jsonl")
    paths = sorted(paths)
    if not paths:
        raise PublishError(f"nothing to push: {output_dir}/final has no part-*.jsonl shards")
    first: dict[str, Any] | None = None
    operations = []
    for path in paths:
        with fs.open(path, "rb") as handle:
            data = handle.read()
        if first is None and data.strip():
            first = json.loads(data.split(b"\n", 1)[0])
        name = path.rsplit("/", 1)[-1]
        operations.append(CommitOperationAdd(path_in_repo=f"data/{name}", path_or_fileobj=data))
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
