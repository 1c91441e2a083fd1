#!/usr/bin/env bash
# The evaluation in MODEL.md: diffusion-ls eval on the dev cases for every kind, with and without
# tree-sitter verification, a sweep over steps, the oracle span length, the sampler's end rule off,
# a shorter context window and a semi-autoregressive commit window. Prints one line per run.
#   scripts/model_eval.sh [CASES] [EXTRA EVAL ARGS...]     (CASES default ../shared/eval/dev.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-../shared/eval/dev.jsonl}"; shift || true
bin=target/release/diffusion-ls
cargo build --release -p diffusion-ls >&2
out=runs/eval; mkdir -p "$out"
run() {
  local name=$1; shift
  "$bin" eval --cases "$cases" "$@" --out "$out/$name.jsonl" "${EXTRA[@]}" > "$out/$name.txt" 2>"$out/$name.log"
  printf '%-22s %s\n' "$name" "$(tail -n 1 "$out/$name.txt")"
}
EXTRA=("$@")
run default
run no-verify --no-verify
run oracle-length --oracle-length
run free-ends --free-ends
run context-256 --context-tokens 256
run commit-window-4 --commit-window 4
for k in 1 2 4 8 16 32; do run "steps-$k" --steps "$k"; done
