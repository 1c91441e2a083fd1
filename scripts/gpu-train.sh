#!/usr/bin/env bash
# One GPU session of training (a single H200, torch with CUDA, no network), within the device
# machine's limits: the tree sent is <= 64 MiB, one command <= 10 minutes, files back <= 16 MiB
# each. Run from the repository root, usually through the device tool:
#
#   xz -k -T0 corpus/train.jsonl            # once, here: ~226 MB of text -> ~35 MB
#   (device) run  command: scripts/gpu-train.sh   carry: ["corpus/train.jsonl.xz", "corpus/val.jsonl"]
#
# It trains the chosen recipe (long_block) for MINUTES of wall-clock in bf16 with 1,024-token
# windows, from scratch (PRESET) or from INIT (a run or model folder), then exports the model in
# f16 as 15 MB safetensors shards plus the run log into $OUT (the folder that comes back).
# Everything is an environment variable so that the same command rehearses on CPU:
#   DEVICE=cpu PRESET=tiny MINUTES=0.2 SEQ_LEN=128 BATCH=4 INIT= scripts/gpu-train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu-out}"
RUN="${RUN:-/tmp/diffusion-gpu-run}"   # checkpoints stay on the machine (too large to come back)
DEVICE="${DEVICE:-cuda}"
PRESET="${PRESET:-gpu-25m}"
MINUTES="${MINUTES:-8.5}"
SEQ_LEN="${SEQ_LEN:-1024}"
BATCH="${BATCH:-48}"
LR="${LR:-1e-3}"
CORPUS="${CORPUS:-corpus/train.jsonl.xz}"
VAL="${VAL:-corpus/val.jsonl}"
INIT="${INIT:-}"   # a run directory (ckpt.pt) or an exported model folder to continue
ROOT="$PWD"
abs() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$ROOT/$1"; fi; }
OUT="$(abs "$OUT")"
mkdir -p "$OUT"
args=(--corpus "$(abs "$CORPUS")" --val "$(abs "$VAL")" --tokenizer "$ROOT/model/default/tokenizer.json"
      --recipe long_block --preset "$PRESET" --device "$DEVICE" --seq-len "$SEQ_LEN" --batch "$BATCH"
      --lr "$LR" --minutes "$MINUTES" --out "$RUN" --export "$OUT/model" --shard-mb 15
      --max-positions "$SEQ_LEN" --no-progress --val-every 500 --ckpt-every 1000000)
if [[ "$DEVICE" == cuda ]]; then args+=(--bf16 --workers 6); fi
if [[ -n "$INIT" ]]; then args+=(--init-from "$(abs "$INIT")"); fi
cd train
nvidia-smi -L 2>/dev/null || true
"$PY" -m diffusion_train.train "${args[@]}" "$@" 2>&1 | tee "$OUT/train.out"
cp "$RUN/log.jsonl" "$OUT/log.jsonl"
ls -la "$OUT/model"
