//! The infilling sampler: a span of mask tokens between a prefix and a suffix is denoised in K
//! refinement steps. Each step predicts every masked position in one forward pass and commits the
//! most confident ones; a hook sees every candidate between steps and may remask or reject it.
//!
//! Length rule: the span is over-allocated. The model ends an infill with the end-of-infill token
//! (pad/EOS); once one is committed, every still-masked position after it becomes an end token too
//! (as Dream-Coder does), and the completion is the text before the first end token.
//!
//! Speed: the context's keys/values are computed by one full pass and reused by the following
//! steps, which only run the span (plus, for shifted checkpoints, the last prefix token); they are
//! refreshed every `cache_refresh` steps (1 = exact, every step a full pass).

use std::ops::Range;
use std::time::Instant;

use candle_core::{Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::config::LogitsConvention;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::transformer::{ActiveWindow, ContextKv, Exec, KvBlock, Transformer};

/// How the confidence that orders commits is measured (Dream's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidenceOrder {
    /// Probability of the chosen token ("maskgit_plus").
    MaxProb,
    /// Top-1 minus top-2 probability.
    Margin,
    /// Negative entropy of the position's distribution.
    NegEntropy,
}

#[derive(Debug, Clone)]
pub struct SamplerParams {
    /// Refinement steps K, clamped to 1..=span_len.
    pub steps: usize,
    /// Candidates decoded together as one batch.
    pub candidates: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Temperature of the candidates after the first when `temperature` is 0, so that several
    /// candidates can differ; the first stays greedy.
    pub alt_temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub order: ConfidenceOrder,
    /// Fast-dLLM: commit every position whose confidence is at least this (at least one per step)
    /// instead of the fixed schedule.
    pub threshold: Option<f32>,
    /// Self-correction: after a step, committed tokens whose probability fell below this are
    /// masked again (never at the last step).
    pub remask_below: Option<f32>,
    /// Recompute the context keys/values every R steps (1 = exact; 0 = never after the first).
    pub cache_refresh: usize,
    /// Steps allowed beyond `steps` when the hook remasks positions at the end.
    pub max_extra_steps: usize,
    /// The end-of-infill token is never proposed before this position, so a completion has at
    /// least this many tokens (1 by default: an empty completion is no completion).
    pub min_tokens: usize,
    /// An end-of-infill token is committed only where every position before it is committed.
    /// Without this, the tail's padding ends are the most confident predictions, each committed
    /// end makes its left neighbour's end likelier, and the completion collapses from the right
    /// to a token or two.
    pub ends_left_to_right: bool,
    /// Semi-autoregressive decoding: only the first W still-masked positions may be committed
    /// in a step (LLaDA's blocks, sliding). `None`: any position. For a shifted model a
    /// position whose left neighbour is known is predicted from that token directly, so a
    /// narrow window helps a weak model most.
    pub commit_window: Option<usize>,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            steps: 8,
            candidates: 1,
            temperature: 0.0,
            alt_temperature: 0.8,
            top_p: 0.95,
            seed: 0,
            order: ConfidenceOrder::MaxProb,
            threshold: None,
            remask_below: None,
            cache_refresh: 0,
            max_extra_steps: 2,
            min_tokens: 1,
            ends_left_to_right: true,
            commit_window: None,
        }
    }
}

pub struct InfillRequest {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Masked positions to fill (over-allocated; the model ends early with the end token).
    pub span_len: usize,
    pub params: SamplerParams,
}

/// What a hook sees of one candidate after a step.
pub struct StepView<'a> {
    pub step: usize,
    pub steps: usize,
    pub candidate: usize,
    /// Span positions: the committed token, or `None` while masked.
    pub tokens: &'a [Option<u32>],
    /// Probability (under the latest prediction) of each position's committed or best token.
    pub confidence: &'a [f32],
    /// Committed tokens before the end token, decoded; masked positions contribute nothing.
    pub text: &'a str,
    /// Byte range of each position in `text` (empty when masked or after the end).
    pub token_ranges: &'a [Range<usize>],
    /// Position of the first committed end-of-infill token.
    pub end: Option<usize>,
    /// No masked position remains before `end`.
    pub is_final: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Mask these span positions again.
    Remask(Vec<usize>),
    /// Drop the candidate.
    Reject,
}

