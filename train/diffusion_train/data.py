"""Training samples, built on the fly from the corpus text (corpus/train.jsonl).

Every sample is one fixed-length sequence with: the input ids (masked where the model must
guess), the clean targets, a loss weight per position, an attention pattern, and its "domain"
(how many positions the loss is averaged over). Predictions are read shifted: the target at
position j is predicted by row j-1, so weight[j] belongs to the prediction made at j-1.

The layouts match what the engine builds at inference (model/src/sampler.rs):
- `spm`: `<|fim_suffix|> suffix <|fim_prefix|> prefix middle`, the context causal (it is an
  autoregressive model's context and caches like one), the middle a bidirectional block that
  sees the whole context. Prefix and middle are one text, so the middle simply continues the
  prefix and ends with `<|endoftext|>` where it meets the suffix.
- `psm`: `prefix middle suffix`, all positions see all (the Dream layout).

Middles are cut at character level, shaped like the editor's requests (rest of a line, a line,
a short span, a block of lines, a function-like body), and tokenized apart from the prefix and
the suffix, as the server does; the middle is padded with end tokens to an over-allocated block.
"""
from __future__ import annotations

import bisect
import json
import lzma
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


EOS, MASK, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = 0, 1, 2, 3, 4
# The server's span kinds at a cursor and the masked positions it gives each: the one
# definition, written into the exported config.json (`span_kinds`), which the server and its
# eval read (server/src/context.rs `SpanTokens`), and used by evaluate.py.
SPAN_KINDS = {"line": 24, "block": 64}
# Over-allocated block lengths trained on; every span kind's length is one of them.
BUCKETS = (16, 24, 32, 48, 64, 96, 128)
assert set(SPAN_KINDS.values()) <= set(BUCKETS)


@dataclass
class Sample:
    ids: list[int]
    targets: list[int]
    weights: list[float]
    attn: np.ndarray  # (L, L) bool, True = may attend
    domain: float


def read_corpus(path: str | Path) -> list[str]:
    """Texts of a corpus jsonl (optionally .xz), one per file."""
    path = Path(path)
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


class Corpus:
    """Files drawn in proportion to their length (so every byte is equally likely)."""

    def __init__(self, texts: list[str]):
        self.texts = [t for t in texts if len(t) >= 64]
        self.cum = np.cumsum([len(t) for t in self.texts])

    def pick(self, rng: random.Random) -> str:
        x = rng.randrange(int(self.cum[-1]))
        return self.texts[bisect.bisect_right(self.cum, x)]


def causal(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=bool))


def pad_attention(attn: np.ndarray, length: int) -> np.ndarray:
    """Embed a (n, n) pattern in (length, length); padding rows see only themselves."""
    n = attn.shape[0]
    out = np.zeros((length, length), dtype=bool)
    out[:n, :n] = attn
    idx = np.arange(n, length)
    out[idx, idx] = True
    return out


# --------------------------------------------------------------------------- middles


def choose_middle(text: str, rng: random.Random) -> tuple[int, int]:
    """(start, end) character offsets of a request-shaped middle."""
    kind = rng.choices(["rest", "line", "span", "block", "body"], weights=[3, 2, 2, 2, 1])[0]
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    if len(starts) < 3:
        kind = "span"
    li = rng.randrange(len(starts))
    ls = starts[li]
    le = text.find("\n", ls)
    le = len(text) if le < 0 else le
    indent = ls + len(text[ls:le]) - len(text[ls:le].lstrip())
    if kind in ("rest", "line", "span") and le - indent < 4:
        kind = "block" if len(starts) >= 3 else "span"
    if kind == "rest":
        s = rng.randrange(indent, le)
        return s, le
    if kind == "line":
        return indent, le
    if kind == "span":
        a = rng.randrange(indent, max(indent + 1, le))
        n = rng.randint(3, 80)
        return a, min(len(text), a + n)
    # block / body: from the end of one line to the indentation of a later one
    lines = rng.randint(2, 10) if kind == "block" else rng.randint(3, 25)
    lj = min(len(starts) - 1, li + lines)
    s = le
    e_line = starts[lj]
    e_end = text.find("\n", e_line)
    e_end = len(text) if e_end < 0 else e_end
    e = e_line + len(text[e_line:e_end]) - len(text[e_line:e_end].lstrip())
    if e <= s:
        e = min(len(text), s + rng.randint(3, 80))
    return s, e


