//! The Qwen2-family transformer used by the open diffusion code models (Dream, DiffuCoder,
//! Open-dCoder) and by our own default model: RMSNorm, RoPE, grouped-query attention with q/k/v
//! biases, SwiGLU MLP, tied or untied embeddings. Attention is bidirectional except where a pass
//! says otherwise.
//!
//! Three ways to run it:
//! - [`Transformer::forward_full`]: the whole sequence at once (parity tests, and the refresh of
//!   the context cache during bidirectional infilling);
//! - [`Transformer::forward_span`]: only the few "active" tokens of an infill span, attending to the
//!   cached keys/values of the fixed context around them (the Fast-dLLM approximate cache; exact
//!   for the causal context of `spm_block`);
//! - [`Transformer::forward_causal`]: causal passes with a growing KV cache: the `spm_block`
//!   infill context, and the autoregressive baseline that the benches compare against.
//!
//! Reference: `Qwen2Model` in Hugging Face transformers, with the causal mask removed outside
//! the causal passes.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};

use crate::amx::{self, PackedBf16, PackedKv, PackedLinear};
use crate::config::{Config, WeightFamily};
use crate::error::Result;
use crate::kernels::{self, MaskedSoftmax, SwiGlu};
use crate::weights::TensorStore;

struct Linear {
    /// (in, out), contiguous: see [`input_major`].
    wt: Tensor,
    b: Option<Tensor>,
    /// The same weight (and bias) for the AMX kernel, once [`Transformer::use_amx`] packed it.
    bf16: Option<(PackedBf16, Option<Vec<f32>>)>,
}

/// A checkpoint's (out, in) weight copied once at load to (in, out): gemm then skips re-packing
/// a strided matrix on every call, which made span-sized matmuls 1.6-2.3x slower (this CPU).
fn input_major(w: Tensor) -> Result<Tensor> {
    Ok(w.t()?.contiguous()?)
}

impl Linear {
    fn new(wt: Tensor, b: Option<Tensor>) -> Self {
        Self { wt, b, bf16: None }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((weight, bias)) = &self.bf16 {
            let op = PackedLinear {
                weight,
                bias: bias.as_deref(),
            };
            return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        let y = match x.dims() {
            [b, l, d] => x
                .reshape((b * l, *d))?
                .matmul(&self.wt)?
                .reshape((*b, *l, ()))?,
            _ => x.matmul(&self.wt)?,
        };
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Pack the weight for the AMX kernel, if its shape fits the kernel's blocking.
    fn pack_bf16(&mut self) -> Result<()> {
        let (k, n) = self.wt.dims2()?;
        if !PackedBf16::fits(k, n) || self.wt.dtype() != DType::F32 {
            return Ok(());
        }
        let w = self.wt.flatten_all()?.to_vec1::<f32>()?;
        let bias = match &self.b {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        self.bf16 = Some((PackedBf16::pack(&w, k, n), bias));
        Ok(())
    }
}

/// One layer, with the projections that read the same input fused into one matmul each:
/// q/k/v (columns q | k | v) and gate/up (columns gate | up). Fewer, larger matmuls: at span
/// sizes (a few dozen rows) each call's fixed cost is a large share of the step.
struct Layer {
    input_norm: Tensor,
    qkv: Linear,
    o: Linear,
    post_norm: Tensor,
    gate_up: Linear,
    down: Linear,
}

impl Layer {
    fn linears(&self) -> [&Linear; 4] {
        [&self.qkv, &self.o, &self.gate_up, &self.down]
    }

    fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.o,
            &mut self.gate_up,
            &mut self.down,
        ]
    }
}

/// Which keys each query of an attention call may see.
#[derive(Clone, Copy)]
enum Mask<'a> {
    /// Every key (bidirectional).
    Full,
    /// The queries are the last of the keys, in order: each sees the keys up to itself.
    Causal,
    /// An additive bias broadcastable to (B, Lq, Lk): key padding in batched parity tests.
    Bias(&'a Tensor),
}

/// Keys and values of one layer for a block of positions: (batch, kv_heads, len, head_dim).
/// The batch is 1 when shared by every candidate.
#[derive(Clone)]
pub struct KvBlock {
    pub k: Tensor,
    pub v: Tensor,
}

impl KvBlock {
    /// The block with its keys stored transposed (and viewed as usual): every span step
    /// multiplies the queries by the keys' transpose, which then reads contiguous rows (at
    /// 1,024 keys 1.7x faster than through the strided view, measured on the 2-core Xeon).
    fn for_steps(&self) -> Result<KvBlock> {
        Ok(KvBlock {
            k: self.k.transpose(2, 3)?.contiguous()?.transpose(2, 3)?,
            v: self.v.clone(),
        })
    }
}

/// `t` (B, H, n, hd) with its rows `start..start + fresh rows` replaced by `fresh`.
fn splice_rows(t: &Tensor, fresh: &Tensor, start: usize) -> Result<Tensor> {
    let (n, len) = (t.dim(2)?, fresh.dim(2)?);
    let end = start + len;
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(t.narrow(2, 0, start)?);
    }
    parts.push(fresh.clone());
    if end < n {
        parts.push(t.narrow(2, end, n - end)?);
    }
    Ok(Tensor::cat(&parts, 2)?)
}

/// Per-layer keys/values of the fixed context (prefix and suffix) of an infill request.
#[derive(Clone)]
pub struct ContextKv {
    pub layers: Vec<KvBlock>,
    /// Every layer's heads packed for the AMX span attention, made by the first span step
    /// that uses them as its context (shared by clones: a context's `layers` are not changed
    /// after construction; a span's are, and it is never packed).
    packed: Arc<OnceLock<Vec<Vec<PackedKv>>>>,
}

impl ContextKv {
    pub fn new(layers: Vec<KvBlock>) -> Self {
        Self {
            layers,
            packed: Arc::default(),
        }
    }

