#!/usr/bin/env bash
# One GPU check in at most ~8 minutes on one NVIDIA GPU, writing ONE JSON of figures (bench/gpu_check.py):
# the CUDA-only tests, 20 steps of the GPU preset on the embedded teacher (bf16), the training benchmark on a
# Qwen3-1.7B-shaped random pair at sequence 2048 (packed vs the paper's padded recipe), and a 3-size sweep.
# Each part has its own timeout; a failed part is recorded and the next one runs.
#   bash scripts/gpu_check.sh                                  # -> $OUT/gpu_check.json (or a temp folder)
#   bash scripts/gpu_check.sh --output /path/gpu_check.json --data ../shared/data
#   bash scripts/gpu_check.sh --dry-run --output /tmp/g.json   # CPU: tiny shapes, a couple of steps (tested)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${BOOMERANG_VENV:-$root/.venv}/bin/python"
[ -x "$py" ] || py="$(command -v python3 || command -v python)"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" bench/gpu_check.py "$@"
