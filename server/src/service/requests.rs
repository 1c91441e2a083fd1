//! Requests on documents: completion at a cursor (debounce, supersede, stale check, answers
//! served from the previous answer), fill / rewrite edits, and what a range offers to do.

use std::ops::Range;
use std::time::Duration;

use model::DiffusionLm;
use ropey::Rope;

use super::{CancelOnDrop, Error, LastAnswer, Service};
use crate::complete::{self, Answer, CompleteError};
use crate::config::Settings;
use crate::context::Target;
use crate::document::Snapshot;
use crate::engine::{Caches, CancelToken, EngineError};
use crate::position::PositionError;

/// Longest wait for a model that is still loading before answering with nothing.
const LOAD_WAIT: Duration = Duration::from_secs(120);

/// A request's choices besides the settings: eval's knobs; the editor uses the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Mask this many positions instead of the syntax-sized span (eval's `--oracle-length`).
    pub span_len: Option<usize>,
    /// Token healing (eval's `--no-heal` turns it off): see [`complete::heal`].
    pub heal: bool,
    /// Eval's `--policy`: this decoding policy for every span kind.
    pub policy: Option<model::DecodingPolicy>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            span_len: None,
            heal: true,
            policy: None,
        }
    }
}

/// Where an answer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The model ran for this request.
    Model,
    /// The user typed the start of the previous answer; the rest of it is this one.
    TypedAhead,
}

/// A completion for the text of `snapshot`, at byte `cursor`.
pub struct Completed {
    pub snapshot: Snapshot,
    pub cursor: usize,
    pub answer: Answer,
    pub source: Source,
}

/// What a fill / rewrite command should do.
pub enum Edit {
    /// Replace `replace` (bytes of `snapshot`'s text) with `text`.
    Apply {
        snapshot: Snapshot,
        replace: Range<usize>,
        text: String,
    },
    /// Nothing to apply, and why (for the user).
    NotApplied(String),
}

/// What can be done with a range of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actions {
    /// The range is not empty: the model can fill it.
    pub fill: bool,
    /// The range starts inside a function with a `{ }` body: the model can rewrite it.
    pub rewrite: bool,
}

/// The synchronous part of a completion request, done before its first `.await`.
enum Begun {
    Reused(Completed),
    Run {
        snap: Snapshot,
        cursor: usize,
        settings: Settings,
        token: CancelToken,
    },
}

impl Service {
    /// Completion at the byte `cursor` picks in the document's text. `None`: nothing to offer
    /// (the document is not open, no model, no candidate survived). Stopped by an edit, a newer
    /// request or shutdown: [`Error::Modified`], [`Error::Superseded`], [`Error::ShuttingDown`].
    pub async fn complete(
        &self,
        uri: &str,
        cursor: impl FnOnce(&Rope) -> Result<usize, PositionError>,
        options: Options,
    ) -> Result<Option<Completed>, Error> {
        let (mut snap, cursor, settings, token) = match self.begin_completion(uri, cursor)? {
            None => return Ok(None),
            Some(Begun::Reused(done)) => return Ok(Some(done)),
            Some(Begun::Run {
                snap,
                cursor,
                settings,
                token,
            }) => (snap, cursor, settings, token),
        };
        let _guard = CancelOnDrop(token.clone());
        tokio::time::sleep(Duration::from_millis(settings.debounce_ms)).await;
        if token.is_cancelled() || !self.current_tree(&mut snap).await || token.is_cancelled() {
            let st = self.state();
            return Err(st
                .stopped(uri, snap.generation, &token)
                .unwrap_or(Error::Superseded));
        }
        let req = complete::Request {
            snapshot: snap.clone(),
            target: Target::Cursor(cursor),
            settings,
            span_len: options.span_len,
            heal: options.heal,
            policy: options.policy,
            cancel: token.clone(),
        };
        let answer = self.run(req, &token).await;
        let mut st = self.state();
        if st.inflight.get(uri).is_some_and(|t| t.same(&token)) {
            st.inflight.remove(uri);
        }
        // A result computed for an older text, or that a newer request replaced, is of no use.
        if let Some(e) = st.stopped(uri, snap.generation, &token) {
            return Err(e);
        }
        let Some(answer) = answer? else {
            return Ok(None);
        };
        if !answer.items.is_empty() {
            let last = LastAnswer::new(snap.rope.clone(), cursor, &answer);
            st.last.insert(uri.to_string(), last);
        }
        Ok(Some(Completed {
            snapshot: snap,
            cursor,
            answer,
            source: Source::Model,
        }))
    }

    /// Snapshot and cursor, then either the answer the previous one still gives or a fresh
    /// token registered as the document's latest request (cancelling the one before).
    fn begin_completion(
        &self,
        uri: &str,
        cursor: impl FnOnce(&Rope) -> Result<usize, PositionError>,
    ) -> Result<Option<Begun>, Error> {
        let mut st = self.state();
        let Some(doc) = st.docs.get(uri) else {
            tracing::warn!(uri, "completion for a document that is not open");
            return Ok(None);
        };
        let cursor = cursor(&doc.rope)?;
        let snap = doc.snapshot(uri);
        if let Some(answer) = st.last.get(uri).and_then(|l| l.serve(&snap.rope, cursor)) {
            tracing::debug!(
                uri,
                items = answer.items.len(),
                "served from the previous answer"
            );
            return Ok(Some(Begun::Reused(Completed {
                snapshot: snap,
                cursor,
                answer,
                source: Source::TypedAhead,
            })));
        }
        let token = CancelToken::default();
        if let Some(old) = st.inflight.insert(uri.to_string(), token.clone()) {
            old.cancel();
        }
        Ok(Some(Begun::Run {
            snap,
            cursor,
            settings: st.settings.clone(),
            token,
        }))
    }

