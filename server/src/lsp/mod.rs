//! The protocol edge: LSP messages in, calls to the completion [`Service`] out, its answers
//! back as LSP types. The only code that speaks JSON-RPC; it holds what is negotiated with the
//! client and the lifecycle, and no completion logic (that is the service's).
//!
//! Built on `tower-lsp-server` 0.23, the maintained fork of tower-lsp: tower-lsp itself is
//! unmaintained and pinned to an lsp-types without LSP 3.18 `inlineCompletion`, while the fork's
//! `ls_types` has `InlineCompletionParams`/`InlineCompletionItem` and
//! `ServerCapabilities::inline_completion_provider`. Its `LanguageServer` trait has no
//! `inline_completion` method yet, so that request is registered with `custom_method`.
//!
//! Ordering: tower-lsp polls handlers concurrently (`buffer_unordered`), but each handler's
//! first poll happens in arrival order. Every handler calls the service before its own first
//! `.await`, and the service reads and edits documents before its first one, so edits apply
//! strictly in arrival order and a request sees exactly the edits sent before it.
//!
//! `$/cancelRequest` makes tower-lsp drop the handler's future and answer RequestCancelled;
//! dropping the service's future cancels the work.

mod ext;
mod serve;
mod to_proto;
mod transport;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tower_lsp_server::jsonrpc::{Error, Result};
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer};

use crate::context::Target;
use crate::position::{self, Encoding};
use crate::service::{self, Completed, Edit, Options, Service};
use ext::{AcceptArgs, DebugDocumentParams, EditOutcome, FillArgs, RewriteArgs, Status};
use serve::Lifecycle;
pub use serve::{serve_stdio, serve_tcp, Exit};
use to_proto::{invalid_params, line_col};

/// Longest `diffusionLs/status` waits for a model that is still loading.
const LOAD_WAIT: Duration = Duration::from_secs(120);

/// What `initialize` settled with the client.
#[derive(Clone, Copy, Debug, Default)]
struct Negotiated {
    encoding: Encoding,
    work_done_progress: bool,
    /// The client takes versioned `documentChanges` in a `WorkspaceEdit`.
    document_changes: bool,
}

pub struct Backend {
    client: Client,
    service: Service,
    /// Set once by `initialize` (tower-lsp refuses a second one and every request before it).
    negotiated: OnceLock<Negotiated>,
    lifecycle: Arc<Lifecycle>,
}

impl Backend {
    fn new(client: Client, cli_model: Option<PathBuf>, lifecycle: Arc<Lifecycle>) -> Backend {
        Backend {
            client,
            service: Service::new(cli_model),
            negotiated: OnceLock::new(),
            lifecycle,
        }
    }

    fn negotiated(&self) -> Negotiated {
        self.negotiated.get().copied().unwrap_or_default()
    }

    /// Loads the model the settings name, reporting progress and the outcome to the user.
    fn start_loading(&self) {
        let source = self.service.load();
        let work_done_progress = self.negotiated().work_done_progress;
        let (client, service) = (self.client.clone(), self.service.clone());
        tokio::spawn(async move {
            let mut progress = None;
            if work_done_progress {
                let token = NumberOrString::String("diffusion-ls/load-model".into());
                if client
                    .create_work_done_progress(token.clone())
                    .await
                    .is_ok()
                {
                    let title = format!("Loading diffusion model ({source})");
                    progress = Some(client.progress(token, title).begin().await);
                }
            }
            let result = service.ready().await;
            let message = match &result {
                Ok(d) => format!("loaded {d}"),
                Err(e) => e.to_string(),
            };
            if let Some(p) = progress {
                p.finish_with_message(message.clone()).await;
            }
            if result.is_ok() {
                let message = format!("diffusion-ls: {message}");
                client.log_message(MessageType::INFO, message).await;
            } else {
                let message =
                    format!("diffusion-ls: cannot load the model, completions are off ({message})");
                client.show_message(MessageType::ERROR, message).await;
            }
        });
    }

