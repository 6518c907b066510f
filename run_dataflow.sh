#!/usr/bin/env bash
# Submits the pipeline to Google Cloud Dataflow. Turns environment variables into flags only.
set -euo pipefail
echo "run_dataflow.sh: the Dataflow submission (worker image, GPU or external model server) is not wired yet." >&2
echo "Run locally with: python -m beam_pipeline --output_dir OUT [--runner FnApiRunner]" >&2
exit 2
