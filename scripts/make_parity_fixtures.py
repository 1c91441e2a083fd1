#!/usr/bin/env python3
"""Write the tiny parity fixtures under model/tests/fixtures/ (Python side of the parity tests).

Each fixture is a complete Hugging Face style checkpoint with random (seeded) weights:

    config.json                      Qwen2Config fields + our `mask_token_id` / `diffusion_logits`
    model.safetensors                (or a sharded checkpoint + model.safetensors.index.json)
    tokenizer.json                   tiny byte-level BPE (Qwen2-style pre-tokenizer) trained here
    reference.json                   {"input_ids": [[..]], "logits": [B][L][V], "note": ".."}

The reference logits come from transformers' `Qwen2ForCausalLM` in float32 with FULL
BIDIRECTIONAL attention (an all-zero additive [B,1,L,L] mask handed to the eager attention
through the per-layer-type mask dict, and `is_causal = False` on every attention module).
The script checks this itself and aborts on any failure:

  * logits at position 0 change when the last input token changes;
  * the logits differ from a causal run at every position;
  * an independent float64 re-implementation of the forward pass (written below, no
    transformers code) agrees with the transformers logits;
  * the SDPA attention backend under the same mask agrees with the eager one;
  * for the `qwen2` fixtures, `Qwen2ForCausalLM.from_pretrained(<fixture dir>)` (which reads
    config.json and the (sharded, bf16) safetensors from disk) reproduces the logits;
  * the tokenizer's special-token ids equal the config's, and it round-trips text.

Weights are generated in float32 with numpy (fixed seeds), rounded to the storage dtype
(f32 / bf16 / f16), written, read back from disk and upcast to float32: the reference logits
are for exactly the weights on disk, so a float32 run of the Rust model on the upcast
weights must match them to float32 rounding noise (~1e-5).

CI never runs this; it only reads the committed fixtures. Regenerate with

    pip install -r scripts/requirements-parity.txt
    python3 scripts/make_parity_fixtures.py
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "model" / "tests" / "fixtures"

EOS = "<|endoftext|>"
MASK = "<|mask|>"

# Qwen2's pre-tokenizer split pattern (as in Qwen2 / Qwen2.5 / Dream tokenizer.json).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SEQ_LEN = 24
BATCH = 2

# A few KB of Rust to train the tokenizer on.
RUST_CORPUS = [
    r'''use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }

    pub fn distance(&self, other: &Point) -> f64 {
        let dx = self.x - other.x;
        let dy = self.y - other.y;
        (dx * dx + dy * dy).sqrt()
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}
''',
    r'''fn main() {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for word in "the quick brown fox jumps over the lazy dog".split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    let mut pairs: Vec<_> = counts.iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (word, count) in pairs {
        println!("{word}: {count}");
    }
}
''',
    r'''pub enum Shape {
    Circle { radius: f64 },
    Rect { width: f64, height: f64 },
    Triangle(f64, f64, f64),
}

impl Shape {
    pub fn area(&self) -> f64 {
        match self {
            Shape::Circle { radius } => std::f64::consts::PI * radius * radius,
            Shape::Rect { width, height } => width * height,
            Shape::Triangle(a, b, c) => {
                let s = (a + b + c) / 2.0;
                (s * (s - a) * (s - b) * (s - c)).sqrt()
            }
        }
    }
}
''',
    r'''pub trait Storage {
    type Error: std::error::Error;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Self::Error>;
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), Self::Error>;
}

#[derive(Default)]
pub struct MemoryStorage {
    items: HashMap<String, Vec<u8>>,
}

impl Storage for MemoryStorage {
    type Error = std::io::Error;

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.items.get(key).cloned())
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), Self::Error> {
        self.items.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
}
''',
    r'''async fn fetch_all(urls: Vec<String>) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let body = client.get(&url).send().await?.text().await?;
        out.push(body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_symmetric() {
        let a = Point::new(1.0, 2.0);
        let b = Point::new(4.0, 6.0);
        assert_eq!(a.distance(&b), b.distance(&a));
        assert!((a.distance(&b) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn rect_area() {
        let r = Shape::Rect { width: 3.0, height: 4.0 };
        assert_eq!(r.area(), 12.0);
    }
}
''',
    r'''pub fn binary_search<T: Ord>(items: &[T], target: &T) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, items.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match items[mid].cmp(target) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}

pub struct Stack<T> {
    items: Vec<T>,
}

impl<T: Clone> Stack<T> {
    pub fn new() -> Self {
        Stack { items: Vec::new() }
    }
    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop()
    }
    pub fn peek(&self) -> Option<&T> {
        self.items.last()
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
''',
    r'''use std::sync::{Arc, Mutex};
use std::thread;

fn parallel_sum(data: Vec<u64>, workers: usize) -> u64 {
    let total = Arc::new(Mutex::new(0u64));
    let chunk = (data.len() + workers - 1) / workers;
    let data = Arc::new(data);
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let total = Arc::clone(&total);
            let data = Arc::clone(&data);
            thread::spawn(move || {
                let start = i * chunk;
                let end = ((i + 1) * chunk).min(data.len());
                let part: u64 = data[start..end].iter().sum();
                *total.lock().unwrap() += part;
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    let sum = *total.lock().unwrap();
    sum
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest.trim_start();
        if s.is_empty() {
            return None;
        }
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let (tok, rest) = s.split_at(end);
        self.rest = rest;
        Some(tok)
    }
}
''',
]


# --------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(bpe_vocab: int) -> Tokenizer:
    """Byte-level BPE laid out like Qwen2's: NFC, regex split + byte-level, specials appended."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(RUST_CORPUS, trainer=trainer)
    # Like Qwen2: the special tokens come after the BPE vocabulary.
    tok.add_special_tokens(
        [
            AddedToken(EOS, special=True, normalized=False),
            AddedToken(MASK, special=True, normalized=False),
        ]
    )
    return tok


