//! Masked-diffusion training with the same transformer code as inference.
//!
//! Objective (MDLM / LLaDA): draw t ~ U(eps, 1], mask each token with probability t, and take the
//! cross-entropy on masked tokens weighted by 1/t. A share of the samples is shaped like real use
//! instead: a contiguous span (rest of a line, a line, a short span, a block, a function-like body)
//! between real prefix and suffix, padded with end-of-infill tokens to an over-allocated length
//! so that the model learns where to stop; only the span is ever masked there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::transformer::{padding_bias, parameter_shapes, Exec, Transformer, WeightLayout};
use crate::weights::TensorStore;

/// Random initial weights with the checkpoint's names: normal(0, 0.02) matrices (output
/// projections scaled down by depth), unit norms, zero biases.
pub fn init_params(
    cfg: &Config,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let depth_scale = 1.0 / (2.0 * cfg.num_hidden_layers as f64).sqrt();
    for (name, shape) in parameter_shapes(cfg) {
        let n: usize = shape.iter().product();
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), dtype, device)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), dtype, device)?
        } else {
            let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                0.02 * depth_scale
            } else {
                0.02
            };
            let v: Vec<f32> = (0..n).map(|_| (normal(&mut rng) * std) as f32).collect();
            Tensor::from_vec(v, shape.as_slice(), device)?.to_dtype(dtype)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// One training sequence: ids, which positions are masked (targets), per-token loss weights,
/// and which positions are real (not padding).
#[derive(Debug, Clone)]
pub struct Sample {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub masked: Vec<bool>,
    pub weight: Vec<f32>,
    pub real: Vec<bool>,
}

/// Kinds of infill spans, shaped like the server's requests.
#[derive(Debug, Clone, Copy)]
enum SpanKind {
    RestOfLine,
    Line,
    Bytes,
    Block,
    Body,
}

pub struct SampleMaker<'a> {
    pub tokenizer: &'a Tokenizer,
    pub seq_len: usize,
    /// Share of samples that are infill-shaped.
    pub infill_share: f64,
    /// Longest over-allocated span.
    pub max_span: usize,
    /// Plain samples draw their mask rate t from U(ε, max_mask_rate]. 1 is the MDLM objective;
    /// lower rates match inference, where the context around the span is always clean.
    pub max_mask_rate: f64,
    /// Weight each sample's masked tokens by 1/count (their mean) instead of 1/(t·len): the same
    /// in expectation, without the rare huge weight of a low-t sample with a forced mask.
    pub mean_loss: bool,
    /// The model predicts position i from the hidden state at i-1 (`LogitsConvention::Shifted`):
    /// position 0 is never masked and an infill span always has a prefix token before it.
    pub shifted: bool,
}

const EPS: f64 = 1e-3;

