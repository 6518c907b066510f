"""Layout rules: the pure core never imports Beam or does network I/O."""

from __future__ import annotations

import ast
import pathlib

from tests.conftest import REPO

FORBIDDEN_IN_CORE = {"apache_beam", "httpx", "requests", "aiohttp", "fsspec", "gcsfs", "socket"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_is_pure() -> None:
    core_files = sorted((REPO / "beam_pipeline" / "core").glob("*.py"))
    assert core_files, "beam_pipeline/core has no modules"
    offenders = {
        p.name: sorted(_imports(p) & FORBIDDEN_IN_CORE)
        for p in core_files
        if _imports(p) & FORBIDDEN_IN_CORE
    }
    assert offenders == {}


def test_required_top_level_layout() -> None:
    for name in (
        "pyproject.toml",
        "setup.py",
        "run_dataflow.sh",
        "beam_pipeline",
        "model_server",
        "sandbox_image",
        "tests",
        "sft",
        "bench",
    ):
        assert (REPO / name).exists(), name
