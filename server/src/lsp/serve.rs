//! Serving: the lifecycle LSP asks a server to keep, the tower service around [`Backend`] (the
//! panic guard, and the answers to requests nobody handles), and the stdio / TCP loops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tower_lsp_server::jsonrpc::{Error, ErrorCode, Request, Response};
use tower_lsp_server::{ClientSocket, LspService, Server};

use super::{transport, Backend};

/// Where the session stands: set by `initialize` and `shutdown`, read by the answers to
/// unknown methods and by the exit code.
#[derive(Default)]
pub struct Lifecycle(AtomicU8);

const INITIALIZED: u8 = 1;
const SHUT_DOWN: u8 = 2;

impl Lifecycle {
    pub fn initialized(&self) {
        self.0.fetch_max(INITIALIZED, Ordering::Relaxed);
    }
    pub fn shut_down(&self) {
        self.0.store(SHUT_DOWN, Ordering::Relaxed);
    }
    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a session ended: LSP wants exit code 0 only after `shutdown`, 1 for an `exit` (or end
/// of input) without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Clean,
    WithoutShutdown,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Clean => 0,
            Exit::WithoutShutdown => 1,
        }
    }
}

/// Wraps tower-lsp's service so that a panic in any handler becomes an internal-error response
/// (or, for a notification, a log line) instead of unwinding through the message loop and
/// taking the server down, and so that requests for methods nobody handles get the answer LSP
/// asks for. The model thread has its own guard (see [`crate::engine`]).
struct PanicGuard<S> {
    inner: S,
    lifecycle: Arc<Lifecycle>,
}

impl<S> tower_service::Service<Request> for PanicGuard<S>
where
    S: tower_service::Service<Request, Response = Option<Response>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures::FutureExt;
        let id = req.id().cloned();
        let method = req.method().to_string();
        let lifecycle = self.lifecycle.clone();
        let fut = self.inner.call(req);
        Box::pin(std::panic::AssertUnwindSafe(fut).catch_unwind().map(move |r| match r {
            // tower-lsp drops every `$/` message it has no handler for, requests included;
            // LSP asks for MethodNotFound when such a message carries an id.
            Ok(Ok(None)) if method.starts_with("$/") && id.is_some() => Ok(id.map(|id| {
                Response::from_error(id, unknown_method(&lifecycle, &method))
            })),
            Ok(Ok(Some(r)))
                if r.error().is_some_and(|e| e.code == ErrorCode::MethodNotFound) =>
            {
                let id = r.id().clone();
                Ok(Some(Response::from_error(id, unknown_method(&lifecycle, &method))))
            }
            Ok(r) => r,
            Err(p) => {
                tracing::error!(%method, "handler panicked: {}", crate::engine::panic_message(&*p));
                Ok(id.map(|id| {
                    let mut e = Error::internal_error();
                    e.message = format!("{method} failed: internal error").into();
                    Response::from_error(id, e)
                }))
            }
        }))
    }
}

/// The answer to a method nobody handles. tower-lsp gives MethodNotFound whatever the
/// lifecycle; LSP wants ServerNotInitialized before `initialize` and InvalidRequest after
/// `shutdown`, for every request.
fn unknown_method(lifecycle: &Lifecycle, method: &str) -> Error {
    match lifecycle.get() {
        SHUT_DOWN => Error::invalid_request(),
        INITIALIZED => {
            let mut e = Error::method_not_found();
            e.message = format!("method not found: {method}").into();
            e
        }
        _ => Error {
            code: ErrorCode::ServerError(-32002),
            message: "Server not initialized".into(),
            data: None,
        },
    }
}

fn service(
    cli_model: Option<PathBuf>,
    lifecycle: Arc<Lifecycle>,
) -> (PanicGuard<LspService<Backend>>, ClientSocket) {
    let (inner, socket) =
        LspService::build(|client| Backend::new(client, cli_model, lifecycle.clone()))
            .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
            .custom_method(super::ext::DEBUG_DOCUMENT, Backend::debug_document)
            .custom_method(super::ext::DEBUG_STATUS, Backend::debug_status)
            .custom_method(super::ext::DEBUG_PANIC, Backend::debug_panic)
            .custom_method(transport::MALFORMED_METHOD, Backend::malformed)
            .finish();
    (PanicGuard { inner, lifecycle }, socket)
}

/// Handlers waiting on the model hold a slot of tower-lsp's concurrency limit (4 by default);
/// more slots keep edits from queueing behind them.
const CONCURRENCY: usize = 64;

async fn serve<R, W>(read: R, write: W, cli_model: Option<PathBuf>) -> Exit
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin,
{
    let lifecycle = Arc::new(Lifecycle::default());
    let (service, socket) = service(cli_model, lifecycle.clone());
    Server::new(transport::guard(read), write, socket)
        .concurrency_level(CONCURRENCY)
        .serve(service)
        .await;
    if lifecycle.get() == SHUT_DOWN {
        Exit::Clean
    } else {
        Exit::WithoutShutdown
    }
}

/// Serves LSP on stdin/stdout until `exit` or the end of input.
pub async fn serve_stdio(cli_model: Option<PathBuf>) -> Exit {
    serve(tokio::io::stdin(), tokio::io::stdout(), cli_model).await
}

/// Serves LSP to the first client that connects to `addr`, until `exit`.
pub async fn serve_tcp(
    addr: std::net::SocketAddr,
    cli_model: Option<PathBuf>,
) -> std::io::Result<Exit> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("listening on {}", listener.local_addr()?);
    let (stream, peer) = listener.accept().await?;
    tracing::info!(%peer, "client connected");
    let (read, write) = tokio::io::split(stream);
    Ok(serve(read, write, cli_model).await)
}
