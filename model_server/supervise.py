"""A tiny supervisor between a caller and a vLLM server: no orphans, whatever happens.

`python -m model_server.supervise PARENT_PID GRACE_S -- CMD...` runs CMD in the supervisor's
own process group (the caller starts the supervisor with a new session) and stops the whole
group when any of these happens:
- the caller dies (its pid is no longer our parent), even by SIGKILL;
- the supervisor gets SIGTERM/SIGINT (the caller's normal stop);
- CMD exits (its helpers, e.g. vLLM's engine core, must not outlive it).

Stopping sends SIGTERM to the group, waits GRACE_S, then SIGKILLs the group (itself included).
The child also gets PR_SET_PDEATHSIG so it dies if the supervisor itself is SIGKILLed. This
module never imports vLLM, torch or Beam: it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Asks Linux to send `sig` to this process when its parent thread exits."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except OSError:
        pass  # not Linux: the polling loop still covers a dead caller


def _kill_group(sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(0), sig)


def _stop(child: subprocess.Popen, grace_s: float) -> None:
    # Ignore our own TERM from now on: the group-wide TERM below must not end us before the
    # grace period and the final SIGKILL of stragglers.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _kill_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    # Stragglers (engine core, workers) are in our group; this ends them and us.
    _kill_group(signal.SIGKILL)


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv) < 4:
        print("usage: supervise PARENT_PID GRACE_S -- CMD...", file=sys.stderr)
        return 2
    sep = argv.index("--")
    parent_pid, grace_s = int(argv[0]), float(argv[1])
    cmd = argv[sep + 1 :]
    stop_requested = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    child = subprocess.Popen(cmd, preexec_fn=set_parent_death_signal)
    while True:
        code = child.poll()
        if code is not None:
            _stop(child, min(grace_s, 5.0))
            return code
        if stop_requested or os.getppid() != parent_pid:
            _stop(child, grace_s)
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
