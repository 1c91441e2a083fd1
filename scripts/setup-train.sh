#!/usr/bin/env bash
# Installs the trainer's Python packages (train/requirements.txt) into .venv at the repository
# root; a no-op when they are already there. Prints the venv's python path last.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-$PWD/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" >&2
fi
if ! "$VENV/bin/python" -c "import torch, tokenizers, safetensors, numpy, tqdm, matplotlib, pytest" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r train/requirements.txt >&2
fi
echo "$VENV/bin/python"