impl SampleMaker<'_> {
    pub fn make(&self, text: &str, rng: &mut StdRng) -> Result<Sample> {
        if rng.random_bool(self.infill_share) {
            if let Some(s) = self.infill(text, rng)? {
                return Ok(s);
            }
        }
        self.mdlm(text, rng)
    }

    fn mask_id(&self) -> u32 {
        self.tokenizer.special.mask
    }
    fn end_id(&self) -> u32 {
        self.tokenizer.special.end
    }

    /// Plain masked-diffusion sample: a window of the file, every token maskable.
    fn mdlm(&self, text: &str, rng: &mut StdRng) -> Result<Sample> {
        let l = self.seq_len;
        // Start at a random line; ~4 bytes per token, so 6 bytes per slot is plenty.
        let mut start = line_start(text, rng.random_range(0..text.len().max(1)));
        if text.len() - start < 64 {
            // The last line or two: too little to learn from (and a shifted model needs a
            // token before the first mask).
            start = line_start(text, start.saturating_sub(l * 2));
        }
        let end = floor_char(text, (start + l * 6).min(text.len()));
        let mut ids = self.tokenizer.encode(&text[start..end])?;
        ids.truncate(l);
        let t = EPS + (self.max_mask_rate - EPS) * rng.random::<f64>();
        let n = ids.len();
        let mut s = Sample {
            ids: ids.clone(),
            targets: ids.clone(),
            masked: vec![false; n],
            weight: vec![0.0; n],
            real: vec![true; n],
        };
        let w = (1.0 / (t * n.max(1) as f64)) as f32;
        for i in 0..n {
            if rng.random_bool(t) {
                s.masked[i] = true;
                s.ids[i] = self.mask_id();
                s.weight[i] = w;
            }
        }
        if self.shifted && n > 0 && s.masked[0] {
            s.masked[0] = false;
            s.ids[0] = s.targets[0];
            s.weight[0] = 0.0;
        }
        let first = usize::from(self.shifted);
        if !s.masked.iter().any(|&m| m) && n > first {
            let i = rng.random_range(first..n);
            s.masked[i] = true;
            s.ids[i] = self.mask_id();
            s.weight[i] = w;
        }
        if self.mean_loss {
            let count = s.masked.iter().filter(|&&m| m).count().max(1) as f32;
            for (w, &m) in s.weight.iter_mut().zip(&s.masked) {
                *w = if m { 1.0 / count } else { 0.0 };
            }
        }
        self.pad(&mut s);
        Ok(s)
    }

    /// Infill-shaped sample, or None when the file offers no span of the drawn kind.
    fn infill(&self, text: &str, rng: &mut StdRng) -> Result<Option<Sample>> {
        let kind = match rng.random_range(0..10) {
            0..=2 => SpanKind::RestOfLine,
            3..=4 => SpanKind::Line,
            5..=6 => SpanKind::Bytes,
            7..=8 => SpanKind::Block,
            _ => SpanKind::Body,
        };
        let Some((a, b)) = pick_span(text, kind, rng) else {
            return Ok(None);
        };
        let middle = self.tokenizer.encode(&text[a..b])?;
        if middle.len() + 1 > self.max_span {
            return Ok(None);
        }
        // Over-allocate like the server: often a fixed bucket, sometimes a random slack.
        let m = middle.len();
        let span = if rng.random_bool(0.5) {
            [16usize, 24, 32, 48, 64, 96, 128]
                .into_iter()
                .find(|&b| b > m)
                .unwrap_or(self.max_span)
                .min(self.max_span)
        } else {
            (m + 1 + rng.random_range(0..=m.max(4))).min(self.max_span)
        };
        let l = self.seq_len;
        if span + 8 > l {
            return Ok(None);
        }
        let budget = l - span;
        let prefix_budget = ((budget as f64) * rng.random_range(0.55..0.9)) as usize;
        let prefix_text = &text[floor_char(text, a.saturating_sub(prefix_budget * 6))..a];
        let mut prefix = self.tokenizer.encode(prefix_text)?;
        if prefix.len() > prefix_budget {
            prefix.drain(..prefix.len() - prefix_budget);
        }
        if self.shifted && prefix.is_empty() {
            return Ok(None);
        }
        let suffix_budget = budget - prefix.len();
        let suffix_text = &text[b..floor_char(text, (b + suffix_budget * 6).min(text.len()))];
        let mut suffix = self.tokenizer.encode(suffix_text)?;
        suffix.truncate(suffix_budget);

        let mut targets = prefix.clone();
        targets.extend(&middle);
        targets.extend(std::iter::repeat_n(self.end_id(), span - m));
        targets.extend(&suffix);
        let n = targets.len();
        let mut s = Sample {
            ids: targets.clone(),
            targets,
            masked: vec![false; n],
            weight: vec![0.0; n],
            real: vec![true; n],
        };
        // Inference starts from a fully masked span: lean towards heavy masking.
        let t = (EPS + (1.0 - EPS) * rng.random::<f64>()).max(rng.random::<f64>());
        let w = (1.0 / (t * span as f64)) as f32;
        let p = prefix.len();
        let mut any = false;
        for i in p..p + span {
            if rng.random_bool(t) {
                s.masked[i] = true;
                any = true;
            }
        }
        if !any {
            s.masked[p + rng.random_range(0..span)] = true;
        }
        let count = s.masked.iter().filter(|&&m| m).count() as f32;
        for i in p..p + span {
            if s.masked[i] {
                s.ids[i] = self.mask_id();
                s.weight[i] = if self.mean_loss { 1.0 / count } else { w };
            }
        }
        self.pad(&mut s);
        Ok(Some(s))
    }

    /// Pad to seq_len with end tokens that attention ignores and the loss skips.
    fn pad(&self, s: &mut Sample) {
        let extra = self.seq_len.saturating_sub(s.ids.len());
        let e = self.end_id();
        s.ids.extend(std::iter::repeat_n(e, extra));
        s.targets.extend(std::iter::repeat_n(e, extra));
        s.masked.extend(std::iter::repeat_n(false, extra));
        s.weight.extend(std::iter::repeat_n(0.0, extra));
        s.real.extend(std::iter::repeat_n(false, extra));
    }
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn line_start(text: &str, i: usize) -> usize {
    let i = floor_char(text, i.min(text.len()));
    text[..i].rfind('\n').map_or(0, |n| n + 1)
}

