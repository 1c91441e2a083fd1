//! Infill layouts: how one request's context is built and attended, and which hidden state
//! predicts each span position. The sampler asks its layout for the span's logits at every step
//! and knows nothing else of it.
//!
//! - [`InfillLayout::Bidirectional`] (Dream / LLaDA): `prefix span suffix` under full attention.
//!   The context attends to the span, so its cached K/V are approximate (refreshed every
//!   `cache_refresh` steps), and across keystrokes the suffix's keys are re-rotated, not recomputed.
//! - [`InfillLayout::SpmBlock`]: the causal context `<|fim_suffix|> suffix <|fim_prefix|> prefix`,
//!   then the span. The context never sees the span, so its K/V are exact at every step, and
//!   across keystrokes exact for the longest run of leading tokens that did not change.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::config::{InfillLayout, LogitsConvention};
use crate::error::{ModelError, Result};
use crate::sampler::{InfillRequest, InfillStats};
use crate::tokenizer::{FimTokens, Tokenizer};
use crate::transformer::{ActiveWindow, CausalCache, ContextKv, KvBlock, Transformer};

/// Where the sampler gets the span's logits from, step after step.
pub(crate) trait SpanLogits {
    /// Logits (1 or |run|, |rows|, vocab), f32, of the span positions `rows` for the
    /// candidates `run`, whose span tokens are `spans` (mask where undecided). One row when
    /// the prediction is shared by every candidate.
    fn step(
        &mut self,
        model: &Transformer,
        step: usize,
        run: &[usize],
        spans: &[Vec<u32>],
        rows: Range<usize>,
        stats: &mut InfillStats,
    ) -> Result<Tensor>;

    /// Leave the context in `cache` for the next request on the same document.
    fn keep(&self, cache: &mut ContextCache);
}

/// The layout of the model's config for one request; computes (or reuses) the context.
pub(crate) fn for_request<'r>(
    model: &Transformer,
    tok: &Tokenizer,
    req: &'r InfillRequest,
    cache: Option<&mut ContextCache>,
    stats: &mut InfillStats,
) -> Result<Box<dyn SpanLogits + 'r>> {
    Ok(match model.config().infill_layout {
        InfillLayout::Bidirectional => {
            let bidirectional = Bidirectional::new(model, req, cache)?;
            stats.context_reused = bidirectional.ctx.is_some();
            Box::new(bidirectional)
        }
        InfillLayout::SpmBlock => {
            let fim = tok.special.fim.ok_or_else(|| {
                ModelError::Request("an spm_block model needs fim_prefix/fim_suffix tokens".into())
            })?;
            let context = SpmBlock::context_tokens(fim, &req.prefix, &req.suffix);
            let spm = SpmBlock::new(model, context, cache)?
                .reusing_span_rows(req.params.policy.reuse_span_kv);
            stats.context_reused = spm.reused_tokens() > 0;
            stats.full_passes += usize::from(!stats.context_reused);
            Box::new(spm)
        }
    })
}

/// Which cached context rows belong to which candidate.
enum CtxRows {
    Shared,
    PerCandidate(Vec<usize>),
}

/// The batch rows of the candidates `run` in a batch whose rows belong to `owners`, or `None`
/// when one of them has no row.
fn batch_rows(owners: &[usize], run: &[usize]) -> Option<Vec<u32>> {
    run.iter()
        .map(|c| owners.iter().position(|o| o == c).map(|i| i as u32))
        .collect()
}

/// `prefix span suffix` under full attention.
struct Bidirectional<'r> {
    prefix: &'r [u32],
    suffix: &'r [u32],
    /// The span, plus the last prefix token for shifted checkpoints (its hidden state predicts
    /// the first span token).
    window: ActiveWindow,
    /// `rows[j]`: the active row whose hidden state predicts span position j.
    rows: Tensor,
    cache_refresh: usize,
    /// Context K/V of the last full pass (or of the cache), and whose they are.
    ctx: Option<(ContextKv, CtxRows)>,
}