    /// The opening `inlineCompletion` and `completion` share: the service's answer at the
    /// request's position, with the encoding to convert it back in.
    async fn complete_at(
        &self,
        tdp: &TextDocumentPositionParams,
    ) -> Result<Option<(Completed, Encoding)>> {
        let enc = self.negotiated().encoding;
        let at = line_col(tdp.position);
        let done = self
            .service
            .complete(
                tdp.text_document.uri.as_str(),
                |rope| position::to_byte(rope, at, enc),
                Options::default(),
            )
            .await?;
        if let Some(d) = &done {
            let (uri, items) = (tdp.text_document.uri.as_str(), d.answer.items.len());
            tracing::debug!(uri, items, source = ?d.source, "completion");
        }
        Ok(done.map(|d| (d, enc)))
    }

    pub async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> Result<Option<InlineCompletionResponse>> {
        let tdp = params.text_document_position;
        let done = self.complete_at(&tdp).await?;
        let uri = &tdp.text_document.uri;
        Ok(done.map(|(d, enc)| to_proto::inline_completions(uri, &d, enc)))
    }

    /// Fill selection / rewrite function: the service's edit, applied by the client.
    async fn edit_command(
        &self,
        uri: Uri,
        target: impl FnOnce(&ropey::Rope, Encoding) -> std::result::Result<Target, service::Error>,
    ) -> Result<Option<Value>> {
        let Negotiated {
            encoding,
            document_changes,
            ..
        } = self.negotiated();
        let outcome = match self
            .service
            .edit(uri.as_str(), |r| target(r, encoding))
            .await?
        {
            Edit::NotApplied(reason) => EditOutcome::not_applied(reason),
            Edit::Apply {
                snapshot,
                replace,
                text,
            } => {
                let edit = TextEdit {
                    range: to_proto::range(&snapshot.rope, replace, encoding),
                    new_text: text,
                };
                let edit = to_proto::workspace_edit(&uri, snapshot.version, edit, document_changes);
                // Documents change only through edits the client applies.
                match self.client.apply_edit(edit).await {
                    Ok(r) => EditOutcome::applied(r.applied),
                    Err(e) => {
                        tracing::warn!("workspace/applyEdit failed: {e}");
                        EditOutcome::applied(false)
                    }
                }
            }
        };
        Ok(Some(
            serde_json::to_value(outcome).map_err(|_| Error::internal_error())?,
        ))
    }

    /// Answer to a malformed message (see [`transport`]): the JSON-RPC parse error.
    pub async fn malformed(&self, reason: Value) -> Result<()> {
        Err(Error {
            code: tower_lsp_server::jsonrpc::ErrorCode::ParseError,
            message: format!("malformed message: {}", reason.as_str().unwrap_or("?")).into(),
            data: None,
        })
    }

    pub async fn debug_document(&self, params: DebugDocumentParams) -> Result<ext::DebugDocument> {
        let uri = params.uri.as_str();
        Ok(self.service.document(uri, params.wait_for_syntax).await?)
    }

    pub async fn debug_panic(&self) -> Result<()> {
        if std::env::var_os("DIFFUSION_LS_TEST_PANIC").is_some() {
            panic!("test panic requested");
        }
        Err(Error::method_not_found())
    }

    pub async fn debug_status(&self) -> Result<Status> {
        let ready = tokio::time::timeout(LOAD_WAIT, self.service.ready()).await;
        Ok(Status {
            ready: matches!(ready, Ok(Ok(_))),
            model: self.service.status().to_string(),
            settings: self.service.settings(),
        })
    }
}