/// Byte range of a span of the given kind, on character boundaries, never empty.
fn pick_span(text: &str, kind: SpanKind, rng: &mut StdRng) -> Option<(usize, usize)> {
    let lines: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c == '\n' {
                v.push((start, i));
                start = i + 1;
            }
        }
        if start < text.len() {
            v.push((start, text.len()));
        }
        v
    };
    let code_lines: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let l = &text[lines[i].0..lines[i].1];
            let t = l.trim();
            !t.is_empty() && !t.starts_with("//") && l.len() < 160
        })
        .collect();
    if code_lines.is_empty() {
        return None;
    }
    let li = code_lines[rng.random_range(0..code_lines.len())];
    let (ls, le) = lines[li];
    let line = &text[ls..le];
    let indent = line.len() - line.trim_start().len();
    let span = match kind {
        SpanKind::Line => (ls + indent, le),
        SpanKind::RestOfLine => {
            let chars: Vec<usize> = line
                .char_indices()
                .map(|(i, _)| i)
                .filter(|&i| i >= indent)
                .collect();
            let cut = chars[rng.random_range(0..chars.len())];
            (ls + cut, le)
        }
        SpanKind::Bytes => {
            let a = floor_char(
                text,
                ls + indent + rng.random_range(0..=(line.len() - indent) / 2),
            );
            let len = rng.random_range(10..=80);
            (a, floor_char(text, (a + len).min(text.len())))
        }
        SpanKind::Block | SpanKind::Body => {
            let n = match kind {
                SpanKind::Block => rng.random_range(2..=10),
                _ => rng.random_range(3..=25),
            };
            let last = (li + n - 1).min(lines.len() - 1);
            (ls + indent, lines[last].1)
        }
    };
    (span.1 > span.0).then_some(span)
}

/// Masked positions of a batch, flattened, with their targets and weights.
pub struct Batch {
    pub ids: Tensor,
    pub real: Tensor,
    /// Rows (of the flattened batch) whose hidden states predict the masked tokens.
    pub masked_index: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
    pub tokens: usize,
}

/// Stacks samples into a batch. `shifted`: the row that predicts a masked position is the one
/// before it (the samples never mask position 0 then).
pub fn collate(samples: &[Sample], shifted: bool, device: &Device, dtype: DType) -> Result<Batch> {
    let b = samples.len();
    let l = samples[0].ids.len();
    let mut ids: Vec<u32> = Vec::with_capacity(b * l);
    let mut real = Vec::with_capacity(b * l);
    let (mut idx, mut tg, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        if s.ids.len() != l {
            return Err(ModelError::Request("samples of unequal length".into()));
        }
        ids.extend(&s.ids);
        real.extend(s.real.iter().map(|&r| if r { 1f32 } else { 0.0 }));
        for j in 0..l {
            if s.masked[j] {
                if shifted && j == 0 {
                    return Err(ModelError::Request(
                        "a shifted model cannot predict position 0".into(),
                    ));
                }
                idx.push((i * l + j - usize::from(shifted)) as u32);
                tg.push(s.targets[j]);
                w.push(s.weight[j] / b as f32);
            }
        }
    }
    let tokens = real.iter().filter(|&&r| r > 0.0).count();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, l), device)?,
        real: Tensor::from_vec(real, (b, l), device)?,
        masked_index: Tensor::from_vec(idx.clone(), idx.len(), device)?,
        targets: Tensor::from_vec(tg, idx.len(), device)?,
        weights: Tensor::from_vec(w, idx.len(), device)?.to_dtype(dtype)?,
        tokens,
    })
}