impl<'r> Bidirectional<'r> {
    fn new(
        model: &Transformer,
        req: &'r InfillRequest,
        cache: Option<&mut ContextCache>,
    ) -> Result<Self> {
        let (p, n) = (req.prefix.len(), req.span_len);
        let shifted = model.config().logits == LogitsConvention::Shifted;
        let start = if shifted && p > 0 { p - 1 } else { p };
        let rows: Vec<u32> = (0..n)
            .map(|j| match (shifted, p > 0) {
                (true, true) | (false, _) => j as u32,
                (true, false) => j.saturating_sub(1) as u32,
            })
            .collect();
        let ctx = match cache {
            Some(c) => {
                let reused =
                    c.reuse_bidirectional(model, &req.prefix[..start], &req.suffix, p + n)?;
                if reused.is_some() {
                    c.reused += 1;
                } else {
                    c.rebuilt += 1;
                }
                reused.map(|kv| (kv, CtxRows::Shared))
            }
            None => None,
        };
        Ok(Self {
            prefix: &req.prefix,
            suffix: &req.suffix,
            window: ActiveWindow {
                start,
                len: p + n - start,
            },
            rows: Tensor::new(rows.as_slice(), model.device())?,
            cache_refresh: req.params.cache_refresh,
            ctx,
        })
    }

    /// The cached context K/V for the candidates `run`, batch 1 when shared.
    fn context_for(&self, run: &[usize], device: &Device) -> Result<ContextKv> {
        let (kv, owners) = self.ctx.as_ref().expect("context computed at step 0");
        let CtxRows::PerCandidate(owner) = owners else {
            return Ok(kv.clone());
        };
        let idx = batch_rows(owner, run).expect("every running candidate is cached");
        kv.select_batch(&Tensor::new(idx.as_slice(), device)?)
    }
}

impl SpanLogits for Bidirectional<'_> {
    fn step(
        &mut self,
        model: &Transformer,
        step: usize,
        run: &[usize],
        spans: &[Vec<u32>],
        rows: Range<usize>,
        stats: &mut InfillStats,
    ) -> Result<Tensor> {
        let device = model.device();
        let (start, len) = (self.window.start, self.window.len);
        let p = self.prefix.len();
        let refresh = match &self.ctx {
            None => true,
            Some(_) => self.cache_refresh > 0 && step > 0 && step % self.cache_refresh == 0,
        };
        // Hidden states of the active window: (1 or |run|, len, d).
        let hidden = if refresh {
            let identical = spans.iter().all(|s| s == &spans[0]);
            let batch = if identical { &spans[..1] } else { spans };
            let total = p + spans[0].len() + self.suffix.len();
            let mut ids = Vec::with_capacity(batch.len() * total);
            for span in batch {
                ids.extend_from_slice(self.prefix);
                ids.extend_from_slice(span);
                ids.extend_from_slice(self.suffix);
            }
            let ids = Tensor::from_vec(ids, (batch.len(), total), device)?;
            let positions: Vec<u32> = (0..total as u32).collect();
            let (h, kv) = model.forward_full(&ids, &positions, None, Some(self.window))?;
            let owners = if identical {
                CtxRows::Shared
            } else {
                CtxRows::PerCandidate(run.to_vec())
            };
            self.ctx = Some((kv.expect("context K/V requested"), owners));
            stats.full_passes += 1;
            stats.span_rows_run += len;
            h.narrow(1, start, len)?
        } else {
            let kv = self.context_for(run, device)?;
            let mut ids = Vec::with_capacity(spans.len() * len);
            for span in spans {
                ids.extend_from_slice(&self.prefix[start..]);
                ids.extend_from_slice(span);
            }
            let ids = Tensor::from_vec(ids, (spans.len(), len), device)?;
            let positions: Vec<u32> = (start as u32..(start + len) as u32).collect();
            stats.span_rows_run += len;
            model.forward_span(&ids, &positions, &kv)?
        };
        let rows = self.rows.narrow(0, rows.start, rows.len())?;
        let span_hidden = hidden.index_select(&rows, 1)?;
        Ok(model.logits(&span_hidden)?.to_dtype(DType::F32)?)
    }

    fn keep(&self, cache: &mut ContextCache) {
        if let Some((kv, CtxRows::Shared)) = &self.ctx {
            cache.entry = Some(CacheEntry::Bidirectional {
                prefix_ids: self.prefix[..self.window.start].to_vec(),
                suffix_ids: self.suffix.to_vec(),
                suffix_start: self.window.start + self.window.len,
                kv: kv.clone(),
            });
        }
    }
}

