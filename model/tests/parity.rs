//! Parity with the reference implementations (transformers' Qwen2 under a bidirectional mask,
//! and the PyTorch trainer's own model in train/) on tiny random-weight checkpoints, and
//! consistency of the cached infilling paths with full passes.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use model::internals::{
    parameter_shapes, ActiveWindow, CausalCache, SpmBlock, TensorStore, Transformer,
};
use model::{ContextCache, DiffusionLm, ModelError, Precision};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// Compares rows of full-vocabulary logits with the reference's: every column, or (trainer
/// fixtures, which store `cols` columns) the first `cols` and the logsumexp over all of them.
fn assert_rows_match(name: &str, got: &[Vec<Vec<f32>>], reference: &serde_json::Value) {
    let expected: Vec<Vec<Vec<f32>>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let cols = reference["cols"].as_u64().map(|c| c as usize);
    let lse: Option<Vec<Vec<f32>>> = serde_json::from_value(reference["logsumexp"].clone()).ok();
    assert_eq!(got.len(), expected.len(), "{name}: batch");
    let (mut max_diff, mut max_lse_diff) = (0f32, 0f32);
    for (b, (gb, eb)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(gb.len(), eb.len(), "{name}: rows");
        for (i, (gr, er)) in gb.iter().zip(eb).enumerate() {
            assert_eq!(cols.unwrap_or(gr.len()), er.len(), "{name}: columns");
            for (g, e) in gr.iter().zip(er) {
                max_diff = max_diff.max((g - e).abs());
            }
            if let Some(lse) = &lse {
                let max = gr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = gr.iter().map(|&x| ((x - max) as f64).exp()).sum();
                let got_lse = max + sum.ln() as f32;
                max_lse_diff = max_lse_diff.max((got_lse - lse[b][i]).abs());
            }
        }
    }
    assert!(max_diff <= 1e-4, "{name}: max |Δlogits| = {max_diff}");
    assert!(
        max_lse_diff <= 1e-4,
        "{name}: max |Δlogsumexp| = {max_lse_diff}"
    );
}

fn check_parity(name: &str) {
    let dir = fixture(name);
    let lm =
        DiffusionLm::load_dir_with(&dir, Precision::F32).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference = reference(&dir);
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    let (b, l) = (ids.len(), ids[0].len());
    let flat: Vec<u32> = ids.concat();
    let ids = Tensor::from_vec(flat, (b, l), &Device::Cpu).unwrap();
    let got: Vec<Vec<Vec<f32>>> = lm
        .transformer()
        .forward_logits(&ids, None)
        .unwrap()
        .to_vec3()
        .unwrap();
    assert_rows_match(name, &got, &reference);
}

#[test]
fn parity_qwen2_gqa_untied() {
    check_parity("qwen2-gqa-untied");
}

#[test]
fn parity_qwen2_tied_bf16_sharded() {
    check_parity("qwen2-tied");
}

#[test]
fn parity_dream_shifted_f16() {
    check_parity("dream-shifted");
}

#[test]
fn parity_trainer_inplace() {
    check_parity("trainer-inplace");
}

