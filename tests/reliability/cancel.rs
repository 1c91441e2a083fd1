//! Cancellation latency, in process: an infill is cancelled at a random moment and the time
//! from the cancel to the sampler's return is compared with the length of one refinement step.
//!
//! Over LSP the `$/cancelRequest` answer itself is immediate (tower-lsp drops the handler and
//! answers -32800); what matters is how soon the model thread is free for the next request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use model::{DiffusionLm, InfillRequest, SamplerParams, StepHook, StepView, Verdict};

use crate::Rng;

/// Records when each step ends; cancelled from the measuring thread.
struct Timing<'a> {
    cancel: &'a AtomicBool,
    steps: Vec<(usize, Instant)>,
}

impl StepHook for Timing<'_> {
    fn after_step(&mut self, view: &StepView<'_>) -> Verdict {
        if self.steps.last().is_none_or(|(s, _)| *s != view.step) {
            self.steps.push((view.step, Instant::now()));
        }
        Verdict::Keep
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Figures {
    pub model: String,
    pub samples: usize,
    /// Cancels that came after the run had already finished (not counted).
    pub too_late: usize,
    pub step_ms_p50: f64,
    pub encode_ms_p50: f64,
    /// Cancel to return, in ms, for cancels during a refinement step.
    pub latency_ms: Vec<f64>,
    /// The same, over the length of the step the cancel interrupted (≤ 1: within that step).
    pub in_steps: Vec<f64>,
    /// Cancel to return for cancels during the context pass, which is not interruptible.
    pub context_latency_ms: Vec<f64>,
}

const PREFIX: &str = "use std::collections::HashMap;\n\nfn count(words: &[&str]) -> HashMap<String, usize> {\n    let mut counts = HashMap::new();\n    for w in words {\n        *counts.entry(w.to_string()).or_insert(0) += 1;\n    }\n    counts\n}\n\nfn main() {\n    let words = vec![\"a\", \"b\", \"a\"];\n    let c = count(&words);\n    ";
const SUFFIX: &str = "\n    println!(\"{:?}\", c);\n}\n";

/// A 48-token span with as much context as the model's positions allow.
fn request(lm: &DiffusionLm) -> InfillRequest {
    let span_len = 48;
    let suffix = lm.encode(SUFFIX).unwrap();
    let room = lm.config().max_position_embeddings - span_len - suffix.len() - 8;
    let prefix = lm.encode(&PREFIX.repeat(8)).unwrap();
    InfillRequest {
        prefix: prefix[prefix.len().saturating_sub(room)..].to_vec(),
        suffix,
        span_len,
        healing: None,
        params: SamplerParams {
            steps: 16,
            candidates: 2,
            ..SamplerParams::default()
        },
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(lm: &DiffusionLm, name: &str, samples: usize, seed: u64) -> Figures {
    let req = request(lm);
    let mut rng = Rng::new(seed);
    // Uncancelled runs: the length of a step, of the context pass, of a whole request.
    let (mut steps, mut encodes, mut totals) = (vec![], vec![], vec![]);
    for _ in 0..5 {
        let never = AtomicBool::new(false);
        let mut hook = Timing {
            cancel: &never,
            steps: vec![],
        };
        let t0 = Instant::now();
        lm.infill(&req, &mut hook).unwrap();
        totals.push(t0.elapsed().as_secs_f64() * 1e3);
        let times: Vec<Instant> = hook.steps.iter().map(|s| s.1).collect();
        for w in times.windows(2) {
            steps.push((w[1] - w[0]).as_secs_f64() * 1e3);
        }
        encodes.push((times[0] - t0).as_secs_f64() * 1e3);
    }
    let step = median(&mut steps);
    let mut f = Figures {
        model: name.to_string(),
        step_ms_p50: step,
        encode_ms_p50: median(&mut encodes) - step,
        ..Figures::default()
    };
    let total = Duration::from_secs_f64(median(&mut totals) / 1e3);
    for _ in 0..samples {
        let cancel = AtomicBool::new(false);
        let delay = total.mul_f64(rng.below(1000) as f64 / 1000.0);
        let (start, at, (end, steps)) = std::thread::scope(|scope| {
            let start = Instant::now();
            let job = scope.spawn(|| {
                let mut hook = Timing {
                    cancel: &cancel,
                    steps: vec![],
                };
                lm.infill(&req, &mut hook).unwrap();
                (Instant::now(), hook.steps)
            });
            // The cancel lands at a random moment of the request: that is what is measured.
            std::thread::sleep(delay);
            let at = Instant::now();
            cancel.store(true, Ordering::Relaxed);
            (start, at, job.join().unwrap())
        });
        f.samples += 1;
        let Some(latency) = end.checked_duration_since(at) else {
            f.too_late += 1;
            continue;
        };
        let ms = latency.as_secs_f64() * 1e3;
        // The phase the cancel interrupted: [previous boundary, next boundary].
        let times: Vec<Instant> = steps.iter().map(|s| s.1).collect();
        match times.iter().position(|&t| t > at) {
            Some(0) | None if times.first().is_none_or(|&t| t > at) => {
                f.context_latency_ms.push(ms)
            }
            next => {
                let next_t = next.map_or(end, |i| times[i]);
                let prev_t = next
                    .map_or(*times.last().unwrap(), |i| times[i - 1])
                    .max(start);
                f.latency_ms.push(ms);
                f.in_steps
                    .push(latency.as_secs_f64() / (next_t - prev_t).as_secs_f64());
            }
        }
    }
    f
}
