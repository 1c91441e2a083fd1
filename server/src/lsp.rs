//! The language server: LSP messages in, plain requests to the pipeline out. With
//! [`crate::service`] (the tower service around it), the only code that speaks JSON-RPC.
//!
//! Built on `tower-lsp-server` 0.23, the maintained fork of tower-lsp: tower-lsp itself is
//! unmaintained and pinned to an lsp-types without LSP 3.18 `inlineCompletion`, while the fork's
//! `ls_types` has `InlineCompletionParams`/`InlineCompletionItem` and
//! `ServerCapabilities::inline_completion_provider`. Its `LanguageServer` trait has no
//! `inline_completion` method yet, so that request is registered with `custom_method`.
//!
//! Ordering: tower-lsp polls handlers concurrently (`buffer_unordered`), but each handler's
//! first poll happens in arrival order. Every handler here reads or edits documents only in
//! its synchronous prefix, under a `std::sync::Mutex` that is never held across an `.await`, so
//! edits apply strictly in arrival order and a request sees exactly the edits sent before it.
//!
//! Syntax: edits only change the rope and edit the old tree; reparses run on blocking threads
//! ([`spawn_parses`]), and only a request that needs the tree of its exact text waits for one
//! ([`Backend::current_tree`]), so one slow parse holds up no other request.
//!
//! Cancellation: a newer completion request for a document, any edit to it, and
//! `$/cancelRequest` (which makes tower-lsp drop the handler's future) all set the request's
//! [`CancelToken`], which the model checks between refinement steps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::{Error, Result};
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer};

use crate::complete::{self, Answer};
use crate::config::Settings;
use crate::context::{is_closing, Target};
use crate::document::{Document, ParseJob, Snapshot, SyntaxState, TextChange};
use crate::engine::{CancelToken, Engine, EngineError, ModelSource, ModelStatus};
use crate::position::{self, Encoding, LineCol};
use crate::reuse::LastAnswer;
use crate::service::{INITIALIZED, SHUTDOWN_REQUESTED};

pub const ACCEPT_COMMAND: &str = "diffusion-ls.acceptCompletion";
pub const FILL_COMMAND: &str = "diffusion-ls.fillSelection";
pub const REWRITE_COMMAND: &str = "diffusion-ls.rewriteFunction";
/// Test/debug request: `{uri}` → `{version, text}` of the server's copy of a document.
pub const DEBUG_DOCUMENT: &str = "diffusionLs/debugDocument";
/// Test/debug request: waits for the model to load, then `{model, ready}`.
pub const DEBUG_STATUS: &str = "diffusionLs/status";
/// Longest wait for a model that is still loading before answering with nothing.
const LOAD_WAIT: Duration = Duration::from_secs(120);

struct State {
    docs: HashMap<String, Document>,
    encoding: Encoding,
    settings: Settings,
    /// Token of the latest completion request per document (a newer one cancels it).
    inflight: HashMap<String, CancelToken>,
    /// Tokens of the fill / rewrite commands running on each document: an edit makes their
    /// result useless, so it stops them.
    commands: HashMap<String, Vec<CancelToken>>,
    last: HashMap<String, LastAnswer>,
    work_done_progress: bool,
    document_changes: bool,
    source: ModelSource,
}

pub struct Backend {
    client: Client,
    state: Arc<Mutex<State>>,
    /// Bumped after every parse result and every edit: wakes requests waiting for a tree.
    syntax_changed: Arc<tokio::sync::watch::Sender<u64>>,
    engine: Engine,
    /// `--model` on the command line; wins over `initializationOptions.model`.
    cli_model: Option<PathBuf>,
}

/// What a completion request does after its synchronous part.
enum Work {
    /// Served from the previous answer.
    Cached(Answer),
    /// Run the model under this token.
    Run(CancelToken),
}

/// The synchronous part of a completion request, done before its first `.await`.
struct Begun {
    snap: Snapshot,
    /// Cursor byte offset.
    byte: usize,
    settings: Settings,
    enc: Encoding,
    work: Work,
}

/// Cancels a request's work when its handler future is dropped (`$/cancelRequest`, shutdown).
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn invalid(msg: impl std::fmt::Display) -> Error {
    Error::invalid_params(msg.to_string())
}

fn lc(p: Position) -> LineCol {
    LineCol::new(p.line, p.character)
}

