#!/usr/bin/env bash
# The test command: sets up .venv on first use (see scripts/setup_env.sh), then runs the default
# test suite (CPU, tiny random models; slow tests are marked and skipped unless -m slow is given).
#   bash scripts/test.sh                 # the default suite
#   bash scripts/test.sh -m slow         # the slow tests (real SmolLM2 teacher, real data)
#   bash scripts/test.sh tests/test_layer_map.py -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "${BOOMERANG_VENV:-$root/.venv}/bin/python" -m pytest "$@"
