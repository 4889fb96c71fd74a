#!/usr/bin/env bash
# The paper's own training code as a reference environment, outside this repository.
#
# Makes a second virtual environment with the versions the paper's code pins
# (dcml-lab/boomerang-distillation, requirements.txt at the pinned commit below: torch 2.9.0,
# transformers 4.51.3, datasets 3.6.0; requirements_dev.txt: accelerate 1.6.0) and exports the
# paper's code, unmodified, at the pinned commit into $PAPER_HOME/src. Nothing of the paper's code
# enters this repository.
#
#   bash bench/paper_reference/setup.sh [PAPER_GIT_DIR]
#
# PAPER_GIT_DIR: a git directory (or clone) of dcml-lab/boomerang-distillation that holds the pinned
# commit; without it the script clones https://github.com/dcml-lab/boomerang-distillation.
# PAPER_HOME (default /work/venvs/paper): where the venv (PAPER_HOME/venv) and code (PAPER_HOME/src) go.
# PYTHON (default python3.11). The install runs under `nice -n 19`.
set -euo pipefail

PAPER_COMMIT=373c8f8c2ad17c5d454179d51178a39a8246535e
PAPER_HOME=${PAPER_HOME:-/work/venvs/paper}
PYTHON=${PYTHON:-python3.11}
SRC_GIT=${1:-}

mkdir -p "$PAPER_HOME"
if [ -z "$SRC_GIT" ]; then
    SRC_GIT="$PAPER_HOME/boomerang-distillation.git"
    [ -d "$SRC_GIT" ] || git clone --bare https://github.com/dcml-lab/boomerang-distillation "$SRC_GIT"
fi
if ! git --git-dir="$SRC_GIT" cat-file -e "$PAPER_COMMIT^{commit}" 2>/dev/null; then
    # a work-tree clone rather than a bare/git dir
    if git -C "$SRC_GIT" cat-file -e "$PAPER_COMMIT^{commit}" 2>/dev/null; then
        SRC_GIT=$(git -C "$SRC_GIT" rev-parse --absolute-git-dir)
    else
        echo "error: $SRC_GIT does not hold the paper's pinned commit $PAPER_COMMIT;" \
             "pass a clone of dcml-lab/boomerang-distillation that does" >&2
        exit 2
    fi
fi
rm -rf "$PAPER_HOME/src.tmp" && mkdir -p "$PAPER_HOME/src.tmp"
git --git-dir="$SRC_GIT" archive "$PAPER_COMMIT" | tar -x -C "$PAPER_HOME/src.tmp"
echo "$PAPER_COMMIT" > "$PAPER_HOME/src.tmp/PAPER_COMMIT"
rm -rf "$PAPER_HOME/src" && mv "$PAPER_HOME/src.tmp" "$PAPER_HOME/src"

# The pins, read from the paper's own files at that commit (one source of truth).
pin() { grep -i -E "^$1==" "$PAPER_HOME/src/$2" | head -1; }
PINS=("$(pin torch requirements.txt)" "$(pin transformers requirements.txt)" \
      "$(pin datasets requirements.txt)" "$(pin accelerate requirements_dev.txt)")
echo "pins: ${PINS[*]}"

[ -x "$PAPER_HOME/venv/bin/python" ] || "$PYTHON" -m venv "$PAPER_HOME/venv"
# PyPI's torch wheel for Linux x86-64 brings the CUDA runtime packages (a few GB); it runs on CPU too.
nice -n 19 "$PAPER_HOME/venv/bin/pip" install --no-input "${PINS[@]}" safetensors
"$PAPER_HOME/venv/bin/python" - <<'PY'
import accelerate, datasets, torch, transformers
print("paper env:", "torch", torch.__version__, "transformers", transformers.__version__,
      "datasets", datasets.__version__, "accelerate", accelerate.__version__)
PY