fn pos(rope: &ropey::Rope, byte: usize, enc: Encoding) -> Position {
    let p = position::from_byte(rope, byte, enc);
    Position::new(p.line, p.col)
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
}

impl Backend {
    pub fn new(client: Client, cli_model: Option<PathBuf>) -> Backend {
        Backend {
            client,
            syntax_changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            state: Arc::new(Mutex::new(State {
                docs: HashMap::new(),
                encoding: Encoding::Utf16,
                settings: Settings::default(),
                inflight: HashMap::new(),
                commands: HashMap::new(),
                last: HashMap::new(),
                work_done_progress: false,
                document_changes: false,
                source: ModelSource::Default,
            })),
            engine: Engine::start(),
            cli_model,
        }
    }

    /// The state lock. A panic while holding it must not wedge the server, so poisoning is
    /// ignored (every mutation leaves the state consistent at each statement).
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Starts the reparse `key` needs, if any (call under the state lock, after an edit).
    fn schedule_parse(&self, st: &mut State, key: &str) {
        if let Some(job) = st.docs.get_mut(key).and_then(Document::take_parse_job) {
            spawn_parses(
                self.state.clone(),
                self.syntax_changed.clone(),
                key.to_string(),
                job,
            );
        }
        self.syntax_changed.send_modify(|n| *n += 1);
    }

