//! Behaviour of the infilling sampler on a tiny random-weight checkpoint: the hook between steps,
//! cancellation, rejection, remasking, batching and reproducibility.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use model::{
    DecodingPolicy, DiffusionLm, EndRule, InfillRequest, NoHook, Pace, SamplerParams, StepHook,
    StepView, Verdict,
};

fn lm() -> DiffusionLm {
    DiffusionLm::load_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-gqa-untied"),
    )
    .unwrap()
}

fn request(lm: &DiffusionLm, span_len: usize, params: SamplerParams) -> InfillRequest {
    InfillRequest {
        prefix: lm.encode("fn add(a: u32, b: u32) -> u32 {\n    ").unwrap(),
        suffix: lm.encode("\n}\n").unwrap(),
        span_len,
        params,
        healing: None,
    }
}

#[derive(Default)]
struct Recorder {
    views: Vec<(usize, usize, usize, bool, String)>,
    cancel_after: Option<usize>,
    reject: Option<usize>,
    remask_once: bool,
}

impl StepHook for Recorder {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        let masked = v.tokens.iter().filter(|t| t.is_none()).count();
        assert_eq!(v.tokens.len(), v.token_ranges.len());
        for (t, r) in v.tokens.iter().zip(v.token_ranges) {
            assert!(r.end <= v.text.len());
            if t.is_none() {
                assert!(r.is_empty());
            }
        }
        self.views
            .push((v.step, v.candidate, masked, v.is_final, v.text.to_string()));
        if Some(v.candidate) == self.reject {
            return Verdict::Reject;
        }
        if self.remask_once && v.is_final {
            self.remask_once = false;
            return Verdict::Remask(vec![0, 1]);
        }
        Verdict::Keep
    }
    fn cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.views.len() >= n)
    }
}

#[test]
fn steps_commit_on_schedule_and_hook_sees_each_step() {
    let lm = lm();
    let mut rec = Recorder::default();
    let out = lm
        .infill(
            &request(
                &lm,
                16,
                SamplerParams {
                    steps: 4,
                    ..Default::default()
                },
            ),
            &mut rec,
        )
        .unwrap();
    // Masks only ever decrease, by at least the schedule's share, and the last view is final.
    let masks: Vec<usize> = rec.views.iter().map(|v| v.2).collect();
    assert!(masks.len() <= 4 && !masks.is_empty(), "{masks:?}");
    assert!(masks.windows(2).all(|w| w[1] < w[0]), "{masks:?}");
    assert!(rec.views.last().unwrap().3);
    assert_eq!(masks[0], 12, "16 masks over 4 steps commit 4 first");
    assert_eq!(out.completions.len(), 1);
    assert_eq!(
        out.stats.full_passes, 1,
        "context computed once (cache_refresh 0)"
    );
    assert_eq!(out.completions[0].text, rec.views.last().unwrap().4);
}

#[test]
fn exact_refresh_runs_a_full_pass_every_step() {
    let lm = lm();
    let out = lm
        .infill(
            &request(
                &lm,
                8,
                SamplerParams {
                    steps: 8,
                    cache_refresh: 1,
                    ..Default::default()
                },
            ),
            &mut NoHook,
        )
        .unwrap();
    assert_eq!(out.stats.full_passes, out.stats.forward_passes);
}

#[test]
fn cancellation_stops_within_one_step() {
    let lm = lm();
    let mut rec = Recorder {
        cancel_after: Some(2),
        ..Default::default()
    };
    let out = lm
        .infill(
            &request(
                &lm,
                16,
                SamplerParams {
                    steps: 8,
                    ..Default::default()
                },
            ),
            &mut rec,
        )
        .unwrap();
    assert!(out.stats.cancelled);
    assert!(out.completions.is_empty());
    assert_eq!(out.stats.forward_passes, 2);
}

