#!/usr/bin/env python3
"""Plot training and validation loss of a diffusion-train run (log.jsonl) to a PNG.

    python3 scripts/plot_loss.py runs/default/log.jsonl docs/loss.png

A resumed run appends to the same log with its steps counted from 1 again: each such run is
drawn as its own segment (validation settings may differ between runs, see MODEL.md).
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
    # Run boundaries: the step counter starts again.
    starts = [0] + [i for i in range(1, len(rows)) if rows[i]["step"] <= rows[i - 1]["step"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(tokens, loss, color="#bbb", lw=0.6, label="train (per step)")
    ax.plot(tokens, smooth, color="#1f77b4", lw=1.5, label="train (EMA)")
    for n, (a, b) in enumerate(zip(starts, starts[1:] + [len(rows)])):
        val = [(r["tokens"] / 1e6, r["val_loss"]) for r in rows[a:b] if "val_loss" in r]
        if val:
            label = "validation (held-back crates)" if n == 0 else None
            ax.plot(*zip(*val), "o-", color="#d62728", ms=3, label=label)
        if n > 0:
            ax.axvline(tokens[a], color="#888", ls="--", lw=0.8)
        ax.annotate(f"run {n + 1}", (tokens[a], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8, color="#555")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("masked-diffusion loss (1/t weighted CE)")
    ax.set_title("diffusion-ls default model")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
