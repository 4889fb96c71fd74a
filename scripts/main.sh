#!/usr/bin/env bash
# The main job: sets up .venv on first use, then runs boomerang distillation end to end on the
# embedded SmolLM2-135M teacher (distill, patch every size, evaluate with baselines, report).
#   bash scripts/main.sh                        # CPU preset (GPU preset when an NVIDIA GPU is present)
#   bash scripts/main.sh --preset gpu --output_dir runs/main-gpu
#   bash scripts/main.sh --layer_map 2,2,1 --patch_first_k_layers   # method.md's Llama map, first-k order
#   bash scripts/main.sh --data_dir /path/to/data      # default $BOOMERANG_DATA, else ../shared/data
#   bash scripts/main.sh --experiments --seeds 0,1,2   # the paper's comparisons (random init, loss ablations,
#                                                      # same-size students) at three training seeds:
#                                                      # python -m reproduce.experiments
# Safe to run again: finished stages are reused, an interrupted distillation resumes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
export TOKENIZERS_PARALLELISM=false
module=reproduce.main_job
if [ "${1:-}" = "--experiments" ]; then  # the paper's comparisons (reproduce/experiments.py)
  shift
  module=reproduce.experiments
fi
exec "${BOOMERANG_VENV:-$root/.venv}/bin/python" -m "$module" "$@"