#[test]
fn rejected_candidates_are_dropped_and_batch_is_reproducible() {
    let lm = lm();
    let params = SamplerParams {
        steps: 4,
        candidates: 3,
        temperature: 0.9,
        seed: 42,
        ..Default::default()
    };
    let mut rec = Recorder {
        reject: Some(1),
        ..Default::default()
    };
    let out = lm
        .infill(&request(&lm, 12, params.clone()), &mut rec)
        .unwrap();
    assert!(out.completions.iter().all(|c| c.candidate != 1));
    assert_eq!(out.stats.rejected, 1);
    let again = lm
        .infill(
            &request(&lm, 12, params),
            &mut Recorder {
                reject: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let texts = |o: &model::InfillOutput| {
        o.completions
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&out), texts(&again));
    // Ranked by mean log-probability.
    assert!(out
        .completions
        .windows(2)
        .all(|w| w[0].mean_logprob >= w[1].mean_logprob));
}

#[test]
fn remask_at_the_end_takes_extra_steps() {
    let lm = lm();
    let mut rec = Recorder {
        remask_once: true,
        ..Default::default()
    };
    let out = lm
        .infill(
            &request(
                &lm,
                8,
                SamplerParams {
                    steps: 2,
                    ..Default::default()
                },
            ),
            &mut rec,
        )
        .unwrap();
    assert!(out.stats.steps > 2, "{:?}", out.stats);
    assert_eq!(out.stats.remasked, 2);
    assert_eq!(out.completions.len(), 1);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let lm = lm();
    assert!(lm
        .infill(&request(&lm, 0, SamplerParams::default()), &mut NoHook)
        .is_err());
    let mut req = request(&lm, 4, SamplerParams::default());
    req.prefix.push(1_000_000);
    assert!(lm.infill(&req, &mut NoHook).is_err());
    let mut req = request(&lm, 4, SamplerParams::default());
    req.prefix = vec![5; 300];
    assert!(
        lm.infill(&req, &mut NoHook).is_err(),
        "past max_position_embeddings"
    );
}

#[test]
fn context_cache_reuses_keys_across_requests() {
    let lm = lm();
    let params = SamplerParams {
        steps: 4,
        ..Default::default()
    };
    let mut cache = model::ContextCache::default();
    let req = request(&lm, 8, params.clone());
    let fresh = lm.infill(&req, &mut NoHook).unwrap();
    let first = lm.infill_with_cache(&req, &mut NoHook, &mut cache).unwrap();
    assert!(!first.stats.context_reused);
    // The same request again: the cached context is exactly the one a full pass computes.
    let again = lm.infill_with_cache(&req, &mut NoHook, &mut cache).unwrap();
    assert!(again.stats.context_reused);
    assert_eq!(again.stats.full_passes, 0);
    assert_eq!(fresh.completions[0].text, again.completions[0].text);
    // A small edit at the cursor reuses; a different file rebuilds.
    let mut typed = request(&lm, 8, params.clone());
    typed.prefix.extend(lm.encode("let").unwrap());
    typed.suffix.insert(0, typed.suffix[0]);
    let edited = lm
        .infill_with_cache(&typed, &mut NoHook, &mut cache)
        .unwrap();
    assert!(edited.stats.context_reused);
    assert_eq!(edited.completions.len(), 1);
    let other = InfillRequest {
        prefix: lm.encode("struct S;\n").unwrap(),
        suffix: vec![],
        span_len: 4,
        params,
        healing: None,
    };
    let rebuilt = lm
        .infill_with_cache(&other, &mut NoHook, &mut cache)
        .unwrap();
    assert!(!rebuilt.stats.context_reused);
    assert_eq!((cache.reused, cache.rebuilt), (2, 2));
}

/// The fixture with the end token's output row scaled up, so that end is the confident guess
/// at many span positions: the situation in which a weak model's completions collapse.
fn end_heavy_lm() -> DiffusionLm {
    lm_favouring(lm().tokenizer().special.end)
}

/// The fixture with `token`'s output row scaled up 40x: its confident guess at many positions.
fn lm_favouring(token: u32) -> DiffusionLm {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-gqa-untied");
    let dir = std::env::temp_dir().join(format!(
        "diffusion-favouring-{token}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let dev = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let head = &tensors["lm_head.weight"];
    let (vocab, _) = head.dims2().unwrap();
    let scale: Vec<f32> = (0..vocab)
        .map(|i| if i == token as usize { 40.0 } else { 1.0 })
        .collect();
    let scale = candle_core::Tensor::from_vec(scale, (vocab, 1), &dev).unwrap();
    let scaled = head
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .broadcast_mul(&scale)
        .unwrap()
        .to_dtype(head.dtype())
        .unwrap();
    tensors.insert("lm_head.weight".into(), scaled);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let lm = DiffusionLm::load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    lm
}

/// Counts views in which an end token is committed while a position before it is still masked
/// (the last step, which commits everything, aside).
struct PrematureEnds(usize);

impl StepHook for PrematureEnds {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        if let Some(e) = v.end {
            if v.step + 1 < v.steps && v.tokens[..e].iter().any(Option::is_none) {
                self.0 += 1;
            }
        }
        Verdict::Keep
    }
}

#[test]
fn end_tokens_are_committed_only_after_everything_left_of_them() {
    let lm = end_heavy_lm();
    let premature_ends = |policy: DecodingPolicy| {
        let params = SamplerParams {
            steps: 8,
            policy,
            ..Default::default()
        };
        let mut hook = PrematureEnds(0);
        lm.infill(&request(&lm, 24, params), &mut hook).unwrap();
        hook.0
    };
    assert!(
        premature_ends(DecodingPolicy::FREE_ENDS) > 0,
        "the scaled head should make ends confident out of order"
    );
    assert_eq!(premature_ends(DecodingPolicy::PARALLEL), 0);
}

/// Whether, in every view before the last step, the committed positions form a prefix.
struct CommittedPrefix(bool);

impl StepHook for CommittedPrefix {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        if v.step + 1 < v.steps {
            let first_masked = v.tokens.iter().position(Option::is_none);
            if let Some(f) = first_masked {
                self.0 &= v.tokens[f..].iter().all(Option::is_none);
            }
        }
        Verdict::Keep
    }
}

#[test]
fn the_left_to_right_policy_commits_a_prefix() {
    let lm = lm();
    let run = |policy| {
        let params = SamplerParams {
            steps: 8,
            policy,
            ..Default::default()
        };
        let mut hook = CommittedPrefix(true);
        lm.infill(&request(&lm, 16, params), &mut hook).unwrap();
        hook.0
    };
    assert!(
        !run(DecodingPolicy::PARALLEL),
        "confidence order commits out of order"
    );
    assert!(run(DecodingPolicy::LEFT_TO_RIGHT));
    assert!(run(DecodingPolicy::LEFT_TO_RIGHT_THRESHOLD));
}

/// The trainer's `spm_block` fixture: the causal context, the span pass over its K/V and the
/// first span position read from the context's last position, end to end; a cached request
/// after an edit continues the cached context and decodes exactly what a fresh one does.
#[test]
fn spm_block_infill_runs_and_a_cached_request_equals_a_fresh_one() {
    let lm = DiffusionLm::load_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer-spm"),
    )
    .unwrap();
    let params = SamplerParams {
        steps: 4,
        candidates: 2,
        ..Default::default()
    };
    let req = request(&lm, 12, params.clone());
    let out = lm.infill(&req, &mut NoHook).unwrap();
    assert!(!out.completions.is_empty());
    assert!(!out.completions[0].text.is_empty());
    assert_eq!(out.stats.full_passes, 1, "one causal context pass");
    assert_eq!(
        out.stats.context_tokens,
        req.prefix.len() + req.suffix.len() + 2
    );

    let mut cache = model::ContextCache::default();
    lm.infill_with_cache(&req, &mut NoHook, &mut cache).unwrap();
    for edit in ["prefix", "suffix"] {
        let mut edited = request(&lm, 12, params.clone());
        match edit {
            "prefix" => edited.prefix.extend(lm.encode("let").unwrap()),
            _ => edited.suffix.insert(1, edited.suffix[0]),
        }
        let cached = lm
            .infill_with_cache(&edited, &mut NoHook, &mut cache)
            .unwrap();
        assert!(cached.stats.context_reused, "{edit}");
        assert_eq!(cached.stats.full_passes, 0, "{edit}");
        let fresh = lm.infill(&edited, &mut NoHook).unwrap();
        let tokens = |o: &model::InfillOutput| {
            o.completions
                .iter()
                .map(|c| c.tokens.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(tokens(&cached), tokens(&fresh), "{edit}");
    }
    assert_eq!((cache.reused, cache.rebuilt), (2, 1));
}

/// Records each view's position-0 token and text.
#[derive(Default)]
struct FirstToken {
    views: Vec<(Option<u32>, String, Vec<std::ops::Range<usize>>)>,
}

impl StepHook for FirstToken {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        for r in v.token_ranges {
            assert!(r.start <= r.end && r.end <= v.text.len());
        }
        self.views
            .push((v.tokens[0], v.text.to_string(), v.token_ranges.to_vec()));
        Verdict::Keep
    }
}

/// Token healing on both layouts: the prefix's last token is backed off, the first committed
/// token starts with its text, and the completion and the hook's text come without it; with no
/// healing text (or an empty one) nothing changes.
#[test]
fn healing_constrains_the_first_token_and_strips_its_text() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in ["trainer-spm", "qwen2-gqa-untied"] {
        let lm = DiffusionLm::load_dir(&dir.join(name)).unwrap();
        let tok = lm.tokenizer();
        let mut prefix = lm.encode("fn main() {\n    let x = foo(").unwrap();
        let last = prefix.pop().unwrap();
        let healed = tok.token_texts()[last as usize].clone();
        assert!(!healed.is_empty(), "{name}");
        let params = SamplerParams {
            steps: 4,
            candidates: 2,
            ..Default::default()
        };
        let req = |healing: Option<String>| InfillRequest {
            prefix: prefix.clone(),
            suffix: lm.encode(");\n}\n").unwrap(),
            span_len: 8,
            params: params.clone(),
            healing,
        };
        let mut hook = FirstToken::default();
        let out = lm.infill(&req(Some(healed.clone())), &mut hook).unwrap();
        assert!(!out.completions.is_empty(), "{name}");
        for c in &out.completions {
            let first = &tok.token_texts()[c.tokens[0] as usize];
            assert!(first.starts_with(&healed), "{name}: {first:?}");
            assert!(!tok.is_special(c.tokens[0]));
            assert_eq!(lm.decode(&c.tokens).unwrap(), format!("{healed}{}", c.text));
        }
        let committed: Vec<_> = hook.views.iter().filter(|v| v.0.is_some()).collect();
        assert!(!committed.is_empty());
        for (t, text, ranges) in committed {
            let first = &tok.token_texts()[t.unwrap() as usize];
            assert!(first.starts_with(&healed));
            assert_eq!(
                ranges[0].len(),
                first.len() - healed.len(),
                "{name}: {text:?}"
            );
        }
        // No healing: unconstrained, and an empty healing text is the same request.
        let plain = lm.infill(&req(None), &mut NoHook).unwrap();
        let empty = lm.infill(&req(Some(String::new())), &mut NoHook).unwrap();
        let texts = |o: &model::InfillOutput| -> Vec<(String, Vec<u32>)> {
            o.completions
                .iter()
                .map(|c| (c.text.clone(), c.tokens.clone()))
                .collect()
        };
        assert_eq!(texts(&plain), texts(&empty), "{name}");
        assert!(!plain.completions.is_empty());
    }
}

