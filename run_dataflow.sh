#!/usr/bin/env bash
# Submits the whole pipeline to Google Cloud Dataflow; only turns environment variables into
# flags. DRY_RUN=1 builds and validates the job graph without submitting (no credentials).
#
# Required: PROJECT, REGION, BUCKET (gs://...), INPUT (parquet shards: gs://... or hf://...)
# Model, one of:
#   MODEL_SERVER_URL  an external OpenAI-compatible vLLM pool shared by all workers
#   GPU_TYPE          e.g. nvidia-l4: each worker gets a GPU and serves MODEL itself
# Optional: MODEL (default bigcode/starcoder2-15b), IMAGE (worker image built from
# sandbox_image/Dockerfile; default $REGION-docker.pkg.dev/$PROJECT/selfcodealign/worker:latest),
# MACHINE_TYPE, MAX_WORKERS (default 40), NUM_SAMPLES (default 10), JOB_NAME, FROM_STAGE,
# TO_STAGE, EXTRA_ARGS (more pipeline flags).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
for var in PROJECT REGION BUCKET INPUT; do [ -n "${!var:-}" ] || missing+=("$var"); done
if [ -z "${MODEL_SERVER_URL:-}" ] && [ -z "${GPU_TYPE:-}" ]; then missing+=("MODEL_SERVER_URL or GPU_TYPE"); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "run_dataflow.sh: set ${missing[*]} (see the comment at the top of this script)" >&2
  exit 2
fi
case "$BUCKET" in gs://*) ;; *) echo "run_dataflow.sh: BUCKET must start with gs://" >&2; exit 2 ;; esac

PY=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-bigcode/starcoder2-15b}
IMAGE=${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/selfcodealign/worker:latest}
JOB_NAME=${JOB_NAME:-selfcodealign-$(date +%Y%m%d-%H%M%S)}
flags=(
  --runner DataflowRunner
  --project "$PROJECT" --region "$REGION" --job_name "$JOB_NAME"
  --temp_location "$BUCKET/tmp" --staging_location "$BUCKET/staging"
  --setup_file ./setup.py --sdk_container_image "$IMAGE" --sdk_location container
  --experiments use_runner_v2 --experiments shuffle_mode=service
  --max_num_workers "${MAX_WORKERS:-40}"
  --input "$INPUT" --output_dir "$BUCKET/out" --cache_dir "$BUCKET/cache"
  --model "$MODEL" --num_samples "${NUM_SAMPLES:-10}"
  --from_stage "${FROM_STAGE:-seeds}" --to_stage "${TO_STAGE:-final}"
)
if [ -n "${MODEL_SERVER_URL:-}" ]; then
  flags+=(--model_server_url "$MODEL_SERVER_URL" --machine_type "${MACHINE_TYPE:-n2-standard-8}")
else
  flags+=(
    --machine_type "${MACHINE_TYPE:-g2-standard-8}"
    --dataflow_service_options "worker_accelerator=type:$GPU_TYPE;count:1;install-nvidia-driver"
    # one SDK process per worker, so one vLLM server per GPU
    --experiments no_use_multiple_sdk_containers
  )
fi
if [ "${DRY_RUN:-0}" = "1" ]; then
  flags+=(--dry_run True --no_auth)
fi
# shellcheck disable=SC2086
exec "$PY" -m beam_pipeline "${flags[@]}" ${EXTRA_ARGS:-}