    /// The context as span steps read it best: see [`KvBlock::for_steps`].
    pub fn for_steps(&self) -> Result<ContextKv> {
        Ok(ContextKv::new(
            self.layers
                .iter()
                .map(KvBlock::for_steps)
                .collect::<Result<_>>()?,
        ))
    }

    /// Layer `layer`'s heads packed for [`amx::SpanAttention`] (batch 1, head_dim fitting
    /// [`PackedKv::fits`]); the first call packs every layer.
    fn packed(&self, layer: usize) -> Result<&[PackedKv]> {
        if let Some(p) = self.packed.get() {
            return Ok(&p[layer]);
        }
        let packed = self
            .layers
            .iter()
            .map(|l| {
                let (_, kvh, keys, hd) = l.k.dims4()?;
                // Keys stored transposed ([`KvBlock::for_steps`]) are read as Kᵀ, no copy.
                let kt = l.k.transpose(2, 3)?.contiguous()?.flatten_all()?;
                let v = l.v.contiguous()?.flatten_all()?;
                let (kt, v) = (kt.to_vec1::<f32>()?, v.to_vec1::<f32>()?);
                Ok((0..kvh)
                    .map(|h| {
                        let at = h * keys * hd..(h + 1) * keys * hd;
                        PackedKv::pack_transposed(&kt[at.clone()], &v[at], keys, hd)
                    })
                    .collect())
            })
            .collect::<Result<Vec<Vec<PackedKv>>>>()?;
        Ok(&self.packed.get_or_init(|| packed)[layer])
    }

    /// The batch rows `index` (u32, into dim 0) of every layer.
    pub fn select_batch(&self, index: &Tensor) -> Result<ContextKv> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(KvBlock {
                    k: l.k.index_select(index, 0)?,
                    v: l.v.index_select(index, 0)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ContextKv::new(layers))
    }

    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.dim(2).unwrap_or(0))
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Growing per-layer cache for causal passes.
#[derive(Clone, Default)]
pub struct CausalCache {
    layers: Vec<Option<KvBlock>>,
    pub len: usize,
}

impl CausalCache {
    /// Forget every position from `len` on. Exact: a causal key/value depends only on the
    /// tokens up to its own position.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if len == 0 {
            *self = Self::default();
            return Ok(());
        }
        for kv in self.layers.iter_mut().flatten() {
            kv.k = kv.k.narrow(2, 0, len)?;
            kv.v = kv.v.narrow(2, 0, len)?;
        }
        self.len = len;
        Ok(())
    }

    /// The cached keys/values as the fixed context of span passes (no layers while empty).
    pub fn context(&self) -> Result<ContextKv> {
        ContextKv::new(self.layers.iter().flatten().cloned().collect()).for_steps()
    }
}

/// What [`Transformer::forward_full`] should keep as context K/V: every position except the
/// active window `start..start + len`.
#[derive(Debug, Clone, Copy)]
pub struct ActiveWindow {
    pub start: usize,
    pub len: usize,
}

pub struct Transformer {
    cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// Output head (d → vocab), laid out like the linears.
    lm_head: Linear,
    /// Attention of long full and causal passes through the AMX kernel ([`Self::use_amx`]).
    amx_attention: bool,
    /// RoPE cos/sin of positions 0..n (n ≤ [`ROPE_TABLE_POSITIONS`]), (n, head_dim/2): a pass
    /// over a run of positions slices them instead of computing 2·L·hd/2 cos and sin.
    rope_table: (Tensor, Tensor),
    device: Device,
}

/// Queries per chunk of a long causal pass ([`Transformer::attend_causal`]).
const CAUSAL_CHUNK: usize = 256;

/// Full and causal passes of at least this many queries attend through the AMX kernel (where
/// on): below it, packing the keys and values costs about what the products save.
const AMX_ATTENTION_QUERIES: usize = 16;

/// Positions whose RoPE tables are computed once at load.
const ROPE_TABLE_POSITIONS: usize = 4096;

/// The parameter names and shapes of the default family's checkpoint, in a fixed order (the
/// benches build random weights from them).
pub fn parameter_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden_size;
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    let f = cfg.intermediate_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, d],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![d, d]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        if cfg.qkv_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![d]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    out
}

/// Tensor names of one layer in a weight family.
struct LayerNames {
    input_norm: String,
    q: String,
    k: String,
    v: String,
    o: String,
    post_norm: String,
    gate: String,
    up: String,
    down: String,
}

fn layer_names(family: WeightFamily, i: usize) -> LayerNames {
    match family {
        WeightFamily::Qwen2 => {
            let p = format!("model.layers.{i}");
            LayerNames {
                input_norm: format!("{p}.input_layernorm"),
                q: format!("{p}.self_attn.q_proj"),
                k: format!("{p}.self_attn.k_proj"),
                v: format!("{p}.self_attn.v_proj"),
                o: format!("{p}.self_attn.o_proj"),
                post_norm: format!("{p}.post_attention_layernorm"),
                gate: format!("{p}.mlp.gate_proj"),
                up: format!("{p}.mlp.up_proj"),
                down: format!("{p}.mlp.down_proj"),
            }
        }
        WeightFamily::Llada => {
            let p = format!("model.transformer.blocks.{i}");
            LayerNames {
                input_norm: format!("{p}.attn_norm"),
                q: format!("{p}.q_proj"),
                k: format!("{p}.k_proj"),
                v: format!("{p}.v_proj"),
                o: format!("{p}.attn_out"),
                post_norm: format!("{p}.ff_norm"),
                gate: format!("{p}.ff_proj"),
                up: format!("{p}.up_proj"),
                down: format!("{p}.ff_out"),
            }
        }
    }
}

