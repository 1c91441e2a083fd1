"""The Qwen2-shaped transformer that the Rust engine runs (model/src/transformer.rs), in PyTorch.

RMSNorm, RoPE (rotate-half, f32 tables), grouped-query attention with q/k/v biases, SwiGLU MLP,
tied embeddings. Attention is whatever boolean mask the caller gives (True = may attend):
causal for autoregressive samples, full for bidirectional diffusion, or causal over the context
and bidirectional inside the masked middle (block infill). The logits convention is the
caller's business too: `shifted` models read the prediction for token i from row i-1.

Tensor names are the Hugging Face Qwen2 names, so `state_dict()` is the exported checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


def at_least_f32(x):
    """Norms and rotations run in f32 under bf16/f16 (as the engine does); f64 stays f64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def scored_ce(h, head, targets, weights):
    """(Σ weights · cross-entropy, argmax) of the tied head's logits `h @ headᵀ` (f32 softmax).
    Eager, the softmax over 8,192 logits and its backward cost ~18% of a CPU step; compiled,
    they fuse with the argmax into a pass or two."""
    logits = at_least_f32(h @ head.t())
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (ce * weights).sum(), logits.detach().argmax(-1)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = at_least_f32(x)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * at_least_f32(self.weight)).to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """cos/sin (L, head_dim/2) in f32, with the engine's arithmetic: inv_freq in f32, then p * inv_freq."""
    half = head_dim // 2
    exps = torch.arange(0, half, dtype=torch.float64, device=positions.device) * 2 / head_dim
    inv_freq = (1.0 / torch.pow(torch.tensor(theta, dtype=torch.float64), exps)).float()
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x (B, H, L, hd); rotate-half convention (Qwen2, candle's `rope`)."""
    half = x.shape[-1] // 2
    x1, x2 = at_least_f32(x[..., :half]), at_least_f32(x[..., half:])
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.h, self.kvh, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.h * hd, bias=True)
        self.k_proj = nn.Linear(d, self.kvh * hd, bias=True)
        self.v_proj = nn.Linear(d, self.kvh * hd, bias=True)
        self.o_proj = nn.Linear(self.h * hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, l, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.kvh, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Query heads [g*j, g*(j+1)) share KV head j (the engine folds them the same way).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, l, self.h * self.hd))


class Mlp(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DiffusionLM(nn.Module):
    """`forward(ids, mask)` → logits (B, L, V); row i is the prediction made at position i."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        # The trainer swaps in `torch.compile(scored_ce, dynamic=True)` (train.py, --compile).
        self.scored_ce = scored_ce
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None):
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        depth_scale = 1.0 / math.sqrt(2 * self.cfg.num_hidden_layers)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    std = 0.02 * (depth_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0)
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def hidden(self, ids, mask=None, positions=None):
        l = ids.shape[1]
        if positions is None:
            positions = torch.arange(l, device=ids.device)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, 1, L, L): the same pattern for every head
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.model.norm(x)

    def head(self, h):
        return h @ self.model.embed_tokens.weight.t()  # tied output head

    def forward(self, ids, mask=None, positions=None, rows=None, targets=None, weights=None):
        """Logits of every row, or (shifted training) only of the rows `rows` (B, L-1) of the
        predictions made at 0..L-2: the output head is the largest matmul at these widths.
        With `targets` and `weights` (one per scored row): `scored_ce`'s (Σ weight · CE, argmax)
        instead of the logits, so that the loss over the vocabulary stays inside the module that
        data-parallel training wraps and can be compiled as one piece."""
        h = self.hidden(ids, mask, positions)
        if rows is not None:
            h = h[:, :-1][rows]
        if targets is not None:
            return self.scored_ce(h, self.model.embed_tokens.weight, targets, weights)
        return self.head(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
