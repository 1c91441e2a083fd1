//! The completion service: open documents, settings, the model, and the life of every request
//! (in flight, debounced, superseded, stale, or answered from the previous answer), with no
//! protocol in it. The LSP edge ([`crate::lsp`]), `complete` and `eval` all drive it, so the
//! editor, the command line and the evaluation see the same behaviour.
//!
//! Ordering: every method that reads or edits documents does so before its first `.await`,
//! under one `std::sync::Mutex` that is never held across an `.await`. A caller that starts
//! methods in arrival order (tower-lsp polls each handler once, in order) therefore applies
//! edits strictly in that order, and a request sees exactly the edits made before it.
//!
//! Syntax: edits only change the rope and edit the old tree; reparses run on blocking threads
//! (`documents.rs`), and only a request that needs the tree of its exact text waits for one.
//!
//! Cancellation: a newer completion request for a document, any edit to it, closing it and
//! shutdown set the [`CancelToken`] of the work on it, which the model checks between
//! refinement steps; dropping a request's future (`$/cancelRequest`) does too. What stopped a
//! request is read back from the state ([`Error::Modified`], [`Error::Superseded`],
//! [`Error::ShuttingDown`]), so the token needs no reason of its own.

mod documents;
mod requests;
mod reuse;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;

use crate::config::Settings;
use crate::context::PlanError;
use crate::document::Document;
use crate::engine::{CancelToken, Engine, EngineError, ModelSource, ModelStatus};
use crate::position::PositionError;

pub use documents::DocumentView;
pub use requests::{Actions, Completed, Edit, Options};
use reuse::LastAnswer;

/// What can go wrong with a request, for the edge to turn into its protocol's errors. "Nothing
/// to offer" (no model yet, no candidate survived) is not an error: requests answer `None`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown document {0}")]
    UnknownDocument(String),
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("the selection is empty")]
    EmptySelection,
    /// The document changed or closed while the request ran: its result is of no use.
    #[error("the document changed")]
    Modified,
    /// A newer completion request for the same document replaced this one.
    #[error("a newer request replaced this one")]
    Superseded,
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The model panicked on this request (the worker survived and dropped its caches).
    #[error(transparent)]
    Engine(EngineError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
}

/// Handle to the service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every parse result and every edit: wakes requests waiting for a tree.
    syntax_changed: watch::Sender<u64>,
    engine: Engine,
    /// The model named on the command line; wins over the `model` setting.
    pinned_model: Option<PathBuf>,
}

struct State {
    docs: HashMap<String, Document>,
    settings: Settings,
    /// The model asked for last.
    source: ModelSource,
    /// Token of the latest completion request per document (a newer one cancels it).
    inflight: HashMap<String, CancelToken>,
    /// Tokens of the fill / rewrite commands running on each document: an edit makes their
    /// result useless, so it stops them.
    commands: HashMap<String, Vec<CancelToken>>,
    last: HashMap<String, LastAnswer>,
    shutting_down: bool,
}

impl State {
    /// Stops the completion and the commands running on `key` (its text changed or closed).
    fn cancel_work(&mut self, key: &str) {
        if let Some(t) = self.inflight.remove(key) {
            t.cancel();
        }
        for t in self.commands.remove(key).into_iter().flatten() {
            t.cancel();
        }
    }

    /// Why a request on `key`, begun on text `generation` and now stopped or finished, must not
    /// be answered; `None` when nothing stands in its way.
    fn stopped(&self, key: &str, generation: u64, token: &CancelToken) -> Option<Error> {
        if self.shutting_down {
            Some(Error::ShuttingDown)
        } else if self.docs.get(key).map(|d| d.generation) != Some(generation) {
            Some(Error::Modified)
        } else if token.is_cancelled() {
            Some(Error::Superseded)
        } else {
            None
        }
    }
}

impl Service {
    /// A service with no document open and its model worker started (loading nothing yet:
    /// see [`Self::load`]). `pinned_model` (the command line's `--model`) wins over the
    /// `model` setting.
    pub fn new(pinned_model: Option<PathBuf>) -> Service {
        let source = ModelSource::from_option(pinned_model.clone());
        Service {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    docs: HashMap::new(),
                    settings: Settings::default(),
                    source,
                    inflight: HashMap::new(),
                    commands: HashMap::new(),
                    last: HashMap::new(),
                    shutting_down: false,
                }),
                syntax_changed: watch::Sender::new(0),
                engine: Engine::start(),
                pinned_model,
            }),
        }
    }

    /// The state lock. A panic while holding it must not wedge the server, so poisoning is
    /// ignored (every mutation leaves the state consistent at each statement).
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    pub fn settings(&self) -> Settings {
        self.state().settings.clone()
    }

    /// Replaces the settings (the command line's and eval's, made in code).
    pub fn set_settings(&self, settings: Settings) {
        self.state().settings = settings;
    }

    /// Merges client JSON into the settings (see [`Settings::merged`]). Returns whether the
    /// model to use changed, which calls for a [`Self::load`]; on an error nothing changes.
    pub fn configure(&self, value: &Value) -> Result<bool, serde_json::Error> {
        let mut st = self.state();
        st.settings = st.settings.merged(value)?;
        let source = ModelSource::from_option(
            self.shared
                .pinned_model
                .clone()
                .or_else(|| st.settings.model.clone()),
        );
        let changed = source != st.source;
        st.source = source;
        Ok(changed)
    }

    /// Starts loading the model the settings name; [`Self::ready`] waits for it.
    pub fn load(&self) -> ModelSource {
        let source = self.state().source.clone();
        self.shared.engine.load(source.clone());
        source
    }

    /// Waits until no load is pending: the model's description, or why there is none.
    pub async fn ready(&self) -> Result<String, EngineError> {
        self.shared.engine.ready().await
    }

    pub fn status(&self) -> ModelStatus {
        self.shared.engine.status()
    }

    /// Stops all work; requests still running answer [`Error::ShuttingDown`].
    pub fn shut_down(&self) {
        let mut st = self.state();
        st.shutting_down = true;
        for (_, t) in st.inflight.drain() {
            t.cancel();
        }
        for t in st.commands.drain().flat_map(|(_, v)| v) {
            t.cancel();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cancels a request's work when its future is dropped (`$/cancelRequest`, shutdown).
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
