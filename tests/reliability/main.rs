//! Reliability tiers: protocol fuzzer, edit-sequence properties, soak and cancellation latency.
//!
//! `cargo test --release --test reliability` runs the short seeded tier (CI);
//! `cargo test --release --test reliability -- --long` runs the long one whose figures are in
//! RELIABILITY.md. Options: `--seed N`, `--only fuzz|props|soak|cancel` (repeatable),
//! `--messages N` (fuzz), `--requests N` (soak). Debugging: `FUZZ_LOG=DIR` keeps the fuzzed
//! servers' logs, `FUZZ_CHECK_EDITS=1` compares the tracked document after every message (the
//! first desync then names its change), `SOAK_LOG=FILE` keeps the soak server's log.
//! Other arguments (libtest's, when cargo passes them on) are ignored. Exits 1 on any failure.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod cancel;
#[path = "../support/client.rs"]
mod client;
mod fuzz;
mod fuzz_gen;
mod props;
mod soak;
mod text;

use std::time::Instant;

/// splitmix64: deterministic for a seed, whatever the crate versions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Tier {
    fuzz_messages: usize,
    prop_cases: u32,
    soak_requests: usize,
    cancel_samples: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let long = args.iter().any(|a| a == "--long");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seed: u64 = value("--seed").and_then(|s| s.parse().ok()).unwrap_or(12);
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--only")
        .map(|w| w[1].as_str())
        .collect();
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    let mut tier = if long {
        Tier {
            fuzz_messages: 100_000,
            prop_cases: 10_000,
            soak_requests: 10_000,
            cancel_samples: 200,
        }
    } else {
        Tier {
            fuzz_messages: 3_000,
            prop_cases: 300,
            soak_requests: 300,
            cancel_samples: 20,
        }
    };
    if let Some(n) = value("--messages").and_then(|s| s.parse().ok()) {
        tier.fuzz_messages = n;
    }
    if let Some(n) = value("--requests").and_then(|s| s.parse().ok()) {
        tier.soak_requests = n;
    }
    println!(
        "reliability: {} tier, seed {seed}",
        if long { "long" } else { "short" }
    );
    let mut failures: Vec<String> = Vec::new();

    if wanted("fuzz") {
        let t0 = Instant::now();
        let f = fuzz::run(tier.fuzz_messages, seed);
        println!(
            "fuzz: {} messages in {} sessions ({} requests, {} malformed frames), {} liveness checks; \
             crashes {}, hangs {}, desyncs {}, wrong answers {} [{:.0} s]",
            f.messages, f.sessions, f.requests, f.malformed, f.liveness, f.crashes, f.hangs,
            f.desyncs, f.wrong, t0.elapsed().as_secs_f64()
        );
        for e in f.errors.iter().take(20) {
            println!("  fuzz: {e}");
        }
        for (t, what) in &f.slowest {
            println!("  fuzz: slow answer {t:.2} s: {what}");
        }
        if f.crashes + f.hangs + f.desyncs + f.wrong > 0 {
            failures.push(format!("fuzz: {} problems (seed {seed})", f.errors.len()));
        }
    }
    if wanted("props") {
        let t0 = Instant::now();
        let f = props::run(tier.prop_cases, seed);
        println!(
            "props: {} edit-sequence cases (UTF-8/16/32), {} tree checks: {}; broken texts whose \
             fresh parse recovered differently: {} [{:.0} s]",
            f.cases,
            f.checks,
            f.failure
                .as_deref()
                .unwrap_or("rope = model, tree = tree-sitter's own, = fresh parse when clean"),
            f.recovered_differently,
            t0.elapsed().as_secs_f64()
        );
        if let Some(e) = f.failure {
            failures.push(format!("props: {e}"));
        }
    }
    if wanted("soak") {
        let t0 = Instant::now();
        let f = soak::run(tier.soak_requests, seed);
        let growth = f.rss_end_kib as f64 / f.rss_start_kib.max(1) as f64 - 1.0;
        println!(
            "soak: {} completion requests, {} edits ({} accepted answers), {} cancels, {} supersedes; \
             stale results applied {}, non-null answers for older versions {}, lost edits {}, \
             errors {}; RSS {} -> {} KiB ({:+.1}%); latency p50 {:.1} ms, p95 {:.1} ms [{:.0} s]",
            f.requests, f.edits, f.accepted, f.cancels, f.supersedes, f.stale_applied,
            f.old_version_not_null, f.lost_edits, f.errors.len(), f.rss_start_kib, f.rss_end_kib,
            growth * 100.0, percentile(&f.latencies_ms, 0.5), percentile(&f.latencies_ms, 0.95),
            t0.elapsed().as_secs_f64()
        );
        println!(
            "  soak: RSS every tenth {:?} KiB; document {} bytes at the end",
            f.rss_samples, f.final_bytes
        );
        for e in f.errors.iter().take(20) {
            println!("  soak: {e}");
        }
        // RSS is judged on the long run only: a few hundred requests are mostly warm-up.
        if f.stale_applied + f.lost_edits > 0 || !f.errors.is_empty() || (long && growth > 0.10) {
            failures.push(format!(
                "soak: {} errors, RSS {:+.1}%",
                f.errors.len(),
                growth * 100.0
            ));
        }
    }
    if wanted("cancel") {
        let fixture = model::DiffusionLm::load_dir(&client::fixture()).expect("fixture loads");
        let mut models = vec![(fixture, "fixture qwen2-gqa-untied")];
        if long {
            match model::DiffusionLm::load_default() {
                Ok(lm) => models.push((lm, "default (embedded)")),
                Err(e) => println!("cancel: no default model: {e}"),
            }
        }
        for (lm, name) in &models {
            let f = cancel::run(lm, name, tier.cancel_samples, seed);
            let p95 = percentile(&f.in_steps, 0.95);
            println!(
                "cancel [{}]: {} cancels ({} after the end); during a step ({}): latency p50 \
                 {:.2} ms, p95 {:.2} ms, max {:.2} ms, p95 {:.2} and max {:.2} of the interrupted \
                 step; during the context pass ({}): max {:.2} ms; step p50 {:.2} ms, context \
                 pass p50 {:.2} ms; within one step at p95: {}",
                f.model,
                f.samples,
                f.too_late,
                f.latency_ms.len(),
                percentile(&f.latency_ms, 0.5),
                percentile(&f.latency_ms, 0.95),
                percentile(&f.latency_ms, 1.0),
                p95,
                percentile(&f.in_steps, 1.0),
                f.context_latency_ms.len(),
                percentile(&f.context_latency_ms, 1.0),
                f.step_ms_p50,
                f.encode_ms_p50,
                if p95 <= 1.0 { "yes" } else { "no" }
            );
        }
    }
    if failures.is_empty() {
        println!("reliability: ok");
    } else {
        for f in &failures {
            println!("FAILED {f}");
        }
        std::process::exit(1);
    }
}
