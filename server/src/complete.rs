//! One completion, start to finish, without LSP: plan the span, build the context windows, run
//! the model with the verifier hook, then post-process, re-check and rank the candidates.
//! Runs on the model thread (server) or the main thread (CLI, eval).

use std::ops::Range;
use std::time::Instant;

use model::{
    ContextCache, DecodingPolicy, DiffusionLm, InfillLayout, InfillRequest, SamplerParams,
    StepHook, StepView, Verdict,
};

use crate::config::Settings;
use crate::context::{self, Plan, SpanKind, Target};
use crate::document::{Snapshot, MAX_SYNTAX_BYTES};
use crate::engine::CancelToken;
use crate::verify::{Site, Verifier, MAX_FINAL_RETRIES};

/// Test hook: with `DIFFUSION_LS_TEST_PANIC` set, a request on a document that contains this
/// text panics on the model thread after its first refinement step (the fault tests check that
/// the request gets an error and the next one works).
pub const MODEL_PANIC_MARKER: &str = "DIFFUSION_LS_MODEL_PANIC";

/// The hook of [`MODEL_PANIC_MARKER`] requests.
struct PanicAfterFirstStep<'a, 'b>(&'a mut Verifier<'b>);

impl StepHook for PanicAfterFirstStep<'_, '_> {
    fn after_step(&mut self, _: &StepView<'_>) -> Verdict {
        panic!("test panic on the model thread ({MODEL_PANIC_MARKER})");
    }
    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
}

fn test_panic_requested(snap: &Snapshot) -> bool {
    std::env::var_os("DIFFUSION_LS_TEST_PANIC").is_some()
        && snap.rope.chunks().any(|c| c.contains(MODEL_PANIC_MARKER))
}

pub struct Request {
    pub snapshot: Snapshot,
    pub target: Target,
    pub settings: Settings,
    /// Eval's `--oracle-length`: use this span length instead of the syntax-sized one.
    pub span_len: Option<usize>,
    /// Token healing (eval's `--no-heal` turns it off): see [`heal`].
    pub heal: bool,
    /// Eval's `--policy`: this decoding policy for every span kind instead of [`policy_for`].
    pub policy: Option<DecodingPolicy>,
    pub cancel: CancelToken,
}

/// One insertion for `Answer::replace`.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub text: String,
    pub mean_logprob: f32,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub span_len: usize,
    pub context_tokens: usize,
    pub steps: usize,
    pub forward_passes: usize,
    pub checks: usize,
    pub remasks: usize,
    pub rejections: usize,
    /// Candidates cut to their longest beginning that adds no error.
    pub truncations: usize,
    pub cancelled: bool,
    /// Planning and tokenizing the context windows (this crate).
    pub window_ms: f64,
    /// The model's context pass (K/V of prefix and suffix).
    pub encode_ms: f64,
    pub denoise_ms: f64,
    pub verify_ms: f64,
    pub total_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub kind: SpanKind,
    /// Document bytes the items replace (empty at a cursor).
    pub replace: Range<usize>,
    /// Best first; empty when nothing survived.
    pub items: Vec<Item>,
    pub stats: Stats,
}

#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error(transparent)]
    Plan(#[from] context::PlanError),
    #[error("the document is larger than {MAX_SYNTAX_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Model(#[from] model::ModelError),
}

/// The decoding policy of a span kind for a model of this layout. An autoregressive-first
/// (`spm_block`) model decodes best left to right, where each position is predicted from its
/// committed left neighbour, with the document's n-gram cache, each step running only the
/// span rows it changes or predicts from; a bidirectional one by confidence. The dev eval of
/// each choice is in MODEL.md ("Decoding").
pub fn policy_for(layout: InfillLayout, kind: SpanKind) -> DecodingPolicy {
    match (layout, kind) {
        (InfillLayout::SpmBlock, _) => DecodingPolicy::LEFT_TO_RIGHT_REUSE,
        (InfillLayout::Bidirectional, _) => DecodingPolicy::PARALLEL,
    }
}