impl Transformer {
    pub fn new(cfg: &Config, store: &TensorStore, device: &Device) -> Result<Self> {
        let d = cfg.hidden_size;
        let kv = cfg.num_key_value_heads * cfg.head_dim();
        let f = cfg.intermediate_size;
        // Projections reading the same input, as one (in, Σ out) matrix: see [`Layer`].
        let fused = |parts: &[(&str, usize)], inp: usize, bias: bool| -> Result<Linear> {
            let mut ws = Vec::with_capacity(parts.len());
            let mut bs = Vec::with_capacity(parts.len());
            for (name, out) in parts {
                ws.push(store.get(&format!("{name}.weight"), &[*out, inp])?);
                if bias {
                    bs.push(store.get(&format!("{name}.bias"), &[*out])?);
                }
            }
            Ok(Linear::new(
                input_major(Tensor::cat(&ws, 0)?)?,
                if bias {
                    Some(Tensor::cat(&bs, 0)?)
                } else {
                    None
                },
            ))
        };
        let linear = |name: &str, out: usize, inp: usize| fused(&[(name, out)], inp, false);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = layer_names(cfg.family, i);
            layers.push(Layer {
                input_norm: store.get(&format!("{}.weight", n.input_norm), &[d])?,
                qkv: fused(&[(&n.q, d), (&n.k, kv), (&n.v, kv)], d, cfg.qkv_bias)?,
                o: linear(&n.o, d, d)?,
                post_norm: store.get(&format!("{}.weight", n.post_norm), &[d])?,
                gate_up: fused(&[(&n.gate, f), (&n.up, f)], d, false)?,
                down: linear(&n.down, d, f)?,
            });
        }
        let (embed_name, norm_name, head_name) = match cfg.family {
            WeightFamily::Qwen2 => (
                "model.embed_tokens.weight",
                "model.norm.weight",
                "lm_head.weight",
            ),
            WeightFamily::Llada => (
                "model.transformer.wte.weight",
                "model.transformer.ln_f.weight",
                "model.transformer.ff_out.weight",
            ),
        };
        let embed = store.get(embed_name, &[cfg.vocab_size, d])?;
        let lm_head = if cfg.tie_word_embeddings && !store.contains(head_name) {
            embed.clone()
        } else {
            store.get(head_name, &[cfg.vocab_size, d])?
        };
        let lm_head = Linear::new(input_major(lm_head)?, None);
        let table_len = cfg.max_position_embeddings.min(ROPE_TABLE_POSITIONS) as i64;
        let rope_table = rope_tables_at(
            cfg,
            &(0..table_len).collect::<Vec<_>>(),
            embed.dtype(),
            device,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm: store.get(norm_name, &[d])?,
            lm_head,
            amx_attention: false,
            rope_table,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Run the linear layers, the output head and the attention of long passes and span steps
    /// as bf16 products on AMX tiles ([`amx`]), and span passes fused ([`FusedSpan`]), where
    /// this process has AMX; f32 elsewhere. Returns whether it did. Norms, softmax and the
    /// residual stream stay f32.
    pub fn use_amx(&mut self) -> Result<bool> {
        if !amx::available() {
            return Ok(false);
        }
        self.lm_head.pack_bf16()?;
        for layer in &mut self.layers {
            for linear in layer.linears_mut() {
                linear.pack_bf16()?;
            }
        }
        self.amx_attention = amx::PackedKv::fits(self.cfg.head_dim());
        Ok(self.uses_amx())
    }

    /// Whether [`Self::use_amx`] put any product on AMX tiles.
    pub fn uses_amx(&self) -> bool {
        self.amx_attention
            || self.lm_head.bf16.is_some()
            || self
                .layers
                .iter()
                .any(|l| l.linears().iter().any(|lin| lin.bf16.is_some()))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// RoPE tables for the given positions, built in f32 whatever the weights' dtype: (len, head_dim/2).
    /// Positions may be negative: a rotation by -p undoes one by p (used to move cached keys).
    fn rope_tables(&self, positions: &[u32]) -> Result<(Tensor, Tensor)> {
        let first = positions.first().copied().unwrap_or(0) as usize;
        let run = positions
            .iter()
            .enumerate()
            .all(|(i, &p)| p as usize == first + i);
        if run && first + positions.len() <= self.rope_table.0.dim(0)? {
            let (cos, sin) = &self.rope_table;
            return Ok((
                cos.narrow(0, first, positions.len())?,
                sin.narrow(0, first, positions.len())?,
            ));
        }
        let signed: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        self.rope_tables_signed(&signed)
    }

    fn rope_tables_signed(&self, positions: &[i64]) -> Result<(Tensor, Tensor)> {
        rope_tables_at(&self.cfg, positions, self.embed.dtype(), &self.device)
    }

    /// Move cached keys (B, KVH, L, hd) by `delta` positions: RoPE rotations compose, so keys
    /// computed at p become keys at p + delta without recomputing them.
    pub fn shift_keys(&self, k: &Tensor, delta: i64) -> Result<Tensor> {
        let l = k.dim(2)?;
        // candle's rope kernel panics on an empty block ("chunk_size must not be zero").
        if delta == 0 || l == 0 {
            return Ok(k.clone());
        }
        let (cos, sin) = self.rope_tables_signed(&vec![delta; l])?;
        Ok(candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)?)
    }

    /// Project hidden states (B, L, d) to rotated queries (B, H, L, hd) and keys/values (B, KVH, L, hd).
    fn qkv(&self, layer: &Layer, x: &Tensor, rope: &(Tensor, Tensor)) -> Result<(Tensor, KvBlock)> {
        let (b, l, _) = x.dims3()?;
        let hd = self.cfg.head_dim();
        let (h, kvh) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        // (B, L, (H + 2 KVH) · hd) → (B, H + 2 KVH, L, hd) in one copy; the three head groups
        // are then slices of it (contiguous without a copy at B = 1).
        let all = layer
            .qkv
            .forward(x)?
            .reshape((b, l, h + 2 * kvh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = all.narrow(1, 0, h)?.contiguous()?;
        let k = all.narrow(1, h, kvh)?.contiguous()?;
        let v = all.narrow(1, h + kvh, kvh)?.contiguous()?;
        let (cos, sin) = rope;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        Ok((q, KvBlock { k, v }))
    }

    /// Attention of queries (B, H, Lq, hd) over the keys/values of several blocks, in order,
    /// each of batch B (a context the candidates share: [`Self::attend_shared_context`]).
    /// Grouped-query attention without copying keys: the query heads that share a KV head are
    /// folded into the row dimension. Scale, mask and softmax are one in-place kernel.
    fn attend(&self, q: &Tensor, blocks: &[&KvBlock], mask: Mask) -> Result<Tensor> {
        let (b, h, lq, hd) = q.dims4()?;
        let kvh = self.cfg.num_key_value_heads;
        let g = h / kvh;
        let qg = q.reshape((b, kvh, g * lq, hd))?;
        let mut scale = 1.0 / (hd as f32).sqrt();
        let mut scores = Vec::with_capacity(blocks.len());
        for kv in blocks {
            scores.push(qg.matmul(&kv.k.transpose(2, 3)?)?);
        }
        let mut scores = if scores.len() == 1 {
            scores.pop().expect("one score block")
        } else {
            Tensor::cat(&scores, 3)?
        };
        let lk = scores.dim(3)?;
        if let Mask::Bias(bias) = mask {
            // The bias adds to scaled scores: scale first, then the kernel's scale is 1.
            let (bb, lqb, _) = bias.dims3()?;
            scores = (scores.reshape((b, kvh, g, lq, lk))? * f64::from(scale))?
                .broadcast_add(
                    &bias
                        .to_dtype(scores.dtype())?
                        .reshape((bb, 1, 1, lqb, lk))?,
                )?
                .reshape((b, kvh, g * lq, lk))?;
            scale = 1.0;
        }
        let probs = scores.contiguous()?;
        probs.inplace_op1(&MaskedSoftmax {
            scale,
            queries: lq,
            causal_base: matches!(mask, Mask::Causal).then(|| lk.saturating_sub(lq)),
        })?;
        let mut out: Option<Tensor> = None;
        let mut offset = 0;
        for kv in blocks {
            let lk = kv.k.dim(2)?;
            // A view: the matmul reads rows of any stride.
            let p = probs.narrow(3, offset, lk)?;
            offset += lk;
            let o = p.matmul(&kv.v)?;
            out = Some(match out {
                Some(acc) => (acc + o)?,
                None => o,
            });
        }
        Ok(out
            .expect("at least one key block")
            .reshape((b, h, lq, hd))?)
    }

    /// Span queries over the cached context (if any) and the span's own keys/values.
    /// On AMX the context part runs on the tiles ([`amx::SpanAttention`]) where the context is
    /// shared (batch 1).
    fn attend_span(
        &self,
        q: &Tensor,
        context: &ContextKv,
        layer: usize,
        span: &KvBlock,
    ) -> Result<Tensor> {
        let ctx = &context.layers[layer];
        if self.amx_attention && ctx.k.dim(2)? > 0 && ctx.k.dim(0)? == 1 {
            let op = amx::SpanAttention {
                context: context.packed(layer)?,
                scale: 1.0 / (self.cfg.head_dim() as f32).sqrt(),
            };
            return self.attend_grouped(q, span, &op);
        }
        if ctx.k.dim(2)? == 0 {
            self.attend(q, &[span], Mask::Full)
        } else if ctx.k.dim(0)? == 1 && q.dim(0)? > 1 {
            self.attend_shared_context(q, ctx, span)
        } else {
            self.attend(q, &[ctx, span], Mask::Full)
        }
    }

    /// [`Self::attend`] over a context every candidate shares (batch 1) and each candidate's
    /// own span, with the candidates folded into the rows of the context products: one
    /// (B·G·Lq × hd)·(hd × Lk) product per KV head instead of B, and no broadcast copy of the
    /// context's keys and values (at 3 candidates those were a fifth of a step). The score rows
    /// are laid out (KVH, B, G·Lq, Lk + Ls) so the context's probabilities stay a strided view.
    fn attend_shared_context(&self, q: &Tensor, ctx: &KvBlock, span: &KvBlock) -> Result<Tensor> {
        let (b, h, lq, hd) = q.dims4()?;
        let kvh = self.cfg.num_key_value_heads;
        let rows = h / kvh * lq;
        let (lk, ls) = (ctx.k.dim(2)?, span.k.dim(2)?);
        let qg = q.reshape((b, kvh, rows, hd))?;
        // (KVH, B·rows, hd): the candidates' queries of one KV head, one after the other.
        let folded = qg
            .transpose(0, 1)?
            .contiguous()?
            .reshape((kvh, b * rows, hd))?;
        let ctx_k = ctx.k.squeeze(0)?;
        let ctx_scores = folded
            .matmul(&ctx_k.transpose(1, 2)?)?
            .reshape((kvh, b, rows, lk))?;
        // Contiguous before the cat, which copies strided inputs element by element.
        let span_scores = qg
            .matmul(&span.k.transpose(2, 3)?)?
            .transpose(0, 1)?
            .contiguous()?;
        let probs = Tensor::cat(&[&ctx_scores, &span_scores], 3)?;
        probs.inplace_op1(&MaskedSoftmax {
            scale: 1.0 / (hd as f32).sqrt(),
            queries: lq,
            causal_base: None,
        })?;
        let probs = probs.reshape((kvh, b * rows, lk + ls))?;
        let from_ctx = probs
            .narrow(2, 0, lk)?
            .matmul(&ctx.v.squeeze(0)?)?
            .reshape((kvh, b, rows, hd))?;
        let span_probs = probs
            .narrow(2, lk, ls)?
            .reshape((kvh, b, rows, ls))?
            .transpose(0, 1)?
            .contiguous()?;
        let from_span = span_probs.matmul(&span.v)?;
        Ok((from_ctx.transpose(0, 1)? + from_span)?.reshape((b, h, lq, hd))?)
    }

    /// Causal attention of queries (B, H, Lq, hd) that are the last Lq of `kv`'s keys. A long
    /// run goes in chunks of queries, each over the keys up to its own end: the masked
    /// triangle above a chunk is never computed (at 1,024 queries in chunks of 256, 5/8 of
    /// the score and value products).
    fn attend_causal(&self, q: &Tensor, kv: &KvBlock) -> Result<Tensor> {
        let lq = q.dim(2)?;
        if self.amx_attention && lq >= AMX_ATTENTION_QUERIES {
            return self.attend_amx(q, kv, true);
        }
        if lq <= CAUSAL_CHUNK {
            return self.attend(q, &[kv], Mask::Causal);
        }
        let past = kv.k.dim(2)? - lq;
        let kv = kv.for_steps()?;
        let mut out = Vec::with_capacity(lq.div_ceil(CAUSAL_CHUNK));
        for start in (0..lq).step_by(CAUSAL_CHUNK) {
            let len = CAUSAL_CHUNK.min(lq - start);
            let keys = past + start + len;
            let visible = KvBlock {
                k: kv.k.narrow(2, 0, keys)?,
                v: kv.v.narrow(2, 0, keys)?,
            };
            let chunk = q.narrow(2, start, len)?.contiguous()?;
            out.push(self.attend(&chunk, &[&visible], Mask::Causal)?);
        }
        Ok(Tensor::cat(&out, 2)?)
    }

    /// [`Self::attend`] over one key block with the AMX kernel ([`amx::Attention`]): bf16
    /// products of 16 query rows at a time, the causal triangle skipped by whole 64-key groups.
    /// Causal queries are the last of the keys.
    fn attend_amx(&self, q: &Tensor, kv: &KvBlock, causal: bool) -> Result<Tensor> {
        let (_, _, lq, hd) = q.dims4()?;
        let lk = kv.k.dim(2)?;
        let op = amx::Attention {
            softmax: MaskedSoftmax {
                scale: 1.0 / (hd as f32).sqrt(),
                queries: lq,
                causal_base: causal.then(|| lk.saturating_sub(lq)),
            },
        };
        self.attend_grouped(q, kv, &op)
    }

    /// An AMX attention op on queries (B, H, Lq, hd) with the query heads that share a KV
    /// head stacked in its rows (B, KVH, G·Lq, hd), and `kv`'s keys and values.
    fn attend_grouped(
        &self,
        q: &Tensor,
        kv: &KvBlock,
        op: &impl candle_core::CustomOp3,
    ) -> Result<Tensor> {
        let (b, h, lq, hd) = q.dims4()?;
        let kvh = self.cfg.num_key_value_heads;
        let qg = q.reshape((b, kvh, h / kvh * lq, hd))?.contiguous()?;
        let out = qg.apply_op3_no_bwd(&kv.k.contiguous()?, &kv.v.contiguous()?, op)?;
        Ok(out.reshape((b, h, lq, hd))?)
    }

    /// Output projection + residual + MLP for one layer.
    fn finish_layer(&self, layer: &Layer, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let (b, h, l, hd) = attn.dims4()?;
        let attn = attn.transpose(1, 2)?.reshape((b, l, h * hd))?;
        let x = (x + layer.o.forward(&attn)?)?;
        let y = self.rms_norm(&x, &layer.post_norm)?;
        let act = layer.gate_up.forward(&y)?.apply_op1_no_bwd(&SwiGlu)?;
        Ok((x + layer.down.forward(&act)?)?)
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            l,
            self.cfg.hidden_size,
        ))?)
    }