/// The `spm_block` layout for one request: the causal context's K/V and the prediction of its
/// last position, over which the span runs at every step.
pub struct SpmBlock {
    context: Vec<u32>,
    causal: CausalCache,
    /// `causal` as the fixed context of span passes (batch 1, shared by every candidate).
    kv: ContextKv,
    /// Logits (1, 1, vocab) of the last context position: the prediction for span position 0,
    /// the same at every step since the causal context never sees the span.
    first: Tensor,
    reused: usize,
    /// Run a step over only the span rows it changed or predicts from (see [`SpanRows`]).
    reuse_span_rows: bool,
    span: Option<SpanRows>,
}

/// The span's own keys/values from earlier steps, for a policy that reuses them
/// ([`crate::DecodingPolicy::reuse_span_kv`]): a step runs the rows whose token changed and
/// the rows whose logits it needs, and every other row keeps the keys/values of the step that
/// last ran it.
struct SpanRows {
    /// The candidates of the batch rows, and each one's span tokens when its rows last ran.
    run: Vec<usize>,
    ids: Vec<Vec<u32>>,
    kv: ContextKv,
}

impl SpanRows {
    /// The rows of the candidates `run` (some of those cached: candidates only drop out).
    fn select(self, run: &[usize]) -> Result<Option<SpanRows>> {
        if run == self.run {
            return Ok(Some(self));
        }
        let Some(at) = batch_rows(&self.run, run) else {
            return Ok(None);
        };
        let index = Tensor::new(at.as_slice(), self.kv.layers[0].k.device())?;
        Ok(Some(SpanRows {
            run: run.to_vec(),
            ids: at.iter().map(|&i| self.ids[i as usize].clone()).collect(),
            kv: self.kv.select_batch(&index)?,
        }))
    }

    /// The smallest run of rows holding `need` and every row whose token changed.
    fn rows_to_run(&self, spans: &[Vec<u32>], need: Range<usize>) -> Range<usize> {
        let n = spans[0].len();
        let changed = |j: usize| spans.iter().zip(&self.ids).any(|(s, c)| s[j] != c[j]);
        let lo = (0..need.start).find(|&j| changed(j)).unwrap_or(need.start);
        let hi = (need.end..n)
            .rev()
            .find(|&j| changed(j))
            .map_or(need.end, |j| j + 1);
        lo..hi
    }
}

impl SpmBlock {
    /// `<|fim_suffix|> suffix <|fim_prefix|> prefix`: the suffix comes first, so that the
    /// prefix runs straight into the span.
    pub fn context_tokens(fim: FimTokens, prefix: &[u32], suffix: &[u32]) -> Vec<u32> {
        let mut c = Vec::with_capacity(prefix.len() + suffix.len() + 2);
        c.push(fim.suffix);
        c.extend_from_slice(suffix);
        c.push(fim.prefix);
        c.extend_from_slice(prefix);
        c
    }

    /// The causal pass over `context`, continuing the K/V that `cache` holds for the longest
    /// run of leading tokens it shares with the previous request (exact: causal K/V depend only
    /// on earlier tokens); the cache counts the request as reused or rebuilt.
    pub fn new(
        model: &Transformer,
        context: Vec<u32>,
        cache: Option<&mut ContextCache>,
    ) -> Result<Self> {
        let c = context.len();
        if c == 0 {
            return Err(ModelError::Request("spm_block context is empty".into()));
        }
        let (mut causal, reused) = match cache.as_deref().and_then(|c| c.entry.as_ref()) {
            Some(CacheEntry::SpmBlock { tokens, kv }) => {
                // The last position always runs: its hidden state is not cached.
                let keep = common_prefix(tokens, &context).min(c - 1);
                let mut kv = kv.clone();
                kv.truncate(keep)?;
                (kv, keep)
            }
            _ => (CausalCache::default(), 0),
        };
        let ids = Tensor::new(&context[reused..], model.device())?.unsqueeze(0)?;
        let h = model.forward_causal(&ids, &mut causal)?;
        let first = model
            .logits(&h.narrow(1, c - reused - 1, 1)?)?
            .to_dtype(DType::F32)?;
        if let Some(cache) = cache {
            if reused > 0 {
                cache.reused += 1;
            } else {
                cache.rebuilt += 1;
            }
        }
        Ok(Self {
            kv: causal.context()?,
            context,
            causal,
            first,
            reused,
            reuse_span_rows: false,
            span: None,
        })
    }

