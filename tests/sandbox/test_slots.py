"""One budget of running programs per machine, whatever the number of processes using it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_image import MachineSlots, machine_slots
from sandbox_image.slots import default_slots_dir, machine_cores
from tests.sandbox.conftest import backend_available

pytestmark = pytest.mark.timeout(300)  # processes that wait for slots

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from sandbox_image import MachineSlots
slots = MachineSlots(int(sys.argv[1]), sys.argv[2])
held = [slots.acquire() for _ in range(int(sys.argv[1]))]
print("held", sorted(held), flush=True)
time.sleep(3600)
"""

# A worker process: its own pool of 4 supervisors, all running programs that report when they
# started and ended (CLOCK_MONOTONIC is the same inside the sandbox), after the test says go.
RUNNER = """
import json, sys
from sandbox_image import SandboxConfig, SandboxPool
slots, directory, programs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
config = SandboxConfig(
    timeout_s=60, preload=(), machine_slots=slots, slots_dir=directory, backend=sys.argv[4]
)
source = (
    "import time\\nstart = time.monotonic()\\ntime.sleep(0.15)\\n"
    "print(start, time.monotonic())\\n"
)
with SandboxPool(config, workers=4) as pool:
    print("ready", flush=True)
    sys.stdin.readline()
    results = pool.run_many([source] * programs)
assert all(r.passed for r in results), [r for r in results if not r.passed]
print(json.dumps([[float(x) for x in r.stdout.split()] for r in results]), flush=True)
"""


def _python(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def max_overlap(intervals: list[list[float]]) -> int:
    """Most intervals open at one instant (an end and a start at the same instant: not both)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_max_overlap() -> None:
    assert max_overlap([[0, 1], [1, 2], [2, 3]]) == 1
    assert max_overlap([[0, 3], [1, 2], [1.5, 4], [3.5, 5]]) == 3
    assert max_overlap([]) == 0


def _run_two_processes(slots: int, directory: Path, backend: str) -> list[list[float]]:
    runners = [_python(RUNNER, slots, directory, 12, backend) for _ in range(2)]
    try:
        for runner in runners:
            assert runner.stdout is not None and runner.stdout.readline() == "ready\n"
        for runner in runners:  # both start together
            assert runner.stdin is not None
            runner.stdin.write("go\n")
            runner.stdin.flush()
        intervals = []
        for runner in runners:
            out, _ = runner.communicate(timeout=300)
            assert runner.returncode == 0
            intervals += json.loads(out.strip().splitlines()[-1])
    finally:
        for runner in runners:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    assert len(intervals) == 24
    return intervals


@pytest.mark.parametrize("backend", ["bwrap", "rlimits"])
def test_two_processes_never_run_more_programs_than_the_budget(
    backend: str, tmp_path: Path
) -> None:
    # Both backends come with scripts/setup.sh: one that is missing fails, it is not skipped.
    assert backend_available(backend), f"{backend} backend is not available on this machine"
    # Two processes with 4 supervisors each: 8 programs could run at once.
    assert max_overlap(_run_two_processes(2, tmp_path / "two", backend)) <= 2
    # The same load under a budget of 8 does overlap more than 2: the count above can fail.
    assert max_overlap(_run_two_processes(8, tmp_path / "eight", backend)) > 2


def test_a_killed_holder_releases_its_slots(tmp_path: Path) -> None:
    holder = _python(HOLDER, 2, tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held [0, 1]\n"
        slots = MachineSlots(2, str(tmp_path))
        assert slots.try_acquire() is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        taken = {slots.try_acquire(), slots.try_acquire()}
        assert taken == {0, 1} and slots.try_acquire() is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_threads_of_one_process_share_the_budget(tmp_path: Path) -> None:
    slots = MachineSlots(2, str(tmp_path))
    first, second = slots.acquire(), slots.acquire()
    assert {first, second} == {0, 1} and slots.try_acquire() is None
    assert slots.held() == 2
    slots.release(first)
    assert slots.try_acquire() == first
    # Another process sees them taken too.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom sandbox_image import MachineSlots\n"
            "print(MachineSlots(2, sys.argv[1]).try_acquire())",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "None", probe.stderr


def test_defaults_come_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOX_SLOTS", raising=False)
    monkeypatch.delenv("SANDBOX_SLOTS_DIR", raising=False)
    assert 1 <= machine_cores() <= (os.cpu_count() or 1)
    assert default_slots_dir().endswith(f"sandbox-slots-{os.getuid()}")
    slots = machine_slots()
    assert slots.count == machine_cores() and slots is machine_slots()
    monkeypatch.setenv("SANDBOX_SLOTS", "3")
    assert machine_slots().count == 3
    with pytest.raises(ValueError):
        MachineSlots(0, "/nonexistent")
