#!/usr/bin/env bash
# Spark's GPU discovery script for a worker (spark.worker.resource.gpu.discoveryScript): prints
# the GPUs this machine has as the JSON Spark reads, {"name": "gpu", "addresses": ["0", "1"]}.
# Like Spark's example (examples/src/main/scripts/getGpusResources.sh in apache/spark, not in
# the PyPI wheel), it asks nvidia-smi for the GPU indices. Unlike it, a machine without
# nvidia-smi or without GPUs prints an empty list instead of [""], so the worker fails with
# Spark's own "less than what the user requested" message naming the amount.
# CUDA_VISIBLE_DEVICES is not applied: Spark hands each executor addresses from this list.
set -euo pipefail

addresses=""
if command -v nvidia-smi >/dev/null 2>&1; then
  # One index per line; a failing nvidia-smi (no driver) counts as no GPU.
  while IFS= read -r index; do
    index="${index//[[:space:]]/}"
    [[ "$index" =~ ^[0-9]+$ ]] || continue
    addresses+="${addresses:+, }\"$index\""
  done < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
