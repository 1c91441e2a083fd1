#!/usr/bin/env python3
"""Plot training and validation loss of a diffusion-train run (log.jsonl) to a PNG.

    python3 scripts/plot_loss.py runs/default/log.jsonl docs/loss.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(log_path, out_path):
    rows = [json.loads(l) for l in open(log_path) if l.strip()]
    tokens = [r["tokens"] / 1e6 for r in rows]
    loss = [r["loss"] for r in rows]
    ema, smooth = None, []
    for x in loss:
        ema = x if ema is None else 0.95 * ema + 0.05 * x
        smooth.append(ema)
    val = [(r["tokens"] / 1e6, r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(tokens, loss, color="#bbb", lw=0.6, label="train (per step)")
    ax.plot(tokens, smooth, color="#1f77b4", lw=1.5, label="train (EMA)")
    if val:
        ax.plot(*zip(*val), "o-", color="#d62728", ms=3, label="validation (held-back crates)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("masked-diffusion loss (1/t weighted CE)")
    ax.set_title("diffusion-ls default model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