# --------------------------------------------------------------------------------------------
# weights


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) in a fixed order; kind picks the random distribution."""
    h = cfg["hidden_size"]
    i_sz = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = h // nh
    v = cfg["vocab_size"]
    specs = [("model.embed_tokens.weight", (v, h), "embed")]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        specs += [
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "self_attn.q_proj.weight", (nh * hd, h), "qk"),
            (p + "self_attn.q_proj.bias", (nh * hd,), "bias"),
            (p + "self_attn.k_proj.weight", (nkv * hd, h), "qk"),
            (p + "self_attn.k_proj.bias", (nkv * hd,), "bias"),
            (p + "self_attn.v_proj.weight", (nkv * hd, h), "linear"),
            (p + "self_attn.v_proj.bias", (nkv * hd,), "bias"),
            (p + "self_attn.o_proj.weight", (h, nh * hd), "linear"),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
            (p + "mlp.gate_proj.weight", (i_sz, h), "linear"),
            (p + "mlp.up_proj.weight", (i_sz, h), "linear"),
            (p + "mlp.down_proj.weight", (h, i_sz), "linear"),
        ]
    specs.append(("model.norm.weight", (h,), "norm"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (v, h), "linear"))
    return specs


STD = {"embed": 0.1, "qk": 0.15, "linear": 0.1, "bias": 0.1}


def random_weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, kind in tensor_specs(cfg):
        if kind == "norm":
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            w = STD[kind] * rng.standard_normal(shape)
        out[name] = w.astype(np.float32)
    return out


TORCH_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_weights(d: Path, weights: dict[str, np.ndarray], store: str, shards: list[list[str]] | None) -> None:
    tensors = {k: torch.from_numpy(v).to(TORCH_DTYPE[store]).contiguous() for k, v in weights.items()}
    meta = {"format": "pt"}
    if shards is None:
        safetensors.torch.save_file(tensors, str(d / "model.safetensors"), metadata=meta)
        return
    n = len(shards)
    weight_map = {}
    total = 0
    for idx, names in enumerate(shards):
        fname = f"model-{idx + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k] for k in names}
        safetensors.torch.save_file(part, str(d / fname), metadata=meta)
        for k, t in part.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    assert sorted(weight_map) == sorted(tensors), "every tensor must be in exactly one shard"
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def read_weights_f32(d: Path) -> dict[str, torch.Tensor]:
    """Read the checkpoint back from disk exactly as stored, upcast to float32."""
    index = d / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    out = {}
    for f in files:
        for k, t in safetensors.torch.load_file(str(d / f)).items():
            assert k not in out, k
            out[k] = t.to(torch.float32)
    return out


# --------------------------------------------------------------------------------------------
# models


def hf_config(cfg: dict, attn: str) -> Qwen2Config:
    kw = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")}
    c = Qwen2Config(**kw)
    c._attn_implementation = attn
    return c


def hf_model(cfg: dict, sd: dict[str, torch.Tensor], attn: str) -> Qwen2ForCausalLM:
    model = Qwen2ForCausalLM(hf_config(cfg, attn)).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    if cfg["tie_word_embeddings"]:
        assert set(missing) <= {"lm_head.weight"}, missing
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    else:
        assert not missing, missing
        assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    for name, p in model.state_dict().items():
        src = sd.get(name, sd["model.embed_tokens.weight"] if name == "lm_head.weight" else None)
        assert src is not None and torch.equal(p, src), f"{name} not loaded"
    # Belt and braces: no attention module may treat itself as causal.
    for m in model.modules():
        if hasattr(m, "is_causal"):
            m.is_causal = False
    # RoPE theta must have reached the rotary embedding.
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    want = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.float(), want, rtol=1e-6, atol=0)
    return model


def bidir_logits(model: Qwen2ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    b, l = ids.shape
    zeros = torch.zeros(b, 1, l, l, dtype=torch.float32)  # additive mask: nothing masked
    # A dict is taken as already-prepared per-layer-type masks (transformers >= 4.53); no causal
    # mask is built.
    mask = {lt: zeros for lt in set(model.config.layer_types)}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def causal_logits(model: Qwen2ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    saved = [(m, m.is_causal) for m in model.modules() if hasattr(m, "is_causal")]
    for m, _ in saved:
        m.is_causal = True
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits.float()
    finally:
        for m, c in saved:
            m.is_causal = c


def manual_logits_f64(cfg: dict, sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Independent bidirectional Qwen2 forward in float64 (no transformers code)."""
    w = {k: v.double() for k, v in sd.items()}
    h = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // nh
    eps = cfg["rms_norm_eps"]
    b, l = ids.shape

    def rms(x, g):
        return g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(l, dtype=torch.float64)[:, None] * inv[None, :]  # [L, hd/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):  # x [B, heads, L, hd]; rotate-half (non-interleaved) convention
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = rms(x, w[p + "input_layernorm.weight"])

        def proj(n, heads):
            t = y @ w[p + f"self_attn.{n}_proj.weight"].T + w[p + f"self_attn.{n}_proj.bias"]
            return t.view(b, l, heads, hd).transpose(1, 2)

        q, k, v = rope(proj("q", nh)), rope(proj("k", nkv)), proj("v", nkv)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)  # no mask at all
        o = (att @ v).transpose(1, 2).reshape(b, l, nh * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        y = rms(x, w[p + "post_attention_layernorm.weight"])
        g = y @ w[p + "mlp.gate_proj.weight"].T
        u = y @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def shift(logits: torch.Tensor) -> torch.Tensor:
    """Dream convention: hidden at i-1 predicts token i; position 0 repeats position 0."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# --------------------------------------------------------------------------------------------
# fixtures


def base_config(tok: Tokenizer, vocab_size: int, **over) -> dict:
    eos, mask = tok.token_to_id(EOS), tok.token_to_id(MASK)
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "sliding_window": None,
        "use_sliding_window": False,
        "max_window_layers": 2,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": False,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "mask_token_id": mask,
        "diffusion_logits": "in_place",
        "torch_dtype": "float32",
    }
    for k, v in over.items():
        assert k in cfg, k
        cfg[k] = v
    return cfg


def fixture_specs(tok: Tokenizer) -> list[dict]:
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    return [
        {
            "name": "qwen2-gqa-untied",
            "seed": 1001,
            "what": "GQA (4 query heads over 2 KV heads, head_dim 16), q/k/v biases, untied lm_head, "
            "rope_theta 1e4, rms_norm_eps 1e-5, in_place logits, float32 weights in one model.safetensors",
            "config": base_config(tok, n_tok, rms_norm_eps=1e-5),
            "shards": None,
            "hf_loadable": True,
        },
        {
            "name": "qwen2-tied",
            "seed": 2002,
            "what": "tied embeddings (no lm_head tensor), multi-head attention (2 heads = 2 KV heads, "
            "head_dim 32), intermediate 160, rope_theta 1e6, in_place logits, bfloat16 weights in a "
            "2-shard checkpoint with model.safetensors.index.json",
            "config": base_config(
                tok,
                n_tok,
                num_attention_heads=2,
                num_key_value_heads=2,
                intermediate_size=160,
                rope_theta=1000000.0,
                tie_word_embeddings=True,
                torch_dtype="bfloat16",
            ),
            # shard 1: embeddings + layer 0; shard 2: layer 1 + final norm
            "shards": "by-layer",
            "hf_loadable": True,
        },
        {
            "name": "dream-shifted",
            "seed": 3003,
            "what": "Dream-v0 style: architectures [DreamModel], model_type Dream, shifted logits "
            "(hidden at i-1 predicts token i), GQA 4/2 with biases, untied lm_head, float16 weights in "
            "one model.safetensors, and vocab_size padded past the tokenizer (" + f"{((n_tok + 63) // 64) * 64} > {n_tok}"
            "; as in real Qwen2/Dream checkpoints, the extra rows exist but no input uses them)",
            "config": base_config(
                tok,
                ((n_tok + 63) // 64) * 64,
                architectures=["DreamModel"],
                model_type="Dream",
                diffusion_logits="shifted",
                torch_dtype="float16",
            ),
            "shards": None,
            "hf_loadable": False,  # model_type "Dream" needs remote code; loaded manually instead
        },
    ]


def shard_by_layer(cfg: dict, names: list[str]) -> list[list[str]]:
    first = [n for n in names if n.startswith("model.embed_tokens.") or n.startswith("model.layers.0.")]
    second = [n for n in names if n not in first]
    assert cfg["num_hidden_layers"] == 2 and first and second
    return [first, second]


def make_inputs(tok: Tokenizer, cfg: dict, seed: int) -> torch.Tensor:
    """Row 0: real Rust text with a masked span (a diffusion infill); row 1: uniform random ids."""
    rng = np.random.default_rng(seed + 7)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    text = RUST_CORPUS[seed % len(RUST_CORPUS)]
    ids0 = tok.encode(text).ids
    start = int(rng.integers(0, len(ids0) - SEQ_LEN))
    row0 = list(ids0[start : start + SEQ_LEN])
    m0 = int(rng.integers(4, SEQ_LEN - 8))
    for j in range(m0, m0 + 6):
        row0[j] = cfg["mask_token_id"]
    row1 = [int(x) for x in rng.integers(0, n_tok, SEQ_LEN)]
    row1[int(rng.integers(0, SEQ_LEN))] = cfg["mask_token_id"]
    ids = torch.tensor([row0, row1], dtype=torch.long)
    assert ids.shape == (BATCH, SEQ_LEN) and int(ids.max()) < n_tok <= cfg["vocab_size"]
    return ids


def fmt_f32(x: np.ndarray) -> str:
    """Shortest decimal that round-trips the float32 value."""
    assert np.all(np.isfinite(x))
    return "[" + ",".join(str(v) for v in x.astype(np.float32)) + "]"


def write_reference(d: Path, ids: torch.Tensor, logits: torch.Tensor, note: str) -> None:
    arr = logits.numpy().astype(np.float32)
    b, l, _ = arr.shape
    rows = []
    for i in range(b):
        rows.append("[\n" + ",\n".join("   " + fmt_f32(arr[i, j]) for j in range(l)) + "\n  ]")
    text = (
        "{\n"
        f'"note": {json.dumps(note)},\n'
        f'"input_ids": {json.dumps(ids.tolist())},\n'
        '"logits": [\n  ' + ",\n  ".join(rows) + "\n]\n}\n"
    )
    (d / "reference.json").write_text(text)
    back = json.loads(text)
    got = np.array(back["logits"], dtype=np.float32)
    assert got.shape == arr.shape and np.array_equal(got, arr), "reference.json does not round-trip"
    assert back["input_ids"] == ids.tolist()


def check(cond: bool, msg: str) -> None:
    if not cond:
        sys.exit(f"CHECK FAILED: {msg}")
    print(f"  ok: {msg}")


def make_fixture(spec: dict, tok: Tokenizer) -> dict:
    name, cfg, seed = spec["name"], spec["config"], spec["seed"]
    print(f"{name}:")
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tok.save(str(d / "tokenizer.json"), pretty=True)
    tok_back = Tokenizer.from_file(str(d / "tokenizer.json"))
    check(
        tok_back.token_to_id(EOS) == cfg["eos_token_id"] == cfg["pad_token_id"]
        and tok_back.token_to_id(MASK) == cfg["mask_token_id"],
        f"tokenizer specials {EOS}={cfg['eos_token_id']} {MASK}={cfg['mask_token_id']} match config",
    )
    check(tok_back.get_vocab_size(with_added_tokens=True) <= cfg["vocab_size"], "tokenizer vocab <= vocab_size")
    sample = RUST_CORPUS[0][:200] + EOS
    enc = tok_back.encode(sample)
    check(tok_back.decode(enc.ids, skip_special_tokens=False) == sample, "tokenizer round-trips text")

    weights = random_weights(cfg, seed)
    store = cfg["torch_dtype"]
    shards = shard_by_layer(cfg, list(weights)) if spec["shards"] == "by-layer" else None
    write_weights(d, weights, store, shards)
    sd = read_weights_f32(d)
    check(sorted(sd) == sorted(n for n, _, _ in tensor_specs(cfg)), "exact Qwen2 tensor names on disk")
    if store != "float32":
        rounded = torch.from_numpy(weights["model.norm.weight"]).to(TORCH_DTYPE[store]).float()
        check(torch.equal(sd["model.norm.weight"], rounded), f"weights on disk are {store}-rounded")

    ids = make_inputs(tok, cfg, seed)
    model = hf_model(cfg, sd, "eager")
    raw = bidir_logits(model, ids)
    assert raw.shape == (BATCH, SEQ_LEN, cfg["vocab_size"])

    # 1. bidirectional: a change at the last position reaches position 0.
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 17) % tok.get_vocab_size(with_added_tokens=True)
    raw2 = bidir_logits(model, ids2)
    d0 = (raw2[:, 0] - raw[:, 0]).abs().amax(-1)
    check(bool((d0 > 1e-3).all()), f"changing the last token changes logits at position 0 (max |diff| per row {d0.tolist()})")
    # 2. differs from a causal run at every position (with 2 layers even the last one differs:
    #    its layer-2 input mixes layer-1 states that did not see the future in the causal run).
    caus = causal_logits(model, ids)
    dc = (caus - raw).abs().amax(-1)  # [B, L]
    check(bool((dc > 1e-4).all()), f"causal run differs at every position (min max|diff| {dc.min().item():.3g})")
    # the causal run really is causal: the last token does not reach position 0 there.
    dcc = (causal_logits(model, ids2)[:, 0] - caus[:, 0]).abs().max().item()
    check(dcc == 0.0, "sanity: in the causal run the last token does not affect position 0")
    # 3. independent float64 implementation.
    ref64 = manual_logits_f64(cfg, sd, ids)
    dm = (ref64 - raw.double()).abs().max().item()
    check(dm < 1e-4, f"transformers f32 == independent f64 bidirectional forward (max |diff| {dm:.3g})")
    # 4. SDPA backend, same mask.
    try:
        sdpa = bidir_logits(hf_model(cfg, sd, "sdpa"), ids)
        ds = (sdpa - raw).abs().max().item()
        check(ds < 1e-5, f"sdpa attention agrees with eager ({ds:.3g})")
    except Exception as e:  # noqa: BLE001 - optional cross-check
        print(f"  (sdpa cross-check skipped: {e})")
    # 5. transformers' own loader reads our config.json + safetensors.
    if spec["hf_loadable"]:
        m2 = Qwen2ForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager").eval()
        df = (bidir_logits(m2, ids) - raw).abs().max().item()
        check(df < 1e-6, f"Qwen2ForCausalLM.from_pretrained(fixture dir) reproduces the logits ({df:.3g})")

    shifted = cfg["diffusion_logits"] == "shifted"
    logits = shift(raw) if shifted else raw
    conv = (
        "shifted (Dream): logits = cat(raw[:, :1], raw[:, :-1], dim=1), i.e. row i is the raw output "
        "at position i-1 (row 0 repeats raw position 0)"
        if shifted
        else "in_place: row i is the raw output at position i"
    )
    note = (
        f"{name}: logits [batch={BATCH}][seq={SEQ_LEN}][vocab={cfg['vocab_size']}] float32 from transformers "
        f"{transformers.__version__} Qwen2ForCausalLM (torch {torch.__version__}, eager attention) with FULL "
        "BIDIRECTIONAL attention (all-zero additive mask, no causal mask, no padding), position_ids 0..L-1, "
        f"on the {store} weights on disk upcast to float32. Convention: {conv}. "
        f"Max |diff| vs an independent float64 implementation: {dm:.2g}; compare a float32 run with "
        "atol ~1e-4. Generated by scripts/make_parity_fixtures.py."
    )
    write_reference(d, ids, logits, note)
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"  wrote {d.relative_to(REPO)} ({size / 1024:.0f} KiB)")
    return {"name": name, "what": spec["what"], "size": size}


def write_readme(done: list[dict], n_tok: int) -> None:
    lines = [
        "# Parity fixtures",
        "",
        "Tiny random-weight checkpoints in Hugging Face format, with reference logits computed by",
        "`transformers` (`Qwen2ForCausalLM`, float32, **full bidirectional attention**). The Rust model",
        "must reproduce `reference.json` from `config.json` + the safetensors (atol ~1e-4 in float32).",
        "",
        "Each directory holds `config.json`, the weights, `tokenizer.json` (a byte-level BPE with a",
        f"Qwen2-style pre-tokenizer trained on a few KB of Rust; {n_tok} tokens, `{EOS}` = eos/pad/bos,",
        f"`{MASK}` = mask, both appended after the BPE vocabulary) and `reference.json`:",
        "",
        "```",
        '{"note": "...", "input_ids": [[...24 ids], [...24 ids]], "logits": [2][24][vocab_size] (float32)}',
        "```",
        "",
        "Row 0 of `input_ids` is real tokenized Rust with a run of 6 mask tokens, row 1 uniformly random ids",
        "(< tokenizer size, one mask). No padding; positions are 0..23.",
        "",
        "| fixture | exercises |",
        "| --- | --- |",
    ]
    for f in done:
        lines.append(f"| `{f['name']}` | {f['what']} |")
    lines += [
        "",
        "All weights are random (seeded), norms included (1 ± 0.2) and biases nonzero. Reduced-precision",
        "fixtures' references are computed on the bf16/f16 weights on disk upcast to float32.",
        "",
        "Bidirectionality: the reference run passes an all-zero additive `[B,1,L,L]` mask to the eager",
        "attention (as the per-layer-type mask dict, so transformers builds no causal mask) and clears",
        "`is_causal` on every attention module. The generator asserts that changing the last token changes",
        "position 0's logits, that a causal run differs at every position, and that an",
        "independent float64 re-implementation, the SDPA backend and (for the `qwen2` ones)",
        "`from_pretrained` on the fixture directory agree.",
        "",
        "Regenerate (never run by CI; seeded, so the output is identical for the same package versions):",
        "",
        "```",
        "pip install -r scripts/requirements-parity.txt",
        "python3 scripts/make_parity_fixtures.py",
        "```",
        "",
        f"Generated with Python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}, safetensors "
        f"{safetensors.__version__}, numpy {np.__version__}.",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # fixed reduction order
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(bpe_vocab=420)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    print(f"tokenizer: {n_tok} tokens, {EOS}={tok.token_to_id(EOS)}, {MASK}={tok.token_to_id(MASK)}")
    done = [make_fixture(spec, tok) for spec in fixture_specs(tok)]
    write_readme(done, n_tok)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            digest.update(f.relative_to(OUT).as_posix().encode() + b"\0" + f.read_bytes())
    print(f"total {total / 1024:.0f} KiB; sha256 of the fixture tree {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