    /// Pass over the whole sequence `ids` (B, L) at `positions` (L), bidirectional unless `bias`
    /// masks it. Returns the
    /// final normalised hidden states (B, L, d) and, if `keep` is given, the keys/values of every
    /// position outside the active window (the infill context).
    pub fn forward_full(
        &self,
        ids: &Tensor,
        positions: &[u32],
        bias: Option<&Tensor>,
        keep: Option<ActiveWindow>,
    ) -> Result<(Tensor, Option<ContextKv>)> {
        let rope = self.rope_tables(positions)?;
        let mut x = self.embed(ids)?;
        let l = positions.len();
        let mut ctx = Vec::new();
        for layer in &self.layers {
            let y = self.rms_norm(&x, &layer.input_norm)?;
            let (q, kv) = self.qkv(layer, &y, &rope)?;
            if let Some(w) = keep {
                let end = w.start + w.len;
                let take = |t: &Tensor| -> Result<Tensor> {
                    let parts: Vec<Tensor> = [(0, w.start), (end, l - end)]
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(s, n)| t.narrow(2, s, n))
                        .collect::<candle_core::Result<_>>()?;
                    if parts.is_empty() {
                        // No context at all: an empty block keeps one entry per layer.
                        return Ok(t.narrow(2, 0, 0)?.contiguous()?);
                    }
                    Ok(Tensor::cat(&parts, 2)?.contiguous()?)
                };
                ctx.push(
                    KvBlock {
                        k: take(&kv.k)?,
                        v: take(&kv.v)?,
                    }
                    .for_steps()?,
                );
            }
            let attn = match bias {
                None if self.amx_attention && l >= AMX_ATTENTION_QUERIES => {
                    self.attend_amx(&q, &kv, false)?
                }
                None => self.attend(&q, &[&kv], Mask::Full)?,
                Some(b) => self.attend(&q, &[&kv], Mask::Bias(b))?,
            };
            x = self.finish_layer(layer, &x, &attn)?;
        }
        let h = self.rms_norm(&x, &self.norm)?;
        Ok((h, keep.map(|_| ContextKv::new(ctx))))
    }

    /// Only the active tokens `ids` (B, n) at `positions` (n): they attend to the cached context
    /// and to each other. Context keys/values are not updated: approximate when the context
    /// attends to the span (bidirectional layout, refreshed by the caller), exact when it is causal.
    pub fn forward_span(&self, ids: &Tensor, positions: &[u32], ctx: &ContextKv) -> Result<Tensor> {
        Ok(self.forward_span_kv(ids, positions, ctx, false)?.0)
    }

    /// [`Self::forward_span`] that also returns the active tokens' own keys/values, so that new
    /// context tokens can be added to a cache without a full pass.
    pub fn forward_span_kv(
        &self,
        ids: &Tensor,
        positions: &[u32],
        ctx: &ContextKv,
        keep: bool,
    ) -> Result<(Tensor, Option<ContextKv>)> {
        if let Some(fused) = self.fused_span(ctx)? {
            // Every row fresh: the span's keys and values are all written by this pass.
            let (b, n) = ids.dims2()?;
            let shape = (b, self.cfg.num_key_value_heads, n, self.cfg.head_dim());
            let empty = || Tensor::zeros(shape, DType::F32, &self.device);
            let mut own = ContextKv::new(
                (0..self.layers.len())
                    .map(|_| {
                        Ok(KvBlock {
                            k: empty()?,
                            v: empty()?,
                        })
                    })
                    .collect::<Result<_>>()?,
            );
            let hidden = fused.rows(ids, positions, &mut own, 0..n)?;
            return Ok((hidden, keep.then_some(own)));
        }
        self.forward_span_kv_by_op(ids, positions, ctx, keep)
    }

    /// [`Self::forward_span_kv`] one candle op at a time.
    fn forward_span_kv_by_op(
        &self,
        ids: &Tensor,
        positions: &[u32],
        ctx: &ContextKv,
        keep: bool,
    ) -> Result<(Tensor, Option<ContextKv>)> {
        let rope = self.rope_tables(positions)?;
        let mut x = self.embed(ids)?;
        let mut own = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let y = self.rms_norm(&x, &layer.input_norm)?;
            let (q, kv) = self.qkv(layer, &y, &rope)?;
            let attn = self.attend_span(&q, ctx, i, &kv)?;
            if keep {
                own.push(kv);
            }
            x = self.finish_layer(layer, &x, &attn)?;
        }
        Ok((
            self.rms_norm(&x, &self.norm)?,
            keep.then_some(ContextKv::new(own)),
        ))
    }

    /// [`Self::forward_span`] for only the span rows `rows`, `ids` (B, |rows|) at `positions`:
    /// they attend to the context and to the whole span, whose other rows' keys/values `span`
    /// holds (per layer (B, kv_heads, n, head_dim)) from the step that last ran them; the rows'
    /// fresh keys/values replace theirs in `span`. Approximate (Fast-dLLM's cache): the rows not
    /// run do not see what changed since they ran.
    pub fn forward_span_rows(
        &self,
        ids: &Tensor,
        positions: &[u32],
        ctx: &ContextKv,
        span: &mut ContextKv,
        rows: std::ops::Range<usize>,
    ) -> Result<Tensor> {
        match self.fused_span(ctx)? {
            Some(fused) => fused.rows(ids, positions, span, rows),
            None => self.forward_span_rows_by_op(ids, positions, ctx, span, rows),
        }
    }

    /// [`Self::forward_span_rows`] one candle op at a time.
    fn forward_span_rows_by_op(
        &self,
        ids: &Tensor,
        positions: &[u32],
        ctx: &ContextKv,
        span: &mut ContextKv,
        rows: std::ops::Range<usize>,
    ) -> Result<Tensor> {
        let rope = self.rope_tables(positions)?;
        let mut x = self.embed(ids)?;
        for (i, (layer, own)) in self.layers.iter().zip(&mut span.layers).enumerate() {
            let y = self.rms_norm(&x, &layer.input_norm)?;
            let (q, kv) = self.qkv(layer, &y, &rope)?;
            *own = KvBlock {
                k: splice_rows(&own.k, &kv.k, rows.start)?,
                v: splice_rows(&own.v, &kv.v, rows.start)?,
            };
            let attn = self.attend_span(&q, ctx, i, own)?;
            x = self.finish_layer(layer, &x, &attn)?;
        }
        self.rms_norm(&x, &self.norm)
    }

    /// The fused span step over `ctx`, where every product of a layer runs on AMX tiles and
    /// the context is shared (batch 1): see [`FusedSpan`].
    fn fused_span<'a>(&'a self, ctx: &'a ContextKv) -> Result<Option<FusedSpan<'a>>> {
        let shared = ctx
            .layers
            .first()
            .is_some_and(|l| l.k.dim(0).is_ok_and(|b| b == 1) && l.k.dim(2).is_ok_and(|n| n > 0));
        let packed = self
            .layers
            .iter()
            .all(|l| l.linears().iter().all(|lin| lin.bf16.is_some()));
        if !(self.amx_attention && shared && packed && ctx.layers.len() == self.layers.len()) {
            return Ok(None);
        }
        Ok(Some(FusedSpan { model: self, ctx }))
    }

    /// Causal pass of `ids` (1, L) continuing the cache (positions `cache.len..`): the hidden
    /// states (1, L, d) of the new tokens. The `spm_block` infill context, and decoding steps
    /// of the autoregressive baseline.
    pub fn forward_causal(&self, ids: &Tensor, cache: &mut CausalCache) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let start = cache.len;
        let positions: Vec<u32> = (start as u32..(start + l) as u32).collect();
        let rope = self.rope_tables(&positions)?;
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.layers.len()];
        }
        let mut x = self.embed(ids)?;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let y = self.rms_norm(&x, &layer.input_norm)?;
            let (q, kv) = self.qkv(layer, &y, &rope)?;
            let all = match slot.take() {
                Some(past) => KvBlock {
                    k: Tensor::cat(&[&past.k, &kv.k], 2)?,
                    v: Tensor::cat(&[&past.v, &kv.v], 2)?,
                },
                None => kv,
            };
            let attn = self.attend_causal(&q, &all)?;
            *slot = Some(all);
            x = self.finish_layer(layer, &x, &attn)?;
        }
        cache.len += l;
        self.rms_norm(&x, &self.norm)
    }

    /// Logits for hidden states (..., d) → (..., vocab). Callers pass only the rows they need:
    /// the output head is the largest matmul per token at these widths.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let d = *dims.last().expect("hidden has a last dim");
        let rows = hidden.elem_count() / d;
        let out = self.lm_head.forward(&hidden.reshape((rows, d))?)?;
        let mut shape = dims;
        *shape.last_mut().expect("hidden has a last dim") = self.cfg.vocab_size;
        Ok(out.reshape(shape)?)
    }

    /// Raw per-position logits (B, L, V) of a full bidirectional pass, with the checkpoint's
    /// convention applied (shifted: position i shows the prediction made at i-1).
    pub fn forward_logits(&self, ids: &Tensor, pad_mask: Option<&Tensor>) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let positions: Vec<u32> = (0..l as u32).collect();
        let bias = match pad_mask {
            Some(m) => Some(padding_bias(m)?),
            None => None,
        };
        let (h, _) = self.forward_full(ids, &positions, bias.as_ref(), None)?;
        let logits = self.logits(&h)?;
        Ok(match self.cfg.logits {
            crate::config::LogitsConvention::InPlace => logits,
            crate::config::LogitsConvention::Shifted if l > 1 => {
                Tensor::cat(&[&logits.narrow(1, 0, 1)?, &logits.narrow(1, 0, l - 1)?], 1)?
            }
            crate::config::LogitsConvention::Shifted => logits,
        })
    }
}

