"""One budget of concurrently running programs per machine, shared by every process on it.

A runner starts one SDK process per core or more, each with its own `SandboxPool`; without a
common bound, N processes would each run their share of programs at once and a CPU-bound
program would get a fraction of a core, while its wall clock runs on. `MachineSlots` is a
counting semaphore made of files: `count` slot files in one directory, a slot held by holding
an exclusive `flock` on its file. The kernel drops a lock when the last descriptor of its open
file is closed, so a process that is killed (SIGKILL, OOM killer, a crashed worker) releases its
slots with it: nothing to clean up, no lease to expire.

Waiting: a process that finds every slot taken queues on a `queue` lock file (only its holder
looks for a slot, the others sleep in the kernel), and sleeps on a FIFO that every release
writes a byte to; a release by a process that was killed writes nothing, so the wait also
wakes up every `POLL_S` to look again. Threads of one process queue on a `threading.Lock`
first: a lock belongs to an open file, and one process's threads share its descriptors.

See docs/sandbox.md ("One budget per machine").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import select
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.05  # a slot freed by a killed process is seen this late at worst
ENV_DIR = "SANDBOX_SLOTS_DIR"
ENV_COUNT = "SANDBOX_SLOTS"


def machine_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), None when
    unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return _cgroup_v1_cpu_quota()


def _cgroup_v1_cpu_quota() -> float | None:
    try:
        root = Path("/sys/fs/cgroup/cpu")
        quota_us = int((root / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def default_slots_dir() -> str:
    """A directory every process of this user on the machine agrees on.

    /dev/shm (memory-backed, wiped at boot) when present, else the temporary directory; one
    directory per uid, so that another user can neither hold our slots nor be held by them.
    `SANDBOX_SLOTS_DIR` overrides it, e.g. with a volume that the containers of one VM share.
    """
    override = os.environ.get(ENV_DIR)
    if override:
        return override
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"sandbox-slots-{os.getuid()}")


def default_slot_count() -> int:
    override = os.environ.get(ENV_COUNT)
    if override:
        return max(1, int(override))
    return machine_cores()


class MachineSlots:
    """`count` slots in `directory`, shared by every process that names the same directory.

    Processes that disagree on `count` are bounded by the largest one. Thread-safe; `hold()` is
    the way to use it. Forked copies of a process open their own descriptors on first use.
    """

    def __init__(self, count: int, directory: str) -> None:
        if count < 1:
            raise ValueError(f"slot count must be >= 1, got {count}")
        self.count = count
        self.directory = directory
        self._lock = threading.Lock()  # guards _fds and _held
        self._queue_lock = threading.Lock()  # this process's threads wait here first
        self._pid = -1
        self._fds: list[int] = []
        self._queue_fd = -1
        self._wake_fd = -1
        self._held: set[int] = set()

    def _open(self) -> None:
        """Opens (creating them if needed) the slot, queue and wake-up files in this process."""
        if self._pid == os.getpid():
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._fds = [
            os.open(os.path.join(self.directory, f"slot-{i}"), flags, 0o600)
            for i in range(self.count)
        ]
        self._queue_fd = os.open(os.path.join(self.directory, "queue"), flags, 0o600)
        wake = os.path.join(self.directory, "wake")
        with contextlib.suppress(FileExistsError):
            os.mkfifo(wake, 0o600)
        # O_RDWR on a FIFO never blocks and keeps it open for writing, so reads never see EOF.
        self._wake_fd = os.open(wake, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._held = set()
        self._pid = os.getpid()

    def _try_take(self) -> int | None:
        with self._lock:
            for index, fd in enumerate(self._fds):
                if index in self._held:
                    continue  # ours already: flock on the same open file would succeed again
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                self._held.add(index)
                return index
        return None

    def _drain_wake(self) -> None:
        read = b"wake"
        with contextlib.suppress(BlockingIOError):
            while read:  # until the FIFO is empty (BlockingIOError) or closed (b"")
                read = os.read(self._wake_fd, 4096)

    def try_acquire(self) -> int | None:
        """A free slot's index without waiting, or None when every slot is taken."""
        with self._lock:
            self._open()
        return self._try_take()

    def acquire(self) -> int:
        """Blocks until a slot is free; returns its index (pass it to `release`)."""
        with self._lock:
            self._open()
        waker = select.poll()  # not select(): a worker may hold more than 1024 descriptors
        waker.register(self._wake_fd, select.POLLIN)
        with self._queue_lock:
            fcntl.flock(self._queue_fd, fcntl.LOCK_EX)
            try:
                while True:
                    self._drain_wake()  # wake-ups from before this look are stale
                    index = self._try_take()
                    if index is not None:
                        return index
                    waker.poll(POLL_S * 1000)
            finally:
                fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def release(self, index: int) -> None:
        with self._lock:
            if self._pid != os.getpid() or index not in self._held:
                return  # a forked copy never held its parent's slot
            fcntl.flock(self._fds[index], fcntl.LOCK_UN)
            self._held.discard(index)
            try:
                os.write(self._wake_fd, b"x")
            except OSError as exc:  # a full FIFO already holds a wake-up
                if exc.errno != errno.EAGAIN:
                    raise

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        index = self.acquire()
        try:
            yield index
        finally:
            self.release(index)

    def held(self) -> int:
        """Slots this process holds now."""
        with self._lock:
            return len(self._held) if self._pid == os.getpid() else 0


_shared: dict[tuple[int, str], MachineSlots] = {}
_shared_lock = threading.Lock()


def machine_slots(count: int | None = None, directory: str | None = None) -> MachineSlots:
    """The process-wide `MachineSlots` for (count, directory); defaults from the machine."""
    key = (count or default_slot_count(), os.path.abspath(directory or default_slots_dir()))
    with _shared_lock:
        slots = _shared.get(key)
        if slots is None:
            slots = _shared[key] = MachineSlots(*key)
        return slots