/// The weighted masked-token cross-entropy of a batch (differentiable in `Exec::Train`).
pub fn diffusion_loss(model: &Transformer, batch: &Batch, exec: Exec) -> Result<Tensor> {
    let (b, l) = batch.ids.dims2()?;
    let positions: Vec<u32> = (0..l as u32).collect();
    let bias = padding_bias(&batch.real)?;
    let (h, _) = model.forward_full(&batch.ids, &positions, Some(&bias), None, exec)?;
    let d = h.dim(D::Minus1)?;
    let rows = h
        .reshape((b * l, d))?
        .index_select(&batch.masked_index, 0)?;
    let logits = model.logits(&rows)?;
    // log-softmax with the max detached (it cancels in the gradient).
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&batch.targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((picked * &batch.weights)?.sum_all()?.neg()?)
}

/// A trainable model: variables named like the checkpoint, the transformer built on them.
pub struct Trainable {
    pub cfg: Config,
    pub vars: Vec<(String, Var)>,
    pub model: Transformer,
}

impl Trainable {
    pub fn new(cfg: &Config, params: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let mut vars = Vec::new();
        let mut map = HashMap::new();
        for (name, _) in parameter_shapes(cfg) {
            let t = params.get(&name).ok_or_else(|| ModelError::Weights {
                path: PathBuf::from("(init)"),
                tensor: name.clone(),
                reason: "missing".into(),
            })?;
            let var = Var::from_tensor(t)?;
            map.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        let model = Transformer::with_layout(
            cfg,
            &TensorStore::from_map(map, Path::new("(training)")),
            device,
            WeightLayout::Training,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            vars,
            model,
        })
    }