/// RoPE cos/sin (len, head_dim/2) of `positions`, computed in f32 and stored as `dtype`.
fn rope_tables_at(
    cfg: &Config,
    positions: &[i64],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let half = hd / 2;
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for i in 0..half {
            // Same f32 arithmetic as the reference: inv_freq in f32, then position * inv_freq.
            let inv_freq = 1.0f32 / (cfg.rope_theta.powf((2 * i) as f64 / hd as f64) as f32);
            let angle = p as f32 * inv_freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let shape = (positions.len(), half);
    Ok((
        Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
    ))
}

/// Key-padding mask (B, L) of 1 (real) / 0 (pad), in any dtype → additive bias (B, 1, L).
pub fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    // 0 where real, -1e9 where padding (finite so fully padded rows stay NaN-free).
    let bias = ((m - 1.0)? * 1e9)?;
    Ok(bias.reshape((b, 1, l))?)
}

/// A span step as one pass over plain buffers per layer, for the AMX path: RMSNorm, the
/// packed q/k/v, o, gate/up and down products, RoPE, the span attention over the packed
/// context, SwiGLU and the residual adds, without a candle op (and its allocation) between
/// them. The same arithmetic as [`Transformer::forward_span_rows`]'s op by op path.
struct FusedSpan<'a> {
    model: &'a Transformer,
    ctx: &'a ContextKv,
}