class Builder:
    """Makes samples of a sequence length from corpus files with one tokenizer."""

    def __init__(self, tokenizer, seq_len: int, rng: random.Random):
        self.tok = tokenizer
        self.seq_len = seq_len
        self.rng = rng
        # The block takes at most half the sequence; the context keeps the rest.
        self.max_block = min(BUCKETS[-1], seq_len // 2)

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False).ids if s else []

    # ---- pieces

    def split(self, text: str):
        """(prefix, middle, suffix) token lists; the middle fits in the largest bucket."""
        chars = self.seq_len * 6  # more text than the window needs (~3.3 bytes/token)
        for _ in range(4):
            s, e = choose_middle(text, self.rng)
            middle = self.encode(text[s:e])
            if 0 < len(middle) < self.max_block:
                break
        else:
            s = self.rng.randrange(len(text) - 8)
            e = s + 8
            middle = self.encode(text[s:e])[: self.max_block - 1]
        prefix = self.encode(text[max(0, s - chars):s])
        suffix = self.encode(text[e:e + chars])
        if s - chars > 0:
            prefix = prefix[1:]  # the first token may be cut mid-piece
        if e + chars < len(text):
            suffix = suffix[:-1]
        return prefix, middle, suffix

    def block_len(self, n_middle: int) -> int:
        if self.rng.random() < 0.5:
            return min(self.max_block, next(b for b in BUCKETS if b >= n_middle + 1))
        return min(self.max_block, n_middle + 1 + self.rng.randint(0, 48))

    def context_split(self, room: int, n_prefix: int, n_suffix: int) -> tuple[int, int]:
        """How many prefix and suffix tokens to keep in `room` positions."""
        want_suffix = int(room * self.rng.uniform(0.1, 0.5))
        ns = min(n_suffix, want_suffix)
        np_ = min(n_prefix, room - ns)
        ns = min(n_suffix, room - np_)
        return np_, ns

    def noise(self, n: int, t: float) -> list[bool]:
        masked = [self.rng.random() < t for _ in range(n)]
        if not any(masked):
            masked[self.rng.randrange(n)] = True
        return masked

    # ---- samples

    def ar(self, corpus: Corpus) -> Sample:
        """A window of the token stream (files joined by end tokens), causal, every position scored."""
        ids: list[int] = []
        while len(ids) < self.seq_len:
            text = corpus.pick(self.rng)
            start = 0
            if len(text) > self.seq_len * 4 and self.rng.random() < 0.8:
                start = text.rfind("\n", 0, self.rng.randrange(len(text) - self.seq_len * 2)) + 1
            piece = self.encode(text[start:start + self.seq_len * 6])
            ids += [EOS] + piece
        ids = ids[: self.seq_len]
        weights = [0.0] + [1.0] * (self.seq_len - 1)
        return Sample(ids, list(ids), weights, causal(self.seq_len), self.seq_len - 1)

    def spm_fim(self, corpus: Corpus) -> Sample:
        """Autoregressive fill-in-the-middle in suffix-prefix-middle order, every position scored."""
        prefix, middle, suffix = self.split(corpus.pick(self.rng))
        room = self.seq_len - len(middle) - 3
        np_, ns = self.context_split(room, len(prefix), len(suffix))
        ids = [FIM_SUFFIX] + suffix[:ns] + [FIM_PREFIX] + prefix[len(prefix) - np_:] + middle + [EOS]
        n = len(ids)
        pad = self.seq_len - n
        weights = [0.0] + [1.0] * (n - 1) + [0.0] * pad
        ids = ids + [EOS] * pad
        return Sample(ids, list(ids), weights, pad_attention(causal(n), self.seq_len), n - 1)

    def spm_block(self, corpus: Corpus, t: float, ar_weight: float) -> Sample:
        """Block diffusion over the middle: SPM context (causal, AR-scored with `ar_weight`),
        then the middle padded with end tokens to a block, masked with rate t, bidirectional."""
        prefix, middle, suffix = self.split(corpus.pick(self.rng))
        b = self.block_len(len(middle))
        room = self.seq_len - b - 2
        np_, ns = self.context_split(room, len(prefix), len(suffix))
        ctx = [FIM_SUFFIX] + suffix[:ns] + [FIM_PREFIX] + prefix[len(prefix) - np_:]
        block = middle + [EOS] * (b - len(middle))
        masked = self.noise(b, t)
        c = len(ctx)
        n = c + b
        targets = ctx + block
        ids = ctx + [MASK if m else x for x, m in zip(block, masked)]
        weights = [0.0] + [ar_weight] * (c - 1) + [1.0 / t if m else 0.0 for m in masked]
        attn = np.zeros((n, n), dtype=bool)
        attn[:c, :c] = causal(c)
        attn[c:, :] = True
        pad = self.seq_len - n
        domain = b + (ar_weight > 0) * (c - 1)
        return Sample(ids + [EOS] * pad, targets + [EOS] * pad, weights + [0.0] * pad,
                      pad_attention(attn, self.seq_len), domain)

    def psm_block(self, corpus: Corpus, t: float) -> Sample:
        """The Dream layout: prefix, masked middle block, suffix, all bidirectional."""
        prefix, middle, suffix = self.split(corpus.pick(self.rng))
        b = self.block_len(len(middle))
        np_, ns = self.context_split(self.seq_len - b, len(prefix), len(suffix))
        if np_ == 0 and prefix:  # shifted: the block's first token is predicted from its left neighbour
            np_, ns = 1, max(0, ns - 1)
        block = middle + [EOS] * (b - len(middle))
        masked = self.noise(b, t)
        pre, suf = prefix[len(prefix) - np_:], suffix[:ns]
        targets = pre + block + suf
        ids = pre + [MASK if m else x for x, m in zip(block, masked)] + suf
        weights = [0.0] * np_ + [1.0 / t if m else 0.0 for m in masked] + [0.0] * ns
        if np_ == 0:  # nothing predicts position 0
            weights[0] = 0.0
        n = len(ids)
        pad = self.seq_len - n
        attn = np.ones((n, n), dtype=bool)
        return Sample(ids + [EOS] * pad, targets + [EOS] * pad, weights + [0.0] * pad,
                      pad_attention(attn, self.seq_len), b)

    def mdlm_window(self, corpus: Corpus, t: float) -> Sample:
        """Masked diffusion over a whole window, bidirectional (position 0 is never masked)."""
        s = self.ar(corpus)
        masked = [False] + self.noise(self.seq_len - 1, t)
        ids = [MASK if m else x for x, m in zip(s.ids, masked)]
        weights = [1.0 / t if m else 0.0 for m in masked]
        return Sample(ids, s.targets, weights, np.ones((self.seq_len, self.seq_len), dtype=bool),
                      self.seq_len - 1)


