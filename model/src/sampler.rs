//! The infilling sampler: a span of mask tokens between a prefix and a suffix is denoised in K
//! refinement steps. Each step predicts every masked position in one forward pass and commits the
//! most confident ones; a hook sees every candidate between steps and may remask or reject it.
//!
//! Length rule: the span is over-allocated. The model ends an infill with the end-of-infill token
//! (pad/EOS); once one is committed, every still-masked position after it becomes an end token too
//! (as Dream-Coder does), and the completion is the text before the first end token.
//!
//! Speed: the context's keys/values are computed once and reused by the following steps, which
//! only run the span; how the context is built and which hidden states predict the span is the
//! model's infill layout's business (layout.rs).

use std::ops::Range;
use std::time::Instant;

use candle_core::{Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::layout;
pub use crate::layout::ContextCache;
use crate::ngram::DocumentNgrams;
use crate::policy::{ConfidenceOrder, DecodingPolicy, Proposal};
use crate::tokenizer::Tokenizer;
use crate::transformer::Transformer;

#[derive(Debug, Clone)]
pub struct SamplerParams {
    /// Refinement steps K, clamped to 1..=span_len: the budget the policy's schedule fills.
    pub steps: usize,
    /// Which positions each step commits and where the span may end.
    pub policy: DecodingPolicy,
    /// Candidates decoded together as one batch.
    pub candidates: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Temperature of the candidates after the first when `temperature` is 0, so that several
    /// candidates can differ; the first stays greedy.
    pub alt_temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Recompute the context keys/values every R steps (1 = exact; 0 = never after the first).
    /// Bidirectional layout only: a causal context never sees the span and is always exact.
    pub cache_refresh: usize,
    /// Steps allowed beyond `steps` when the hook remasks positions at the end.
    pub max_extra_steps: usize,
    /// The end-of-infill token is never proposed before this position, so a completion has at
    /// least this many tokens (1 by default: an empty completion is no completion).
    pub min_tokens: usize,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            steps: 8,
            policy: DecodingPolicy::PARALLEL,
            candidates: 1,
            temperature: 0.0,
            alt_temperature: 0.8,
            top_p: 0.95,
            seed: 0,
            cache_refresh: 0,
            max_extra_steps: 2,
            min_tokens: 1,
        }
    }
}