/// A linear layer's packed weight and bias ([`Transformer::fused_span`] checked that it has one).
fn packed(lin: &Linear) -> (&PackedBf16, Option<&[f32]>) {
    let (w, bias) = lin.bf16.as_ref().expect("fused_span checked every weight");
    (w, bias.as_deref())
}

impl FusedSpan<'_> {
    fn rows(
        &self,
        ids: &Tensor,
        positions: &[u32],
        span: &mut ContextKv,
        rows: std::ops::Range<usize>,
    ) -> Result<Tensor> {
        let t = self.model;
        let cfg = &t.cfg;
        let (b, r) = ids.dims2()?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let g = h / kvh;
        let width = (h + 2 * kvh) * hd;
        let f = cfg.intermediate_size;
        let eps = cfg.rms_norm_eps as f32;
        let m = b * r;
        let (cos, sin) = t.rope_tables(positions)?;
        let (cos, sin) = (
            cos.flatten_all()?.to_vec1::<f32>()?,
            sin.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut x = t.embed(ids)?.flatten_all()?.to_vec1::<f32>()?;
        let mut y = vec![0f32; m * d];
        let mut qkv = vec![0f32; m * width];
        let mut q_heads = vec![0f32; g * r * hd];
        let mut out_heads = vec![0f32; g * r * hd];
        let mut attn = vec![0f32; m * h * hd];
        let mut proj = vec![0f32; m * d];
        let mut gate_up = vec![0f32; m * 2 * f];
        let mut act = vec![0f32; m * f];
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, (layer, own)) in t.layers.iter().zip(&mut span.layers).enumerate() {
            kernels::rms_norm_rows(&x, &layer.input_norm.to_vec1::<f32>()?, eps, &mut y);
            let (w, bias) = packed(&layer.qkv);
            w.matmul(&y, bias, &mut qkv);
            for (j, row) in qkv.chunks_exact_mut(width).enumerate() {
                let at = (j % r) * hd / 2;
                let (c, s) = (&cos[at..at + hd / 2], &sin[at..at + hd / 2]);
                // RoPE on the query and key heads, rotating halves (candle's `rope`).
                for head in row[..(h + kvh) * hd].chunks_exact_mut(hd) {
                    let (x1, x2) = head.split_at_mut(hd / 2);
                    for (((lo, hi), &c), &s) in x1.iter_mut().zip(x2.iter_mut()).zip(c).zip(s) {
                        let (u, v) = (*lo, *hi);
                        *lo = u * c - v * s;
                        *hi = u * s + v * c;
                    }
                }
            }
            // The rows' fresh keys and values into the span's (B, KVH, n, hd).
            let n = own.k.dim(2)?;
            let mut sk = own.k.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let mut sv = own.v.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            for (j, row) in qkv.chunks_exact(width).enumerate() {
                let (bi, pos) = (j / r, rows.start + j % r);
                for kh in 0..kvh {
                    let at = ((bi * kvh + kh) * n + pos) * hd;
                    let k_from = (h + kh) * hd;
                    let v_from = (h + kvh + kh) * hd;
                    sk[at..at + hd].copy_from_slice(&row[k_from..k_from + hd]);
                    sv[at..at + hd].copy_from_slice(&row[v_from..v_from + hd]);
                }
            }
            let heads = self.ctx.packed(i)?;
            for bi in 0..b {
                for (kh, ctx_head) in heads.iter().enumerate() {
                    // The query heads of this KV head stacked: row gi·r + j.
                    for gi in 0..g {
                        for j in 0..r {
                            let from = (bi * r + j) * width + (kh * g + gi) * hd;
                            let to = (gi * r + j) * hd;
                            q_heads[to..to + hd].copy_from_slice(&qkv[from..from + hd]);
                        }
                    }
                    let own_at = (bi * kvh + kh) * n * hd..(bi * kvh + kh + 1) * n * hd;
                    ctx_head.attend_with_span(
                        &q_heads,
                        &sk[own_at.clone()],
                        &sv[own_at],
                        scale,
                        &mut out_heads,
                    );
                    for gi in 0..g {
                        for j in 0..r {
                            let from = (gi * r + j) * hd;
                            let to = (bi * r + j) * h * hd + (kh * g + gi) * hd;
                            attn[to..to + hd].copy_from_slice(&out_heads[from..from + hd]);
                        }
                    }
                }
            }
            own.k = Tensor::from_vec(sk, (b, kvh, n, hd), &t.device)?;
            own.v = Tensor::from_vec(sv, (b, kvh, n, hd), &t.device)?;
            let (w, bias) = packed(&layer.o);
            w.matmul(&attn, bias, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);
            kernels::rms_norm_rows(&x, &layer.post_norm.to_vec1::<f32>()?, eps, &mut y);
            let (w, bias) = packed(&layer.gate_up);
            w.matmul(&y, bias, &mut gate_up);
            kernels::swiglu_rows(&gate_up, &mut act, f);
            let (w, bias) = packed(&layer.down);
            w.matmul(&act, bias, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);
        }
        kernels::rms_norm_rows(&x, &t.norm.to_vec1::<f32>()?, eps, &mut y);
        Ok(Tensor::from_vec(y, (b, r, d), &t.device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{DiffusionLm, Precision};

    fn flat(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Largest difference relative to the largest magnitude: both paths round the same
    /// activations to bf16, and an f32 difference in the last bit can tip a rounding.
    fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
        let gap = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        gap / b.iter().fold(f32::MIN_POSITIVE, |m, x| m.max(x.abs()))
    }

    /// The fused span step against the op-by-op one on the shipped weights, over a real
    /// causal context: a whole fresh 8-row span for 3 candidates (`forward_span_kv`, hidden
    /// states and kept keys/values), then rows 4..12 of a 16-row span twice
    /// (`forward_span_rows`; the second step reads the keys and values the first wrote).
    #[test]
    fn the_fused_span_step_matches_the_op_by_op_one() {
        let Ok(lm) = DiffusionLm::load_default_with(Precision::Fastest) else {
            eprintln!("skipped: this build embeds no default model");
            return;
        };
        let t = lm.transformer();
        let ids = lm.encode(include_str!("kernels.rs")).unwrap();
        let ids = Tensor::new(&ids[..300], &t.device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut cache = CausalCache::default();
        t.forward_causal(&ids, &mut cache).unwrap();
        let ctx = cache.context().unwrap();
        if t.fused_span(&ctx).unwrap().is_none() {
            eprintln!("skipped: no AMX here, so no fused step");
            return;
        }
        let (b, n, hd, kvh) = (3, 16, t.cfg.head_dim(), t.cfg.num_key_value_heads);
        let span_ids: Vec<u32> = (0..b * 8).map(|i| 100 + 37 * i as u32).collect();
        let span_ids = Tensor::from_vec(span_ids, (b, 8), &t.device).unwrap();
        let positions: Vec<u32> = (304..312).collect();

        let (fused, fused_kv) = t
            .forward_span_kv(&span_ids, &positions, &ctx, true)
            .unwrap();
        let (by_op, op_kv) = t
            .forward_span_kv_by_op(&span_ids, &positions, &ctx, true)
            .unwrap();
        let gap = relative_gap(&flat(&fused), &flat(&by_op));
        assert!(gap < 1e-3, "forward_span_kv: relative |Δhidden| {gap}");
        for (f, o) in fused_kv.unwrap().layers.iter().zip(&op_kv.unwrap().layers) {
            assert!(relative_gap(&flat(&f.k), &flat(&o.k)) < 1e-3);
            assert!(relative_gap(&flat(&f.v), &flat(&o.v)) < 1e-3);
        }

        let random = |seed: u32| {
            let v: Vec<f32> = (0..b * kvh * n * hd)
                .map(|i| {
                    ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32
                        / 500.0
                        - 1.0
                })
                .collect();
            Tensor::from_vec(v, (b, kvh, n, hd), &t.device).unwrap()
        };
        let fresh = || {
            ContextKv::new(
                (0..t.layers.len() as u32)
                    .map(|l| KvBlock {
                        k: random(2 * l),
                        v: random(2 * l + 1),
                    })
                    .collect(),
            )
        };
        let (mut fused_span, mut op_span) = (fresh(), fresh());
        for step in 0..2 {
            let fused = t
                .forward_span_rows(&span_ids, &positions, &ctx, &mut fused_span, 4..12)
                .unwrap();
            let by_op = t
                .forward_span_rows_by_op(&span_ids, &positions, &ctx, &mut op_span, 4..12)
                .unwrap();
            let gap = relative_gap(&flat(&fused), &flat(&by_op));
            assert!(gap < 1e-3, "step {step}: relative |Δhidden| {gap}");
        }
    }
}