    /// Let steps reuse the span's own keys/values (approximate; see [`SpanRows`]).
    pub fn reusing_span_rows(mut self, reuse: bool) -> Self {
        self.reuse_span_rows = reuse;
        self
    }

    /// Leading context tokens whose K/V came from the cache.
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// Leave the context in `cache` for the next request on the same document.
    pub fn keep(&self, cache: &mut ContextCache) {
        cache.entry = Some(CacheEntry::SpmBlock {
            tokens: self.context.clone(),
            kv: self.causal.clone(),
        });
    }

    /// Logits (B, |rows|, vocab), f32, of the span positions `rows` when `span` (B, n) is
    /// placed right after the context. Shifted: span row j-1 predicts position j, the
    /// context's last position predicts position 0 (no pass needed for it alone), and the
    /// span's last row predicts past the span.
    pub fn span_logits(
        &self,
        model: &Transformer,
        span: &Tensor,
        rows: Range<usize>,
    ) -> Result<Tensor> {
        let (b, n) = span.dims2()?;
        check_rows(&rows, n)?;
        if rows.end == 1 {
            return self.rows_logits(model, None, b, rows);
        }
        let h = model.forward_span(span, &self.span_positions(0..n), &self.kv)?;
        self.rows_logits(model, Some((&h, 0)), b, rows)
    }

    /// Positions of the span rows `rows`, right after the context.
    fn span_positions(&self, rows: Range<usize>) -> Vec<u32> {
        let c = self.context.len();
        (c + rows.start..c + rows.end).map(|p| p as u32).collect()
    }

    /// The logits of span positions `rows` from hidden states `h` (B, L, d) of the span rows
    /// from `h_start` on (shifted: row j-1 predicts position j; position 0 is `first`).
    fn rows_logits(
        &self,
        model: &Transformer,
        h: Option<(&Tensor, usize)>,
        b: usize,
        rows: Range<usize>,
    ) -> Result<Tensor> {
        let first = self.first.broadcast_as((b, 1, self.first.dim(2)?))?;
        let Some((h, h_start)) = h.filter(|_| rows.end > 1) else {
            return Ok(first.contiguous()?);
        };
        let from = rows.start.max(1);
        let rest = model
            .logits(&h.narrow(1, from - 1 - h_start, rows.end - from)?)?
            .to_dtype(DType::F32)?;
        if rows.start > 0 {
            return Ok(rest);
        }
        Ok(Tensor::cat(&[&first, &rest], 1)?)
    }

    /// A step that reuses the span rows it need not run: the first (or a changed batch) runs
    /// every row and keeps their keys/values.
    fn reusing_step(
        &mut self,
        model: &Transformer,
        run: &[usize],
        spans: &[Vec<u32>],
        ids: &Tensor,
        rows: Range<usize>,
        stats: &mut InfillStats,
    ) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        check_rows(&rows, n)?;
        if rows.end == 1 {
            return self.rows_logits(model, None, b, rows);
        }
        let cached = match self.span.take() {
            Some(s) => s.select(run)?,
            None => None,
        };
        let Some(mut cached) = cached else {
            stats.span_rows_run += n;
            let positions = self.span_positions(0..n);
            let (h, kv) = model.forward_span_kv(ids, &positions, &self.kv, true)?;
            self.span = kv.map(|kv| SpanRows {
                run: run.to_vec(),
                ids: spans.to_vec(),
                kv,
            });
            return self.rows_logits(model, Some((&h, 0)), b, rows);
        };
        // Rows rows.start - 1 .. rows.end - 1 predict the positions asked for (row -1: `first`).
        let need = rows.start.max(1) - 1..rows.end - 1;
        let ran = cached.rows_to_run(spans, need);
        stats.span_rows_run += ran.len();
        let h = model.forward_span_rows(
            &ids.narrow(1, ran.start, ran.len())?,
            &self.span_positions(ran.clone()),
            &self.kv,
            &mut cached.kv,
            ran.clone(),
        )?;
        for (kept, now) in cached.ids.iter_mut().zip(spans) {
            kept[ran.clone()].copy_from_slice(&now[ran.clone()]);
        }
        let out = self.rows_logits(model, Some((&h, ran.start)), b, rows);
        self.span = Some(cached);
        out
    }
}

