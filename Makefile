# The targets people look for. Every target sets up .venv first (fast when it is up to date).
PY := .venv/bin/python
OUT ?= out

.PHONY: setup demo test test-all bench lint format shard

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh $(OUT)

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "not gpu and not docker and not cloud"

bench: setup
	$(PY) bench/bench_seeds.py
	$(PY) bench/bench_parsers.py
	$(PY) bench/bench_sandbox.py
	$(PY) bench/bench_minhash.py signatures
	$(PY) bench/bench_sft.py --tiny --runs 5

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

shard: setup
	$(PY) scripts/build_seed_shard.py