fn negotiate(params: &InitializeParams) -> Negotiated {
    let caps = &params.capabilities;
    let offered = caps
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
    Negotiated {
        encoding,
        work_done_progress: caps
            .window
            .as_ref()
            .and_then(|w| w.work_done_progress)
            .unwrap_or(false),
        document_changes: caps
            .workspace
            .as_ref()
            .and_then(|w| w.workspace_edit.as_ref())
            .and_then(|w| w.document_changes)
            .unwrap_or(false),
    }
}

fn arg<T: serde::de::DeserializeOwned>(params: &ExecuteCommandParams) -> Result<T> {
    let v = params.arguments.first().cloned().unwrap_or(Value::Null);
    serde_json::from_value(v)
        .map_err(|e| invalid_params(format!("{}: bad arguments: {e}", params.command)))
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let negotiated = negotiate(&params);
        // tower-lsp answers a second `initialize` itself, so this is the first.
        let _ = self.negotiated.set(negotiated);
        if let Some(opts) = &params.initialization_options {
            if let Err(e) = self.service.configure(opts) {
                tracing::warn!("ignoring initializationOptions: {e}");
            }
        }
        let settings = serde_json::to_string(&self.service.settings()).unwrap_or_default();
        tracing::info!(?negotiated, %settings, "initialize");
        self.lifecycle.initialized();
        Ok(InitializeResult {
            capabilities: to_proto::capabilities(negotiated.encoding),
            offset_encoding: None,
            server_info: Some(ServerInfo {
                name: "diffusion-ls".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        self.start_loading();
    }

    async fn shutdown(&self) -> Result<()> {
        self.lifecycle.shut_down();
        self.service.shut_down();
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let d = params.text_document;
        self.service
            .open(d.uri.as_str(), &d.language_id, d.version, &d.text);
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.uri.as_str();
        let changes = to_proto::text_changes(params.content_changes);
        let enc = self.negotiated().encoding;
        let version = params.text_document.version;
        match self.service.change(uri, version, &changes, enc) {
            Ok(()) => {}
            Err(e @ service::Error::UnknownDocument(_)) => tracing::warn!("didChange: {e}"),
            Err(e) => tracing::error!(uri, "bad didChange, the document may be out of sync: {e}"),
        }
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.service.close(params.text_document.uri.as_str());
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        match self.service.configure(&params.settings) {
            Ok(true) => self.start_loading(),
            Ok(false) => {}
            Err(e) => tracing::warn!("ignoring configuration: {e}"),
        }
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let done = self.complete_at(&params.text_document_position).await?;
        Ok(done.map(|(d, enc)| to_proto::menu_completions(&d, enc)))
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        let uri = &params.text_document.uri;
        let r = params.range;
        let enc = self.negotiated().encoding;
        let actions = self
            .service
            .actions(uri.as_str(), |rope| {
                position::to_byte_range(rope, line_col(r.start), line_col(r.end), enc)
            })
            .await?;
        Ok(actions.map(|a| to_proto::code_actions(uri, r, a)))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<Value>> {
        match params.command.as_str() {
            ext::ACCEPT_COMMAND => {
                let a: AcceptArgs = arg(&params)?;
                tracing::info!(uri = a.uri.as_str(), version = ?a.version, index = ?a.index, "completion accepted");
                Ok(None)
            }
            ext::FILL_COMMAND => {
                let a: FillArgs = arg(&params)?;
                let (start, end) = (line_col(a.range.start), line_col(a.range.end));
                self.edit_command(a.uri, |rope, enc| {
                    let r = position::to_byte_range(rope, start, end, enc)?;
                    if r.is_empty() {
                        return Err(service::Error::EmptySelection);
                    }
                    Ok(Target::Selection(r))
                })
                .await
            }
            ext::REWRITE_COMMAND => {
                let a: RewriteArgs = arg(&params)?;
                let at = line_col(a.position);
                self.edit_command(a.uri, |rope, enc| {
                    Ok(Target::Function(position::to_byte(rope, at, enc)?))
                })
                .await
            }
            other => Err(invalid_params(format!("unknown command {other}"))),
        }
    }
}