    /// Waits until the document's syntax settles for `snap`'s text and puts its tree into the
    /// snapshot. `false`: the document changed or closed meanwhile (the request is stale).
    async fn current_tree(&self, snap: &mut Snapshot) -> bool {
        let mut changed = self.syntax_changed.subscribe();
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

    fn start_loading(&self, source: ModelSource, work_done_progress: bool) {
        self.engine.load(source);
        let (client, engine) = (self.client.clone(), self.engine.clone());
        tokio::spawn(async move {
            let mut progress = None;
            if work_done_progress {
                let token = NumberOrString::String("diffusion-ls/load-model".into());
                if client
                    .create_work_done_progress(token.clone())
                    .await
                    .is_ok()
                {
                    progress = Some(
                        client
                            .progress(token, "Loading diffusion model")
                            .begin()
                            .await,
                    );
                }
            }
            let result = engine.ready().await;
            let message = match &result {
                Ok(d) => format!("loaded {d}"),
                Err(e) => format!("{e}"),
            };
            if let Some(p) = progress {
                p.finish_with_message(message.clone()).await;
            }
            match result {
                Ok(_) => {
                    client
                        .log_message(MessageType::INFO, format!("diffusion-ls: {message}"))
                        .await
                }
                Err(_) => {
                    client
                        .show_message(
                            MessageType::ERROR,
                            format!(
                            "diffusion-ls: cannot load the model, completions are off ({message})"
                        ),
                        )
                        .await
                }
            }
        });
    }

    /// Synchronous part of a completion: snapshot, byte offset, and either an answer served
    /// from the previous one or a fresh token registered as the document's latest request.
    fn begin_completion(&self, uri: &Uri, at: Position) -> Result<Option<Begun>> {
        let mut st = self.state();
        let key = uri.as_str().to_string();
        let Some(doc) = st.docs.get(&key) else {
            tracing::warn!(uri = %key, "completion for a document that is not open");
            return Ok(None);
        };
        let enc = st.encoding;
        let byte = position::to_byte(&doc.rope, lc(at), enc).map_err(invalid)?;
        let snap = doc.snapshot(&key);
        let settings = st.settings.clone();
        if let Some(items) = st
            .last
            .get(&key)
            .and_then(|l| l.serve(&key, &snap.rope, byte))
        {
            tracing::debug!(uri = %key, items = items.len(), "served from the previous completion");
            let items = items
                .into_iter()
                .map(|text| complete::Item {
                    text,
                    mean_logprob: 0.0,
                })
                .collect();
            let kind = crate::context::cursor_kind(&snap.rope, byte);
            let answer = Answer {
                kind,
                replace: byte..byte,
                items,
                stats: Default::default(),
            };
            return Ok(Some(Begun {
                snap,
                byte,
                settings,
                enc,
                work: Work::Cached(answer),
            }));
        }
        let token = CancelToken::default();
        if let Some(old) = st.inflight.insert(key, token.clone()) {
            old.cancel();
        }
        Ok(Some(Begun {
            snap,
            byte,
            settings,
            enc,
            work: Work::Run(token),
        }))
    }

    /// Completion at a position: `None` when there is nothing to offer (no model, cancelled,
    /// superseded, stale, or no candidate survived).
    async fn complete_at(
        &self,
        uri: &Uri,
        at: Position,
    ) -> Result<Option<(Snapshot, usize, Encoding, Answer)>> {
        let Some(Begun {
            snap,
            byte,
            settings,
            enc,
            work,
        }) = self.begin_completion(uri, at)?
        else {
            return Ok(None);
        };
        let token = match work {
            Work::Cached(answer) => return Ok(Some((snap, byte, enc, answer))),
            Work::Run(token) => token,
        };
        let _guard = CancelOnDrop(token.clone());
        tokio::time::sleep(Duration::from_millis(settings.debounce_ms)).await;
        let mut snap = snap;
        if token.is_cancelled() || !self.current_tree(&mut snap).await || token.is_cancelled() {
            return Ok(None);
        }
        let req = complete::Request {
            snapshot: snap.clone(),
            target: Target::Cursor(byte),
            settings,
            span_len: None,
            heal: true,
            cancel: token.clone(),
        };
        let answer = match self.run_model(req, token.clone()).await? {
            Some(a) => a,
            None => return Ok(None),
        };
        let mut st = self.state();
        let key = uri.as_str();
        if st.inflight.get(key).is_some_and(|t| t.same(&token)) {
            st.inflight.remove(key);
        }
        // A result computed for an older version of the document is of no use.
        if st.docs.get(key).map(|d| d.generation) != Some(snap.generation) || token.is_cancelled() {
            return Ok(None);
        }
        if !answer.items.is_empty() {
            let texts = answer.items.iter().map(|i| i.text.clone()).collect();
            st.last.insert(
                key.to_string(),
                LastAnswer::new(key, snap.rope.clone(), byte, texts),
            );
        }
        Ok(Some((snap, byte, enc, answer)))
    }

    /// Runs one pipeline request on the model thread, mapping "no answer" outcomes to `None`.
    async fn run_model(
        &self,
        req: complete::Request,
        token: CancelToken,
    ) -> Result<Option<Answer>> {
        let engine = self.engine.clone();
        let ready = tokio::time::timeout(LOAD_WAIT, engine.ready()).await;
        if !matches!(ready, Ok(Ok(_))) {
            return Ok(None);
        }
        let uri = req.snapshot.uri.clone();
        let job = move |lm: &model::DiffusionLm, caches: &mut crate::engine::Caches| {
            complete::complete(lm, &req, Some(caches.for_document(&uri)))
        };
        match engine.run(token, job).await {
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
            Ok(Err(complete::CompleteError::Plan(e))) => Err(invalid(e)),
            Ok(Err(e)) => {
                tracing::warn!("completion failed: {e}");
                Ok(None)
            }
            Err(EngineError::Cancelled) => Ok(None),
            // The worker survived (and dropped its caches); this request gets the error, the
            // next one a fresh start.
            Err(e @ EngineError::Panicked(_)) => {
                tracing::error!("{e}");
                let mut err = Error::internal_error();
                err.message = format!("{e}").into();
                Err(err)
            }
            Err(e) => {
                tracing::debug!("no completion: {e}");
                Ok(None)
            }
        }
    }

    /// Tabby's rule: when the rest of the line is only closing characters, the item replaces
    /// them (re-typing them at its end), so the editor can show it as an extension of the line.
    fn line_rest_range(rope: &ropey::Rope, byte: usize) -> (usize, String) {
        let line = rope.byte_to_line(byte);
        let end = if line + 1 < rope.len_lines() {
            rope.line_to_byte(line + 1)
        } else {
            rope.len_bytes()
        };
        let rest = rope.byte_slice(byte..end).to_string();
        let rest = rest.trim_end_matches(['\n', '\r']);
        if !rest.is_empty() && rest.chars().all(|c| is_closing(c) || c == ' ' || c == '\t') {
            (byte + rest.len(), rest.to_string())
        } else {
            (byte, String::new())
        }
    }

    pub async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> Result<Option<InlineCompletionResponse>> {
        let tdp = params.text_document_position;
        let Some((snap, byte, enc, answer)) = self
            .complete_at(&tdp.text_document.uri, tdp.position)
            .await?
        else {
            return Ok(None);
        };
        let (end, rest) = Self::line_rest_range(&snap.rope, byte);
        let range = Range::new(pos(&snap.rope, byte, enc), pos(&snap.rope, end, enc));
        let items = answer
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| InlineCompletionItem {
                insert_text: format!("{}{}", item.text, rest),
                filter_text: None,
                range: Some(range),
                command: Some(Command {
                    title: "Accept diffusion completion".into(),
                    command: ACCEPT_COMMAND.into(),
                    arguments: Some(vec![json!({
                        "uri": tdp.text_document.uri.as_str(), "version": snap.version, "index": i,
                    })]),
                }),
                insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
            })
            .collect();
        Ok(Some(InlineCompletionResponse::List(InlineCompletionList {
            items,
        })))
    }