/// Whether any view showed a committed token after the first end token (whose text the
/// completion would drop).
struct TokenAfterEnd(bool);

impl StepHook for TokenAfterEnd {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        if let Some(e) = v.end {
            let end = v.tokens[e];
            self.0 |= v.tokens[e + 1..].iter().any(|t| t.is_some() && *t != end);
        }
        Verdict::Keep
    }
}

/// The end rule holds at the last step too, which commits every masked position at once: an
/// end proposed before a committed token is taken out of that position's choices. (Before the
/// policies, the last step committed such ends and cut long completions short: a function
/// rewrite came back truncated, failed the syntax check and was dropped.)
#[test]
fn no_end_is_committed_before_a_committed_token() {
    let lm = lm();
    let after_end = |policy: DecodingPolicy| {
        let params = SamplerParams {
            steps: 4,
            policy,
            ..Default::default()
        };
        let mut hook = TokenAfterEnd(false);
        lm.infill(&request(&lm, 24, params), &mut hook).unwrap();
        hook.0
    };
    assert!(
        after_end(DecodingPolicy::FREE_ENDS),
        "free ends should leave committed tokens after an end with this head"
    );
    for policy in DecodingPolicy::ALL
        .into_iter()
        .filter(|p| p.ends == EndRule::InOrder)
    {
        assert!(!after_end(policy.clone()), "{}", policy.name);
    }
}

