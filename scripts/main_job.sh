#!/usr/bin/env bash
# The main job: baseline vs CAT on STG with the embedded SmolLM2-135M (30-65 minutes on 2 CPU
# cores). Re-running resumes an interrupted experiment. Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/cattune experiment --config configs/experiment_stg_smollm2.yaml "$@"
