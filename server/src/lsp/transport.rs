//! Input framing guard: re-frames the client's byte stream so that tower-lsp only ever sees
//! well-formed JSON-RPC messages.
//!
//! tower-lsp-server reads through a `FramedRead`, which ends the stream at the first decode
//! error: one malformed message (bad JSON, a missing `Content-Length`, a non-UTF-8 body) would
//! stop the server. Here every frame is parsed first; a bad one is replaced by a request with a
//! `null` id to [`MALFORMED_METHOD`], whose handler answers the JSON-RPC parse error (-32700).

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tower_lsp_server::jsonrpc::{Request, Response};

/// Method the substitute of a malformed message calls (its params: what was wrong).
pub const MALFORMED_METHOD: &str = "diffusionLs/malformedMessage";
/// Largest message accepted (a 1 GB `didOpen` is not a document anybody edits).
const MAX_MESSAGE: usize = 256 << 20;

/// Spawns the guard over `input`; read the sanitised stream from the returned pipe.
pub fn guard<R: AsyncRead + Unpin + Send + 'static>(input: R) -> DuplexStream {
    let (mut tx, rx) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        loop {
            let frame = match read_frame(&mut input).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("unreadable input: {e}");
                    break;
                }
            };
            let body = match frame {
                Ok(body) => body,
                Err(reason) => {
                    tracing::warn!("malformed message: {reason}");
                    serde_json::to_vec(&serde_json::json!({
                        "jsonrpc": "2.0", "id": null, "method": MALFORMED_METHOD, "params": reason,
                    }))
                    .expect("a JSON literal serialises")
                }
            };
            let header = format!("Content-Length: {}\r\n\r\n", body.len());
            if tx.write_all(header.as_bytes()).await.is_err() || tx.write_all(&body).await.is_err()
            {
                break; // the server stopped reading (exit)
            }
        }
        // Dropping `tx` ends the server's input: EOF.
    });
    rx
}

/// Next frame: `Ok(Some(Ok(body)))`, `Ok(Some(Err(reason)))` for a malformed one (already
/// skipped), `Ok(None)` at end of input.
async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
) -> std::io::Result<Option<Result<Vec<u8>, String>>> {
    let mut content_length: Option<Result<usize, String>> = None;
    let mut saw_header = false;
    loop {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if saw_header {
                break;
            }
            continue; // stray blank line between messages
        }
        saw_header = true;
        if line.len() > 8192 {
            return Ok(Some(Err("header line too long".into())));
        }
        if let Some((name, value)) = text.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|e| format!("bad Content-Length {value:?}: {e}")),
                );
            }
        }
    }
    let len = match content_length {
        None => return Ok(Some(Err("message without Content-Length".into()))),
        Some(Err(e)) => return Ok(Some(Err(e))),
        Some(Ok(n)) if n > MAX_MESSAGE => {
            // Skip it without holding it in memory.
            tokio::io::copy(&mut input.take(n as u64), &mut tokio::io::sink()).await?;
            return Ok(Some(Err(format!("message of {n} bytes is too large"))));
        }
        Some(Ok(n)) => n,
    };
    let mut body = vec![0; len];
    input.read_exact(&mut body).await?;
    Ok(Some(check(body)))
}

/// A body tower-lsp can decode: UTF-8 JSON shaped as a request, notification or response.
fn check(body: Vec<u8>) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(&body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    if serde_json::from_str::<Request>(text).is_ok()
        || serde_json::from_str::<Response>(text).is_ok()
    {
        return Ok(body);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(e) => Err(format!("invalid JSON: {e}")),
        Ok(_) => Err("not a JSON-RPC 2.0 message".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &'static [u8]) -> String {
        let mut out = String::new();
        guard(input).read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn passes_good_frames_and_replaces_bad_ones() {
        let good = r#"{"jsonrpc":"2.0","id":1,"method":"shutdown"}"#;
        let out = run(
            b"Content-Length: 44\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"shutdown\"}",
        )
        .await;
        assert_eq!(out, format!("Content-Length: 44\r\n\r\n{good}"));
        let out = run(b"Content-Length: 5\r\n\r\n{oops\
Content-Length: 2\r\n\r\n[]\
X-Nothing: 1\r\n\r\n\
Content-Length: 44\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"shutdown\"}")
            .await;
        assert_eq!(out.matches(MALFORMED_METHOD).count(), 3, "{out}");
        assert!(out.ends_with(good), "{out}");
        assert!(!out.contains("Content-Type"));
    }
}