/// Runs one request. `cache` holds the context keys/values of the previous request on the
/// same document (server); `None` computes them afresh (CLI, eval).
pub fn complete(
    lm: &DiffusionLm,
    req: &Request,
    cache: Option<&mut ContextCache>,
) -> Result<Answer, CompleteError> {
    let t0 = Instant::now();
    let snap = &req.snapshot;
    if snap.rope.len_bytes() > MAX_SYNTAX_BYTES {
        return Err(CompleteError::TooLarge);
    }
    let count = |s: &str| lm.encode(s).map(|t| t.len()).unwrap_or(s.len() / 3);
    let spans = context::SpanTokens::of(lm.config());
    let mut plan: Plan = context::plan(snap, &req.target, &req.settings, &spans, &count)?;
    if let Some(n) = req.span_len {
        plan.span_len = n.max(1);
    }
    // The model has a trained length (RoPE does not extrapolate far past it): span, context and
    // the layout's sentinel tokens share it.
    let max_positions = lm.config().max_position_embeddings;
    plan.span_len = plan.span_len.min(max_positions / 2).max(1);
    // Healing regenerates the backed-off token: one span position more.
    let heal = req.heal && heals(plan.kind, &snap.rope, plan.replace.start);
    let span_len = plan.span_len + usize::from(heal);
    let sentinels = lm.config().infill_layout.sentinel_tokens();
    let budget = req
        .settings
        .context_tokens
        .min(max_positions.saturating_sub(span_len + sentinels));
    let mut window = context::window(&snap.rope, &plan.replace, budget, &|s| lm.encode(s))?;
    let healing = if heal {
        self::heal(lm, snap, plan.replace.start, &mut window)
    } else {
        None
    };
    if healing.is_some() {
        plan.span_len = span_len;
    }
    let window_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut site = if req.settings.verify {
        Site::new(snap, plan.replace.clone())
            .map(|s| s.bounded(req.cancel.clone(), crate::syntax::REQUEST_VERIFY_BUDGET))
    } else {
        None
    };
    let infill = InfillRequest {
        prefix: window.prefix,
        suffix: window.suffix,
        span_len: plan.span_len,
        healing,
        params: SamplerParams {
            steps: req.settings.steps,
            policy: req
                .policy
                .clone()
                .unwrap_or_else(|| policy_for(lm.config().infill_layout, plan.kind)),
            candidates: req.settings.candidates,
            temperature: req.settings.temperature,
            max_extra_steps: if req.settings.verify {
                MAX_FINAL_RETRIES
            } else {
                0
            },
            min_tokens: plan.min_tokens.min(plan.span_len),
            ..SamplerParams::default()
        },
    };
    let mut verifier = Verifier::new(site.as_mut(), &plan.finish, req.cancel.clone());
    let mut panicking;
    let hook: &mut dyn StepHook = if test_panic_requested(snap) {
        panicking = PanicAfterFirstStep(&mut verifier);
        &mut panicking
    } else {
        &mut verifier
    };
    let out = match cache {
        Some(cache) => lm.infill_with_cache(&infill, hook, cache)?,
        None => lm.infill(&infill, hook)?,
    };
    let hook = verifier;
    let vstats = hook.stats;
    let mut stats = Stats {
        span_len: plan.span_len,
        context_tokens: out.stats.context_tokens,
        steps: out.stats.steps,
        forward_passes: out.stats.forward_passes,
        checks: vstats.checks,
        remasks: vstats.remasked,
        rejections: vstats.rejected,
        truncations: vstats.truncated,
        cancelled: out.stats.cancelled || req.cancel.is_cancelled(),
        window_ms,
        encode_ms: out.stats.encode_ms,
        denoise_ms: out.stats.denoise_ms,
        verify_ms: vstats.verify_ms,
        total_ms: 0.0,
    };
    // Each kept candidate with whether the whole file parses with it: those rank first (a
    // candidate on a non-strict site may leave the document's other errors in place).
    let mut ranked: Vec<(bool, Item)> = Vec::new();
    if !stats.cancelled {
        for c in out.completions {
            tracing::debug!(candidate = c.candidate, raw = ?c.text, logprob = c.mean_logprob, "candidate");
            let Some(text) = plan.finish.apply(&c.text) else {
                continue;
            };
            if ranked.iter().any(|(_, i)| i.text == text) {
                continue;
            }
            // The final word: whatever the sampler did with our verdicts, never return a
            // candidate that adds a syntax error (or, on a strict site, leaves one).
            let mut parses = false;
            if let Some(site) = site.as_mut() {
                stats.checks += 1;
                if !site.new_errors(&text).is_empty() {
                    stats.rejections += 1;
                    continue;
                }
                parses = site.is_strict() || site.parses_cleanly(&text);
            }
            let item = Item {
                text,
                mean_logprob: c.mean_logprob,
            };
            ranked.push((parses, item));
        }
    }
    ranked.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then(b.mean_logprob.total_cmp(&a.mean_logprob)));
    let items: Vec<Item> = ranked.into_iter().map(|(_, i)| i).collect();
    stats.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(
        uri = %snap.uri, version = snap.version, kind = ?plan.kind, span = stats.span_len,
        items = items.len(), checks = stats.checks, remasks = stats.remasks,
        rejections = stats.rejections, cancelled = stats.cancelled, ms = stats.total_ms,
        "completion"
    );
    Ok(Answer {
        kind: plan.kind,
        replace: plan.replace,
        items,
        stats,
    })
}