    pub fn tensors(&self, dtype: DType) -> Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(dtype)?)))
            .collect()
    }

    pub fn optimizer(&self, lr: f64, weight_decay: f64) -> Result<AdamW> {
        let vars: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        Ok(AdamW::new(
            vars,
            ParamsAdamW {
                lr,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay,
            },
        )?)
    }

    /// One optimisation step; returns the loss.
    pub fn step(&self, opt: &mut AdamW, batch: &Batch) -> Result<f32> {
        let loss = diffusion_loss(&self.model, batch, Exec::Train)?;
        opt.backward_step(&loss)?;
        Ok(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    }

    /// Save as a Hugging Face-format folder (config.json, model.safetensors in `dtype`, tokenizer.json).
    pub fn save(&self, dir: &Path, dtype: DType, tokenizer_json: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ModelError::Io {
                path: path.clone(),
                source,
            }
        };
        let weights = dir.join("model.safetensors");
        let tmp = dir.join("model.safetensors.tmp");
        candle_core::safetensors::save(&self.tensors(dtype)?, &tmp)?;
        std::fs::rename(&tmp, &weights).map_err(io(&weights))?;
        let cfg = dir.join("config.json");
        let json = serde_json::to_string_pretty(&self.cfg.to_hf_json()).expect("config serialises");
        std::fs::write(&cfg, json + "\n").map_err(io(&cfg))?;
        let tok = dir.join("tokenizer.json");
        if tokenizer_json.canonicalize().ok() != tok.canonicalize().ok() {
            std::fs::copy(tokenizer_json, &tok).map_err(io(&tok))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_config() -> Config {
        Config {
            tie_word_embeddings: false,
            ..Config::default_family(11, 8, 2, 2, 1, 12, 64)
        }
    }

    fn tiny_batch(dtype: DType) -> Batch {
        let s = |ids: Vec<u32>, masked: Vec<bool>, real: Vec<bool>| {
            let targets: Vec<u32> = ids.iter().map(|&i| (i + 3) % 11).collect();
            let weight = masked.iter().map(|&m| if m { 0.7 } else { 0.0 }).collect();
            Sample {
                ids,
                targets,
                masked,
                weight,
                real,
            }
        };
        collate(
            &[
                s(
                    vec![2, 3, 1, 5, 1, 7],
                    vec![false, false, true, false, true, false],
                    vec![true; 6],
                ),
                s(
                    vec![1, 4, 9, 1, 0, 0],
                    vec![true, false, false, true, false, false],
                    vec![true, true, true, true, false, false],
                ),
            ],
            false,
            &Device::Cpu,
            dtype,
        )
        .unwrap()
    }

    /// Autograd through the training path agrees with central finite differences (in f64).
    #[test]
    fn gradients_match_finite_differences() {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let mut params = init_params(&cfg, DType::F64, &dev, 7).unwrap();
        // Non-trivial norms and biases so that every path carries gradient.
        for (name, t) in params.iter_mut() {
            if name.ends_with("norm.weight") || name.ends_with(".bias") {
                let n = t.elem_count();
                let v: Vec<f64> = (0..n)
                    .map(|i| 1.0 + 0.1 * ((i * 7 % 5) as f64 - 2.0))
                    .collect();
                *t = Tensor::from_vec(v, t.shape(), &dev).unwrap();
            }
            if name.contains("proj.weight") || name.contains("embed") || name.contains("lm_head") {
                *t = (&*t * 10.0).unwrap();
            }
        }
        let batch = tiny_batch(DType::F64);
        let trainable = Trainable::new(&cfg, params.clone(), &dev).unwrap();
        let loss = diffusion_loss(&trainable.model, &batch, Exec::Train).unwrap();
        let grads = loss.backward().unwrap();
        let checked = [
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.norm.weight",
            "lm_head.weight",
        ];
        for name in checked {
            let var = &trainable.vars.iter().find(|(n, _)| n == name).unwrap().1;
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = params[name].flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, base.len() / 2, base.len() - 1] {
                let eps = 1e-5;
                let loss_at = |delta: f64| {
                    let mut p = params.clone();
                    let mut v = base.clone();
                    v[idx] += delta;
                    p.insert(
                        name.to_string(),
                        Tensor::from_vec(v, params[name].shape(), &dev).unwrap(),
                    );
                    let m = Trainable::new(&cfg, p, &dev).unwrap();
                    diffusion_loss(&m.model, &batch, Exec::Train)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
                let tol = 1e-6 + 1e-4 * fd.abs().max(g[idx].abs());
                assert!(
                    (fd - g[idx]).abs() < tol,
                    "{name}[{idx}]: autograd {} vs finite difference {fd}",
                    g[idx]
                );
            }
        }
    }

    /// The training path (differentiable ops) computes the same function as inference (fused ops).
    #[test]
    fn train_and_infer_paths_agree() {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let t =
            Trainable::new(&cfg, init_params(&cfg, DType::F32, &dev, 3).unwrap(), &dev).unwrap();
        let batch = tiny_batch(DType::F32);
        let a = diffusion_loss(&t.model, &batch, Exec::Train)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = diffusion_loss(&t.model, &batch, Exec::Infer)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "{a} vs {b}");
    }

    /// For a shifted checkpoint the training loss is the cross-entropy of the logits inference
    /// uses (`forward_logits` applies the shift), position by position.
    #[test]
    fn shifted_loss_uses_the_logits_inference_reads() {
        let cfg = Config {
            logits: crate::config::LogitsConvention::Shifted,
            ..tiny_config()
        };
        let dev = Device::Cpu;
        let t =
            Trainable::new(&cfg, init_params(&cfg, DType::F32, &dev, 4).unwrap(), &dev).unwrap();
        let ids = vec![2u32, 3, 1, 5, 1, 7];
        let targets = vec![2u32, 3, 9, 5, 4, 7];
        let masked = vec![false, false, true, false, true, false];
        let sample = Sample {
            ids: ids.clone(),
            targets: targets.clone(),
            weight: masked.iter().map(|&m| if m { 0.5 } else { 0.0 }).collect(),
            masked: masked.clone(),
            real: vec![true; 6],
        };
        let batch = collate(&[sample], true, &dev, DType::F32).unwrap();
        let loss = diffusion_loss(&t.model, &batch, Exec::Infer)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let logits = t
            .model
            .forward_logits(
                &Tensor::new(ids.as_slice(), &dev)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
            )
            .unwrap();
        let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1).unwrap();
        let logp: Vec<Vec<f32>> = logp.to_vec2().unwrap();
        let want: f32 = (0..6)
            .filter(|&j| masked[j])
            .map(|j| -0.5 * logp[j][targets[j] as usize])
            .sum();
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        // Position 0 has no row before it.
        let first_masked = Sample {
            masked: vec![true, false, false, false, false, false],
            ..Sample {
                ids,
                targets,
                weight: vec![0.5; 6],
                masked,
                real: vec![true; 6],
            }
        };
        assert!(collate(&[first_masked], true, &dev, DType::F32).is_err());
    }

    /// Shifted samples never mask position 0 and always keep a prefix token before a span.
    #[test]
    fn shifted_samples_never_mask_position_zero() {
        let tok_json = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qwen2-gqa-untied");
        let cfg = Config::from_file(&tok_json.join("config.json")).unwrap();
        let tokenizer = Tokenizer::from_file(&tok_json.join("tokenizer.json"), &cfg).unwrap();
        let maker = SampleMaker {
            tokenizer: &tokenizer,
            seq_len: 48,
            infill_share: 0.5,
            max_span: 16,
            max_mask_rate: 1.0,
            mean_loss: false,
            shifted: true,
        };
        let text = "fn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n".repeat(4);
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..200 {
            let s = maker.make(&text, &mut rng).unwrap();
            assert!(!s.masked[0]);
            assert!(s.masked.iter().any(|&m| m));
        }
    }

    /// A few optimiser steps on one batch lower its loss.
    #[test]
    fn training_reduces_loss() {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let t =
            Trainable::new(&cfg, init_params(&cfg, DType::F32, &dev, 5).unwrap(), &dev).unwrap();
        let mut opt = t.optimizer(3e-2, 0.0).unwrap();
        let batch = tiny_batch(DType::F32);
        let first = t.step(&mut opt, &batch).unwrap();
        let mut last = first;
        for _ in 0..30 {
            last = t.step(&mut opt, &batch).unwrap();
        }
        assert!(last < first * 0.5, "loss {first} -> {last}");
    }

    /// Masked copies of the first half of a sequence can only be predicted through attention to
    /// the right positions: the model learns it far below the uniform loss.
    #[test]
    fn training_learns_to_copy_through_attention() {
        let cfg = Config {
            vocab_size: 32,
            hidden_size: 64,
            intermediate_size: 128,
            ..tiny_config()
        };
        let dev = Device::Cpu;
        let t =
            Trainable::new(&cfg, init_params(&cfg, DType::F32, &dev, 0).unwrap(), &dev).unwrap();
        let mut opt = t.optimizer(3e-3, 0.0).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let mut last = f32::MAX;
        for _ in 0..150 {
            let samples: Vec<Sample> = (0..16)
                .map(|_| {
                    let half: Vec<u32> = (0..12).map(|_| rng.random_range(2..32)).collect();
                    let targets: Vec<u32> = half.iter().chain(&half).copied().collect();
                    let masked: Vec<bool> =
                        (0..24).map(|j| j >= 12 && rng.random_bool(0.5)).collect();
                    let ids = targets
                        .iter()
                        .zip(&masked)
                        .map(|(&t, &m)| if m { 1 } else { t })
                        .collect();
                    let n = masked.iter().filter(|&&m| m).count().max(1) as f32;
                    let weight = masked
                        .iter()
                        .map(|&m| if m { 1.0 / n } else { 0.0 })
                        .collect();
                    Sample {
                        ids,
                        targets,
                        weight,
                        masked,
                        real: vec![true; 24],
                    }
                })
                .collect();
            last = t
                .step(
                    &mut opt,
                    &collate(&samples, false, &dev, DType::F32).unwrap(),
                )
                .unwrap();
        }
        assert!(last < 1.0, "copy loss {last} (uniform {:.2})", 30f32.ln());
    }

    #[test]
    fn spans_fall_on_char_boundaries() {
        let text = "fn main() {\n    let é = \"日本語\"; // ü\n    println!(\"{é}\");\n}\n";
        let mut rng = StdRng::seed_from_u64(1);
        for kind in [
            SpanKind::RestOfLine,
            SpanKind::Line,
            SpanKind::Bytes,
            SpanKind::Block,
            SpanKind::Body,
        ] {
            for _ in 0..50 {
                if let Some((a, b)) = pick_span(text, kind, &mut rng) {
                    assert!(a < b && text.is_char_boundary(a) && text.is_char_boundary(b));
                }
            }
        }
    }
}
