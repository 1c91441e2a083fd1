"""Parity fixtures for the Rust engine, made by this trainer's own model and export.

    python -m diffusion_train.fixtures --tokenizer ../model/default/tokenizer.json --out ../model/tests/fixtures

Writes three tiny random models (d32, 2 layers, GQA 4/2) exported exactly as training exports,
each with `reference.json`: logits computed here in float32 on the exported weights (f16
fixtures: the f16 weights upcast), which model/tests/parity.rs must reproduce within 1e-4.

| fixture | layout | logits | weights |
| trainer-inplace | bidirectional (full attention) | in place | f32, one file |
| trainer-shifted | bidirectional | shifted | f16, one file |
| trainer-spm | spm_block (causal context, bidirectional middle) | shifted | f16, 2 shards |

reference.json:
- `input_ids` [B][L]; for trainer-spm also `context_len` (c): positions < c are the context
  `<|fim_suffix|> suffix <|fim_prefix|> prefix`, attending causally; positions >= c are the
  span, attending to every context position and to the whole span.
- `logits` [B][L][COLS] and `logsumexp` [B][L] (over the whole vocabulary): row i is the
  prediction *for token i* (the logits convention applied: shifted rows come from i-1, row 0
  repeats raw row 0), only the first COLS vocabulary columns stored to keep the file small.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from .data import EOS, FIM_PREFIX, FIM_SUFFIX, MASK
from .export import export
from .model import DiffusionLM, ModelConfig

COLS = 256
SOURCE = "fn add(a: u32, b: u32) -> u32 {\n    let sum = a + b;\n    sum\n}\n"


def tiny(seed: int, vocab: int) -> DiffusionLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    m = DiffusionLM(cfg)
    with torch.no_grad():  # nonzero biases, norms away from 1, larger weights: a sharper test
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.mul_(5.0)
    return m


def reload(model: DiffusionLM, folder: Path) -> DiffusionLM:
    """The model as the engine will see it: weights read back from the exported files, in f32."""
    state = {}
    for f in sorted(folder.glob("model*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    m = DiffusionLM(model.cfg)
    m.load_state_dict(state)
    return m.eval()


def convention(raw: torch.Tensor, logits: str) -> torch.Tensor:
    if logits == "shifted":
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    return raw


def write_reference(m: DiffusionLM, ids: torch.Tensor, mask, logits: str, folder: Path, extra: dict):
    with torch.no_grad():
        raw = m(ids, mask)
    rows = convention(raw, logits)
    ref = {
        "note": "made by train/diffusion_train/fixtures.py; row i predicts token i (convention applied)",
        "input_ids": ids.tolist(),
        "logits": rows[..., :COLS].tolist(),
        "logsumexp": torch.logsumexp(rows, dim=-1).tolist(),
        "cols": COLS,
        **extra,
    }
    (folder / "reference.json").write_text(json.dumps(ref))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    tok = Tokenizer.from_file(args.tokenizer)
    vocab = tok.get_vocab_size()
    text = tok.encode(SOURCE, add_special_tokens=False).ids
    out = Path(args.out)
    g = torch.Generator().manual_seed(7)

    # Bidirectional fixtures: real code with a run of masks, and random ids.
    row0 = text[:24]
    row0[8:14] = [MASK] * 6
    row1 = torch.randint(5, vocab, (24,), generator=g).tolist()
    row1[5] = MASK
    ids = torch.tensor([row0, row1])
    for name, logits, dtype, seed in [("trainer-inplace", "in_place", torch.float32, 1),
                                      ("trainer-shifted", "shifted", torch.float16, 2)]:
        folder = out / name
        m = tiny(seed, vocab)
        export(m, folder, args.tokenizer, "psm", dtype=dtype, logits=logits)
        write_reference(reload(m, folder), ids, None, logits, folder, {"layout": "bidirectional"})

    # SPM block fixture: context = <fim_suffix> suffix <fim_prefix> prefix, then an 8-token span
    # (masks, two committed tokens, an end token).
    cut_a, cut_b = 10, 14
    prefix, suffix = text[:cut_a], text[cut_b:cut_b + 6]
    ctx = [FIM_SUFFIX] + suffix + [FIM_PREFIX] + prefix
    span = [MASK, text[cut_a + 1], MASK, MASK, text[cut_a + 4], MASK, EOS, MASK]
    rand_ctx = [FIM_SUFFIX] + torch.randint(5, vocab, (6,), generator=g).tolist() + [FIM_PREFIX] + \
        torch.randint(5, vocab, (10,), generator=g).tolist()
    rand_span = [MASK] * 8
    c = len(ctx)
    assert len(rand_ctx) == c
    ids = torch.tensor([ctx + span, rand_ctx + rand_span])
    n = ids.shape[1]
    attn = torch.zeros(n, n, dtype=torch.bool)
    attn[:c, :c] = torch.tril(torch.ones(c, c, dtype=torch.bool))
    attn[c:, :] = True
    folder = out / "trainer-spm"
    m = tiny(3, vocab)
    # ~0.3 MB of f16 tensors: 0.2 MB shards give two files and an index.
    export(m, folder, args.tokenizer, "spm", dtype=torch.float16, shard_mb=0.2)
    write_reference(reload(m, folder), ids, attn[None].expand(2, n, n), "shifted", folder,
                    {"layout": "spm_block", "context_len": c})
    for name in ["trainer-inplace", "trainer-shifted", "trainer-spm"]:
        print(name, sorted(p.name for p in (out / name).iterdir()))


if __name__ == "__main__":
    main()
