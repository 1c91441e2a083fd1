"""Score a training checkpoint on the dev fill-in-the-middle cases, in PyTorch.

    python -m diffusion_train.evaluate --run runs/c [--cases ../shared/eval/dev.jsonl]

This is the recipe A/B's and the learning curve's measure (any layout, any checkpoint, no
export needed); the shipped model is scored by the product itself (`diffusion-ls eval`), whose
verification and timings this does not reproduce. Decoding follows the engine's defaults:
the span is sized like the server's (`SPAN_KINDS`: 24 tokens to finish a line, cut at its end;
64 for a new block), greedy, K steps committing the most confident positions on a fixed schedule, an end
token committed only where everything left of it is committed, at least one token.

Reported per kind: exact match (whitespace-insensitive, as the Rust eval), edit similarity,
empty share, first-token accuracy (the middle's first token is the top prediction of the first
step, everything masked) and that token's NLL in nats.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .data import EOS, FIM_PREFIX, FIM_SUFFIX, MASK, SPAN_KINDS
from .model import DiffusionLM, ModelConfig
from .recipes import RECIPES

REPO = Path(__file__).resolve().parent.parent.parent
CLOSERS = set(")]};,")


def span_kind(prefix: str, suffix: str) -> str:
    """The server's cursor_kind (server/src/context.rs): a new block after `{`, else a line."""
    before = prefix[prefix.rfind("\n") + 1:]
    nl = suffix.find("\n")
    after = suffix if nl < 0 else suffix[:nl]
    if not all(c in CLOSERS or c.isspace() for c in after):
        return "line"
    if before.rstrip().endswith("{"):
        return "block"
    if not before.strip():
        prev = prefix.rstrip()[-1:]
        nxt = suffix.lstrip()[:1]
        if prev == "{" and nxt == "}":
            return "block"
    return "line"


def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a):
        cur = [i + 1]
        for j, cb in enumerate(b):
            cur.append(min(prev[j] + (ca != cb), prev[j + 1] + 1, cur[j] + 1))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def squash(s: str) -> str:
    return "".join(s.split())


class Layout:
    """Where the span sits and what it attends to, for a recipe's layout."""

    def __init__(self, name: str):
        self.name = name

    def build(self, prefix: list[int], suffix: list[int], n: int):
        """(ids, attention, start): the span occupies start..start+n."""
        if self.name == "spm":
            ctx = [FIM_SUFFIX] + suffix + [FIM_PREFIX] + prefix
            c = len(ctx)
            ids = ctx + [MASK] * n
            attn = torch.zeros(c + n, c + n, dtype=torch.bool)
            attn[:c, :c] = torch.tril(torch.ones(c, c, dtype=torch.bool))
            attn[c:, :] = True
            return ids, attn, c
        ids = prefix + [MASK] * n + suffix
        return ids, None, len(prefix)