/// Remasks the first position of the first final candidate once and records the tokens it held
/// before and after.
#[derive(Default)]
struct RemaskFirst {
    first: Vec<Option<u32>>,
}

impl StepHook for RemaskFirst {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        if !v.is_final {
            return Verdict::Keep;
        }
        self.first.push(v.tokens[0]);
        if self.first.len() == 1 {
            Verdict::Remask(vec![0])
        } else {
            Verdict::Keep
        }
    }
}

/// Greedy decoding in the same context would propose a remasked token again: the sampler takes
/// it out of that position's choices.
#[test]
fn a_remasked_token_is_not_proposed_again_at_its_position() {
    let lm = lm();
    for policy in [DecodingPolicy::PARALLEL, DecodingPolicy::LEFT_TO_RIGHT] {
        let params = SamplerParams {
            steps: 4,
            policy: policy.clone(),
            ..Default::default()
        };
        let mut hook = RemaskFirst::default();
        lm.infill(&request(&lm, 6, params), &mut hook).unwrap();
        assert_eq!(hook.first.len(), 2, "{}", policy.name);
        assert!(hook.first[0].is_some() && hook.first[1].is_some());
        assert_ne!(hook.first[0], hook.first[1], "{}", policy.name);
    }
}

/// A left-to-right step predicts only the masked positions it may commit, in both layouts: it
/// decodes what a step that predicts every position decodes, and its lookahead bounds how
/// many positions one step commits.
#[test]
fn a_lookahead_predicts_only_what_a_step_may_commit() {
    let spm = DiffusionLm::load_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer-spm"),
    )
    .unwrap();
    for lm in [lm(), spm] {
        let decode = |policy: DecodingPolicy| {
            // No end inside the span: each step's commits are what leaves the masked count.
            let params = SamplerParams {
                steps: 12,
                candidates: 2,
                min_tokens: 12,
                policy,
                ..Default::default()
            };
            let mut rec = Recorder::default();
            let out = lm.infill(&request(&lm, 12, params), &mut rec).unwrap();
            let completions: Vec<(String, f32)> = out
                .completions
                .iter()
                .map(|c| (c.text.clone(), c.mean_logprob))
                .collect();
            let masked_after_first = rec.views.iter().filter(|v| v.0 == 0).map(|v| v.2).max();
            (completions, masked_after_first.unwrap())
        };
        let ltr = DecodingPolicy::LEFT_TO_RIGHT_CACHE;
        assert_eq!(ltr.lookahead, Some(8));
        let (every, _) = decode(DecodingPolicy {
            lookahead: None,
            ..ltr.clone()
        });
        let (leading, _) = decode(DecodingPolicy {
            lookahead: Some(12),
            ..ltr.clone()
        });
        assert_eq!(every.len(), leading.len());
        for ((a, la), (b, lb)) in every.iter().zip(&leading) {
            assert_eq!(a, b);
            assert!((la - lb).abs() < 1e-4, "{la} vs {lb}");
        }
        // Every position confident: unbounded, the first step commits the whole span.
        let sure = DecodingPolicy {
            threshold: Some(0.0),
            ..ltr
        };
        let unbounded = DecodingPolicy {
            lookahead: None,
            ..sure.clone()
        };
        assert_eq!(decode(unbounded).1, 0);
        let bounded = DecodingPolicy {
            lookahead: Some(3),
            ..sure
        };
        assert_eq!(decode(bounded).1, 9);
    }
}

