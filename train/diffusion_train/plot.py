"""Plots for MODEL.md: training/validation loss of runs, and the dev learning curve.

    python -m diffusion_train.plot loss OUT.png RUN_DIR [RUN_DIR ...]
    python -m diffusion_train.plot curve OUT.png EVALS.jsonl [MORE.jsonl ...]
        # lines written by evaluate --out, or curve points; MORE adds each file's "all" dashed
    python -m diffusion_train.plot point CURVE.jsonl RUN TOKENS EVAL.jsonl
        # append a curve point: per-kind EM/ES/empty of `diffusion-ls eval --out EVAL.jsonl`
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ema(xs, a=0.9):
    out, m = [], None
    for x in xs:
        m = x if m is None else a * m + (1 - a) * x
        out.append(m)
    return out


def plot_loss(out: str, runs: list[str]):
    fig, (ax, av) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for run in runs:
        rows = [json.loads(l) for l in open(Path(run) / "log.jsonl") if l.strip()]
        train = [r for r in rows if "loss" in r]
        name = Path(run).name
        if train:
            ax.plot([r["tokens"] / 1e6 for r in train], ema([r["loss"] for r in train]), lw=1.3, label=name)
        by_kind = defaultdict(list)
        for r in rows:
            for kind, v in r.get("val", {}).items():
                by_kind[kind].append((r["tokens"] / 1e6, v["loss"]))
        for kind, pts in by_kind.items():
            av.plot(*zip(*pts), marker=".", lw=1, label=f"{name}: {kind}")
    ax.set(xlabel="tokens seen (M)", ylabel="train loss (EMA)", title="training loss")
    av.set(xlabel="tokens seen (M)", ylabel="held-back loss", title="validation loss per objective")
    for a in (ax, av):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


def plot_curve(out: str, evals: str, *more: str):
    """Per-kind EM and ES against tokens from `evals`; each of `more` (other decodings, other
    case sets) adds its "all" line, dashed, labelled by its file name."""
    rows = [json.loads(l) for l in open(evals) if l.strip()]
    rows.sort(key=lambda r: r["tokens"])
    kinds = [k for k in rows[-1]["table"] if k != "all"] + ["all"]
    fig, (ae, as_) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for kind in kinds:
        xs = [r["tokens"] / 1e6 for r in rows if kind in r["table"]]
        lw = 2.5 if kind == "all" else 1.2
        ae.plot(xs, [100 * r["table"][kind]["em"] for r in rows if kind in r["table"]], marker="o", lw=lw, label=kind)
        as_.plot(xs, [100 * r["table"][kind]["es"] for r in rows if kind in r["table"]], marker="o", lw=lw, label=kind)
    for path in more:
        extra = sorted((json.loads(l) for l in open(path) if l.strip()), key=lambda r: r["tokens"])
        xs = [r["tokens"] / 1e6 for r in extra]
        label = f"all: {Path(path).stem}"
        ae.plot(xs, [100 * r["table"]["all"]["em"] for r in extra], marker="s", ls="--", lw=2, label=label)
        as_.plot(xs, [100 * r["table"]["all"]["es"] for r in extra], marker="s", ls="--", lw=2, label=label)
    ae.set(xlabel="tokens seen (M)", ylabel="exact match (%)", title="dev exact match per kind")
    as_.set(xlabel="tokens seen (M)", ylabel="edit similarity (%)", title="dev edit similarity per kind")
    for a in (ae, as_):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def curve_point(run: str, tokens: int, eval_jsonl: str) -> dict:
    """Per-kind {n, em, es, empty} of the cases `diffusion-ls eval --out` wrote, and "all"."""
    cases = [json.loads(l) for l in open(eval_jsonl) if l.strip()]
    groups = defaultdict(list)
    for c in cases:
        groups[c["kind"]].append(c)
        groups["all"].append(c)
    table = {
        kind: {
            "n": len(cs),
            "em": sum(c["em"] for c in cs) / len(cs),
            "es": sum(c["es"] for c in cs) / len(cs),
            "empty": sum(c["empty"] for c in cs) / len(cs),
        }
        for kind, cs in groups.items()
    }
    return {"run": run, "tokens": tokens, "table": table}


def append_point(curve: str, run: str, tokens: str, eval_jsonl: str):
    with open(curve, "a") as f:
        f.write(json.dumps(curve_point(run, int(float(tokens)), eval_jsonl)) + "\n")


if __name__ == "__main__":
    what, out, *rest = sys.argv[1:]
    {
        "loss": lambda: plot_loss(out, rest),
        "curve": lambda: plot_curve(out, *rest),
        "point": lambda: append_point(out, *rest),
    }[what]()
