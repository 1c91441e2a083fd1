//! Typed errors of the model crate: each names the file and the field or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: field `{field}`: {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error(
        "unknown architecture in {path}: {found} (supported: Qwen2 / Dream bidirectional, LLaDA)"
    )]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("bad weights {path}: tensor `{tensor}`: {reason}")]
    Weights {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("bad tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// An [`crate::InfillRequest`] the model cannot run: an empty span, more tokens than the
    /// model's positions, a token id outside the vocabulary, healing text no token starts with.
    #[error("invalid request: {0}")]
    Request(String),
    /// The tokenizer failed on a text or an id sequence.
    #[error("{0}")]
    Tokenize(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