fn check_rows(rows: &Range<usize>, n: usize) -> Result<()> {
    if rows.is_empty() || rows.end > n {
        return Err(ModelError::Request(format!(
            "span rows {rows:?} outside 0..{n}"
        )));
    }
    Ok(())
}

impl SpanLogits for SpmBlock {
    fn step(
        &mut self,
        model: &Transformer,
        _step: usize,
        run: &[usize],
        spans: &[Vec<u32>],
        rows: Range<usize>,
        stats: &mut InfillStats,
    ) -> Result<Tensor> {
        let n = spans[0].len();
        let ids = Tensor::from_vec(spans.concat(), (spans.len(), n), model.device())?;
        if self.reuse_span_rows {
            return self.reusing_step(model, run, spans, &ids, rows, stats);
        }
        if rows.end > 1 {
            stats.span_rows_run += n;
        }
        self.span_logits(model, &ids, rows)
    }

    fn keep(&self, cache: &mut ContextCache) {
        SpmBlock::keep(self, cache);
    }
}

/// Context keys/values kept from one request to the next on the same document.
///
/// Bidirectional: when only the text near the cursor changed, the unchanged prefix keeps its
/// keys/values, the unchanged end of the suffix keeps them too (moved to their new positions by
/// a RoPE rotation), and only the changed tokens run, attending to the rest. This is approximate
/// in the same way as the per-step cache: reused entries do not see the edit. Large edits fall
/// back to a full pass.
///
/// `spm_block`: the leading context tokens shared with the previous request keep their keys and
/// values, exactly, and the rest runs causally on top of them.
#[derive(Default)]
pub struct ContextCache {
    entry: Option<CacheEntry>,
    /// Requests served by reuse, and by a full pass (for logs and evals).
    pub reused: usize,
    pub rebuilt: usize,
}

enum CacheEntry {
    Bidirectional {
        /// Context tokens before the active window (positions 0..prefix_ids.len()).
        prefix_ids: Vec<u32>,
        suffix_ids: Vec<u32>,
        /// Position of the first suffix token.
        suffix_start: usize,
        /// Per layer: prefix block then suffix block, batch 1.
        kv: ContextKv,
    },
    SpmBlock {
        tokens: Vec<u32>,
        kv: CausalCache,
    },
}

