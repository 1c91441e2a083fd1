//! The diffusion language model engine of diffusion-ls: a Qwen2-family transformer (Dream /
//! DiffuCoder / Open-dCoder checkpoints and our own default model) and an infilling sampler that
//! denoises a masked span in a few parallel refinement steps with a hook between steps, in the
//! model's infill layout. Knows nothing of LSP.
//!
//! The public face is what the server needs, re-exported here (docs/model-api.md describes it):
//! load a [`DiffusionLm`], tokenize, and [`DiffusionLm::infill`] /
//! [`DiffusionLm::infill_with_cache`] an [`InfillRequest`] under a [`StepHook`]. Every module is
//! private; [`internals`] opens the engine's parts to the benches and the parity tests only.

mod amx;
mod config;
mod error;
mod kernels;
mod layout;
mod lm;
mod ngram;
mod policy;
// The sampler walks several per-position arrays with one index.
#[allow(clippy::needless_range_loop)]
mod sampler;
mod tokenizer;
mod transformer;
mod weights;

/// candle asks for its thread count on every matmul and, unless `RAYON_NUM_THREADS` is set,
/// re-reads /proc/cpuinfo each time (~6% of a completion's time on the dev machine). Call this
/// first thing in `main`, before any other thread exists: it fixes the variable to candle's own
/// choice, and keeps small products on one thread ([`GEMM_THREADING_THRESHOLD`]).
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    gemm::set_threading_threshold(GEMM_THREADING_THRESHOLD);
}

/// Multiply-adds below which gemm stays on the calling thread. Its default (48·48·256) hands
/// a span step's attention products (16 query rows × 1,000 context keys × 64) to the second
/// core, and waking it cost more than it saved: on the 2-core dev machine the next keystroke
/// of a one-candidate line went 30 → 23 ms and the three-candidate one 66 → 56 ms at this
/// threshold (a 128×256×256 product); the context pass's products stay far above it.
const GEMM_THREADING_THRESHOLD: usize = 1 << 23;

pub use config::{Config, InfillLayout, LogitsConvention};
pub use error::ModelError;
pub use lm::{DiffusionLm, Precision};
pub use policy::{CommitOrder, ConfidenceOrder, DecodingPolicy, EndRule, Pace};
pub use sampler::{
    infill, infill_cached, Completion, ContextCache, InfillOutput, InfillRequest, InfillStats,
    NoHook, SamplerParams, StepHook, StepView, Verdict,
};
pub use tokenizer::Tokenizer;

/// The engine's parts below [`DiffusionLm`], for the benches (`benches/infill.rs`) and the
/// parity tests (`model/tests/parity.rs`), which measure and check them one by one. Not an API
/// for the server: it changes with the engine.
#[doc(hidden)]
pub mod internals {
    pub use crate::layout::SpmBlock;
    pub use crate::sampler::generate_autoregressive;
    pub use crate::transformer::{parameter_shapes, ActiveWindow, CausalCache, Transformer};
    pub use crate::weights::TensorStore;
}
