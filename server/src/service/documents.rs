//! Open documents: opening, edits and closing (each stops the work on the document), the
//! background parses that keep each tree current, and waiting for the tree of a text.

use std::time::Duration;

use serde::Serialize;

use super::{lock, Error, Service, State};
use crate::document::{Document, ParseJob, Snapshot, SyntaxState, TextChange};
use crate::position::Encoding;

/// The service's copy of a document (the debug view the tests compare with their own).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentView {
    pub version: i32,
    pub text: String,
    pub language_id: String,
    /// `ready`, `pending` or `off: <why>`.
    pub syntax: String,
}

impl Service {
    pub fn open(&self, uri: &str, language_id: &str, version: i32, text: &str) {
        let doc = Document::new(language_id, version, text);
        tracing::debug!(uri, bytes = text.len(), syntax = ?doc.syntax(), "open");
        let mut st = self.state();
        st.docs.insert(uri.to_string(), doc);
        // A reopened document's previous answer is of another text.
        st.last.remove(uri);
        st.cancel_work(uri);
        self.schedule_parse(&mut st, uri);
    }

    /// Applies the changes of one `didChange`. On a bad range the remaining changes are skipped
    /// and the error returned: the client and the server now disagree until a full-text change.
    pub fn change(
        &self,
        uri: &str,
        version: i32,
        changes: &[TextChange],
        enc: Encoding,
    ) -> Result<(), Error> {
        let mut st = self.state();
        let doc = st
            .docs
            .get_mut(uri)
            .ok_or_else(|| Error::UnknownDocument(uri.to_string()))?;
        let applied = doc.apply_changes(changes, version, enc);
        // Work for the previous version would be thrown away: stop it now.
        st.cancel_work(uri);
        self.schedule_parse(&mut st, uri);
        applied.map_err(Error::Position)
    }

    pub fn close(&self, uri: &str) {
        let mut st = self.state();
        st.docs.remove(uri);
        st.last.remove(uri);
        st.cancel_work(uri);
        self.shared.syntax_changed.send_modify(|n| *n += 1);
    }

    /// The service's copy of a document; with `wait_for_syntax`, once no parse is due any more.
    pub async fn document(&self, uri: &str, wait_for_syntax: bool) -> Result<DocumentView, Error> {
        let mut changed = self.shared.syntax_changed.subscribe();
        loop {
            {
                let st = self.state();
                let doc = st
                    .docs
                    .get(uri)
                    .ok_or_else(|| Error::UnknownDocument(uri.to_string()))?;
                let syntax = doc.syntax();
                if !(wait_for_syntax && syntax == SyntaxState::Pending) {
                    return Ok(DocumentView {
                        version: doc.version,
                        text: doc.rope.to_string(),
                        language_id: doc.language_id.clone(),
                        syntax: match syntax {
                            SyntaxState::Ready => "ready".into(),
                            SyntaxState::Pending => "pending".into(),
                            SyntaxState::Off(why) => format!("off: {why}"),
                        },
                    });
                }
            }
            if changed.changed().await.is_err() {
                return Err(Error::UnknownDocument(uri.to_string()));
            }
        }
    }

    /// Starts the reparse `key` needs, if any (under the state lock, after an edit).
    fn schedule_parse(&self, st: &mut State, key: &str) {
        if let Some(job) = st.docs.get_mut(key).and_then(Document::take_parse_job) {
            spawn_parses(self.clone(), key.to_string(), job);
        }
        self.shared.syntax_changed.send_modify(|n| *n += 1);
    }

    /// Waits until the document's syntax settles for `snap`'s text and puts its tree into the
    /// snapshot. `false`: the document changed or closed meanwhile (the request is stale).
    pub(super) async fn current_tree(&self, snap: &mut Snapshot) -> bool {
        let mut changed = self.shared.syntax_changed.subscribe();
        loop {
            {
                let st = self.state();
                let Some(doc) = st.docs.get(&snap.uri) else {
                    return false;
                };
                if doc.generation != snap.generation {
                    return false;
                }
                match doc.syntax() {
                    SyntaxState::Ready => {
                        snap.tree = doc.snapshot(&snap.uri).tree;
                        return true;
                    }
                    SyntaxState::Off(_) => return true,
                    SyntaxState::Pending => {}
                }
            }
            if changed.changed().await.is_err() {
                return false;
            }
        }
    }
}

/// Runs `job` and the reparses that edits made meanwhile call for, on a blocking thread, one at
/// a time per document; installs each result and wakes the requests waiting for one.
fn spawn_parses(service: Service, key: String, job: ParseJob) {
    tokio::task::spawn_blocking(move || {
        let mut job = Some(job);
        while let Some(j) = job.take() {
            let parsed = j.run(crate::syntax::DOCUMENT_PARSE_BUDGET);
            let elapsed = parsed.elapsed;
            let mut st = lock(&service.shared.state);
            let Some(doc) = st.docs.get_mut(&key) else {
                break; // closed meanwhile
            };
            if doc.finish_parse(parsed) {
                job = doc.take_parse_job();
            }
            let syntax = doc.syntax();
            drop(st);
            let ms = elapsed.as_millis() as u64;
            if let SyntaxState::Off(why) = syntax {
                tracing::warn!(uri = %key, ms, "syntax off: {why}");
            } else if elapsed > Duration::from_millis(100) {
                tracing::info!(uri = %key, ms, "slow parse");
            }
            service.shared.syntax_changed.send_modify(|n| *n += 1);
        }
    });
}