/// Longest run of new tokens that bidirectional reuse still handles; beyond it a full pass is
/// cheaper and exact.
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

    /// Bidirectional context K/V for `prefix_ids` (positions 0..) and `suffix_ids` (from
    /// `suffix_start`), derived from the cached entry, or None when a full pass is needed.
    fn reuse_bidirectional(
        &self,
        model: &Transformer,
        prefix_ids: &[u32],
        suffix_ids: &[u32],
        suffix_start: usize,
    ) -> Result<Option<ContextKv>> {
        let Some(CacheEntry::Bidirectional {
            prefix_ids: old_prefix,
            suffix_ids: old_suffix,
            suffix_start: old_suffix_start,
            kv,
        }) = &self.entry
        else {
            return Ok(None);
        };
        let cp = common_prefix(old_prefix, prefix_ids);
        let cs = common_suffix(old_suffix, suffix_ids);
        let new_prefix = &prefix_ids[cp..];
        let new_suffix = &suffix_ids[..suffix_ids.len() - cs];
        if new_prefix.len() + new_suffix.len() > MAX_REUSE_NEW_TOKENS || cp < prefix_ids.len() / 2 {
            return Ok(None);
        }
        let old_split = old_prefix.len();
        let old_tail = old_suffix_start + (old_suffix.len() - cs);
        let new_tail = suffix_start + new_suffix.len();
        let delta = new_tail as i64 - old_tail as i64;
        let mut kept = Vec::with_capacity(kv.layers.len());
        let mut tails = Vec::with_capacity(kv.layers.len());
        for l in &kv.layers {
            let tail_from = old_split + old_suffix.len() - cs;
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
            return Ok(Some(ContextKv::new(kept).for_steps()?));
        }
        // The changed tokens attend to the kept context and to each other.
        let ids: Vec<u32> = new_prefix.iter().chain(new_suffix).copied().collect();
        let positions: Vec<u32> = (cp as u32..prefix_ids.len() as u32)
            .chain(suffix_start as u32..(suffix_start + new_suffix.len()) as u32)
            .collect();
        let ids_t = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
        let (_, own) = model.forward_span_kv(&ids_t, &positions, &ContextKv::new(kept), true)?;
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
        Ok(Some(ContextKv::new(layers).for_steps()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiffusionLm;

    fn spm() -> DiffusionLm {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trainer-spm");
        DiffusionLm::load_dir(std::path::Path::new(dir)).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (values(a), values(b));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A reusing step runs the rows whose token changed and the rows that predict the
    /// positions asked for; with nothing changed it is exact, and running every row is exact.
    #[test]
    fn a_reusing_step_runs_only_changed_and_predicting_rows() {
        let lm = spm();
        let m = lm.transformer();
        let fim = lm.tokenizer().special.fim.unwrap();
        let mask = lm.tokenizer().special.mask;
        let prefix = lm
            .encode("fn add(a: u32, b: u32) -> u32 {\n    let sum = ")
            .unwrap();
        let suffix = lm.encode(";\n    sum\n}\n").unwrap();
        let context = SpmBlock::context_tokens(fim, &prefix, &suffix);
        let exact = SpmBlock::new(m, context.clone(), None).unwrap();
        let mut reusing = SpmBlock::new(m, context, None)
            .unwrap()
            .reusing_span_rows(true);
        let n = 10;
        let mut stats = InfillStats::default();
        let mut step = |spans: &[Vec<u32>], rows: Range<usize>, stats: &mut InfillStats| {
            let run: Vec<usize> = (0..spans.len()).collect();
            reusing.step(m, 0, &run, spans, rows, stats).unwrap()
        };
        let exact_rows = |spans: &[Vec<u32>], rows: Range<usize>| {
            let ids = Tensor::from_vec(spans.concat(), (spans.len(), n), m.device()).unwrap();
            exact.span_logits(m, &ids, rows).unwrap()
        };
        let masked = vec![vec![mask; n]; 2];
        // The first step runs every row.
        let got = step(&masked, 0..4, &mut stats);
        assert!(max_diff(&got, &exact_rows(&masked, 0..4)) <= 1e-5);
        assert_eq!(stats.span_rows_run, n);
        // Nothing changed: positions 3..7 come from rows 2..6, exactly.
        let got = step(&masked, 3..7, &mut stats);
        assert!(max_diff(&got, &exact_rows(&masked, 3..7)) <= 1e-5);
        assert_eq!(stats.span_rows_run, n + 4);
        // Position 2 committed in both candidates: rows 2..6 run again (row 2 with its token);
        // the rows after them keep the keys/values they had as masks.
        let mut committed = masked.clone();
        for span in &mut committed {
            span[2] = 267;
        }
        let after = step(&committed, 3..7, &mut stats);
        assert_eq!(stats.span_rows_run, n + 8);
        assert!(max_diff(&got, &after) > 1e-3, "the commit changed nothing");
        // Every row changed and every position asked for: the whole span runs, exactly.
        let other = vec![vec![42u32; n], vec![7u32; n]];
        let got = step(&other, 0..n, &mut stats);
        assert!(max_diff(&got, &exact_rows(&other, 0..n)) <= 1e-4);
        assert_eq!(stats.span_rows_run, 2 * n + 8);
        // The first candidate drops out: the second's rows are kept, exactly.
        let got = reusing
            .step(m, 1, &[1], &other[1..], 5..8, &mut stats)
            .unwrap();
        assert!(max_diff(&got, &exact_rows(&other[1..], 5..8)) <= 1e-4);
        assert_eq!(stats.span_rows_run, 2 * n + 8 + 3);
    }
}
