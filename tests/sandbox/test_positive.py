"""Ordinary programs behave as under `python main.py`, in the pool and one-shot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

import pytest

from sandbox_image import SandboxConfig, SandboxPool, SandboxUnavailable, run_program
from tests.sandbox.conftest import ORDINARY_TIMEOUT_S, TEST_CONFIG, backend_available

pytestmark = pytest.mark.timeout(300)  # sandboxed programs

RELAXED = TEST_CONFIG.replace(timeout_s=ORDINARY_TIMEOUT_S)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROGRAMS = {
    "numpy": ("import numpy as np\nassert np.arange(10).sum() == 45\nprint('ok')\n", "passed"),
    "pandas": (
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})\nassert df.a.sum() == 6\n",
        "passed",
    ),
    "unittest_pass": (
        "import unittest\n\nclass T(unittest.TestCase):\n    def test_add(self):\n"
        "        self.assertEqual(1 + 1, 2)\n\nif __name__ == '__main__':\n    unittest.main()\n",
        "passed",
    ),
    "unittest_fail": (
        "import unittest\n\nclass T(unittest.TestCase):\n    def test_add(self):\n"
        "        self.assertEqual(1 + 1, 3)\n\nif __name__ == '__main__':\n    unittest.main()\n",
        "failed",
    ),
    "assert_fail": ("def f(x):\n    return x + 1\n\nassert f(1) == 3\n", "failed"),
    "reads_empty_stdin": ("import sys\ndata = sys.stdin.read()\nassert data == ''\n", "passed"),
    "input_without_stdin": ("name = input()\n", "failed"),
    "multiprocessing": (
        "from multiprocessing import Pool\n\nif __name__ == '__main__':\n    with Pool(2) as p:\n"
        "        assert p.map(abs, [-1, -2]) == [1, 2]\n",
        "passed",
    ),
    "files_in_scratch_and_tmp": (
        "import os, tempfile\nopen('data.txt', 'w').write('x')\n"
        "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'y')\n"
        "open('/tmp/other.txt', 'w').write('z')\nos.remove('/tmp/other.txt')\n"
        "assert os.path.exists('data.txt')\n",
        "passed",
    ),
    "exit_builtin": ("print('bye')\nexit()\n", "passed"),
    "sys_exit_zero": ("import sys\nsys.exit(0)\n", "passed"),
    "sys_exit_message": ("import sys\nsys.exit('bad input')\n", "failed"),
    "dunder_main_and_file": (
        "assert __name__ == '__main__'\nassert __file__.endswith('main.py')\n"
        "import inspect\n\ndef f():\n    return 1\n\nassert 'return 1' in inspect.getsource(f)\n",
        "passed",
    ),
    "joins_non_daemon_threads": (
        "import threading, time\n\ndef late():\n    time.sleep(0.2)\n    print('late')\n\n"
        "threading.Thread(target=late).start()\n",
        "passed",
    ),
    "runs_atexit": ("import atexit\natexit.register(lambda: print('atexit ran'))\n", "passed"),
    "syntax_error": ("def f(:\n    pass\n", "failed"),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_ordinary_program_in_pool(name: str, pool: SandboxPool) -> None:
    source, status = PROGRAMS[name]
    result = pool.run(source, timeout_s=ORDINARY_TIMEOUT_S)
    assert result.status == status, result
    if name == "joins_non_daemon_threads":
        assert result.stdout == "late\n"
    if name == "runs_atexit":
        assert result.stdout == "atexit ran\n"
    if name == "sys_exit_message":
        assert result.exit_code == 1 and "bad input" in result.stderr
    if name == "syntax_error":
        assert "SyntaxError" in result.stderr and "main.py" in result.stderr


@pytest.mark.parametrize("name", ["numpy", "unittest_pass", "unittest_fail", "multiprocessing"])
def test_ordinary_program_one_shot(name: str, backend: str) -> None:
    source, status = PROGRAMS[name]
    result = run_program(source, RELAXED.replace(backend=backend))
    assert result.status == status, result
    assert result.backend == backend


def test_exit_code_and_traceback(pool: SandboxPool) -> None:
    result = pool.run("import sys\nprint('out')\nsys.exit(3)\n", timeout_s=ORDINARY_TIMEOUT_S)
    assert (result.status, result.exit_code, result.stdout) == ("failed", 3, "out\n")
    result = pool.run("x = 1\nraise ValueError('boom')\n", timeout_s=ORDINARY_TIMEOUT_S)
    assert result.exit_code == 1
    # The traceback starts in the program, as it would natively.
    assert result.stderr.startswith("Traceback (most recent call last):\n  File ")
    assert 'main.py", line 2, in <module>' in result.stderr
    assert "supervisor" not in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: boom")


def test_stdin_is_passed(pool: SandboxPool, backend: str) -> None:
    source = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert pool.run(source, stdin="2 3\n", timeout_s=ORDINARY_TIMEOUT_S).stdout == "5\n"
    one_shot = run_program(source, RELAXED.replace(backend=backend), stdin="4 5\n")
    assert one_shot.stdout == "9\n"


def test_undecodable_output_is_replaced(pool: SandboxPool) -> None:
    result = pool.run(
        "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')\n", timeout_s=ORDINARY_TIMEOUT_S
    )
    assert result.passed and result.stdout == "ok \ufffd\ufffd end"


def test_each_program_gets_fresh_randomness(pool: SandboxPool) -> None:
    source = "import random, numpy\nprint(random.random(), numpy.random.rand())\n"
    first = pool.run(source, timeout_s=ORDINARY_TIMEOUT_S).stdout
    second = pool.run(source, timeout_s=ORDINARY_TIMEOUT_S).stdout
    assert first and second and first != second
    a1, n1 = first.split()
    a2, n2 = second.split()
    assert a1 != a2 and n1 != n2


def test_state_does_not_leak_between_programs(pool: SandboxPool) -> None:
    first = pool.run(
        timeout_s=ORDINARY_TIMEOUT_S,
        source="import os, sys, json\njson.dumps = None\nsys.modules['leak'] = 1\n"
        "os.environ['LEAK'] = '1'\nopen('/tmp/leak', 'w').write('1')\n",
    )
    assert first.passed, first
    second = pool.run(
        timeout_s=ORDINARY_TIMEOUT_S,
        source="import os, sys, json\nassert json.dumps({}) == '{}'\n"
        "assert 'leak' not in sys.modules\nassert 'LEAK' not in os.environ\n"
        "assert not os.path.exists('/tmp/leak') or os.stat('/tmp/leak').st_uid != os.getuid()\n",
    )
    assert second.passed, second


def test_run_many_keeps_order_and_is_thread_safe(backend: str) -> None:
    config = RELAXED.replace(backend=backend, preload=())
    with SandboxPool(config, workers=2) as pool:
        sources = [f"print({i} * 2)" for i in range(40)]
        results = pool.run_many(sources)
        assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(40)]
        outputs: dict[int, str] = {}

        def worker(k: int) -> None:
            outputs[k] = pool.run(f"print({k})").stdout

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outputs == {k: f"{k}\n" for k in range(8)}


def test_pool_replaces_a_dead_supervisor(backend: str) -> None:
    config = RELAXED.replace(backend=backend, preload=())
    with SandboxPool(config, workers=1) as pool:
        assert pool.run("print(1)").passed
        (supervisor,) = list(pool._live)
        supervisor.proc.kill()
        supervisor.proc.wait()
        result = pool.run("print(2)")
        assert result.passed and result.stdout == "2\n", result
        assert supervisor not in pool._live


def test_sandbox_error_is_a_result_not_a_verdict() -> None:
    config = SandboxConfig(python="/nonexistent/python3", max_attempts=2)
    result = run_program("print(1)", config)
    assert result.status == "sandbox_error" and not result.passed
    assert "/nonexistent/python3" in result.stderr
    with pytest.raises(SandboxUnavailable):
        SandboxPool(config, workers=1)


def test_cli_run_prints_one_json_line(tmp_path: os.PathLike) -> None:
    if not (backend_available("bwrap") or backend_available("rlimits")):
        pytest.skip("no sandbox backend")
    program = os.path.join(tmp_path, "prog.py")
    with open(program, "w") as handle:
        handle.write("print('from file')\n")
    done = subprocess.run(
        [sys.executable, "-m", "sandbox_image", "run", program, "--timeout", "5"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["status"] == "passed" and result["stdout"] == "from file\n"
    assert result["backend"] in ("bwrap", "rlimits")


def test_supervisor_forks_from_a_single_thread(pool: SandboxPool) -> None:
    """The fast fork path needs one thread; pandas' pyarrow would add a jemalloc thread."""
    result = pool.run(
        "import os, pandas\nprint(len(os.listdir(f'/proc/{os.getppid()}/task')))\n",
        timeout_s=ORDINARY_TIMEOUT_S,
    )
    assert result.passed and result.stdout == "1\n", result