    /// Answer to a malformed message (see [`crate::transport`]): the JSON-RPC parse error.
    pub async fn malformed(&self, reason: Value) -> Result<()> {
        Err(Error {
            code: tower_lsp_server::jsonrpc::ErrorCode::ParseError,
            message: format!("malformed message: {}", reason.as_str().unwrap_or("?")).into(),
            data: None,
        })
    }

    /// Test/debug: the server's copy of a document and where its syntax tree stands
    /// (`waitForSyntax`: once no parse is due any more).
    pub async fn debug_document(&self, params: DebugDocumentParams) -> Result<Value> {
        let mut changed = self.syntax_changed.subscribe();
        loop {
            {
                let st = self.state();
                let doc = st
                    .docs
                    .get(params.uri.as_str())
                    .ok_or_else(|| invalid("unknown document"))?;
                let syntax = match doc.syntax() {
                    SyntaxState::Ready => "ready".to_string(),
                    SyntaxState::Pending => "pending".to_string(),
                    SyntaxState::Off(why) => format!("off: {why}"),
                };
                if !(params.wait_for_syntax && doc.syntax() == SyntaxState::Pending) {
                    return Ok(json!({
                        "version": doc.version, "text": doc.rope.to_string(),
                        "languageId": doc.language_id, "syntax": syntax,
                    }));
                }
            }
            if changed.changed().await.is_err() {
                return Err(Error::internal_error());
            }
        }
    }

    /// Test hook: panics inside a handler when `DIFFUSION_LS_TEST_PANIC` is set, so the tests can
    /// check that a panicking request leaves the server running.
    pub async fn debug_panic(&self) -> Result<()> {
        if std::env::var_os("DIFFUSION_LS_TEST_PANIC").is_some() {
            panic!("test panic requested");
        }
        Err(Error::method_not_found())
    }

    /// Test/debug: waits until the model is loaded (or failed) and reports it.
    pub async fn debug_status(&self) -> Result<Value> {
        let r = tokio::time::timeout(LOAD_WAIT, self.engine.ready()).await;
        let status = self.engine.status().borrow().clone();
        let model = match status {
            ModelStatus::Ready(d) => d,
            ModelStatus::Failed(reason) => reason,
            other => format!("{other:?}"),
        };
        let settings = serde_json::to_value(&self.state().settings)
            .map_err(|_| Error::internal_error())?;
        Ok(json!({ "ready": matches!(r, Ok(Ok(_))), "model": model, "settings": settings }))
    }