    /// Fill the selection / rewrite the function that `target` picks in the document's text.
    /// The edit is for the snapshot's text; the caller has the client apply it.
    pub async fn edit(
        &self,
        uri: &str,
        target: impl FnOnce(&Rope) -> Result<Target, Error>,
    ) -> Result<Edit, Error> {
        let token = CancelToken::default();
        let (mut snap, target, settings) = {
            let mut st = self.state();
            let doc = st
                .docs
                .get(uri)
                .ok_or_else(|| Error::UnknownDocument(uri.to_string()))?;
            let taken = (doc.snapshot(uri), target(&doc.rope)?, st.settings.clone());
            let running = st.commands.entry(uri.to_string()).or_default();
            running.retain(CancelToken::in_use);
            running.push(token.clone());
            taken
        };
        let _guard = CancelOnDrop(token.clone());
        let changed = || Edit::NotApplied(Error::Modified.to_string());
        if !self.current_tree(&mut snap).await {
            return Ok(changed());
        }
        let req = complete::Request {
            snapshot: snap.clone(),
            target,
            settings,
            span_len: None,
            heal: true,
            policy: None,
            cancel: token.clone(),
        };
        let answer = self.run(req, &token).await?;
        if let Some(e) = self.state().stopped(uri, snap.generation, &token) {
            return Ok(match e {
                Error::ShuttingDown => Edit::NotApplied(e.to_string()),
                _ => changed(),
            });
        }
        let Some(answer) = answer else {
            return Ok(Edit::NotApplied("no model answer".into()));
        };
        let Some(best) = answer.items.first() else {
            return Ok(Edit::NotApplied("no candidate survived".into()));
        };
        Ok(Edit::Apply {
            text: best.text.clone(),
            replace: answer.replace,
            snapshot: snap,
        })
    }

    /// What can be done with the bytes `range` picks: fill them, rewrite the function around
    /// their start. `None` for a document that is not open.
    pub async fn actions(
        &self,
        uri: &str,
        range: impl FnOnce(&Rope) -> Result<Range<usize>, PositionError>,
    ) -> Result<Option<Actions>, Error> {
        let (mut snap, range) = {
            let st = self.state();
            let Some(doc) = st.docs.get(uri) else {
                return Ok(None);
            };
            (doc.snapshot(uri), range(&doc.rope)?)
        };
        // "Rewrite function" needs the tree of this text (just opened: still being parsed).
        self.current_tree(&mut snap).await;
        let rewrite = match (&snap.tree, snap.grammar) {
            (Some(tree), Some(g)) => crate::syntax::function_body(tree, g, range.start).is_some(),
            _ => false,
        };
        Ok(Some(Actions {
            fill: !range.is_empty(),
            rewrite,
        }))
    }

    /// Tokens of `text` under the loaded model (eval's oracle span length).
    pub async fn token_count(&self, text: &str) -> Result<usize, Error> {
        let text = text.to_string();
        let n = self
            .shared
            .engine
            .run(CancelToken::default(), move |lm, _| lm.encode(&text))
            .await
            .map_err(Error::Engine)??;
        Ok(n.len())
    }

    /// Runs one pipeline request on the model thread. `None`: nothing to offer (no model, a
    /// full queue, a document too large, a model error; logged), or stopped before it ran (the
    /// caller tells which from the state).
    async fn run(
        &self,
        req: complete::Request,
        token: &CancelToken,
    ) -> Result<Option<Answer>, Error> {
        let engine = &self.shared.engine;
        match tokio::time::timeout(LOAD_WAIT, engine.ready()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("no completion: {e}");
                return Ok(None);
            }
            Err(_) => {
                tracing::debug!("no completion: the model is still loading");
                return Ok(None);
            }
        }
        let uri = req.snapshot.uri.clone();
        let job = move |lm: &DiffusionLm, caches: &mut Caches| {
            complete::complete(lm, &req, Some(caches.for_document(&uri)))
        };
        match engine.run(token.clone(), job).await {
            Ok(Ok(answer)) => {
                let s = &answer.stats;
                tracing::info!(
                    kind = ?answer.kind, items = answer.items.len(), span = s.span_len, ctx = s.context_tokens,
                    checks = s.checks, remasks = s.remasks, rejections = s.rejections,
                    cancelled = s.cancelled, window_ms = format!("{:.1}", s.window_ms),
                    encode_ms = format!("{:.1}", s.encode_ms), denoise_ms = format!("{:.1}", s.denoise_ms),
                    verify_ms = format!("{:.1}", s.verify_ms), ms = format!("{:.1}", s.total_ms), "answer"
                );
                Ok(Some(answer))
            }
            Ok(Err(CompleteError::Plan(e))) => Err(Error::Plan(e)),
            Ok(Err(e)) => {
                tracing::warn!("completion failed: {e}");
                Ok(None)
            }
            Err(EngineError::Cancelled) => Ok(None),
            // The worker survived (and dropped its caches); this request gets the error, the
            // next one a fresh start.
            Err(e @ EngineError::Panicked(_)) => {
                tracing::error!("{e}");
                Err(Error::Engine(e))
            }
            Err(e) => {
                tracing::debug!("no completion: {e}");
                Ok(None)
            }
        }
    }
}