pub trait StepHook {
    fn after_step(&mut self, view: &StepView<'_>) -> Verdict;
    /// Checked before every step: `true` stops the request within one step.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Keeps every candidate.
pub struct NoHook;

impl StepHook for NoHook {
    fn after_step(&mut self, _: &StepView<'_>) -> Verdict {
        Verdict::Keep
    }
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub candidate: usize,
    /// Text before the first end token.
    pub text: String,
    pub tokens: Vec<u32>,
    /// Mean log-probability of the kept tokens (and the end token), used to rank candidates.
    pub mean_logprob: f32,
}

#[derive(Debug, Clone, Default)]
pub struct InfillStats {
    pub steps: usize,
    pub forward_passes: usize,
    pub full_passes: usize,
    pub remasked: usize,
    pub rejected: usize,
    pub cancelled: bool,
    /// The context K/V came from an earlier request (see [`ContextCache`]).
    pub context_reused: bool,
    pub context_tokens: usize,
    pub span_tokens: usize,
    pub encode_ms: f64,
    pub denoise_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct InfillOutput {
    /// Live candidates, best mean log-probability first, distinct texts.
    pub completions: Vec<Completion>,
    pub stats: InfillStats,
}

struct Candidate {
    tokens: Vec<Option<u32>>,
    conf: Vec<f32>,
    logp: Vec<f32>,
    /// Filled in automatically after an end token (not predicted).
    auto_end: Vec<bool>,
    alive: bool,
    done: bool,
    temperature: f32,
    rng: StdRng,
}

impl Candidate {
    fn end(&self, end_id: u32) -> Option<usize> {
        self.tokens.iter().position(|t| *t == Some(end_id))
    }
    fn masked_before_end(&self, end_id: u32) -> Vec<usize> {
        let limit = self.end(end_id).unwrap_or(self.tokens.len());
        (0..limit).filter(|&j| self.tokens[j].is_none()).collect()
    }
    /// Every masked position after the first end token becomes an end token.
    fn fill_after_end(&mut self, end_id: u32) {
        if let Some(e) = self.end(end_id) {
            for j in e + 1..self.tokens.len() {
                if self.tokens[j].is_none() {
                    self.tokens[j] = Some(end_id);
                    self.auto_end[j] = true;
                    self.conf[j] = 1.0;
                    self.logp[j] = 0.0;
                }
            }
        }
    }
    fn remask(&mut self, j: usize, end_id: u32) {
        let was_first_end = self.end(end_id) == Some(j);
        self.tokens[j] = None;
        self.auto_end[j] = false;
        if was_first_end {
            // The end moved: positions filled because of it are open again.
            for k in j + 1..self.tokens.len() {
                if self.auto_end[k] {
                    self.tokens[k] = None;
                    self.auto_end[k] = false;
                }
            }
            self.fill_after_end(end_id);
        }
    }
}

/// One position's prediction.
struct Proposal {
    token: u32,
    confidence: f32,
    logp: f32,
}

fn softmax(row: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = row.iter().map(|&x| ((x - max) / t).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

/// The prediction at one position from its logits `row` and their softmax `probs`; `banned`
/// (the end token before `min_tokens`) is taken out and the rest renormalised.
fn propose(
    row: &[f32],
    probs: &[f32],
    banned: Option<usize>,
    order: ConfidenceOrder,
    temperature: f32,
    top_p: f32,
    rng: &mut StdRng,
) -> Proposal {
    let renormalised;
    let probs = match banned {
        Some(b) => {
            let keep = (1.0 - probs[b]).max(f32::MIN_POSITIVE);
            renormalised = probs
                .iter()
                .enumerate()
                .map(|(i, &x)| if i == b { 0.0 } else { x / keep })
                .collect::<Vec<f32>>();
            &renormalised[..]
        }
        None => probs,
    };
    let token = if temperature > 0.0 {
        let mut tempered = softmax(row, temperature);
        if let Some(b) = banned {
            let keep = (1.0 - tempered[b]).max(f32::MIN_POSITIVE);
            tempered[b] = 0.0;
            tempered.iter_mut().for_each(|x| *x /= keep);
        }
        sample_top_p(&tempered, top_p, rng)
    } else {
        argmax(probs)
    };
    let p = probs[token];
    let confidence = match order {
        ConfidenceOrder::MaxProb => p,
        ConfidenceOrder::Margin => {
            let (mut a, mut b) = (0.0f32, 0.0f32);
            for &x in probs {
                if x > a {
                    b = a;
                    a = x;
                } else if x > b {
                    b = x;
                }
            }
            a - b
        }
        ConfidenceOrder::NegEntropy => probs
            .iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| x * x.ln())
            .sum(),
    };
    Proposal {
        token: token as u32,
        confidence,
        logp: p.max(1e-30).ln(),
    }
}

fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > p[best] {
            best = i;
        }
    }
    best
}

fn sample_top_p(probs: &[f32], top_p: f32, rng: &mut StdRng) -> usize {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = 0.0;
    let mut cut = idx.len();
    for (n, &i) in idx.iter().enumerate() {
        kept += probs[i];
        if kept >= top_p {
            cut = n + 1;
            break;
        }
    }
    let r: f32 = rng.random::<f32>() * kept;
    let mut acc = 0.0;
    for &i in &idx[..cut] {
        acc += probs[i];
        if acc >= r {
            return i;
        }
    }
    idx[0]
}

/// Text of the committed tokens before `end`, and each position's byte range in it.
fn decode_view(
    tok: &Tokenizer,
    tokens: &[Option<u32>],
    end: Option<usize>,
) -> Result<(String, Vec<Range<usize>>)> {
    let limit = end.unwrap_or(tokens.len());
    let mut ids = Vec::with_capacity(limit);
    let mut ranges = vec![0..0; tokens.len()];
    let mut prev_len = 0;
    let mut text = String::new();
    for (j, t) in tokens.iter().enumerate().take(limit) {
        match t {
            Some(id) => {
                ids.push(*id);
                text = tok.decode(&ids)?;
                // A partial UTF-8 sequence can shorten the text; keep ranges monotonic.
                let len = text.len().max(prev_len);
                ranges[j] = prev_len..len;
                prev_len = len;
            }
            None => ranges[j] = prev_len..prev_len,
        }
    }
    for r in ranges.iter_mut().take(limit) {
        r.end = r.end.min(text.len());
        r.start = r.start.min(r.end);
    }
    Ok((text, ranges))
}

/// Which cached context rows belong to which candidate.
enum CtxRows {
    Shared,
    PerCandidate(Vec<usize>),
}

/// Context keys/values kept from one request to the next on the same document. When only the text
/// near the cursor changed, the unchanged prefix keeps its keys/values, the unchanged end of the
/// suffix keeps them too (moved to their new positions by a RoPE rotation), and only the changed
/// tokens run, attending to the rest. This is approximate in the same way as the per-step cache:
/// reused entries do not see the edit. Large edits fall back to a full pass.
#[derive(Default)]
pub struct ContextCache {
    entry: Option<CacheEntry>,
    /// Requests served by reuse, and by a full pass (for logs and evals).
    pub reused: usize,
    pub rebuilt: usize,
}

struct CacheEntry {
    /// Context tokens before the active window (positions 0..prefix_ids.len()).
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    /// Position of the first suffix token.
    suffix_start: usize,
    /// Per layer: prefix block then suffix block, batch 1.
    kv: ContextKv,
}

/// Longest run of new tokens that reuse still handles; beyond it a full pass is cheaper and exact.
const MAX_REUSE_NEW_TOKENS: usize = 96;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u32], b: &[u32]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

impl ContextCache {
    pub fn clear(&mut self) {
        self.entry = None;
    }

