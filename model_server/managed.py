"""Process-wide shared clients and managed servers, for Beam DoFns.

A Beam worker process may run many DoFn instances (stages, threads); they should share one
HTTP client per configuration (one in-flight limit, one connection pool) and, in managed
mode, one vLLM server per worker process. Both are reference counted:

- `acquire_client(config)` / `release_client(config)`: the client is closed when its last
  user releases it.
- `acquire_server(config)` / `release_server(config)`: the first acquire starts the server
  (minutes on CPU); when the last user releases it, it is stopped after `linger_s` unless a
  new user arrives (consecutive stages in one worker reuse it). Servers left at interpreter
  exit are stopped by `model_server.serve`'s atexit hook; the supervisor stops them if the
  worker dies abruptly.
"""

from __future__ import annotations

import logging
import threading

from model_server.client import ClientConfig, ModelClient
from model_server.serve import ServeConfig, VLLMServer

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_CLIENTS: dict[ClientConfig, list] = {}  # config -> [client, refcount]
_SERVERS: dict[ServeConfig, list] = {}  # config -> [server, refcount, stop timer]
_SERVER_START_LOCKS: dict[ServeConfig, threading.Lock] = {}


def acquire_client(config: ClientConfig) -> ModelClient:
    with _LOCK:
        entry = _CLIENTS.get(config)
        if entry is None:
            entry = _CLIENTS[config] = [ModelClient(config), 0]
        entry[1] += 1
        return entry[0]


def release_client(config: ClientConfig) -> None:
    with _LOCK:
        entry = _CLIENTS.get(config)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _CLIENTS[config]
    entry[0].close()


def acquire_server(config: ServeConfig) -> VLLMServer:
    """The running server for `config` in this process, started on first use."""
    with _LOCK:
        start_lock = _SERVER_START_LOCKS.setdefault(config, threading.Lock())
    # One thread starts the server; others wait for it instead of starting a second one.
    with start_lock:
        with _LOCK:
            entry = _SERVERS.get(config)
            if entry is not None:
                if entry[2] is not None:
                    entry[2].cancel()
                    entry[2] = None
                if entry[0].alive():
                    entry[1] += 1
                    return entry[0]
                del _SERVERS[config]  # it died: start a fresh one below
        server = VLLMServer(config)
        server.start()
        with _LOCK:
            _SERVERS[config] = [server, 1, None]
        return server


def release_server(config: ServeConfig, linger_s: float = 60.0) -> None:
    with _LOCK:
        entry = _SERVERS.get(config)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        if linger_s <= 0:
            del _SERVERS[config]
            server = entry[0]
        else:
            timer = threading.Timer(linger_s, _stop_if_unused, args=(config, entry[0]))
            timer.daemon = True
            entry[2] = timer
            timer.start()
            return
    server.stop()


def _stop_if_unused(config: ServeConfig, server: VLLMServer) -> None:
    with _LOCK:
        entry = _SERVERS.get(config)
        if entry is None or entry[0] is not server or entry[1] > 0:
            return
        del _SERVERS[config]
    log.info("stopping idle managed vLLM server at %s", server.base_url)
    server.stop()


def shutdown_all() -> None:
    """Closes every shared client and stops every managed server of this process."""
    with _LOCK:
        clients = [entry[0] for entry in _CLIENTS.values()]
        servers = [entry for entry in _SERVERS.values()]
        _CLIENTS.clear()
        _SERVERS.clear()
    for client in clients:
        client.close()
    for entry in servers:
        if entry[2] is not None:
            entry[2].cancel()
        entry[0].stop()
