//! The tower service around [`Backend`]: the panic guard, the answers LSP asks for to requests
//! nobody handles (`$/` requests, unknown methods before `initialize` and after `shutdown`),
//! and serving it on stdio or TCP.

use std::path::PathBuf;

use tower_lsp_server::jsonrpc::{Error, ErrorCode};
use tower_lsp_server::{LspService, Server};

use crate::lsp::{Backend, DEBUG_DOCUMENT, DEBUG_STATUS};

/// Wraps tower-lsp's service so that a panic in any handler becomes an internal-error response
/// (or, for a notification, a log line) instead of unwinding through the message loop and
/// taking the server down, and so that requests for methods nobody handles get the answer LSP
/// asks for. The model thread has its own guard (see [`crate::engine`]).
struct PanicGuard<S>(S);

impl<S> tower_service::Service<tower_lsp_server::jsonrpc::Request> for PanicGuard<S>
where
    S: tower_service::Service<
        tower_lsp_server::jsonrpc::Request,
        Response = Option<tower_lsp_server::jsonrpc::Response>,
    >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, std::result::Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tower_lsp_server::jsonrpc::Request) -> Self::Future {
        use futures::FutureExt;
        let id = req.id().cloned();
        let method = req.method().to_string();
        let fut = self.0.call(req);
        Box::pin(std::panic::AssertUnwindSafe(fut).catch_unwind().map(move |r| match r {
            // tower-lsp drops every `$/` message it has no handler for, requests included;
            // LSP asks for MethodNotFound when such a message carries an id.
            Ok(Ok(None)) if method.starts_with("$/") && id.is_some() => Ok(id.map(|id| {
                tower_lsp_server::jsonrpc::Response::from_error(id, unknown_method(&method))
            })),
            Ok(Ok(Some(r)))
                if r.error().is_some_and(|e| e.code == ErrorCode::MethodNotFound) =>
            {
                let id = r.id().clone();
                let e = unknown_method(&method);
                Ok(Some(tower_lsp_server::jsonrpc::Response::from_error(id, e)))
            }
            Ok(r) => r,
            Err(p) => {
                tracing::error!(%method, "handler panicked: {}", crate::engine::panic_message(&*p));
                Ok(id.map(|id| {
                    let mut e = Error::internal_error();
                    e.message = format!("{method} failed: internal error").into();
                    tower_lsp_server::jsonrpc::Response::from_error(id, e)
                }))
            }
        }))
    }
}

/// The answer to a method nobody handles. tower-lsp gives MethodNotFound whatever the
/// lifecycle; LSP wants ServerNotInitialized before `initialize` and InvalidRequest after
/// `shutdown`, for every request.
fn unknown_method(method: &str) -> Error {
    use std::sync::atomic::Ordering::Relaxed;
    if SHUTDOWN_REQUESTED.load(Relaxed) {
        Error::invalid_request()
    } else if !INITIALIZED.load(Relaxed) {
        Error {
            code: ErrorCode::ServerError(-32002),
            message: "Server not initialized".into(),
            data: None,
        }
    } else {
        let mut e = Error::method_not_found();
        e.message = format!("method not found: {method}").into();
        e
    }
}

fn service(
    cli_model: Option<PathBuf>,
) -> (
    PanicGuard<LspService<Backend>>,
    tower_lsp_server::ClientSocket,
) {
    let (service, socket) = LspService::build(|client| Backend::new(client, cli_model))
        .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
        .custom_method(DEBUG_DOCUMENT, Backend::debug_document)
        .custom_method(DEBUG_STATUS, Backend::debug_status)
        .custom_method("diffusionLs/debugPanic", Backend::debug_panic)
        .custom_method(crate::transport::MALFORMED_METHOD, Backend::malformed)
        .finish();
    (PanicGuard(service), socket)
}

/// Set by a successful `initialize`.
pub(crate) static INITIALIZED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Set by `shutdown`: the process exit code is 0 only after it (LSP: `exit` without `shutdown`
/// exits with 1).
pub static SHUTDOWN_REQUESTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Handlers waiting on the model hold a slot of tower-lsp's concurrency limit (4 by default);
/// more slots keep edits from queueing behind them.
const CONCURRENCY: usize = 64;

/// Serves LSP on stdin/stdout until `exit`.
pub async fn serve_stdio(cli_model: Option<PathBuf>) {
    let (service, socket) = service(cli_model);
    Server::new(
        crate::transport::guard(tokio::io::stdin()),
        tokio::io::stdout(),
        socket,
    )
    .concurrency_level(CONCURRENCY)
    .serve(service)
    .await;
}

/// Serves LSP to the first client that connects to `addr`, until `exit`.
pub async fn serve_tcp(
    addr: std::net::SocketAddr,
    cli_model: Option<PathBuf>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on {}", listener.local_addr()?);
    let (stream, peer) = listener.accept().await?;
    tracing::info!(%peer, "client connected");
    let (read, write) = tokio::io::split(stream);
    let (service, socket) = service(cli_model);
    Server::new(crate::transport::guard(read), write, socket)
        .concurrency_level(CONCURRENCY)
        .serve(service)
        .await;
    Ok(())
}
