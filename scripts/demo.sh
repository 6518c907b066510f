#!/usr/bin/env bash
# The README's main command: runs the pipeline on the bundled standard-library shard with the
# DirectRunner and prints where the outputs are.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
PY=.venv/bin/python
echo "[demo] running the seed stage on the bundled shard (DirectRunner) -> $OUT"
$PY -m beam_pipeline --output_dir "$OUT" --to_stage seeds
echo "[demo] seeds:      $OUT/seeds/"
echo "[demo] rejections: $OUT/rejected/seeds/"
echo "[demo] report:     $OUT/report.json"