/// Reusing the span's keys/values, a left-to-right step runs only the rows it changed and
/// the rows its lookahead predicts from: the same number of steps decodes a whole span over
/// fewer rows, and the first step (nothing reused yet) predicts what the exact policy does.
#[test]
fn reusing_span_rows_runs_fewer_rows_over_the_same_steps() {
    let spm = DiffusionLm::load_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer-spm"),
    )
    .unwrap();
    let n = 24;
    let decode = |policy: DecodingPolicy| {
        let params = SamplerParams {
            steps: n,
            min_tokens: n,
            policy,
            ..Default::default()
        };
        let mut rec = Recorder::default();
        let out = spm.infill(&request(&spm, n, params), &mut rec).unwrap();
        (out, rec.views)
    };
    let (exact, exact_views) = decode(DecodingPolicy::LEFT_TO_RIGHT_CACHE);
    let (reused, reused_views) = decode(DecodingPolicy::LEFT_TO_RIGHT_REUSE);
    assert_eq!(reused.completions.len(), 1);
    assert_eq!(reused.completions[0].tokens.len(), n);
    assert_eq!(exact_views[0], reused_views[0]);
    assert_eq!(exact.stats.steps, reused.stats.steps);
    // Every step but the first and the last runs at most the lookahead and the new commits.
    let steps = exact.stats.steps;
    assert_eq!(exact.stats.span_rows_run, steps * n);
    assert!(
        reused.stats.span_rows_run < exact.stats.span_rows_run / 2,
        "{} rows against {}",
        reused.stats.span_rows_run,
        exact.stats.span_rows_run
    );
}