#[test]
fn parity_trainer_shifted_f16() {
    check_parity("trainer-shifted");
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn one_row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// The spm_block fixture: rows 0..c from the causal context pass, rows c.. from the span pass
/// over the context K/V as the sampler runs it (row c from the context's last position).
#[test]
fn parity_trainer_spm_block_f16_sharded() {
    let dir = fixture("trainer-spm");
    let lm = DiffusionLm::load_dir_with(&dir, Precision::F32).unwrap();
    let m = lm.transformer();
    let reference = reference(&dir);
    assert_eq!(reference["layout"], "spm_block");
    assert_eq!(m.config().infill_layout, model::InfillLayout::SpmBlock);
    let c = reference["context_len"].as_u64().unwrap() as usize;
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    let got: Vec<Vec<Vec<f32>>> = ids
        .iter()
        .map(|row| {
            let (context, span) = row.split_at(c);
            let h = m
                .forward_causal(&one_row(context), &mut CausalCache::default())
                .unwrap();
            let raw: Vec<Vec<f32>> = m.logits(&h).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
            // Shifted: row i comes from position i-1; row 0 repeats raw row 0.
            let mut rows = vec![raw[0].clone()];
            rows.extend_from_slice(&raw[..c - 1]);
            let spm = SpmBlock::new(m, context.to_vec(), None).unwrap();
            let span_rows = |rows: std::ops::Range<usize>| -> Vec<Vec<f32>> {
                spm.span_logits(m, &one_row(span), rows)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec2()
                    .unwrap()
            };
            let all = span_rows(0..span.len());
            // A step that predicts only some positions gets exactly their rows.
            for part in [0..1, 1..span.len(), 1..2, span.len() - 1..span.len()] {
                let got = span_rows(part.clone());
                assert_eq!(got.len(), part.len());
                for (g, w) in got.iter().zip(&all[part]) {
                    let d = max_abs_diff(g, w);
                    assert!(d <= 1e-5, "max |Δlogits| = {d}");
                }
            }
            rows.extend(all);
            rows
        })
        .collect();
    assert_rows_match("trainer-spm", &got, &reference);
}

/// The `spm_block` context tokens of a request with this prefix and suffix.
fn spm_context(lm: &DiffusionLm, prefix: &str, suffix: &str) -> Vec<u32> {
    SpmBlock::context_tokens(
        lm.tokenizer().special.fim.unwrap(),
        &lm.encode(prefix).unwrap(),
        &lm.encode(suffix).unwrap(),
    )
}

/// Candidates share the `spm_block` context: a batch of spans gives each span's logits alone.
#[test]
fn spm_block_candidates_in_one_batch_equal_each_alone() {
    let lm = DiffusionLm::load_dir_with(&fixture("trainer-spm"), Precision::F32).unwrap();
    let m = lm.transformer();
    let mask = lm.tokenizer().special.mask;
    let context = spm_context(
        &lm,
        "fn add(a: u32, b: u32) -> u32 {\n    let sum = ",
        ";\n    sum\n}\n",
    );
    let spm = SpmBlock::new(m, context, None).unwrap();
    let spans = [
        [mask, mask, 267, mask, mask, 0],
        [301, mask, mask, mask, 12, mask],
        [mask, 99, 267, 5, mask, mask],
    ];
    let logits = |ids: &[[u32; 6]]| -> Vec<f32> {
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (ids.len(), 6), &Device::Cpu).unwrap();
        let out = spm.span_logits(m, &t, 0..6).unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    };
    let batch = logits(&spans);
    let alone: Vec<f32> = spans.iter().flat_map(|s| logits(&[*s])).collect();
    assert_eq!(batch.len(), alone.len());
    let d = max_abs_diff(&batch, &alone);
    assert!(d <= 1e-4, "max |Δlogits| = {d}");
}