@torch.no_grad()
def infill(model, layout: Layout, prefix, suffix, n, steps):
    """Greedy masked-diffusion decoding of n span tokens; returns (tokens before the end, first-step logits)."""
    ids, attn, start = layout.build(prefix, suffix, n)
    x = torch.tensor([ids])
    mask = attn[None] if attn is not None else None
    span = [None] * n
    first = None
    step = 0
    while True:
        masked = [j for j in range(n) if span[j] is None]
        end = next((j for j in range(n) if span[j] == EOS), None)
        if end is not None:
            masked = [j for j in masked if j < end]
        if not masked:
            break
        logits = model(x, mask)[0]
        rows = logits[start - 1:start - 1 + n].float()  # shifted: row start+j-1 predicts span j
        rows[0, EOS] = -1e9  # at least one token
        probs = rows.softmax(-1)
        if first is None:
            first = rows[0].clone()
        conf, tok = probs.max(-1)
        eligible = []
        for j in masked:
            t = int(tok[j])
            if t == EOS and any(span[i] is None for i in range(j)):
                # An end only where everything left of it is committed: use the best non-end token.
                p = probs[j].clone()
                p[EOS] = 0
                t = int(p.argmax())
                eligible.append((float(p[t]), j, t))
            else:
                eligible.append((float(conf[j]), j, t))
        left = max(1, steps - step)
        k = max(1, -(-len(masked) // left))
        for _, j, t in sorted(eligible, reverse=True)[:k]:
            span[j] = t
            x[0, start + j] = t
        e = next((j for j in range(n) if span[j] == EOS), None)
        if e is not None:
            for j in range(e + 1, n):
                span[j] = EOS
                x[0, start + j] = EOS
        step += 1
    out = []
    for t in span:
        if t == EOS:
            break
        out.append(t)
    return out, first


def window(tok, prefix: str, suffix: str, budget: int):
    """Prefix and suffix tokens as the server takes them: 3/4 of the budget to the prefix,
    what a short side leaves to the other."""
    p = tok.encode(prefix[-budget * 8:], add_special_tokens=False).ids
    s = tok.encode(suffix[:budget * 8], add_special_tokens=False).ids
    if len(prefix) > budget * 8:
        p = p[1:]
    if len(suffix) > budget * 8:
        s = s[:-1]
    pb = budget * 3 // 4
    s_take = min(len(s), budget - min(len(p), pb))
    p_take = min(len(p), budget - s_take)
    return p[len(p) - p_take:], s[:s_take]


@torch.no_grad()
def heldback_middle_nll(model, layout: Layout, tok, texts, n=200, positions=256, seed=0):
    """Nats per middle token on held-back files, comparable across layouts: the same middles
    (request-shaped, from a fixed seed), the same context windows, the block exactly the middle
    plus its end token, half of it masked (the same positions for every layout), only masked
    positions scored."""
    import random

    from .data import Builder

    rng = random.Random(seed)
    builder = Builder(tok, positions, rng)
    total, count = 0.0, 0
    for i in range(n):
        text = texts[rng.randrange(len(texts))]
        if len(text) < 200:
            continue
        prefix, middle, suffix = builder.split(text)
        block = middle + [EOS]
        budget = positions - len(block) - 2
        ns = min(len(suffix), budget // 4)
        np_ = min(len(prefix), budget - ns)
        p, s = prefix[len(prefix) - np_:], suffix[:ns]
        masked = [rng.random() < 0.5 for _ in block]
        if not p:  # nothing left of the middle predicts its first token in the Dream layout
            continue
        masked[0] = True
        ids, attn, start = layout.build(p, s, len(block))
        x = torch.tensor([ids])
        for j, (t, m) in enumerate(zip(block, masked)):
            if not m:
                x[0, start + j] = t
        logits = model(x, attn[None] if attn is not None else None)[0].float()
        lp = logits[start - 1:start - 1 + len(block)].log_softmax(-1)
        for j, (t, m) in enumerate(zip(block, masked)):
            if m:
                total -= float(lp[j, t])
                count += 1
    return total / max(1, count)


def load_run(run: Path) -> tuple[DiffusionLM, dict]:
    ck = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)
    m = DiffusionLM(ModelConfig(**ck["config"]))
    m.load_state_dict(ck["model"])
    return m.eval(), ck["state"]


def evaluate(model, layout: Layout, tok, cases, steps=8, positions=256, limit=None):
    by_kind = defaultdict(lambda: defaultdict(float))
    rows = []
    for case in cases[:limit]:
        kind = span_kind(case["prefix"], case["suffix"])
        n = SPAN_KINDS[kind]
        budget = positions - n - 2
        p, s = window(tok, case["prefix"], case["suffix"], budget)
        middle_ids = tok.encode(case["middle"], add_special_tokens=False).ids
        out, first = infill(model, layout, p, s, n, steps)
        text = tok.decode(out, skip_special_tokens=False)
        if kind == "line":
            text = text.split("\n")[0]
        k = by_kind[case["kind"]]
        k["n"] += 1
        k["em"] += squash(text) == squash(case["middle"])
        k["es"] += edit_similarity(text, case["middle"])
        k["empty"] += not text.strip()
        k["first"] += bool(middle_ids) and int(first.argmax()) == middle_ids[0]
        k["first_nll"] += float(-first.log_softmax(-1)[middle_ids[0]]) if middle_ids else 0.0
        rows.append({"id": case["id"], "kind": case["kind"], "completion": text, "middle": case["middle"]})
    table = {}
    tot = defaultdict(float)
    for kind, k in sorted(by_kind.items()):
        table[kind] = {m: k[m] / k["n"] for m in ("em", "es", "empty", "first", "first_nll")}
        table[kind]["n"] = int(k["n"])
        for m, v in k.items():
            tot[m] += v
    table["all"] = {m: tot[m] / tot["n"] for m in ("em", "es", "empty", "first", "first_nll")}
    table["all"]["n"] = int(tot["n"])
    return table, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory with ckpt.pt")
    ap.add_argument("--cases", default=str(REPO.parent / "shared/eval/dev.jsonl"))
    ap.add_argument("--tokenizer", default=str(REPO / "model/default/tokenizer.json"))
    ap.add_argument("--layout", choices=["spm", "psm"], help="default: the run's recipe's")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--positions", type=int, default=256, help="context + span positions")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--val", default=str(REPO / "corpus/val.jsonl"), help="held-back files for the middle NLL ('' to skip)")
    ap.add_argument("--out", help="append the result as one JSON line here")
    ap.add_argument("--completions", help="write every completion here (jsonl)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    model, state = load_run(run)
    recipe_name = json.loads((run / "args.json").read_text())["recipe"]
    layout = Layout(args.layout or RECIPES[recipe_name].layout)
    tok = Tokenizer.from_file(args.tokenizer)
    cases = [json.loads(l) for l in open(args.cases) if l.strip()]
    table, rows = evaluate(model, layout, tok, cases, args.steps, args.positions, args.limit)
    result = {"run": str(run), "recipe": recipe_name, "layout": layout.name, "tokens": state["tokens"],
              "step": state["step"], "steps": args.steps, "table": table}
    if args.val and Path(args.val).exists():
        from .data import read_corpus
        result["heldback_middle_nll"] = heldback_middle_nll(model, layout, tok, read_corpus(args.val))
        print(f"held-back middle NLL (half masked): {result['heldback_middle_nll']:.3f} nats/token", file=sys.stderr)
    print(json.dumps(result))
    for kind, k in table.items():
        print(f"{kind:6} n={k['n']:3} EM {100 * k['em']:5.1f}%  ES {100 * k['es']:5.1f}%  empty {100 * k['empty']:5.1f}%  "
              f"first {100 * k['first']:5.1f}%  first-NLL {k['first_nll']:.2f}", file=sys.stderr)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.completions:
        with open(args.completions, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