#[test]
fn special_tokens_other_than_the_end_are_never_proposed() {
    let mask = lm().tokenizer().special.mask;
    let lm = lm_favouring(mask);
    assert_eq!(lm.tokenizer().never_in_span(), vec![mask]);
    let params = SamplerParams {
        steps: 4,
        candidates: 3,
        ..Default::default()
    };
    let out = lm.infill(&request(&lm, 12, params), &mut NoHook).unwrap();
    assert!(!out.completions.is_empty());
    for c in &out.completions {
        assert!(!c.tokens.contains(&mask), "{:?}", c.text);
    }
}

/// Remasks position 1 once, at the step where positions 0..4 are committed, and records how
/// many positions each later view has committed.
struct RemaskSecond {
    done: bool,
    committed_after: Vec<usize>,
}

impl StepHook for RemaskSecond {
    fn after_step(&mut self, v: &StepView<'_>) -> Verdict {
        let committed = v.tokens.iter().filter(|t| t.is_some()).count();
        if self.done {
            self.committed_after.push(committed);
            return Verdict::Keep;
        }
        if committed == 4 {
            self.done = true;
            return Verdict::Remask(vec![1]);
        }
        Verdict::Keep
    }
}

#[test]
fn a_backtracking_policy_reopens_what_follows_a_remask() {
    let lm = lm();
    let run = |policy: DecodingPolicy| {
        let params = SamplerParams {
            steps: 12,
            policy,
            ..Default::default()
        };
        let mut hook = RemaskSecond {
            done: false,
            committed_after: vec![],
        };
        lm.infill(&request(&lm, 12, params), &mut hook).unwrap();
        hook.committed_after
    };
    let one_a_step = DecodingPolicy {
        pace: Pace::AsSure,
        threshold: None,
        ..DecodingPolicy::LEFT_TO_RIGHT
    };
    // The step after the remask re-predicts position 1: positions 0, 1, 2, 3 are committed
    // again; backtracking reopened 2 and 3 too, so only 0 and 1 are.
    assert_eq!(run(one_a_step.clone())[0], 4);
    let backtracking = DecodingPolicy {
        reopen_after_remask: true,
        ..one_a_step
    };
    assert_eq!(run(backtracking)[0], 2);
}
