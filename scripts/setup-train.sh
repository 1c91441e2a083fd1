#!/usr/bin/env bash
# Installs the trainer's Python packages (train/requirements.txt) into .venv at the repository
# root; a no-op when they are already there. Prints the venv's python path last.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-$PWD/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" >&2
fi
if ! "$VENV/bin/python" -c "import torch, tokenizers, safetensors, numpy, tqdm, matplotlib, pytest, tree_sitter_rust" 2>/dev/null; then
  # PyPI's torch brings ~5.5 GB of CUDA runtime wheels; a pip cache would hold a second copy of
  # them, and a CI run once failed with ENOSPC mid-install. Say so before pip does, unclearly.
  free_kb=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 { print $4 }')
  if (( free_kb < 8 * 1024 * 1024 )); then
    echo "setup-train.sh: $((free_kb / 1024)) MiB free beside $VENV; the trainer's packages need ~6 GiB" >&2
  fi
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-cache-dir -q \
    -r train/requirements.txt >&2
fi
echo "$VENV/bin/python"
