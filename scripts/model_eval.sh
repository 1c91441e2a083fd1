#!/usr/bin/env bash
# The evaluation in MODEL.md: diffusion-ls eval on the dev cases for every kind, with and without
# tree-sitter verification, the learning curve's fixed decoding (no verification, `parallel`, 8
# steps), a sweep over steps, the oracle span length, each named decoding policy and a shorter
# context window. Prints one line per run.
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
run curve --no-verify --policy parallel --steps 8
run context-256 --context-tokens 256
for p in $("$bin" eval --help | sed -n 's/.*DecodingPolicy::ALL`: \(.*\))$/\1/p' | tr -d ,); do
  run "policy-$p" --policy "$p"
done
for k in 1 2 4 8 16 32; do run "steps-$k" --steps "$k"; done