pub struct InfillRequest {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Masked positions to fill (over-allocated; the model ends early with the end token).
    pub span_len: usize,
    pub params: SamplerParams,
    /// Token healing: the text of the prefix's last token, which the caller took off the prefix
    /// (a cursor mid-pretoken, e.g. after `= ` or `(`, is a boundary the model rarely saw). The
    /// first span token must start with this text; the completion and the hook's view have it
    /// removed again, so they stay relative to the original cursor.
    pub healing: Option<String>,
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
    /// End the candidate before this span position: only the positions before it are kept
    /// (at least one). What a hook says of a final candidate whose full text it cannot accept
    /// but whose beginning it can, or of a candidate whose later positions can no longer
    /// change what is inserted (a line span past its line break).
    Truncate(usize),
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
    /// Span rows the steps ran through the network, summed over steps (the whole span each
    /// step, unless the policy reuses the span's keys/values).
    pub span_rows_run: usize,
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
    /// Tokens the hook remasked at each position: under greedy decoding the same context
    /// would only propose them again.
    banned: Vec<Vec<u32>>,
    alive: bool,
    done: bool,
    /// Ended by the hook's cut (`Verdict::Truncate`), not by a predicted end token.
    cut: bool,
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
    /// An end token at `at`, and ends after it; what stood there is dropped.
    fn truncate(&mut self, at: usize, end_id: u32) {
        self.cut = true;
        for j in at..self.tokens.len() {
            self.tokens[j] = Some(end_id);
            self.auto_end[j] = j > at;
            self.conf[j] = 1.0;
            self.logp[j] = 0.0;
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

fn softmax(row: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let mut p = row.to_vec();
    crate::kernels::softmax_in_place(&mut p, 1.0 / t);
    p
}

/// One position's prediction: token, confidence and log-probability from its logits `row` and
/// their softmax `probs`; the `banned` tokens are taken out and the rest renormalised.
fn propose(
    row: &[f32],
    probs: &[f32],
    banned: &[u32],
    order: ConfidenceOrder,
    temperature: f32,
    top_p: f32,
    rng: &mut StdRng,
) -> (u32, f32, f32) {
    let renormalised;
    let probs = if banned.is_empty() {
        probs
    } else {
        renormalised = without_banned(probs.to_vec(), row, banned, 1.0);
        &renormalised[..]
    };
    let token = if temperature > 0.0 {
        let tempered = softmax(row, temperature);
        let tempered = if banned.is_empty() {
            tempered
        } else {
            without_banned(tempered, row, banned, temperature)
        };
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
    (token as u32, confidence, p.max(1e-30).ln())
}

/// `p` (the softmax of `row` at `temperature`, maybe mixed with the document cache) without
/// the `banned` tokens, renormalised. Where the banned tokens held nearly all the mass (a
/// remasked token the model was sure of), the rest of `p` has underflowed to the exp kernel's
/// floor, their order lost, and a draw from it picked any token at all, the FIM sentinels
/// included (`<|fim_prefix|>use super::{` in a dev span case); there the distribution
/// is the softmax of `row` with the banned logits removed. Where no token is left at all, the
/// bans give way.
fn without_banned(mut p: Vec<f32>, row: &[f32], banned: &[u32], temperature: f32) -> Vec<f32> {
    let kept = 1.0 - banned.iter().map(|&b| p[b as usize]).sum::<f32>();
    if kept > 1e-3 {
        banned.iter().for_each(|&b| p[b as usize] = 0.0);
        p.iter_mut().for_each(|x| *x /= kept);
        return p;
    }
    let mut rest = row.to_vec();
    banned
        .iter()
        .for_each(|&b| rest[b as usize] = f32::NEG_INFINITY);
    if rest.iter().all(|&x| x == f32::NEG_INFINITY) {
        return p;
    }
    softmax(&rest, temperature)
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

/// Samples from the nucleus: the fewest most probable tokens whose mass reaches `top_p`.
fn sample_top_p(probs: &[f32], top_p: f32, rng: &mut StdRng) -> usize {
    let idx = nucleus(probs, top_p);
    let kept: f32 = idx.iter().map(|&i| probs[i]).sum();
    let r: f32 = rng.random::<f32>() * kept;
    let mut acc = 0.0;
    for &i in &idx {
        acc += probs[i];
        if acc >= r {
            return i;
        }
    }
    idx[0]
}

/// The nucleus of `probs` (ties by index), in no particular order. Sorting all 8,192 tokens of
/// every sampled row took a sixth of a 3-candidate request. Instead one pass sums the mass per
/// binary exponent: the nucleus is every token of the exponents above the one where the mass
/// reaches `top_p`, and the most probable of that one's (a quickselect over few tokens).
fn nucleus(probs: &[f32], top_p: f32) -> Vec<usize> {
    // Probabilities are ≥ 0, so the bits above the mantissa are the exponent.
    let exponent = |p: f32| (p.to_bits() >> 23) as usize & 0xff;
    let mut mass = [0f32; 256];
    for &p in probs {
        mass[exponent(p)] += p;
    }
    let (mut edge, mut above) = (0, 0.0);
    for e in (0..256).rev() {
        if above + mass[e] >= top_p || e == 0 {
            edge = e;
            break;
        }
        above += mass[e];
    }
    let mut inside = Vec::new();
    let mut at_edge = Vec::new();
    for (i, &p) in probs.iter().enumerate() {
        match exponent(p).cmp(&edge) {
            std::cmp::Ordering::Greater => inside.push(i),
            std::cmp::Ordering::Equal => at_edge.push(i),
            std::cmp::Ordering::Less => {}
        }
    }
    // Never empty for a non-empty row: the edge exponent holds mass (or, at exponent 0, every
    // token is inside or at the edge), and a non-empty edge gives at least one token.
    let k = most_probable_reaching(&mut at_edge, probs, top_p - above);
    inside.extend_from_slice(&at_edge[..k]);
    inside
}

/// Reorders `idx` so that its first `k` are its `k` most probable tokens, for the least `k` whose
/// mass reaches `need` (all of them if none does), and returns `k`.
fn most_probable_reaching(idx: &mut [usize], probs: &[f32], need: f32) -> usize {
    if idx.is_empty() {
        return 0;
    }
    let mid = idx.len() / 2;
    let (upper, pivot, lower) =
        idx.select_nth_unstable_by(mid, |&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let above: f32 = upper.iter().map(|&i| probs[i]).sum();
    if above >= need {
        most_probable_reaching(upper, probs, need)
    } else if above + probs[*pivot] >= need {
        mid + 1
    } else {
        mid + 1 + most_probable_reaching(lower, probs, need - above - probs[*pivot])
    }
}

/// The one or two tokens before span position `j` (from the prefix at the span's start), oldest
/// first, and how many; `None` while its left neighbour is masked.
fn left_history(
    prefix: &[u32],
    tokens: &[Option<u32>],
    j: usize,
    end: u32,
) -> Option<([u32; 2], usize)> {
    let at = |i: isize| -> Option<u32> {
        if i >= 0 {
            tokens[i as usize].filter(|&t| t != end)
        } else {
            prefix
                .len()
                .checked_sub(i.unsigned_abs())
                .map(|k| prefix[k])
        }
    };
    let j = j as isize;
    let one = at(j - 1)?;
    // An array, not a Vec: this runs for every masked position at every step.
    Some(match at(j - 2) {
        Some(two) => ([two, one], 2),
        None => ([one, 0], 1),
    })
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

/// Which tokens may stand at span position 0 under healing text `h`: those whose text starts
/// with it, never a special token (the end of infill included). Where `h` is spaces (the last
/// space of a line's indentation, or the one after `=`), the token goes on with text, not
/// more whitespace: the cursor stands where the text begins, and a second space was the
/// model miscounting the indentation (8 of 120 line answers on the validation crates were
/// indented one or two spaces too deep).
fn healing_allowed(tok: &Tokenizer, h: &str, vocab: usize) -> Result<Vec<bool>> {
    let texts = tok.token_texts();
    let spaces = h.chars().all(|c| c == ' ' || c == '\t');
    let fits = |t: &str| match t.strip_prefix(h) {
        Some(rest) if spaces => rest.chars().next().is_some_and(|c| !c.is_whitespace()),
        Some(_) => true,
        None => false,
    };
    let allowed: Vec<bool> = (0..vocab)
        .map(|i| texts.get(i).is_some_and(|t| fits(t)) && !tok.is_special(i as u32))
        .collect();
    if !allowed.contains(&true) {
        return Err(ModelError::Request(format!(
            "healing text {h:?} starts no token"
        )));
    }
    Ok(allowed)
}

/// The hook's view without the healed text: position 0 (when committed) starts with it.
fn unheal_view(
    healed: Option<&str>,
    first_committed: bool,
    text: String,
    mut ranges: Vec<Range<usize>>,
) -> (String, Vec<Range<usize>>) {
    let Some(h) = healed.filter(|h| first_committed && text.starts_with(*h)) else {
        return (text, ranges);
    };
    let cut = h.len();
    for r in &mut ranges {
        r.start = r.start.saturating_sub(cut);
        r.end = r.end.saturating_sub(cut);
    }
    (text[cut..].to_owned(), ranges)
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
    let context_tokens = p + s + cfg.infill_layout.sentinel_tokens();
    let total = context_tokens + n;
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
    let policy = &params.policy;
    let order = policy.confidence_order();
    let steps = params.steps.clamp(1, n);
    let n_cand = params.candidates.max(1);

    let mut cands: Vec<Candidate> = (0..n_cand)
        .map(|c| Candidate {
            tokens: vec![None; n],
            conf: vec![0.0; n],
            logp: vec![0.0; n],
            auto_end: vec![false; n],
            banned: vec![Vec::new(); n],
            alive: true,
            done: false,
            cut: false,
            temperature: if c == 0 || params.temperature > 0.0 {
                params.temperature
            } else {
                params.alt_temperature
            },
            rng: StdRng::seed_from_u64(params.seed.wrapping_add(c as u64)),
        })
        .collect();
    let mut stats = InfillStats {
        context_tokens,
        span_tokens: n,
        ..Default::default()
    };
    let started = Instant::now();
    let mut layout = layout::for_request(model, tok, req, cache.as_deref_mut(), &mut stats)?;
    let max_steps = steps + params.max_extra_steps;
    let ngrams = policy
        .document_cache
        .map(|_| DocumentNgrams::new(&[&req.prefix, &req.suffix]));
    let healed = req.healing.as_deref().filter(|h| !h.is_empty());
    let first_allowed = healed
        .map(|h| healing_allowed(tok, h, cfg.vocab_size))
        .transpose()?;
    let never = tok.never_in_span();

    for step in 0..max_steps {
        if hook.cancelled() {
            stats.cancelled = true;
            break;
        }
        let run: Vec<usize> = (0..n_cand)
            .filter(|&c| cands[c].alive && !cands[c].done)
            .collect();
        if run.is_empty() {
            break;
        }
        let spans: Vec<Vec<u32>> = run
            .iter()
            .map(|&c| {
                let tokens = &cands[c].tokens;
                tokens.iter().map(|t| t.unwrap_or(special.mask)).collect()
            })
            .collect();
        // Each candidate's masked positions before its end, and how many of them (leading)
        // this step predicts: all, unless its policy looks ahead a bounded way. The window is
        // the span rows that holds them for every candidate.
        let steps_left = steps.saturating_sub(step);
        let open: Vec<Vec<usize>> = run
            .iter()
            .map(|&c| cands[c].masked_before_end(special.end))
            .collect();
        let predict: Vec<Option<usize>> = open
            .iter()
            .map(|m| policy.predicted(m.len(), steps_left))
            .collect();
        let leading: Option<Vec<(usize, usize)>> = open
            .iter()
            .zip(&predict)
            .map(|(m, k)| k.map(|k| (m[0], m[k - 1] + 1)))
            .collect();
        let window = match leading {
            Some(w) if !w.is_empty() => {
                w.iter().map(|w| w.0).min().unwrap_or(0)..w.iter().map(|w| w.1).max().unwrap_or(n)
            }
            _ => 0..n,
        };
        let logits = layout.step(model, step, &run, &spans, window.clone(), &mut stats)?;
        let mut logits: Vec<Vec<Vec<f32>>> = logits.to_vec3()?;
        for row in logits.iter_mut().flatten() {
            for &id in &never {
                if let Some(x) = row.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        if let (Some(allowed), 0) = (&first_allowed, window.start) {
            for rows in &mut logits {
                for (x, &ok) in rows[0].iter_mut().zip(allowed) {
                    if !ok {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
        }
        stats.forward_passes += 1;
        if step == 0 {
            // The context pass (or its reuse) and the first prediction.
            stats.encode_ms = started.elapsed().as_secs_f64() * 1e3;
        }
        stats.steps = step + 1;

        for (r, &c) in run.iter().enumerate() {
            let rows = &logits[if logits.len() == 1 { 0 } else { r }];
            let cand = &mut cands[c];
            let (temp, top_p) = (cand.temperature, params.top_p);
            // Row of span position j (in the window).
            let row = |j: usize| &rows[j - window.start];
            // One softmax per predicted position and step that is not auto-filled.
            let mut probs: Vec<Option<Vec<f32>>> = (0..n)
                .map(|j| (window.contains(&j) && !cand.auto_end[j]).then(|| softmax(row(j), 1.0)))
                .collect();
            // Refresh confidences of committed tokens (for self-correction and the hook).
            for j in 0..n {
                if let (Some(t), Some(p)) = (cand.tokens[j], &probs[j]) {
                    cand.conf[j] = p[t as usize];
                }
            }
            let all_masked = &open[r];
            let masked = &all_masked[..predict[r].unwrap_or(all_masked.len())];
            if let (Some(ng), Some(w)) = (&ngrams, policy.document_cache) {
                for &j in masked {
                    // Where the left neighbour is known (the healed first position aside).
                    let history = left_history(&req.prefix, &cand.tokens, j, special.end);
                    if let (Some((h, len)), Some(p)) = (history, probs[j].as_mut()) {
                        if !(j == 0 && first_allowed.is_some()) {
                            ng.mix_into(p, &h[..len], w);
                        }
                    }
                }
            }
            // An end before a committed token would drop it.
            let last_token = (0..n)
                .rev()
                .find(|&j| cand.tokens[j].is_some_and(|t| t != special.end));
            let proposals: Vec<Proposal> = masked
                .iter()
                .map(|&j| {
                    let end_banned = j < params.min_tokens || !policy.allows_end_at(j, last_token);
                    let mut banned = cand.banned[j].clone();
                    if end_banned {
                        banned.push(special.end);
                    }
                    let p = probs[j]
                        .as_deref()
                        .expect("masked positions are not auto-filled");
                    let (token, confidence, logp) =
                        propose(row(j), p, &banned, order, temp, top_p, &mut cand.rng);
                    Proposal {
                        position: j,
                        token,
                        confidence,
                        logp,
                        is_end: token == special.end,
                    }
                })
                .collect();
            let last = step + 1 >= steps;
            let mut committed_now = vec![false; n];
            for i in policy.select(&proposals, all_masked.len(), steps_left) {
                let pr = &proposals[i];
                let j = pr.position;
                cand.tokens[j] = Some(pr.token);
                // Unrenormalised, like the refresh at the next step.
                cand.conf[j] = probs[j].as_ref().expect("was masked")[pr.token as usize];
                cand.logp[j] = pr.logp;
                committed_now[j] = true;
            }
            cand.fill_after_end(special.end);
            if let (Some(thr), false) = (policy.remask_below, last) {
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
            let (text, ranges) = unheal_view(healed, cand.tokens[0].is_some(), text, ranges);
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
                Verdict::Truncate(at) => {
                    cand.truncate(at.clamp(1, n), special.end);
                    cand.done = true;
                }
                // No step left to re-predict the positions: the candidate cannot be repaired.
                Verdict::Remask(_) if step + 1 >= max_steps => {
                    cand.alive = false;
                    stats.rejected += 1;
                }
                Verdict::Remask(positions) => {
                    let first = positions.iter().copied().filter(|&j| j < n).min();
                    for j in positions.into_iter().filter(|&j| j < n) {
                        if let Some(t) = cand.tokens[j].filter(|_| !cand.auto_end[j]) {
                            cand.banned[j].push(t);
                        }
                        if cand.tokens[j].is_some() {
                            cand.remask(j, special.end);
                            stats.remasked += 1;
                        }
                    }
                    // Reopened, not blamed: no ban.
                    if let (Some(first), true, false) =
                        (first, policy.reopen_after_remask, is_final)
                    {
                        for j in first + 1..n {
                            if cand.tokens[j].is_some() && !cand.auto_end[j] {
                                cand.remask(j, special.end);
                            }
                        }
                    }
                    cand.done = cand.masked_before_end(special.end).is_empty();
                }
            }
        }
    }
    stats.denoise_ms = started.elapsed().as_secs_f64() * 1e3 - stats.encode_ms;
    if let Some(c) = cache {
        layout.keep(c);
    }
    if stats.cancelled {
        return Ok(InfillOutput {
            completions: vec![],
            stats,
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
        // A cut end was never predicted: its log-probability 0 would flatter the mean.
        let scored = (limit + usize::from(end.is_some() && !cand.cut)).min(n);
        let mean_logprob = cand.logp[..scored].iter().sum::<f32>() / scored.max(1) as f32;
        let text = tok.decode(&tokens)?;
        let text = match healed {
            Some(h) => text.strip_prefix(h).map(str::to_owned).unwrap_or(text),
            None => text,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Healed by a space, the first token is that space and then text: the tokens that go on
    /// with more whitespace (`"  "`, `" \n"`, which the fixture's vocabulary has) are out; a
    /// healed `(` still allows every token that starts with it.
    #[test]
    fn a_healed_space_goes_on_with_text() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trainer-spm");
        let lm = crate::DiffusionLm::load_dir(std::path::Path::new(dir)).unwrap();
        let tok = lm.tokenizer();
        let texts = tok.token_texts();
        let vocab = lm.config().vocab_size;
        let deeper =
            |t: &str| t.len() > 1 && t.starts_with(' ') && t[1..].starts_with(char::is_whitespace);
        assert!(
            texts.iter().any(|t| deeper(t)),
            "the fixture has no such token"
        );
        let allowed = healing_allowed(tok, " ", vocab).unwrap();
        for (i, t) in texts.iter().enumerate().take(vocab) {
            let want = t.starts_with(' ') && !deeper(t) && t.len() > 1 && !tok.is_special(i as u32);
            assert_eq!(allowed[i], want, "{t:?}");
        }
        let paren = healing_allowed(tok, "(", vocab).unwrap();
        for (i, t) in texts.iter().enumerate().take(vocab) {
            assert_eq!(
                paren[i],
                t.starts_with('(') && !tok.is_special(i as u32),
                "{t:?}"
            );
        }
    }

    /// The nucleus by sorting every token, as [`nucleus`] did before.
    fn nucleus_by_full_sort(probs: &[f32], top_p: f32) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        idx.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut kept = 0.0;
        for (n, &i) in idx.iter().enumerate() {
            kept += probs[i];
            if kept >= top_p {
                idx.truncate(n + 1);
                break;
            }
        }
        idx
    }

    #[test]
    fn a_ban_on_the_token_holding_all_the_mass_leaves_the_next_best() {
        // Token 1 holds all the mass; the others underflow (to the vectorised exp's floor,
        // where their order is lost).
        let row = [0.0, 200.0, 3.0, f32::NEG_INFINITY, 1.0];
        let p = softmax(&row, 1.0);
        assert!(p[2] < 1e-30 && p[2] <= p[0]);
        let q = without_banned(p.clone(), &row, &[1], 1.0);
        assert_eq!(argmax(&q), 2);
        assert_eq!((q[1], q[3]), (0.0, 0.0));
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // A sampled draw comes from the rest too, never from the removed tokens.
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let t = sample_top_p(&without_banned(p.clone(), &row, &[1], 0.8), 0.95, &mut rng);
            assert!([0, 2, 4].contains(&t), "{t}");
        }
        // Where every token left is banned, the bans give way.
        let q = without_banned(p.clone(), &row, &[0, 1, 2, 4], 1.0);
        assert_eq!(argmax(&q), 1);
        // A ban on a token of little mass only renormalises.
        let q = without_banned(softmax(&[1.0, 1.0, 2.0], 1.0), &[1.0, 1.0, 2.0], &[0], 1.0);
        assert_eq!(q[0], 0.0);
        assert!((q[1] + q[2] - 1.0).abs() < 1e-6 && q[2] > q[1]);
    }

    #[test]
    fn the_nucleus_equals_the_one_a_full_sort_finds() {
        let mut rng = StdRng::seed_from_u64(7);
        for (sharpness, top_p) in [
            (0.1f32, 0.95f32),
            (1.0, 0.95),
            (8.0, 0.95),
            (3.0, 0.5),
            (1.0, 1.0),
        ] {
            let logits: Vec<f32> = (0..8192)
                .map(|_| rng.random::<f32>() * sharpness * 10.0)
                .collect();
            let mut probs = softmax(&logits, 1.0);
            probs[5] = 0.0;
            let mut n = nucleus(&probs, top_p);
            n.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let want = nucleus_by_full_sort(&probs, top_p);
            // The most probable tokens, as many as the sorted sum needs, up to one either way:
            // the mass is summed in another order, so the last token can round to either side.
            let all = nucleus_by_full_sort(&probs, 2.0);
            assert_eq!(n, all[..n.len()], "sharpness {sharpness}, top_p {top_p}");
            assert!(
                n.len().abs_diff(want.len()) <= 1,
                "{} vs {}",
                n.len(),
                want.len()
            );
            assert!(!n.is_empty());
        }
        let one_hot: Vec<f32> = (0..100).map(|i| f32::from(u8::from(i == 42))).collect();
        assert_eq!(nucleus(&one_hot, 0.95), vec![42]);
    }
}
