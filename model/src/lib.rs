//! The diffusion language model engine of diffusion-ls: a Qwen2-family transformer (Dream /
//! DiffuCoder / Open-dCoder checkpoints and our own default model) and an infilling sampler that
//! denoises a masked span in a few parallel refinement steps with a hook between steps, in the
//! model's infill layout. Knows nothing of LSP.

pub mod config;
pub mod error;
pub mod layout;
pub mod lm;
mod ngram;
pub mod policy;
pub mod sampler;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

/// candle asks for its thread count on every matmul and, unless `RAYON_NUM_THREADS` is set,
/// re-reads /proc/cpuinfo each time (~6% of a completion's time on the dev machine). Call this
/// first thing in `main`, before any other thread exists: it fixes the variable to candle's own
/// choice.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

pub use config::{Config, InfillLayout, LogitsConvention};
pub use error::ModelError;
pub use lm::DiffusionLm;
pub use policy::{CommitOrder, ConfidenceOrder, DecodingPolicy, EndRule};
pub use sampler::{
    Completion, ContextCache, InfillOutput, InfillRequest, InfillStats, NoHook, SamplerParams,
    StepHook, StepView, Verdict,
};
