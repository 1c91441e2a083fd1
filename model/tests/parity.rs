//! Parity with the reference implementation (transformers' Qwen2 under a bidirectional mask) on
//! tiny random-weight checkpoints, and consistency of the cached infilling path with full passes.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use model::transformer::{ActiveWindow, Exec};
use model::{DiffusionLm, ModelError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check_parity(name: &str) {
    let dir = fixture(name);
    let lm = DiffusionLm::load_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    let expected: Vec<Vec<Vec<f32>>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let (b, l) = (ids.len(), ids[0].len());
    let flat: Vec<u32> = ids.concat();
    let ids = Tensor::from_vec(flat, (b, l), &Device::Cpu).unwrap();
    let got: Vec<Vec<Vec<f32>>> = lm
        .transformer()
        .forward_logits(&ids, None)
        .unwrap()
        .to_vec3()
        .unwrap();
    let mut max_diff = 0f32;
    for (gb, eb) in got.iter().zip(&expected) {
        assert_eq!(gb.len(), eb.len());
        for (gr, er) in gb.iter().zip(eb) {
            assert_eq!(gr.len(), er.len(), "{name}: vocab");
            for (g, e) in gr.iter().zip(er) {
                max_diff = max_diff.max((g - e).abs());
            }
        }
    }
    assert!(max_diff <= 1e-4, "{name}: max |Δlogits| = {max_diff}");
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

/// The span-only pass over cached context K/V equals a full pass when the context was computed
/// with the same span contents (so a refresh every step is exact).
#[test]
fn cached_span_pass_matches_full_pass() {
    for name in ["qwen2-gqa-untied", "dream-shifted", "qwen2-tied"] {
        let lm = DiffusionLm::load_dir(&fixture(name)).unwrap();
        let m = lm.transformer();
        let seq: Vec<u32> = (0..30).map(|i| (i * 37 % 400) as u32).collect();
        let window = ActiveWindow { start: 11, len: 9 };
        let positions: Vec<u32> = (0..30).collect();
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (full, ctx) = m
            .forward_full(&ids, &positions, None, Some(window), Exec::Infer)
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
        let lm = DiffusionLm::load_dir(&fixture(name)).unwrap();
        let m = lm.transformer();
        let seq: Vec<u32> = (0..12).map(|i| (i * 13 % 400) as u32).collect();
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let at = |start: u32| {
            let pos: Vec<u32> = (start..start + 12).collect();
            let (_, empty) = m
                .forward_full(
                    &ids,
                    &pos,
                    None,
                    Some(ActiveWindow { start: 0, len: 12 }),
                    Exec::Infer,
                )
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