/// Causal K/V of the leading tokens two contexts share are exact, so continuing the cached ones
/// gives what a fresh pass gives, whichever part of the context changed.
#[test]
fn spm_block_context_cache_equals_a_fresh_pass_after_edits() {
    let lm = DiffusionLm::load_dir_with(&fixture("trainer-spm"), Precision::F32).unwrap();
    let m = lm.transformer();
    let mask = lm.tokenizer().special.mask;
    let context = |prefix: &str, suffix: &str| spm_context(&lm, prefix, suffix);
    let prefix = "fn add(a: u32, b: u32) -> u32 {\n    let sum = a + b;\n    ";
    let suffix = "\n    sum\n}\n";
    let span_ids = [mask, mask, 267, mask, mask, 0];
    let span = Tensor::new(&[span_ids, span_ids], &Device::Cpu).unwrap();
    let mut cache = ContextCache::default();
    let first = context(prefix, suffix);
    SpmBlock::new(m, first.clone(), Some(&mut cache))
        .unwrap()
        .keep(&mut cache);
    let edits = [
        ("same request", first.clone()),
        (
            "edit in the prefix",
            context(
                "fn add(a: u32, b: u32) -> u32 {\n    let total = a + b;\n    ",
                suffix,
            ),
        ),
        ("edit in the suffix", context(prefix, "\n    sum + 1\n}\n")),
        ("last token deleted", first[..first.len() - 1].to_vec()),
    ];
    for (what, tokens) in edits {
        let cached = SpmBlock::new(m, tokens.clone(), Some(&mut cache)).unwrap();
        assert!(cached.reused_tokens() > 0, "{what}: nothing reused");
        assert!(cached.reused_tokens() < tokens.len(), "{what}");
        let fresh = SpmBlock::new(m, tokens, None).unwrap();
        let logits = |layout: &SpmBlock| -> Vec<f32> {
            let t = layout.span_logits(m, &span, 0..span_ids.len()).unwrap();
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (got, want) = (logits(&cached), logits(&fresh));
        let max_diff = max_abs_diff(&got, &want);
        assert!(max_diff <= 1e-4, "{what}: max |Δlogits| = {max_diff}");
        cached.keep(&mut cache);
    }
    assert_eq!((cache.reused, cache.rebuilt), (4, 1));
}

#[test]
fn spm_block_without_sentinel_tokens_is_a_typed_error() {
    let src = fixture("trainer-spm");
    let tmp = std::env::temp_dir().join(format!("dlm-no-fim-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("fim_prefix_token_id");
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    // A tokenizer without `<|fim_prefix|>` to fall back on.
    std::fs::copy(
        fixture("qwen2-gqa-untied").join("tokenizer.json"),
        tmp.join("tokenizer.json"),
    )
    .unwrap();
    let err = DiffusionLm::load_dir(&tmp).err().unwrap();
    std::fs::remove_dir_all(&tmp).ok();
    assert!(
        matches!(err, ModelError::Tokenizer { .. }) && err.to_string().contains("fim_prefix"),
        "{err}"
    );
}

/// The span-only pass over cached context K/V equals a full pass when the context was computed
/// with the same span contents (so a refresh every step is exact).
#[test]
fn cached_span_pass_matches_full_pass() {
    for name in ["qwen2-gqa-untied", "dream-shifted", "qwen2-tied"] {
        let lm = DiffusionLm::load_dir_with(&fixture(name), Precision::F32).unwrap();
        let m = lm.transformer();
        let seq: Vec<u32> = (0..30).map(|i| (i * 37 % 400) as u32).collect();
        let window = ActiveWindow { start: 11, len: 9 };
        let positions: Vec<u32> = (0..30).collect();
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (full, ctx) = m
            .forward_full(&ids, &positions, None, Some(window))
            .unwrap();
        let ctx = ctx.unwrap();
        assert_eq!(ctx.len(), 21);
        let act_ids = Tensor::new(&seq[11..20], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        // Two candidates sharing one context (batch broadcast).
        let act_ids = Tensor::cat(&[&act_ids, &act_ids], 0).unwrap();
        let span = m.forward_span(&act_ids, &positions[11..20], &ctx).unwrap();
        let want: Vec<Vec<f32>> = full
            .narrow(1, 11, 9)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for b in 0..2 {
            let got: Vec<Vec<f32>> = span.get(b).unwrap().to_vec2().unwrap();
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((g - w).abs() < 1e-4, "{name}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn missing_and_corrupt_files_are_typed_errors() {
    let tmp = std::env::temp_dir().join(format!("dlm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let err = DiffusionLm::load_dir(&tmp).err().unwrap();
    assert!(
        matches!(err, ModelError::Io { ref path, .. } if path.ends_with("config.json")),
        "{err}"
    );

    let src = fixture("qwen2-gqa-untied");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    std::fs::write(tmp.join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = DiffusionLm::load_dir(&tmp).err().unwrap();
    assert!(
        matches!(err, ModelError::Weights { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    // A tensor of the wrong shape names the tensor.
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.insert(
        "model.norm.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, tmp.join("model.safetensors")).unwrap();
    let err = DiffusionLm::load_dir(&tmp).err().unwrap().to_string();
    assert!(
        err.contains("model.norm.weight") && err.contains("shape"),
        "{err}"
    );

    std::fs::write(tmp.join("tokenizer.json"), b"{").unwrap();
    let err = DiffusionLm::load_dir(&tmp).err().unwrap();
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err}");

    std::fs::write(
        tmp.join("config.json"),
        br#"{"architectures": ["BertModel"]}"#,
    )
    .unwrap();
    let err = DiffusionLm::load_dir(&tmp).err().unwrap();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { .. }),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// Attention with RoPE depends only on relative positions, so a whole block moved by δ has the
/// same hidden states and its keys are the old keys rotated by δ: what context reuse relies on.
#[test]
fn shifted_keys_equal_keys_computed_at_the_new_positions() {
    for name in ["qwen2-gqa-untied", "qwen2-tied"] {
        let lm = DiffusionLm::load_dir_with(&fixture(name), Precision::F32).unwrap();
        let m = lm.transformer();
        let seq: Vec<u32> = (0..12).map(|i| (i * 13 % 400) as u32).collect();
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let at = |start: u32| {
            let pos: Vec<u32> = (start..start + 12).collect();
            let (_, empty) = m
                .forward_full(&ids, &pos, None, Some(ActiveWindow { start: 0, len: 12 }))
                .unwrap();
            m.forward_span_kv(&ids, &pos, &empty.unwrap(), true)
                .unwrap()
                .1
                .unwrap()
        };
        let (a, b) = (at(3), at(10));
        for (la, lb) in a.layers.iter().zip(&b.layers) {
            let moved: Vec<f32> = m
                .shift_keys(&la.k, 7)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = lb.k.flatten_all().unwrap().to_vec1().unwrap();
            for (x, y) in moved.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4, "{name}: {x} vs {y}");
            }
            let back: Vec<f32> = m
                .shift_keys(&lb.k, -7)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let orig: Vec<f32> = la.k.flatten_all().unwrap().to_vec1().unwrap();
            assert!(back.iter().zip(&orig).all(|(x, y)| (x - y).abs() < 1e-4));
        }
    }
}

/// A long causal pass runs its queries in chunks, each over the keys up to its own end; it
/// gives what short passes continuing the cache give (each short enough to run whole).
#[test]
fn a_long_causal_pass_equals_short_ones_continuing_the_cache() {
    let cfg = model::Config::default_family(64, 32, 2, 4, 2, 64, 1024);
    let dev = Device::Cpu;
    let params = parameter_shapes(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), DType::F32, &dev)
            } else {
                Tensor::randn(0f32, 0.3, shape.as_slice(), &dev)
            };
            (name, t.unwrap())
        })
        .collect();
    let store = TensorStore::from_map(params, std::path::Path::new("random"));
    let m = Transformer::new(&cfg, &store, &dev).unwrap();
    let ids: Vec<u32> = (0..700).map(|i| (i * 37 % 61) as u32).collect();
    let long = m
        .forward_causal(&one_row(&ids), &mut CausalCache::default())
        .unwrap();
    let mut cache = CausalCache::default();
    let short: Vec<Tensor> = ids
        .chunks(100)
        .map(|c| m.forward_causal(&one_row(c), &mut cache).unwrap())
        .collect();
    let short = Tensor::cat(&short, 1).unwrap();
    let diff: f32 = (long - short)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff <= 1e-4, "max |Δhidden| = {diff}");
}

/// The shipped weights on real code, bf16 products on AMX tiles against f32: a causal pass
/// (the `spm_block` context pass), span rows over its cached context (a refinement step) and a
/// full bidirectional pass predict the same tokens with nearly the same probabilities.
#[test]
fn amx_bf16_stays_near_f32_on_the_default_model() {
    let fast = DiffusionLm::load_default_with(Precision::Fastest).unwrap();
    if !fast.transformer().uses_amx() {
        eprintln!("skipped: this CPU or kernel gives the process no AMX");
        return;
    }
    let exact = DiffusionLm::load_default_with(Precision::F32).unwrap();
    let ids = exact.encode(include_str!("../src/kernels.rs")).unwrap();
    let ids = Tensor::new(&ids[..400], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    // Causal: the `spm_block` context pass; span: 32 rows over that pass's cached context
    // (the span steps' attention); full: one bidirectional pass.
    let probs = |lm: &DiffusionLm, pass: &str| -> Vec<Vec<f32>> {
        let t = lm.transformer();
        let logits = match pass {
            "causal" => {
                let hidden = t.forward_causal(&ids, &mut CausalCache::default()).unwrap();
                t.logits(&hidden).unwrap()
            }
            "span" => {
                let mut cache = CausalCache::default();
                t.forward_causal(&ids.narrow(1, 0, 368).unwrap(), &mut cache)
                    .unwrap();
                let positions: Vec<u32> = (368..400).collect();
                let span = ids.narrow(1, 368, 32).unwrap();
                let hidden = t
                    .forward_span(&span, &positions, &cache.context().unwrap())
                    .unwrap();
                t.logits(&hidden).unwrap()
            }
            _ => t.forward_logits(&ids, None).unwrap(),
        };
        candle_nn::ops::softmax_last_dim(&logits.squeeze(0).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    for pass in ["causal", "span", "full"] {
        let (p, q) = (probs(&exact, pass), probs(&fast, pass));
        let same_top = p
            .iter()
            .zip(&q)
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        let worst_tv = p
            .iter()
            .zip(&q)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / 2.0)
            .fold(0f32, f32::max);
        println!(
            "{pass}: same top-1 {same_top}/{}, worst total variation {worst_tv}",
            p.len()
        );
        assert!(
            same_top * 100 >= p.len() * 97,
            "{pass}: top-1 agrees on {same_top} of {}",
            p.len()
        );
        assert!(worst_tv < 0.1, "{pass}: total variation {worst_tv}");
    }
}