/// Whether a span of `kind` at `at` is healed: where a line is being finished, or begun at
/// its indentation (a blank line in an empty block). There it ends most empty `expr` answers in
/// the dev eval and the double space after indentation; a new block's first token after `{`
/// (a newline, right 98% of the time without it) only got worse.
fn heals(kind: SpanKind, rope: &ropey::Rope, at: usize) -> bool {
    match kind {
        SpanKind::Line => true,
        SpanKind::Block => {
            let (before, _) = context::line_around(rope, at);
            !before.is_empty() && before.chars().all(|c| c == ' ' || c == '\t')
        }
        SpanKind::Selection | SpanKind::Function => false,
    }
}

/// Token healing: the cursor often stands mid-pretoken (after `= `, `(` or a line's
/// indentation), a token boundary the model has rarely seen. The prefix's last token is taken
/// off and its text returned; the sampler's first token must start with it, and the completion
/// comes back without it. Indentation gives back only its last space (the run one space short
/// stays a single token). Nothing is backed off when the prefix is empty, ends in a special
/// token, or its last token is not whole text ending at the cursor.
pub fn heal(
    lm: &DiffusionLm,
    snap: &Snapshot,
    cursor: usize,
    window: &mut context::Window,
) -> Option<String> {
    let tok = lm.tokenizer();
    let &last = window.prefix.last()?;
    if tok.is_special(last) {
        return None;
    }
    let text = tok.token_texts().get(last as usize)?;
    let at_cursor = cursor
        .checked_sub(text.len())
        .and_then(|from| snap.rope.get_byte_slice(from..cursor))
        .is_some_and(|s| s == text.as_str());
    if text.is_empty() || !at_cursor {
        return None;
    }
    // A run of indentation is healed by its last space only: natural text splits it as
    // `\n   ` + ` let`, so the model never saw the whole run before a word (it answered
    // ` let` after it: a double space). Healing the whole run left it more whitespace or an
    // empty line (33% empty `line` answers in the dev eval). A lone space heals as it is.
    let indentation = text.len() > 1 && text.chars().all(char::is_whitespace);
    if indentation {
        let shorter = text.strip_suffix(' ')?;
        let &[run] = lm.encode(shorter).ok()?.as_slice() else {
            return None;
        };
        *window.prefix.last_mut()? = run;
        return Some(" ".to_owned());
    }
    window.prefix.pop();
    Some(text.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> DiffusionLm {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../model/tests/fixtures")
            .join(name);
        DiffusionLm::load_dir(&dir).unwrap()
    }

    fn complete_at(
        lm: &DiffusionLm,
        text: &str,
        cursor: usize,
        cache: &mut ContextCache,
    ) -> Answer {
        let req = Request {
            snapshot: Snapshot::from_text(
                "file:///main.rs",
                crate::language::by_language_id("rust"),
                text,
            ),
            target: Target::Cursor(cursor),
            settings: Settings::default(),
            span_len: None,
            heal: true,
            policy: None,
            cancel: CancelToken::default(),
        };
        complete(lm, &req, Some(cache)).unwrap()
    }

    /// Completing at the end of a file, typing `f` there and completing again: both suffixes
    /// are empty, so they share no tokens while the span moved, and re-rotating the empty block
    /// of shared suffix keys panicked in candle's rope ("chunk_size must not be zero").
    #[test]
    fn typing_at_the_end_of_the_file_does_not_panic_in_shift_keys() {
        let lm = fixture("qwen2-gqa-untied");
        let mut cache = ContextCache::default();
        let text = "fn main() {\n    let x = 1;\n}\n";
        complete_at(&lm, text, text.len(), &mut cache);
        let typed = format!("{text}f");
        complete_at(&lm, &typed, typed.len(), &mut cache);
        assert_eq!((cache.rebuilt, cache.reused), (1, 1));
    }

    /// Healed: a line being finished, and a blank line's indentation in an empty block; not a
    /// new block after `{`, nor a blank line with no indentation.
    #[test]
    fn heals_lines_and_blocks_begun_at_their_indentation() {
        let at = |text: &str| {
            let cursor = text.find('|').unwrap();
            let text = text.replace('|', "");
            let rope = ropey::Rope::from_str(&text);
            let kind = context::cursor_kind(&rope, cursor);
            (kind, heals(kind, &rope, cursor))
        };
        assert_eq!(at("fn f() {\n    let x = |\n}\n"), (SpanKind::Line, true));
        assert_eq!(at("fn f() {\n    |\n}\n"), (SpanKind::Block, true));
        assert_eq!(at("fn f() {|\n}\n"), (SpanKind::Block, false));
        assert_eq!(at("fn f() {\n|\n}\n"), (SpanKind::Block, false));
    }

    /// At a line's indentation healing gives back the last space only: the prefix ends in the
    /// run one space short (one token, as natural text splits it before a word) and the first
    /// token must start with a space.
    #[test]
    fn indentation_heals_its_last_space() {
        let lm = fixture("trainer-spm");
        let text = "fn main() {\n    \n}\n";
        let cursor = text.find("\n}").unwrap();
        let snap = Snapshot::from_text(
            "file:///main.rs",
            crate::language::by_language_id("rust"),
            text,
        );
        let full = context::window(&snap.rope, &(cursor..cursor), 48, &|s| lm.encode(s)).unwrap();
        assert_eq!(
            lm.decode(&full.prefix[full.prefix.len() - 1..]).unwrap(),
            "\n    "
        );
        let mut window = full.clone();
        assert_eq!(heal(&lm, &snap, cursor, &mut window).as_deref(), Some(" "));
        assert_eq!(window.prefix.len(), full.prefix.len());
        assert_eq!(lm.decode(&window.prefix).unwrap(), text[..cursor - 1]);
        assert_eq!(window.suffix, full.suffix);
    }

    /// Healing backs off exactly the prefix's last token, whose text ends at the cursor, and
    /// nothing when the prefix is empty; the answer still inserts at the cursor, its span one
    /// token longer for the regenerated token.
    #[test]
    fn healing_backs_off_one_token_and_answers_at_the_cursor() {
        let lm = fixture("trainer-spm");
        let text = "fn main() {\n    let x = foo(\n}\n";
        let cursor = text.find("foo(").unwrap() + 4;
        let snap = Snapshot::from_text(
            "file:///main.rs",
            crate::language::by_language_id("rust"),
            text,
        );
        let full = context::window(&snap.rope, &(cursor..cursor), 48, &|s| lm.encode(s)).unwrap();
        let mut window = full.clone();
        let healed = heal(&lm, &snap, cursor, &mut window).unwrap();
        assert_eq!(window.prefix, full.prefix[..full.prefix.len() - 1]);
        assert_eq!(window.suffix, full.suffix);
        assert_eq!(
            lm.decode(&full.prefix[full.prefix.len() - 1..]).unwrap(),
            healed
        );
        assert!(text[..cursor].ends_with(&healed));
        let mut empty = context::Window::default();
        assert_eq!(heal(&lm, &snap, 0, &mut empty), None);

        let answer = |heal: bool| {
            let req = Request {
                snapshot: snap.clone(),
                target: Target::Cursor(cursor),
                settings: Settings {
                    verify: false,
                    ..Settings::default()
                },
                span_len: None,
                heal,
                policy: None,
                cancel: CancelToken::default(),
            };
            complete(&lm, &req, None).unwrap()
        };
        let (on, off) = (answer(true), answer(false));
        assert_eq!(on.replace, cursor..cursor);
        assert_eq!(on.replace, off.replace);
        assert_eq!(on.stats.span_len, off.stats.span_len + 1);
    }

    /// Without an override a request decodes with its span kind's policy, and the answer is
    /// the one that policy gives when named; every named policy runs and returns only
    /// candidates that add no syntax error.
    #[test]
    fn a_request_decodes_with_its_kinds_policy_unless_one_is_named() {
        let lm = fixture("trainer-spm");
        let text = "fn main() {\n    let x = compute(1, 2);\n    let y = \n}\n";
        let cursor = text.find("let y = ").unwrap() + 8;
        let snap = Snapshot::from_text(
            "file:///main.rs",
            crate::language::by_language_id("rust"),
            text,
        );
        let answer = |policy: Option<DecodingPolicy>| {
            let req = Request {
                snapshot: snap.clone(),
                target: Target::Cursor(cursor),
                settings: Settings::default(),
                span_len: None,
                heal: true,
                policy,
                cancel: CancelToken::default(),
            };
            complete(&lm, &req, None).unwrap()
        };
        let default = answer(None);
        assert_eq!(default.kind, SpanKind::Line);
        let chosen = policy_for(lm.config().infill_layout, default.kind);
        assert_eq!(chosen, DecodingPolicy::LEFT_TO_RIGHT_REUSE);
        let named = answer(Some(chosen));
        let texts = |a: &Answer| a.items.iter().map(|i| i.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&default), texts(&named));
        for policy in DecodingPolicy::ALL {
            let a = answer(Some(policy.clone()));
            let mut site = Site::new(&snap, a.replace.clone()).unwrap();
            for item in &a.items {
                assert!(
                    site.new_errors(&item.text).is_empty(),
                    "{}: {:?}",
                    policy.name,
                    item.text
                );
            }
        }
    }

    /// An `spm_block` model's context holds two sentinels besides prefix and suffix; the
    /// windows leave room for them within the model's positions.
    #[test]
    fn spm_block_windows_leave_room_for_the_sentinels() {
        let lm = fixture("trainer-spm");
        let max = lm.config().max_position_embeddings;
        let line = "    let value = compute(value, 42);\n";
        let mut cache = ContextCache::default();
        for lines in 1..12 {
            let half = line.repeat(lines);
            let text = format!("fn main() {{\n{half}\n{half}}}\n");
            let answer = complete_at(&lm, &text, text.len() / 2, &mut cache);
            assert!(answer.stats.context_tokens + answer.stats.span_len <= max);
        }
    }
}