def stratified_times(n: int, rng: random.Random, eps: float = 1e-3) -> list[float]:
    """Noise levels for one batch: low-discrepancy U(eps, 1] (one offset, evenly spaced)."""
    u = rng.random()
    ts = [((u + i / n) % 1.0) * (1 - eps) + eps for i in range(n)]
    rng.shuffle(ts)
    return ts


def collate(samples: list[Sample]) -> dict[str, torch.Tensor]:
    return {
        "ids": torch.tensor([s.ids for s in samples], dtype=torch.long),
        "targets": torch.tensor([s.targets for s in samples], dtype=torch.long),
        "weights": torch.tensor([s.weights for s in samples], dtype=torch.float32),
        "attn": torch.from_numpy(np.stack([s.attn for s in samples])),
        "domain": torch.tensor([s.domain for s in samples], dtype=torch.float32),
    }


def shifted_loss(model, batch: dict[str, torch.Tensor], metrics: bool = True) -> tuple[torch.Tensor, dict]:
    """Σ weight · CE(prediction at j-1, target j) ÷ Σ domain; logits only for scored rows.
    `metrics=False` skips the accuracy (a sync on the argmax)."""
    w = batch["weights"][:, 1:]
    rows = w > 0
    targets = batch["targets"][:, 1:][rows]
    total, predicted = model(batch["ids"], batch["attn"], rows=rows, targets=targets, weights=w[rows])
    loss = total / batch["domain"].sum().clamp(min=1.0)
    if not metrics:
        return loss, {}
    acc = (predicted == targets).float().mean().item() if rows.any() else 0.0
    return loss, {"acc": acc, "scored": int(rows.sum())}