    /// Context K/V for `prefix_ids` (positions 0..) and `suffix_ids` (from `suffix_start`),
    /// derived from the cached entry, or None when a full pass is needed.
    fn reuse(
        &self,
        model: &Transformer,
        prefix_ids: &[u32],
        suffix_ids: &[u32],
        suffix_start: usize,
    ) -> Result<Option<ContextKv>> {
        let Some(e) = &self.entry else {
            return Ok(None);
        };
        let cp = common_prefix(&e.prefix_ids, prefix_ids);
        let cs = common_suffix(&e.suffix_ids, suffix_ids);
        let new_prefix = &prefix_ids[cp..];
        let new_suffix = &suffix_ids[..suffix_ids.len() - cs];
        if new_prefix.len() + new_suffix.len() > MAX_REUSE_NEW_TOKENS || cp < prefix_ids.len() / 2 {
            return Ok(None);
        }
        let old_split = e.prefix_ids.len();
        let old_tail = e.suffix_start + (e.suffix_ids.len() - cs);
        let new_tail = suffix_start + new_suffix.len();
        let delta = new_tail as i64 - old_tail as i64;
        let mut kept = Vec::with_capacity(e.kv.layers.len());
        let mut tails = Vec::with_capacity(e.kv.layers.len());
        for l in &e.kv.layers {
            let tail_from = old_split + e.suffix_ids.len() - cs;
            let k_tail = model.shift_keys(&l.k.narrow(2, tail_from, cs)?, delta)?;
            let v_tail = l.v.narrow(2, tail_from, cs)?;
            let pre = KvBlock {
                k: l.k.narrow(2, 0, cp)?,
                v: l.v.narrow(2, 0, cp)?,
            };
            kept.push(KvBlock {
                k: Tensor::cat(&[&pre.k, &k_tail], 2)?,
                v: Tensor::cat(&[&pre.v, &v_tail], 2)?,
            });
            tails.push((
                KvBlock {
                    k: k_tail,
                    v: v_tail,
                },
                pre,
            ));
        }
        if new_prefix.is_empty() && new_suffix.is_empty() {
            return Ok(Some(ContextKv { layers: kept }));
        }
        // The changed tokens attend to the kept context and to each other.
        let ids: Vec<u32> = new_prefix.iter().chain(new_suffix).copied().collect();
        let positions: Vec<u32> = (cp as u32..prefix_ids.len() as u32)
            .chain(suffix_start as u32..(suffix_start + new_suffix.len()) as u32)
            .collect();
        let ids_t = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
        let (_, own) =
            model.forward_span_kv(&ids_t, &positions, &ContextKv { layers: kept }, true)?;
        let own = own.expect("own K/V requested");
        let np = new_prefix.len();
        let layers = own
            .layers
            .iter()
            .zip(tails)
            .map(|(o, (tail, pre))| {
                let part = |t: &Tensor, pre: &Tensor, tail: &Tensor| -> Result<Tensor> {
                    let mut parts = vec![pre.clone()];
                    if np > 0 {
                        parts.push(t.narrow(2, 0, np)?);
                    }
                    if ids.len() > np {
                        parts.push(t.narrow(2, np, ids.len() - np)?);
                    }
                    parts.push(tail.clone());
                    Ok(Tensor::cat(&parts, 2)?)
                };
                Ok(KvBlock {
                    k: part(&o.k, &pre.k, &tail.k)?,
                    v: part(&o.v, &pre.v, &tail.v)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ContextKv { layers }))
    }
}

pub fn infill(
    model: &Transformer,
    tok: &Tokenizer,
    req: &InfillRequest,
    hook: &mut dyn StepHook,
) -> Result<InfillOutput> {
    infill_cached(model, tok, req, hook, None)
}

/// [`infill`] that starts from (and updates) the context K/V of an earlier request.
pub fn infill_cached(
    model: &Transformer,
    tok: &Tokenizer,
    req: &InfillRequest,
    hook: &mut dyn StepHook,
    mut cache: Option<&mut ContextCache>,
) -> Result<InfillOutput> {
    let cfg = model.config();
    let params = &req.params;
    let n = req.span_len;
    if n == 0 {
        return Err(ModelError::Request("span_len must be at least 1".into()));
    }
    let (p, s) = (req.prefix.len(), req.suffix.len());
    let total = p + n + s;
    if total > cfg.max_position_embeddings {
        return Err(ModelError::Request(format!(
            "{total} tokens exceed the model's {} positions",
            cfg.max_position_embeddings
        )));
    }
    if let Some(bad) = req
        .prefix
        .iter()
        .chain(&req.suffix)
        .find(|&&t| t as usize >= cfg.vocab_size)
    {
        return Err(ModelError::Request(format!(
            "token id {bad} outside vocab {}",
            cfg.vocab_size
        )));
    }
    let special = tok.special;
    let steps = params.steps.clamp(1, n);
    let n_cand = params.candidates.max(1);
    let device = model.device();

    // Active window: the span, plus the last prefix token for shifted checkpoints (its hidden
    // state predicts the first span token). `rows[j]` = active row that predicts span position j.
    let shifted = cfg.logits == LogitsConvention::Shifted;
    let act_start = if shifted && p > 0 { p - 1 } else { p };
    let act_len = p + n - act_start;
    let rows: Vec<u32> = (0..n)
        .map(|j| match (shifted, p > 0) {
            (true, true) | (false, _) => j as u32,
            (true, false) => j.saturating_sub(1) as u32,
        })
        .collect();
    let rows_t = Tensor::new(rows.as_slice(), device)?;
    let window = ActiveWindow {
        start: act_start,
        len: act_len,
    };
    let all_positions: Vec<u32> = (0..total as u32).collect();
    let act_positions: Vec<u32> = (act_start as u32..(p + n) as u32).collect();

    let mut cands: Vec<Candidate> = (0..n_cand)
        .map(|c| Candidate {
            tokens: vec![None; n],
            conf: vec![0.0; n],
            logp: vec![0.0; n],
            auto_end: vec![false; n],
            alive: true,
            done: false,
            temperature: if c == 0 || params.temperature > 0.0 {
                params.temperature
            } else {
                params.alt_temperature
            },
            rng: StdRng::seed_from_u64(params.seed.wrapping_add(c as u64)),
        })
        .collect();
    let mut stats = InfillStats {
        context_tokens: p + s,
        span_tokens: n,
        ..Default::default()
    };
    let started = Instant::now();
    let mut ctx: Option<(ContextKv, CtxRows)> = match cache.as_deref_mut() {
        Some(c) => {
            let reused = c.reuse(model, &req.prefix[..act_start], &req.suffix, p + n)?;
            if reused.is_some() {
                c.reused += 1;
            } else {
                c.rebuilt += 1;
            }
            reused.map(|kv| (kv, CtxRows::Shared))
        }
        None => None,
    };
    stats.context_reused = ctx.is_some();
    let max_steps = steps + params.max_extra_steps;

    for step in 0..max_steps {
        if hook.cancelled() {
            stats.cancelled = true;
            stats.denoise_ms = started.elapsed().as_secs_f64() * 1e3 - stats.encode_ms;
            return Ok(InfillOutput {
                completions: vec![],
                stats,
            });
        }
        let run: Vec<usize> = (0..n_cand)
            .filter(|&c| cands[c].alive && !cands[c].done)
            .collect();
        if run.is_empty() {
            break;
        }
        let span_ids = |c: &Candidate| -> Vec<u32> {
            c.tokens.iter().map(|t| t.unwrap_or(special.mask)).collect()
        };
        let refresh = match &ctx {
            None => true,
            Some(_) => params.cache_refresh > 0 && step > 0 && step % params.cache_refresh == 0,
        };
        let t0 = Instant::now();
        // Hidden states of the active window: (1 or |run|, act_len, d).
        let hidden = if refresh {
            let first = span_ids(&cands[run[0]]);
            let identical = run.iter().all(|&c| span_ids(&cands[c]) == first);
            let batch: Vec<&usize> = if identical {
                vec![&run[0]]
            } else {
                run.iter().collect()
            };
            let mut ids = Vec::with_capacity(batch.len() * total);
            for &&c in &batch {
                ids.extend_from_slice(&req.prefix);
                ids.extend(span_ids(&cands[c]));
                ids.extend_from_slice(&req.suffix);
            }
            let ids = Tensor::from_vec(ids, (batch.len(), total), device)?;
            let (h, kv) =
                model.forward_full(&ids, &all_positions, None, Some(window), Exec::Infer)?;
            let kv = kv.expect("context K/V requested");
            ctx = Some((
                kv,
                if identical {
                    CtxRows::Shared
                } else {
                    CtxRows::PerCandidate(run.clone())
                },
            ));
            stats.full_passes += 1;
            h.narrow(1, act_start, act_len)?
        } else {
            let (kv, owners) = ctx.as_ref().expect("context computed at step 0");
            let kv = match owners {
                CtxRows::Shared => kv.clone(),
                CtxRows::PerCandidate(owner) => {
                    let idx: Vec<u32> = run
                        .iter()
                        .map(|c| {
                            owner
                                .iter()
                                .position(|o| o == c)
                                .expect("candidate in cache") as u32
                        })
                        .collect();
                    let idx = Tensor::new(idx.as_slice(), device)?;
                    ContextKv {
                        layers: kv
                            .layers
                            .iter()
                            .map(|l| {
                                Ok(KvBlock {
                                    k: l.k.index_select(&idx, 0)?,
                                    v: l.v.index_select(&idx, 0)?,
                                })
                            })
                            .collect::<Result<_>>()?,
                    }
                }
            };
            let mut ids = Vec::with_capacity(run.len() * act_len);
            for &c in &run {
                ids.extend_from_slice(&req.prefix[act_start..p]);
                ids.extend(span_ids(&cands[c]));
            }
            let ids = Tensor::from_vec(ids, (run.len(), act_len), device)?;
            model.forward_span(&ids, &act_positions, &kv)?
        };
        let span_hidden = hidden.index_select(&rows_t, 1)?;
        let logits = model
            .logits(&span_hidden)?
            .to_dtype(candle_core::DType::F32)?;
        let logits: Vec<Vec<Vec<f32>>> = logits.to_vec3()?;
        stats.forward_passes += 1;
        if step == 0 {
            stats.encode_ms = t0.elapsed().as_secs_f64() * 1e3;
        }
        stats.steps = step + 1;

        for (r, &c) in run.iter().enumerate() {
            let rows = &logits[if logits.len() == 1 { 0 } else { r }];
            let cand = &mut cands[c];
            let (order, temp, top_p) = (params.order, cand.temperature, params.top_p);
            // One softmax per position and step, for every position that is not auto-filled.
            let probs: Vec<Option<Vec<f32>>> = (0..n)
                .map(|j| (!cand.auto_end[j]).then(|| softmax(&rows[j], 1.0)))
                .collect();
            // Refresh confidences of committed tokens (for self-correction and the hook).
            for j in 0..n {
                if let (Some(t), Some(p)) = (cand.tokens[j], &probs[j]) {
                    cand.conf[j] = p[t as usize];
                }
            }
            let masked = cand.masked_before_end(special.end);
            let proposals: Vec<(usize, Proposal)> = masked
                .iter()
                .map(|&j| {
                    let banned = (j < params.min_tokens).then_some(special.end as usize);
                    let p = probs[j]
                        .as_deref()
                        .expect("masked positions are not auto-filled");
                    let pr = propose(&rows[j], p, banned, order, temp, top_p, &mut cand.rng);
                    (j, pr)
                })
                .collect();
            let last = step + 1 >= steps;
            // The schedule counts every masked position, committable or not.
            let scheduled = if last {
                proposals.len()
            } else {
                proposals.len().div_ceil(steps - step)
            };
            let first_masked = cand.tokens.iter().position(Option::is_none);
            let proposals: Vec<(usize, Proposal)> = if params.ends_left_to_right && !last {
                proposals
                    .into_iter()
                    .filter(|(j, pr)| pr.token != special.end || Some(*j) == first_masked)
                    .collect()
            } else {
                proposals
            };
            // `proposals` run left to right, so the window is a prefix of the masked ones.
            let proposals: Vec<(usize, Proposal)> = match (params.commit_window, last) {
                (Some(w), false) => {
                    let allowed: Vec<usize> = masked.iter().copied().take(w.max(1)).collect();
                    proposals
                        .into_iter()
                        .filter(|(j, _)| allowed.contains(j))
                        .collect()
                }
                _ => proposals,
            };
            let m = proposals.len();
            let mut k = scheduled.min(m);
            if let (Some(thr), false) = (params.threshold, last) {
                k = proposals
                    .iter()
                    .filter(|(_, pr)| pr.confidence >= thr)
                    .count()
                    .max(1);
            }
            let mut order_idx: Vec<usize> = (0..m).collect();
            order_idx.sort_by(|&a, &b| {
                proposals[b]
                    .1
                    .confidence
                    .total_cmp(&proposals[a].1.confidence)
            });
            let mut committed_now = vec![false; n];
            for &i in order_idx.iter().take(k) {
                let (j, pr) = &proposals[i];
                cand.tokens[*j] = Some(pr.token);
                // Unrenormalised, like the refresh at the next step.
                cand.conf[*j] = probs[*j].as_ref().expect("was masked")[pr.token as usize];
                cand.logp[*j] = pr.logp;
                committed_now[*j] = true;
            }
            cand.fill_after_end(special.end);
            if let (Some(thr), false) = (params.remask_below, last) {
                for j in 0..n {
                    if !committed_now[j]
                        && !cand.auto_end[j]
                        && cand.tokens[j].is_some()
                        && cand.conf[j] < thr
                    {
                        cand.remask(j, special.end);
                        stats.remasked += 1;
                    }
                }
            }
        }

        // The hook sees each candidate that ran this step.
        for &c in &run {
            let cand = &mut cands[c];
            let end = cand.end(special.end);
            let (text, ranges) = decode_view(tok, &cand.tokens, end)?;
            let is_final = cand.masked_before_end(special.end).is_empty();
            let view = StepView {
                step,
                steps,
                candidate: c,
                tokens: &cand.tokens,
                confidence: &cand.conf,
                text: &text,
                token_ranges: &ranges,
                end,
                is_final,
            };
            match hook.after_step(&view) {
                Verdict::Keep => cand.done = is_final,
                Verdict::Reject => {
                    cand.alive = false;
                    stats.rejected += 1;
                }
                // No step left to re-predict the positions: the candidate cannot be repaired.
                Verdict::Remask(_) if step + 1 >= max_steps => {
                    cand.alive = false;
                    stats.rejected += 1;
                }
                Verdict::Remask(positions) => {
                    for j in positions.into_iter().filter(|&j| j < n) {
                        if cand.tokens[j].is_some() {
                            cand.remask(j, special.end);
                            stats.remasked += 1;
                        }
                    }
                    cand.done = cand.masked_before_end(special.end).is_empty();
                }
            }
        }
    }
    stats.denoise_ms = started.elapsed().as_secs_f64() * 1e3 - stats.encode_ms;
    if let (Some(c), Some((kv, CtxRows::Shared))) = (cache, &ctx) {
        c.entry = Some(CacheEntry {
            prefix_ids: req.prefix[..act_start].to_vec(),
            suffix_ids: req.suffix.clone(),
            suffix_start: p + n,
            kv: kv.clone(),
        });
    }

    let mut completions: Vec<Completion> = Vec::new();
    for (c, cand) in cands.iter().enumerate().filter(|(_, c)| c.alive && c.done) {
        let end = cand.end(special.end);
        let limit = end.unwrap_or(n);
        let tokens: Vec<u32> = cand.tokens[..limit]
            .iter()
            .map(|t| t.expect("final candidate has no masks"))
            .collect();
        let scored = (limit + usize::from(end.is_some())).min(n);
        let mean_logprob = cand.logp[..scored].iter().sum::<f32>() / scored.max(1) as f32;
        let text = tok.decode(&tokens)?;
        if completions.iter().any(|o| o.text == text) {
            continue;
        }
        completions.push(Completion {
            candidate: c,
            text,
            tokens,
            mean_logprob,
        });
    }
    completions.sort_by(|a, b| b.mean_logprob.total_cmp(&a.mean_logprob));
    Ok(InfillOutput { completions, stats })
}

/// Greedy autoregressive decoding of `new_tokens` after `prompt` with a causal mask and KV cache:
/// the baseline the benches measure diffusion against (same network, same token count).
pub fn generate_autoregressive(
    model: &Transformer,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<Vec<u32>> {
    let device = model.device();
    let mut cache = crate::transformer::CausalCache::default();
    let ids = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut h = model.forward_causal(&ids, &mut cache)?;
    let mut out = Vec::with_capacity(new_tokens);
    for _ in 0..new_tokens {
        let l = h.dim(1)?;
        let last = h.narrow(1, l - 1, 1)?;
        let next = model
            .logits(&last)?
            .argmax(D::Minus1)?
            .flatten_all()?
            .to_vec1::<u32>()?[0];
        out.push(next);
        h = model.forward_causal(&Tensor::new(&[[next]], device)?, &mut cache)?;
    }
    Ok(out)
}
