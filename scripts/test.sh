#!/usr/bin/env bash
# The project's test command: Rust unit, parity, sampler and server end-to-end tests, then the
# real-client editor tests (Neovim headless, pytest-lsp, VS Code extension build) if their
# script is present. Installs what the editor tests need into local folders on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release -p diffusion-ls
cargo test --release --workspace
if [ -x scripts/ci-editors.sh ]; then
  DIFFUSION_LS="$PWD/target/release/diffusion-ls" scripts/ci-editors.sh
fi
