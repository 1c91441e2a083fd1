//! Speed of the engine on random-weight models of the default family: one full forward pass, one
//! cached refinement step, a whole infill (1,024 context tokens, 32-token span, 8 steps), and, as
//! the baseline in the same run, autoregressive decoding of the same 32 tokens by the same network
//! (causal mask + KV cache). Throughputs are tokens/s (or FLOP/s for the matmul peak).

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use model::internals::{
    generate_autoregressive, parameter_shapes, ActiveWindow, TensorStore, Transformer,
};
use model::{
    infill, Config, ContextCache, DecodingPolicy, DiffusionLm, InfillRequest, NoHook,
    SamplerParams, StepHook, StepView, Tokenizer, Verdict,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONTEXT: usize = 1024;
const SPAN: usize = 32;
const STEPS: usize = 8;

fn config(hidden: usize, layers: usize, heads: usize, kv: usize, ffn: usize) -> Config {
    Config::default_family(8192, hidden, layers, heads, kv, ffn, 4096)
}

/// Random weights with the checkpoint's names: normal(0, 0.02) matrices (output projections
/// scaled down by depth), unit norms, zero biases; speed does not depend on the values.
fn random_params(cfg: &Config, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let depth_scale = 1.0 / (2.0 * cfg.num_hidden_layers as f64).sqrt();
    let mut normal = || {
        // Box-Muller.
        let u1: f64 = rng.random::<f64>().max(1e-12);
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let dev = Device::Cpu;
    parameter_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), DType::F32, &dev)
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, &dev)
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    0.02 * depth_scale
                } else {
                    0.02
                };
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| (normal() * std) as f32).collect();
                Tensor::from_vec(v, shape.as_slice(), &dev)
            };
            (name, t.unwrap())
        })
        .collect()
}

/// The 7M and 30M shapes in f32, and the 7M one again with its products on AMX tiles
/// (`7M-amx`, where the CPU has AMX: `Transformer::use_amx`).
fn models() -> Vec<(&'static str, Transformer)> {
    let build = |cfg: &Config| {
        let params = random_params(cfg, 0);
        let store = TensorStore::from_map(params, std::path::Path::new("(bench)"));
        Transformer::new(cfg, &store, &Device::Cpu).unwrap()
    };
    let small = config(256, 6, 4, 2, 768);
    let mut out = vec![
        ("7M", build(&small)),
        ("30M", build(&config(512, 8, 8, 4, 1536))),
    ];
    let mut amx = build(&small);
    if amx.use_amx().unwrap() {
        out.push(("7M-amx", amx));
    }
    out
}

/// A tokenizer whose special ids fit the bench configs (the fixture's: 0..422).
fn tokenizer(cfg: &Config) -> Tokenizer {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2-gqa-untied/tokenizer.json");
    Tokenizer::from_file(&path, cfg).unwrap()
}

fn context_ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| (7 + i * 31 % 8000) as u32).collect()
}

/// Multiply-adds ×2 of one bidirectional pass over `l` tokens (no output head).
fn forward_flops(cfg: &Config, l: usize) -> u64 {
    let d = cfg.hidden_size as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as u64;
    let f = cfg.intermediate_size as u64;
    let l = l as u64;
    let per_layer = 2 * l * (2 * d * d + 2 * d * kv + 3 * d * f) + 2 * 2 * l * l * d;
    per_layer * cfg.num_hidden_layers as u64
}

