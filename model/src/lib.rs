//! The diffusion language model engine of diffusion-ls: a bidirectional Qwen2-family transformer
//! (Dream / DiffuCoder / Open-dCoder checkpoints and our own default model), an infilling sampler
//! that denoises a masked span in a few parallel refinement steps with a hook between steps, and
//! the masked-diffusion training loop. Knows nothing of LSP.

pub mod config;
pub mod error;
pub mod lm;
pub mod sampler;
pub mod tokenizer;
pub mod train;
pub mod transformer;
pub mod weights;

pub use config::{Config, LogitsConvention};
pub use error::ModelError;
pub use lm::DiffusionLm;
pub use sampler::{
    Completion, ConfidenceOrder, ContextCache, InfillOutput, InfillRequest, InfillStats, NoHook,
    SamplerParams, StepHook, StepView, Verdict,
};
