//! diffusion-ls: a language server that completes code with a masked-diffusion language model.
//!
//! Only [`lsp`] and [`service`] speak JSON-RPC; the rest works on plain text, ropes and byte
//! offsets so the CLI (`complete`, `eval`) runs the very same pipeline ([`complete::complete`]).

pub mod cli;
pub mod complete;
pub mod config;
pub mod context;
pub mod document;
pub mod engine;
pub mod eval;
pub mod language;
pub mod lsp;
pub mod position;
pub mod reuse;
pub mod service;
pub mod syntax;
pub mod transport;
pub mod verify;
