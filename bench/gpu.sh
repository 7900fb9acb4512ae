#!/usr/bin/env bash
# Costs of SD 1.5 (512 px) and SDXL (1024 px) training and generation on one GPU, written as JSON.
#   bash bench/gpu.sh [--out FILE]      on a CUDA machine (budget: 8 minutes on one H100)
#   bash bench/gpu.sh --smoke [--out FILE]   the same code path on the tiny model, on the CPU, in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
exec python bench/gpu.py "$@"