def test_programs_naming_pandas_run_where_pandas_is_loaded(pool: SandboxPool) -> None:
    probe = "import sys\nprint(('pan' + 'das') in sys.modules, 'numpy' in sys.modules)\n"
    assert (
        pool.run(probe, timeout_s=ORDINARY_TIMEOUT_S).stdout == "False True\n"
    )  # light tier: numpy only
    assert (
        pool.run("# pandas\n" + probe, timeout_s=ORDINARY_TIMEOUT_S).stdout == "True True\n"
    )  # full tier
    # A program that imports pandas without naming it still works, in the light tier.
    imported = pool.run(
        "m = __import__('pan' + 'das')\nprint(m.Series([1, 2]).sum())\n", timeout_s=60
    )
    assert imported.passed and imported.stdout == "3\n", imported


def test_packages_that_live_under_the_host_tmp(backend: str) -> None:
    """A checkout or venv under /tmp (CI does that) is importable, and survives the sweeps."""
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        os.chmod(top, 0o755)
        site = os.path.join(top, "site-packages")
        os.makedirs(site)
        with open(os.path.join(site, "tmp_lived_module.py"), "w") as handle:
            handle.write("VALUE = 42\n")
        os.chmod(site, 0o755)
        config = RELAXED.replace(backend=backend, preload=(), site_packages=(site,))
        with SandboxPool(config, workers=1) as pool:
            for _ in range(3):
                result = pool.run("import tmp_lived_module\nprint(tmp_lived_module.VALUE)\n")
                assert result.passed and result.stdout == "42\n", result
            assert os.path.exists(os.path.join(site, "tmp_lived_module.py"))