fn bench(c: &mut Criterion) {
    model::pin_thread_count();
    let models = models();
    let dev = Device::Cpu;

    let mut g = c.benchmark_group("matmul_peak");
    g.sample_size(20);
    let (m, k, n) = (1024, 256, 1024);
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("f32_1024x256x1024", |bch| {
        bch.iter(|| a.matmul(&b).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("forward_full_1024");
    g.sample_size(10);
    for (name, model) in &models {
        let ids = Tensor::new(context_ids(CONTEXT).as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let pos: Vec<u32> = (0..CONTEXT as u32).collect();
        // Elements = FLOPs, so the report reads as FLOP/s against the matmul peak.
        g.throughput(Throughput::Elements(forward_flops(model.config(), CONTEXT)));
        g.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter(|| model.forward_full(&ids, &pos, None, None).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("refinement_step");
    g.sample_size(20);
    for (name, model) in &models {
        let total = CONTEXT + SPAN;
        let p = CONTEXT * 3 / 4;
        let mut seq = context_ids(total);
        seq[p..p + SPAN].iter_mut().for_each(|t| *t = 1);
        let ids = Tensor::new(seq.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let pos: Vec<u32> = (0..total as u32).collect();
        let window = ActiveWindow {
            start: p,
            len: SPAN,
        };
        let (_, ctx) = model.forward_full(&ids, &pos, None, Some(window)).unwrap();
        let ctx = ctx.unwrap();
        let span = Tensor::new(&seq[p..p + SPAN], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        g.throughput(Throughput::Elements(SPAN as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter(|| {
                let h = model.forward_span(&span, &pos[p..p + SPAN], &ctx).unwrap();
                model.logits(&h).unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("infill_1024ctx_32span_8steps");
    g.sample_size(10);
    g.throughput(Throughput::Elements(SPAN as u64));
    for (name, model) in &models {
        let tok = tokenizer(model.config());
        let ctx = context_ids(CONTEXT);
        let p = CONTEXT * 3 / 4;
        for (mode, refresh) in [("cached", 0usize), ("exact", 1)] {
            let req = InfillRequest {
                prefix: ctx[..p].to_vec(),
                suffix: ctx[p..].to_vec(),
                span_len: SPAN,
                params: SamplerParams {
                    steps: STEPS,
                    cache_refresh: refresh,
                    ..Default::default()
                },
                healing: None,
            };
            g.bench_function(BenchmarkId::new(format!("diffusion_{mode}"), name), |bch| {
                bch.iter(|| infill(model, &tok, &req, &mut NoHook).unwrap())
            });
        }
        g.bench_function(BenchmarkId::new("autoregressive", name), |bch| {
            bch.iter(|| generate_autoregressive(model, &ctx, SPAN).unwrap())
        });
    }
    g.finish();
}

/// What the server's verifier does to a line span besides checking it (`settled_end` in
/// server/src/verify): once the leading committed run holds a line break, the candidate ends
/// after that token, since the finisher cuts the rest.
struct LineEnd;

impl StepHook for LineEnd {
    fn after_step(&mut self, view: &StepView<'_>) -> Verdict {
        let Some(cut) = view.text.find('\n') else {
            return Verdict::Keep;
        };
        for (j, t) in view.tokens.iter().enumerate() {
            if t.is_none() {
                break;
            }
            if view.token_ranges[j].end > cut {
                return Verdict::Truncate(j + 1);
            }
        }
        Verdict::Keep
    }
}

/// One way of decoding a line in the shipped benches: a policy, its candidates, and whether a
/// candidate ends at its line break ([`LineEnd`]) or fills the span.
type LineRow = (DecodingPolicy, usize, bool);

/// Single-line completions as the server makes them, with the embedded default model (real
/// weights, `spm_block` layout, step budget 32), at two cursors of a fixed text (the sampler's
/// source at stop 16, so that runs compare across sessions): up to 736 tokens before the cursor,
/// 256 after, a 24-token line span.
///
/// `shipped_line_infill` (the cursor at 3/4 of the text, a line the model fills to the span's
/// end): `left-to-right-cache` and `left-to-right-reuse` with one candidate, and the server's
/// `left-to-right-reuse` with 3. `shipped_short_line` (the cursor at 1/2, a short line):
/// `left-to-right-reuse` with one candidate filling the span, then with 1 and 3 candidates
/// ending at the line break as the server does. `cold` builds the context's K/V;
/// `two_keystrokes` types a space and deletes it again, two requests that reuse the document
/// cache (it appends, then drops, the new token); `autoregressive` decodes as many tokens as
/// the first row's answer (the second's in the short line: its line), one per pass, over the
/// same causal context.
fn shipped(c: &mut Criterion) {
    model::pin_thread_count();
    let lm = DiffusionLm::load_default().unwrap();
    let text = include_str!("fixtures/sampler-stop16.rs.txt");
    let reuse = DecodingPolicy::LEFT_TO_RIGHT_REUSE;
    line_group(
        c,
        &lm,
        "shipped_line_infill",
        &text[..text.len() * 3 / 4],
        text,
        &[
            (DecodingPolicy::LEFT_TO_RIGHT_CACHE, 1, false),
            (reuse.clone(), 1, false),
            (reuse.clone(), 3, false),
        ],
        0,
    );
    line_group(
        c,
        &lm,
        "shipped_short_line",
        &text[..text.len() / 2],
        text,
        &[
            (reuse.clone(), 1, false),
            (reuse.clone(), 1, true),
            (reuse, 3, true),
        ],
        1,
    );
}

/// The cursor after the indentation of the first line that starts after `before`; the
/// autoregressive row decodes as many tokens as row `ar_like`'s answer.
fn line_group(
    c: &mut Criterion,
    lm: &DiffusionLm,
    name: &str,
    before: &str,
    text: &str,
    rows: &[LineRow],
    ar_like: usize,
) {
    let cut = before.rfind("\n").unwrap() + 1;
    let cut = cut + text[cut..].len() - text[cut..].trim_start().len();
    let before = lm.encode(&text[..cut]).unwrap();
    let after = lm.encode(&text[cut..]).unwrap();
    let prefix = before[before.len().saturating_sub(736)..].to_vec();
    let suffix = after[..after.len().min(256)].to_vec();
    let request = |prefix: Vec<u32>, policy: &DecodingPolicy, candidates: usize| InfillRequest {
        prefix,
        suffix: suffix.clone(),
        span_len: 24,
        params: SamplerParams {
            steps: 32,
            policy: policy.clone(),
            candidates,
            ..Default::default()
        },
        healing: None,
    };
    let hook = |line_end: bool| -> Box<dyn StepHook> {
        if line_end {
            Box::new(LineEnd)
        } else {
            Box::new(NoHook)
        }
    };
    let typed_prefix = [prefix.as_slice(), &lm.encode(" ").unwrap()].concat();
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    let mut tokens = 0;
    for (i, (policy, candidates, line_end)) in rows.iter().enumerate() {
        let (candidates, line_end) = (*candidates, *line_end);
        let row = format!(
            "{}/x{candidates}{}",
            policy.name,
            if line_end { "/line-end" } else { "" }
        );
        let cold = request(prefix.clone(), policy, candidates);
        // The first answer also primes the cache the keystroke bench reuses.
        let mut cache = ContextCache::default();
        let answer = lm
            .infill_with_cache(&cold, hook(line_end).as_mut(), &mut cache)
            .unwrap();
        if i == ar_like {
            tokens = answer.completions[0].tokens.len().max(1);
        }
        eprintln!(
            "{name}, {row}: {} steps, {} span rows, {} tokens: {:?}",
            answer.stats.steps,
            answer.stats.span_rows_run,
            answer.completions[0].tokens.len(),
            lm.decode(&answer.completions[0].tokens).unwrap()
        );
        g.bench_function(BenchmarkId::new("cold", &row), |bch| {
            bch.iter(|| {
                lm.infill_with_cache(&cold, hook(line_end).as_mut(), &mut ContextCache::default())
                    .unwrap()
            })
        });
        // Two keystrokes an iteration: type a space, then delete it again.
        let typed = request(typed_prefix.clone(), policy, candidates);
        g.bench_function(BenchmarkId::new("two_keystrokes", &row), |bch| {
            bch.iter(|| {
                lm.infill_with_cache(&typed, hook(line_end).as_mut(), &mut cache)
                    .unwrap();
                lm.infill_with_cache(&cold, hook(line_end).as_mut(), &mut cache)
                    .unwrap()
            })
        });
    }
    let spm_context = [suffix.as_slice(), prefix.as_slice()].concat();
    g.bench_function("autoregressive", |bch| {
        bch.iter(|| generate_autoregressive(lm.transformer(), &spm_context, tokens).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench, shipped);
criterion_main!(benches);
