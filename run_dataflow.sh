#!/usr/bin/env bash
# Submits the whole pipeline to Google Cloud Dataflow; only turns environment variables into
# flags. DRY_RUN=1 builds and validates the job graph without submitting (no credentials);
# PRINT_FLAGS=1 prints the pipeline flags and exits.
#
# Required: PROJECT, REGION, BUCKET (gs://...), INPUT (parquet shards: gs://... or hf://...)
# Model, one of:
#   MODEL_SERVER_URL  an external OpenAI-compatible vLLM pool shared by all workers
#   GPU_TYPE          e.g. nvidia-l4: each worker VM gets GPU_COUNT GPUs and serves MODEL itself
# Optional: MODEL (default bigcode/starcoder2-15b), IMAGE (worker image built from
# sandbox_image/Dockerfile; default $REGION-docker.pkg.dev/$PROJECT/selfcodealign/worker:latest),
# MACHINE_TYPE, GPU_COUNT, TENSOR_PARALLEL (default GPU_COUNT), MODEL_WEIGHTS_GIB (for a MODEL
# other than the default, to check that it fits), MAX_WORKERS (default 40), NUM_SAMPLES
# (default 10), JOB_NAME, FROM_STAGE, TO_STAGE, EXTRA_ARGS (more pipeline flags).
# Gated hf:// input (The Stack): HF_TOKEN_SECRET, a Secret Manager secret version holding a hub
# token (projects/P/secrets/NAME/versions/latest; the workers' service account needs
# roles/secretmanager.secretAccessor), or else HF_TOKEN, passed in the job's options.
#
# GPU sizing (managed mode): vLLM keeps gpu_memory_utilization (0.9) of each GPU and needs the
# weights plus room for the KV cache. StarCoder2-15B has 15.96 B parameters: 31.9 GB = 29.7 GiB
# (30 below) in bf16, so it does not fit one 24 GB L4. Its KV cache costs 40 layers x 2 x 4 KV
# heads x 128 x 2 bytes = 80 KiB a token. The GPU count defaults to the smallest power of two
# with count x GPU GiB x 0.9 >= 1.25 x weights = 37.5 GiB (the 0.25 is KV cache room):
#   nvidia-l4 (22 GiB): 1 x 19.8 < 37.5; 2 x 19.8 = 39.6 -> 2 GPUs on g2-standard-24, tensor
#     parallel 2 (48 query and 4 KV heads split evenly); ~8 GiB of KV cache after weights and
#     activations = ~100 k tokens, ~70 sequences of 1.4 k tokens at once.
#   nvidia-tesla-a100 (37 GiB): 33.3 < 37.5 -> 2 GPUs, a2-highgpu-2g.
#   nvidia-a100-80gb / nvidia-h100-80gb (74 GiB): 66.6 -> 1 GPU (a2-ultragpu-1g / a3-highgpu-1g),
#     ~35 GiB of KV cache.
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "run_dataflow.sh: $*" >&2; exit 2; }
missing=()
for var in PROJECT REGION BUCKET INPUT; do [ -n "${!var:-}" ] || missing+=("$var"); done
if [ -z "${MODEL_SERVER_URL:-}" ] && [ -z "${GPU_TYPE:-}" ]; then missing+=("MODEL_SERVER_URL or GPU_TYPE"); fi
if [ ${#missing[@]} -gt 0 ]; then
  die "set ${missing[*]} (see the comment at the top of this script)"
fi
case "$BUCKET" in gs://*) ;; *) die "BUCKET must start with gs://" ;; esac

PY=${PYTHON:-.venv/bin/python}
DEFAULT_MODEL=bigcode/starcoder2-15b
MODEL=${MODEL:-$DEFAULT_MODEL}
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
if [ -n "${HF_TOKEN_SECRET:-}" ]; then
  flags+=(--hf_token_secret "$HF_TOKEN_SECRET")
elif [ -n "${HF_TOKEN:-}" ] && [[ "$INPUT" == hf://* ]]; then
  echo "run_dataflow.sh: HF_TOKEN goes into the job's options; HF_TOKEN_SECRET keeps it out" >&2
  flags+=(--hf_token "$HF_TOKEN")
elif [[ "$INPUT" == hf://* ]]; then
  echo "run_dataflow.sh: hf:// input without HF_TOKEN_SECRET or HF_TOKEN: gated datasets fail" >&2
fi

if [ -n "${MODEL_SERVER_URL:-}" ]; then
  flags+=(--model_server_url "$MODEL_SERVER_URL" --machine_type "${MACHINE_TYPE:-n2-standard-8}")
else
  case "$GPU_TYPE" in
    nvidia-l4) gpu_gib=22 ;;
    nvidia-tesla-a100) gpu_gib=37 ;;
    nvidia-a100-80gb | nvidia-h100-80gb) gpu_gib=74 ;;
    *) gpu_gib=0 ;;
  esac
  weights_gib=${MODEL_WEIGHTS_GIB:-}
  if [ -z "$weights_gib" ] && [ "$MODEL" = "$DEFAULT_MODEL" ]; then weights_gib=30; fi
  fits() { # fits COUNT: COUNT x gpu_gib x 0.9 >= 1.25 x weights (integer arithmetic, x100)
    [ "$gpu_gib" -gt 0 ] && [ $(( $1 * gpu_gib * 90 )) -ge $(( weights_gib * 125 )) ]
  }
  count=${GPU_COUNT:-}
  if [ -z "$count" ]; then
    count=1
    if [ -n "$weights_gib" ] && [ "$gpu_gib" -gt 0 ]; then
      while ! fits "$count" && [ "$count" -lt 8 ]; do count=$(( count * 2 )); done
    fi
  fi
  if [ -n "$weights_gib" ] && [ "$gpu_gib" -gt 0 ] && ! fits "$count"; then
    die "$MODEL needs about ${weights_gib} GiB of weights plus KV cache room; $count x $GPU_TYPE" \
      "(${gpu_gib} GiB each, 0.9 usable) is too small: raise GPU_COUNT or pick a larger GPU_TYPE"
  fi
  machine=${MACHINE_TYPE:-}
  if [ -z "$machine" ]; then
    case "$GPU_TYPE:$count" in
      nvidia-l4:1) machine=g2-standard-8 ;;
      nvidia-l4:2) machine=g2-standard-24 ;;
      nvidia-l4:4) machine=g2-standard-48 ;;
      nvidia-l4:8) machine=g2-standard-96 ;;
      nvidia-tesla-a100:*) machine=a2-highgpu-${count}g ;;
      nvidia-a100-80gb:*) machine=a2-ultragpu-${count}g ;;
      nvidia-h100-80gb:*) machine=a3-highgpu-${count}g ;;
      *) die "no default machine type for $count x $GPU_TYPE: set MACHINE_TYPE" ;;
    esac
  fi
  flags+=(
    --machine_type "$machine"
    --dataflow_service_options "worker_accelerator=type:$GPU_TYPE;count:$count;install-nvidia-driver"
    --tensor_parallel_size "${TENSOR_PARALLEL:-$count}"
    # one SDK process per worker, so one vLLM server per VM over all its GPUs
    --experiments no_use_multiple_sdk_containers
  )
fi
if [ "${DRY_RUN:-0}" = "1" ]; then
  flags+=(--dry_run True --no_auth)
fi
if [ "${PRINT_FLAGS:-0}" = "1" ]; then
  masked=0
  for f in "${flags[@]}"; do
    if [ "$masked" = 1 ]; then echo "***"; masked=0; continue; fi
    echo "$f"; [ "$f" = "--hf_token" ] && masked=1
  done
  exit 0
fi
# shellcheck disable=SC2086
exec "$PY" -m beam_pipeline "${flags[@]}" ${EXTRA_ARGS:-}
