#!/usr/bin/env bash
# The README's main command: prepares a small real model, serves it with vLLM on the CPU, runs
# the whole pipeline on the bundled standard-library shard with the DirectRunner, stops the
# server and prints where the dataset and the report are.
#
#   bash scripts/demo.sh [OUT]          (make demo)
# Environment: DEMO_MODEL (qwen-coder-0.5b | smollm2), DEMO_SEEDS, DEMO_SAMPLES, DEMO_PORT,
# DEMO_PROMPT_MODE (completion | chat; the default is the mode docs/quality.md measured to
# accept more pairs per hour with this model on a 2-core CPU), DEMO_ARGS (extra pipeline flags).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
PY=.venv/bin/python
MODEL=${DEMO_MODEL:-qwen-coder-0.5b}
SEEDS=${DEMO_SEEDS:-16}
SAMPLES=${DEMO_SAMPLES:-4}
PORT=${DEMO_PORT:-8765}
PROMPT_MODE=${DEMO_PROMPT_MODE:-completion}
URL="http://127.0.0.1:${PORT}/v1"
mkdir -p "$OUT"

echo "[demo] preparing $MODEL (cached after the first time)"
MODEL_DIR=$($PY -m model_server prepare --model "$MODEL" | tail -n 1)

echo "[demo] starting vLLM (CPU) on port $PORT; log: $OUT/vllm.log"
$PY -m model_server serve --model "$MODEL_DIR" --served-model-name "$MODEL" --port "$PORT" \
  --log-path "$OUT/vllm.log" >"$OUT/serve.out" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
}
trap stop_server EXIT INT TERM
for _ in $(seq 1 600); do
  grep -q "^serving" "$OUT/serve.out" 2>/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/serve.out"; exit 1; }
  sleep 1
done
grep -q "^serving" "$OUT/serve.out" || { echo "[demo] vLLM did not start"; exit 1; }

MBPP=()
[ -f ../shared/data/mbpp.jsonl ] && MBPP=(--decontam_mbpp_path ../shared/data/mbpp.jsonl)
echo "[demo] running the pipeline: $SEEDS seeds x $SAMPLES responses, $PROMPT_MODE prompts (DirectRunner)"
$PY -m beam_pipeline --output_dir "$OUT" --model_server_url "$URL" --model "$MODEL" \
  --max_seeds "$SEEDS" --num_samples "$SAMPLES" --max_new_tokens 1024 --max_model_len 4096 \
  --prompt_mode "$PROMPT_MODE" \
  --concepts_k 4 --instruction_k 4 --max_in_flight 16 --batch_size 8 \
  "${MBPP[@]}" ${DEMO_ARGS:-}
stop_server
echo "[demo] final dataset: $OUT/final/"
echo "[demo] report:        $OUT/report.html (and report.json)"
echo "[demo] every stage:   $OUT/<stage>/, rejections in $OUT/rejected/, dead letters in $OUT/errors/"
