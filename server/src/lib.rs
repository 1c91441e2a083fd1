//! diffusion-ls: a language server that completes code with a masked-diffusion language model.
//!
//! Only [`lsp`] and [`service`] speak JSON-RPC; the rest works on plain text, ropes and byte
//! offsets so the CLI (`complete`, `eval`) runs the very same pipeline ([`complete::complete`]).
//!
//! Every module is private. The crate's face is what the binary (`main.rs`) and the
//! integration tests need, re-exported below.

mod cli;
mod complete;
mod config;
mod context;
mod document;
mod engine;
mod eval;
mod language;
mod lsp;
mod position;
mod reuse;
mod service;
mod syntax;
mod transport;
mod verify;

// The binary's commands.
pub use cli::{run as run_complete, CompleteArgs};
pub use eval::{run as run_eval, EvalArgs};
pub use service::{serve_stdio, serve_tcp, SHUTDOWN_REQUESTED};

// What the reliability tests (tests/reliability) drive directly: documents under random edits
// in every position encoding, against their own model of the text.
pub use document::{Document, TextChange};
pub use language::by_language_id;
pub use position::{Encoding, LineCol};
