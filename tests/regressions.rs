//! Regression tests, each named after the defect it pins (issue 12's probe, the protocol fuzzer).
//! They drive the real binary over stdio with the tiny fixture model.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "support/client.rs"]
mod client;

use client::{inline_params, pos, Client};
use serde_json::{json, Value};

/// Issue 12, defect 2: `didOpen` of 700,000 `"`, a one-character `didChange`, and
/// `diffusionLs/status` answered 14 s later, because the reparse ran inside the edit handler.
/// Now a request that needs no tree is answered while the parse runs: the `status` sent after
/// a request that waits for the parse is answered first.
#[test]
fn slow_reparse_blocks_every_request() {
    let mut s = Client::start();
    s.initialize(&["utf-16"], json!({"debounceMs": 0}));
    s.wait_ready();
    let cases = [
        ("file:///tmp/quotes.rs", "\"".repeat(700_000)),
        ("file:///tmp/braces.rs", "{".repeat(100_000)),
    ];
    for (uri, text) in &cases {
        s.open(uri, text);
        s.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": 2},
                   "contentChanges": [{"range": {"start": pos(0, 0), "end": pos(0, 0)}, "text": "x"}]}),
        );
        let waiting = s.send_request(
            "diffusionLs/debugDocument",
            json!({"uri": uri, "waitForSyntax": true}),
        );
        let completion = s.send_request("textDocument/inlineCompletion", inline_params(uri, 0, 1));
        let status = s.send_request("diffusionLs/status", Value::Null);
        let order = ids_in_order(&mut s, &[waiting, completion, status]);
        assert_eq!(
            order[0], status,
            "{uri}: status must not wait for the parse (order {order:?})"
        );
        // The server's copy is right, and its syntax settled one way or the other.
        let (version, server_text) = s.text(uri);
        assert_eq!(version, 2);
        assert_eq!(server_text.len(), text.len() + 1);
        assert!(server_text.starts_with('x'));
    }
    s.shutdown();
}

/// The ids of `ids` in the order their responses arrive.
fn ids_in_order(s: &mut Client, ids: &[i64]) -> Vec<i64> {
    let mut order = Vec::new();
    while order.len() < ids.len() {
        let msg = s.next_message(client::TIMEOUT).expect("responses");
        if let Some(id) = msg.get("id").and_then(Value::as_i64) {
            if msg.get("method").is_none() && ids.contains(&id) {
                assert!(msg.get("error").is_none(), "{msg}");
                order.push(id);
            }
        }
    }
    order
}

/// Issue 12, defect 3: requests named `$/…` that carry an id got no response at all (tower-lsp
/// drops every `$/` message it has no handler for); LSP asks for MethodNotFound.
#[test]
fn dollar_requests_with_an_id_get_no_response() {
    let mut s = Client::start();
    s.initialize(&["utf-16"], json!({}));
    for (id, method) in [
        (json!(7), "$/unknownRequest"),
        (json!("seven"), "$/setTrace"),
        (json!(8), "$/progress"),
    ] {
        s.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}));
        let r = s
            .try_response(&id, client::TIMEOUT)
            .unwrap_or_else(|e| panic!("{method}: no response: {e:?}"));
        assert_eq!(r["error"]["code"], -32601, "{method}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(method),
            "{r}"
        );
    }
    // `$/` notifications stay unanswered; the next request is answered as usual.
    s.notify("$/unknownNotification", json!({}));
    s.status();
    s.shutdown();
}

/// Found by the protocol fuzzer: a request for a method nobody handles got MethodNotFound
/// before `initialize` and after `shutdown` (tower-lsp answers it whatever the lifecycle);
/// LSP wants ServerNotInitialized (-32002) before and InvalidRequest (-32600) after.
#[test]
fn unknown_methods_ignore_the_lifecycle() {
    let mut s = Client::start();
    for method in ["fuzz/unknown", "$/unknown", "textDocument/completion"] {
        let r = s.request(method, json!({}));
        assert_eq!(
            r["error"]["code"], -32002,
            "{method} before initialize: {r}"
        );
    }
    s.initialize(&["utf-16"], json!({}));
    let r = s.request("fuzz/unknown", json!({}));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let r = s.request("shutdown", Value::Null);
    assert!(r.get("error").is_none(), "{r}");
    for method in ["fuzz/unknown", "$/unknown", "textDocument/completion"] {
        let r = s.request(method, json!({}));
        assert_eq!(r["error"]["code"], -32600, "{method} after shutdown: {r}");
    }
    s.notify("exit", Value::Null);
    let status = s.wait_exit(std::time::Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
