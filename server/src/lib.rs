//! diffusion-ls: a language server that completes code with a masked-diffusion language model.
//!
//! Only [`lsp`] speaks JSON-RPC. Under it, the completion [`service`] owns documents, settings,
//! the model and every request's life, with no protocol in it; the `complete` and `eval`
//! commands drive the same service, so they see what an editor sees. Below it everything works
//! on plain text, ropes and byte offsets ([`complete::complete`] is one request start to end).
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
mod finish;
mod language;
mod lsp;
mod position;
mod service;
mod syntax;
mod verify;

// The binary's commands.
pub use cli::{run as run_complete, CompleteArgs};
pub use eval::{run as run_eval, EvalArgs};
pub use lsp::{serve_stdio, serve_tcp, Exit};

// What the reliability tests (tests/reliability) drive directly: documents under random edits
// in every position encoding, against their own model of the text.
pub use document::{Document, TextChange};
pub use language::by_language_id;
pub use position::{Encoding, LineCol};
pub use syntax::for_each_node;