    /// Fill selection / rewrite function: run the model, then ask the client to apply the edit.
    async fn edit_command(
        &self,
        uri: Uri,
        target: impl FnOnce(&ropey::Rope, Encoding) -> Result<Target>,
    ) -> Result<Option<Value>> {
        let token = CancelToken::default();
        let (mut snap, target, settings, enc, document_changes) = {
            let mut st = self.state();
            let doc = st
                .docs
                .get(uri.as_str())
                .ok_or_else(|| invalid("unknown document"))?;
            let target = target(&doc.rope, st.encoding)?;
            let taken = (
                doc.snapshot(uri.as_str()),
                target,
                st.settings.clone(),
                st.encoding,
                st.document_changes,
            );
            let running = st.commands.entry(uri.as_str().to_string()).or_default();
            running.retain(CancelToken::in_use);
            running.push(token.clone());
            taken
        };
        let _guard = CancelOnDrop(token.clone());
        if !self.current_tree(&mut snap).await {
            return Ok(Some(
                json!({ "applied": false, "reason": "the document changed" }),
            ));
        }
        let req = complete::Request {
            snapshot: snap.clone(),
            target,
            settings,
            span_len: None,
            heal: true,
            cancel: token.clone(),
        };
        let Some(answer) = self.run_model(req, token.clone()).await? else {
            let reason = if token.is_cancelled() {
                "the document changed"
            } else {
                "no model answer"
            };
            return Ok(Some(json!({ "applied": false, "reason": reason })));
        };
        let Some(best) = answer.items.first() else {
            return Ok(Some(
                json!({ "applied": false, "reason": "no candidate survived" }),
            ));
        };
        if self.state().docs.get(uri.as_str()).map(|d| d.generation) != Some(snap.generation) {
            return Ok(Some(
                json!({ "applied": false, "reason": "the document changed" }),
            ));
        }
        let range = Range::new(
            pos(&snap.rope, answer.replace.start, enc),
            pos(&snap.rope, answer.replace.end, enc),
        );
        let edit = TextEdit {
            range,
            new_text: best.text.clone(),
        };
        let workspace_edit = if document_changes {
            WorkspaceEdit {
                document_changes: Some(DocumentChanges::Edits(vec![TextDocumentEdit {
                    text_document: OptionalVersionedTextDocumentIdentifier {
                        uri: uri.clone(),
                        version: Some(snap.version),
                    },
                    edits: vec![OneOf::Left(edit)],
                }])),
                ..Default::default()
            }
        } else {
            WorkspaceEdit {
                changes: Some(HashMap::from([(uri.clone(), vec![edit])])),
                ..Default::default()
            }
        };
        // Documents change only through edits the client applies.
        let applied = match self.client.apply_edit(workspace_edit).await {
            Ok(r) => r.applied,
            Err(e) => {
                tracing::warn!("workspace/applyEdit failed: {e}");
                false
            }
        };
        Ok(Some(json!({ "applied": applied })))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DebugDocumentParams {
    uri: Uri,
    #[serde(default)]
    wait_for_syntax: bool,
}

#[derive(Deserialize)]
struct FillArgs {
    uri: Uri,
    range: Range,
}

#[derive(Deserialize)]
struct RewriteArgs {
    uri: Uri,
    position: Position,
}

fn arg<T: serde::de::DeserializeOwned>(params: &ExecuteCommandParams) -> Result<T> {
    let v = params.arguments.first().cloned().unwrap_or(Value::Null);
    serde_json::from_value(v)
        .map_err(|e| invalid(format!("{}: bad arguments: {e}", params.command)))
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let offered = params
            .capabilities
            .general
            .as_ref()
            .and_then(|g| g.position_encodings.clone())
            .unwrap_or_default();
        // UTF-8 matches the rope's bytes; UTF-32 its chars; UTF-16 is the mandatory fallback.
        let encoding = if offered.contains(&PositionEncodingKind::UTF8) {
            Encoding::Utf8
        } else if offered.contains(&PositionEncodingKind::UTF32) {
            Encoding::Utf32
        } else {
            Encoding::Utf16
        };
        let mut st = self.state();
        st.encoding = encoding;
        if let Some(opts) = &params.initialization_options {
            match st.settings.merged(opts) {
                Ok(s) => st.settings = s,
                Err(e) => tracing::warn!("ignoring initializationOptions: {e}"),
            }
        }
        st.work_done_progress = params
            .capabilities
            .window
            .as_ref()
            .and_then(|w| w.work_done_progress)
            .unwrap_or(false);
        st.document_changes = params
            .capabilities
            .workspace
            .as_ref()
            .and_then(|w| w.workspace_edit.as_ref())
            .and_then(|w| w.document_changes)
            .unwrap_or(false);
        st.source =
            ModelSource::from_option(self.cli_model.clone().or_else(|| st.settings.model.clone()));
        tracing::info!(?encoding, settings = ?st.settings, source = ?st.source, "initialize");
        INITIALIZED.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(match encoding {
                    Encoding::Utf8 => PositionEncodingKind::UTF8,
                    Encoding::Utf16 => PositionEncodingKind::UTF16,
                    Encoding::Utf32 => PositionEncodingKind::UTF32,
                }),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        ..Default::default()
                    },
                )),
                completion_provider: Some(CompletionOptions::default()),
                inline_completion_provider: Some(OneOf::Left(true)),
                code_action_provider: Some(CodeActionProviderCapability::Options(
                    CodeActionOptions {
                        code_action_kinds: Some(vec![CodeActionKind::REFACTOR_REWRITE]),
                        ..Default::default()
                    },
                )),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: vec![
                        ACCEPT_COMMAND.into(),
                        FILL_COMMAND.into(),
                        REWRITE_COMMAND.into(),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            },
            offset_encoding: None,
            server_info: Some(ServerInfo {
                name: "diffusion-ls".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let (source, wdp) = {
            let st = self.state();
            (st.source.clone(), st.work_done_progress)
        };
        self.start_loading(source, wdp);
    }

    async fn shutdown(&self) -> Result<()> {
        SHUTDOWN_REQUESTED.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.state();
        for (_, t) in st.inflight.drain() {
            t.cancel();
        }
        for t in st.commands.drain().flat_map(|(_, v)| v) {
            t.cancel();
        }
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let d = params.text_document;
        let doc = Document::new(&d.language_id, d.version, &d.text);
        tracing::debug!(
            uri = d.uri.as_str(),
            bytes = d.text.len(),
            syntax = ?doc.syntax(),
            "open"
        );
        let key = d.uri.as_str().to_string();
        let mut st = self.state();
        st.docs.insert(key.clone(), doc);
        // A reopened document's previous answer is of another text.
        st.last.remove(&key);
        st.cancel_work(&key);
        self.schedule_parse(&mut st, &key);
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let key = params.text_document.uri.as_str();
        let changes: Vec<TextChange> = params
            .content_changes
            .into_iter()
            .map(|c| TextChange {
                range: c.range.map(|r| (lc(r.start), lc(r.end))),
                text: c.text,
            })
            .collect();
        let mut st = self.state();
        let enc = st.encoding;
        let Some(doc) = st.docs.get_mut(key) else {
            tracing::warn!(uri = key, "didChange for a document that is not open");
            return;
        };
        if let Err(e) = doc.apply_changes(&changes, params.text_document.version, enc) {
            tracing::error!(
                uri = key,
                "bad didChange, the document may be out of sync: {e}"
            );
        }
        // Work for the previous version would be thrown away: stop it now.
        st.cancel_work(key);
        self.schedule_parse(&mut st, key);
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let key = params.text_document.uri.as_str();
        let mut st = self.state();
        st.docs.remove(key);
        st.last.remove(key);
        st.cancel_work(key);
        self.syntax_changed.send_modify(|n| *n += 1);
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let reload = {
            let mut st = self.state();
            match st.settings.merged(&params.settings) {
                Ok(s) => st.settings = s,
                Err(e) => {
                    tracing::warn!("ignoring configuration: {e}");
                    return;
                }
            }
            let source = ModelSource::from_option(
                self.cli_model.clone().or_else(|| st.settings.model.clone()),
            );
            let reload = source != st.source;
            st.source = source.clone();
            reload.then_some((source, st.work_done_progress))
        };
        if let Some((source, wdp)) = reload {
            self.start_loading(source, wdp);
        }
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let tdp = params.text_document_position;
        let Some((snap, byte, enc, answer)) = self
            .complete_at(&tdp.text_document.uri, tdp.position)
            .await?
        else {
            return Ok(None);
        };
        let rope = &snap.rope;
        let line_start = rope.line_to_byte(rope.byte_to_line(byte));
        let line_prefix = rope.byte_slice(line_start..byte).to_string();
        let (end, rest) = Self::line_rest_range(rope, byte);
        let range = Range::new(pos(rope, line_start, enc), pos(rope, end, enc));
        let items = answer
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let label = item
                    .text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("")
                    .to_string();
                CompletionItem {
                    label,
                    kind: Some(CompletionItemKind::TEXT),
                    detail: Some("diffusion completion".into()),
                    filter_text: Some(line_prefix.clone()),
                    sort_text: Some(format!("{i:04}")),
                    preselect: Some(i == 0),
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                        range,
                        new_text: format!("{line_prefix}{}{rest}", item.text),
                    })),
                    ..Default::default()
                }
            })
            .collect();
        // Incomplete: the answer depends on the exact prefix, so the client must ask again.
        Ok(Some(CompletionResponse::List(CompletionList {
            is_incomplete: true,
            items,
        })))
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        let uri = &params.text_document.uri;
        let r = params.range;
        let (mut snap, chars) = {
            let st = self.state();
            let Some(doc) = st.docs.get(uri.as_str()) else {
                return Ok(None);
            };
            let chars = position::to_char_range(&doc.rope, lc(r.start), lc(r.end), st.encoding)
                .map_err(invalid)?;
            (doc.snapshot(uri.as_str()), chars)
        };
        // "Rewrite function" needs the tree of this text (just opened: still being parsed).
        self.current_tree(&mut snap).await;
        let mut actions = Vec::new();
        if !chars.is_empty() {
            actions.push(CodeActionOrCommand::CodeAction(CodeAction {
                title: "Fill selection (diffusion)".into(),
                kind: Some(CodeActionKind::REFACTOR_REWRITE),
                command: Some(Command {
                    title: "Fill selection (diffusion)".into(),
                    command: FILL_COMMAND.into(),
                    arguments: Some(vec![json!({ "uri": uri.as_str(), "range": r })]),
                }),
                ..Default::default()
            }));
        }
        let start = snap.rope.char_to_byte(chars.start);
        let in_function = match (&snap.tree, snap.grammar) {
            (Some(tree), Some(g)) => crate::syntax::function_body(tree, g, start).is_some(),
            _ => false,
        };
        if in_function {
            actions.push(CodeActionOrCommand::CodeAction(CodeAction {
                title: "Rewrite function (diffusion)".into(),
                kind: Some(CodeActionKind::REFACTOR_REWRITE),
                command: Some(Command {
                    title: "Rewrite function (diffusion)".into(),
                    command: REWRITE_COMMAND.into(),
                    arguments: Some(vec![json!({ "uri": uri.as_str(), "position": r.start })]),
                }),
                ..Default::default()
            }));
        }
        Ok(Some(actions))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<Value>> {
        match params.command.as_str() {
            ACCEPT_COMMAND => {
                tracing::info!(args = ?params.arguments, "completion accepted");
                Ok(None)
            }
            FILL_COMMAND => {
                let a: FillArgs = arg(&params)?;
                self.edit_command(a.uri, |rope, enc| {
                    let r = position::to_char_range(rope, lc(a.range.start), lc(a.range.end), enc)
                        .map_err(invalid)?;
                    if r.is_empty() {
                        return Err(invalid("the selection is empty"));
                    }
                    Ok(Target::Selection(
                        rope.char_to_byte(r.start)..rope.char_to_byte(r.end),
                    ))
                })
                .await
            }
            REWRITE_COMMAND => {
                let a: RewriteArgs = arg(&params)?;
                self.edit_command(a.uri, |rope, enc| {
                    Ok(Target::Function(
                        position::to_byte(rope, lc(a.position), enc).map_err(invalid)?,
                    ))
                })
                .await
            }
            other => Err(invalid(format!("unknown command {other}"))),
        }
    }
}

/// The state lock. A panic while holding it must not wedge the server, so poisoning is ignored
/// (every mutation leaves the state consistent at each statement).
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` and the reparses that edits made meanwhile call for, on a blocking thread, one at
/// a time per document; installs each result and wakes the requests waiting for one.
fn spawn_parses(
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    key: String,
    job: ParseJob,
) {
    tokio::task::spawn_blocking(move || {
        let mut job = Some(job);
        while let Some(j) = job.take() {
            let parsed = j.run(crate::syntax::DOCUMENT_PARSE_BUDGET);
            let elapsed = parsed.elapsed;
            let mut st = lock(&state);
            let Some(doc) = st.docs.get_mut(&key) else {
                break; // closed meanwhile
            };
            if doc.finish_parse(parsed) {
                job = doc.take_parse_job();
            }
            let syntax = doc.syntax();
            drop(st);
            if let SyntaxState::Off(why) = syntax {
                tracing::warn!(uri = %key, ms = elapsed.as_millis() as u64, "syntax off: {why}");
            } else if elapsed > Duration::from_millis(100) {
                tracing::info!(uri = %key, ms = elapsed.as_millis() as u64, "slow parse");
            }
            changed.send_modify(|n| *n += 1);
        }
    });
}
