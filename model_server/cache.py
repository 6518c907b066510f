"""Content-addressed response cache on any fsspec path (local folder, gs://, memory://).

Key: sha256 of the endpoint mode, the model name, the prompt (or chat messages) and every
sampling parameter including the seed. Value: the server's choices and token usage as JSON,
one small object per request under `ROOT/ab/abcdef....json`. Only complete, successful
responses are stored, so a rerun (or a bundle the runner retried) re-sends exactly the
requests that have no answer yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import fsspec

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_key(mode: str, model: str, prompt: Any, params: dict[str, Any]) -> str:
    """Stable hex key; `prompt` is a string or a JSON-able list of chat messages."""
    payload = json.dumps(
        {"v": CACHE_FORMAT, "mode": mode, "model": model, "prompt": prompt, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    """get/put of JSON values by key; safe for concurrent writers (last writer wins)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self._local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def path(self, key: str) -> str:
        return f"{self._base}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            with self.fs.open(path, "r", encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # A torn or unreadable entry is a miss, never a crash: the request is sent again.
            log.warning("response cache: ignoring unreadable %s: %s", path, exc)
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self.path(key)
        data = json.dumps(value, ensure_ascii=False)
        try:
            if self._local:
                # Write-then-rename so a reader never sees half an entry.
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with self.fs.open(tmp, "w", encoding="utf-8") as f:
                    f.write(data)
                self.fs.mv(tmp, path)
            else:
                with self.fs.open(path, "w", encoding="utf-8") as f:  # object stores: atomic
                    f.write(data)
        except OSError as exc:
            log.warning("response cache: could not write %s: %s", path, exc)
