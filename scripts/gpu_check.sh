#!/usr/bin/env bash
# One GPU check in at most ~8 minutes on one NVIDIA GPU, writing ONE JSON of figures (bench/gpu_check.py):
# the CUDA-only tests, 20 steps of the GPU preset on the embedded teacher (bf16), one process with --fsdp on over
# NCCL with a checkpoint, stopped and resumed (losses, the memory plan against max_memory_allocated), the training benchmark on a
# Qwen3-1.7B-shaped random pair at sequence 2048 (packed vs the paper's padded recipe), and a 3-size sweep.
# Each part has its own timeout; a failed part is recorded and the next one runs.
#   bash scripts/gpu_check.sh                                  # -> $OUT/gpu_check.json (or a temp folder)
#   bash scripts/gpu_check.sh --output /path/gpu_check.json --data ../shared/data
#   bash scripts/gpu_check.sh --dry-run --output /tmp/g.json   # CPU: tiny shapes, a couple of steps (tested)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${BOOMERANG_VENV:-$root/.venv}/bin/python"
# The environment first: no .venv -> scripts/setup_env.sh makes one (it needs the package index); whatever happens,
# bench/gpu_check.py then checks the packages and records them (and this step) in the JSON.
setup="present"
if [ ! -x "$py" ] && [ "${BOOMERANG_NO_SETUP:-0}" != 1 ]; then
  if bash scripts/setup_env.sh >"${TMPDIR:-/tmp}/gpu_check_setup.log" 2>&1; then setup="created by scripts/setup_env.sh"
  else setup="scripts/setup_env.sh failed: ${TMPDIR:-/tmp}/gpu_check_setup.log"; fi
fi
[ -x "$py" ] || py="$(command -v python3 || command -v python)"
export BOOMERANG_SETUP_STATUS="$setup"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" bench/gpu_check.py "$@"
