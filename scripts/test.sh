#!/usr/bin/env bash
# The project's test command: Rust unit, parity, sampler and server end-to-end tests, the
# trainer's Python tests, then the real-client editor tests (Neovim headless, pytest-lsp,
# VS Code extension build) if their script is present. Installs what the editor tests need into local folders on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release -p diffusion-ls
cargo test --release --workspace
# The PyTorch trainer's tests (train/tests): samples, gradients, learning, resume, export,
# parity fixtures, data-parallel and the GPU command rehearsed on CPU.
PY="$(scripts/setup-train.sh)"
(cd train && OMP_NUM_THREADS=1 "$PY" -m pytest -q)
if [ -x scripts/ci-editors.sh ]; then
  DIFFUSION_LS="$PWD/target/release/diffusion-ls" scripts/ci-editors.sh
fi
