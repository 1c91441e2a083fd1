//! End-to-end tests of the `diffusion-ls` binary over stdio with real JSON-RPC framing.
//!
//! The model is the tiny random-weight fixture (or, where a test needs an answer to exist, the
//! same fixture rewritten to always write text: `writing_fixture`), so these tests check
//! protocol mechanics (framing, ordering, encodings, ranges, cancellation, commands,
//! robustness), never content.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "support/client.rs"]
mod client;

use std::time::Duration;

use client::{inline_params, pos, writing_fixture, Client, Options, TIMEOUT};
use serde_json::{json, Value};

/// Settings that make the random model produce items: no syntax check, several candidates.
fn loose() -> Value {
    json!({"verify": false, "candidates": 3, "debounceMs": 0})
}

fn at(uri: &str, line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": uri}, "position": pos(line, character)})
}

/// Applies an LSP change (`range` in UTF-16 or UTF-8 units) to a String, independently of ropey.
fn apply(text: &mut String, (l0, c0, l1, c1): (u32, u32, u32, u32), new: &str, utf8: bool) {
    let offset = |text: &str, line: u32, col: u32| -> usize {
        let start: usize = text
            .split_inclusive('\n')
            .take(line as usize)
            .map(str::len)
            .sum();
        let mut units = 0;
        for (i, ch) in text[start..].char_indices() {
            if units >= col as usize || ch == '\n' {
                return start + i;
            }
            units += if utf8 { ch.len_utf8() } else { ch.len_utf16() };
        }
        text.len()
    };
    let (a, b) = (offset(text, l0, c0), offset(text, l1, c1));
    text.replace_range(a..b, new);
}

fn edit_session(utf8: bool) {
    let mut s = Client::start();
    let enc = if utf8 { "utf-8" } else { "utf-16" };
    let init = s.initialize(
        if utf8 {
            &["utf-8", "utf-16"]
        } else {
            &["utf-16"]
        },
        json!({}),
    );
    assert_eq!(init["capabilities"]["positionEncoding"], enc);
    let uri = "file:///tmp/emoji.rs";
    let mut text =
        String::from("fn main() {\n    let s = \"héllo 😀 wörld\";\n    // 日本語 👩‍💻\n}\n");
    s.open(uri, &text);
    let width = |s: &str| {
        if utf8 {
            s.len() as u32
        } else {
            s.encode_utf16().count() as u32
        }
    };
    let l1 = "    let s = \"héllo 😀";
    let l2 = "    // 日本語 👩‍💻";
    type Edit = ((u32, u32, u32, u32), &'static str);
    let edits: Vec<Edit> = vec![
        ((1, width(l1), 1, width(l1)), "🎉"),
        ((2, width(l2), 2, width(l2)), " ✓"),
        (
            (1, width("    let s = \""), 1, width("    let s = \"héllo")),
            "ça",
        ),
        ((3, 0, 3, 1), "}\nfn ü() {}"),
        ((0, 3, 0, 7), "principal"),
    ];
    let mut version = 1;
    for (range, new) in edits {
        apply(&mut text, range, new, utf8);
        version += 1;
        s.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{"range": {"start": pos(range.0, range.1), "end": pos(range.2, range.3)}, "text": new}],
            }),
        );
    }
    // A burst of one-character edits, each its own notification: they must apply in order.
    let line = text.lines().count() as u32 - 1;
    let start = width(text.lines().last().unwrap());
    for (i, ch) in "/* 順序 🧪 */".chars().enumerate() {
        let col = start + width(&"/* 順序 🧪 */".chars().take(i).collect::<String>());
        apply(&mut text, (line, col, line, col), &ch.to_string(), utf8);
        version += 1;
        s.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{"range": {"start": pos(line, col), "end": pos(line, col)}, "text": ch.to_string()}],
            }),
        );
    }
    assert_eq!(s.text(uri), (version, text));
    s.shutdown();
}

#[test]
fn incremental_edits_with_emoji_utf16() {
    edit_session(false);
}

#[test]
fn incremental_edits_with_emoji_utf8() {
    edit_session(true);
}

#[test]
fn initialize_advertises_features() {
    let mut s = Client::start();
    let init = s.result(
        "initialize",
        json!({
            "processId": null,
            "capabilities": {"window": {"workDoneProgress": true}},
            "initializationOptions": {"steps": 3, "debounceMs": 5},
        }),
    );
    s.notify("initialized", json!({}));
    let caps = &init["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-16");
    assert_eq!(caps["inlineCompletionProvider"], true);
    assert_eq!(caps["textDocumentSync"]["change"], 2, "incremental sync");
    let commands: Vec<&str> = caps["executeCommandProvider"]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "diffusion-ls.acceptCompletion",
        "diffusion-ls.fillSelection",
        "diffusion-ls.rewriteFunction",
    ] {
        assert!(commands.contains(&c), "{c} missing from {commands:?}");
    }
    s.wait_ready();
    // Loading reported progress: create, begin, end.
    s.wait_notification("$/progress", |p| p["value"]["kind"] == "end");
    assert!(s
        .server_requests
        .iter()
        .any(|(m, _)| m == "window/workDoneProgress/create"));
    assert!(s
        .notifications
        .iter()
        .any(|(m, p)| m == "$/progress" && p["value"]["kind"] == "begin"));
    // Settings: initializationOptions, then a partial didChangeConfiguration on top.
    let mut want = json!({
        "model": null, "steps": 3, "maxSpanTokens": 256, "candidates": 3, "temperature": 0.0,
        "contextTokens": 1024, "verify": true, "debounceMs": 5,
    });
    let settings = s.result("diffusionLs/status", Value::Null)["settings"].clone();
    assert_eq!(settings, want);
    s.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"diffusion-ls": {"candidates": 2, "verify": false}}}),
    );
    want["candidates"] = json!(2);
    want["verify"] = json!(false);
    let settings = s.result("diffusionLs/status", Value::Null)["settings"].clone();
    assert_eq!(settings, want);
    s.shutdown();
}

const SRC: &str =
    "fn add(a: i32, b: i32) -> i32 {\n    let sum = foo();\n    sum\n}\n\nfn main() {\n    \n}\n";

#[test]
fn inline_completion_items() {
    // A model that always writes text: this test checks the items' shape, not the model.
    let mut s = Client::spawn(Options {
        args: vec!["--model".into(), writing_fixture().display().to_string()],
        ..Options::default()
    });
    s.initialize(&["utf-16"], loose());
    s.wait_ready();
    let uri = "file:///tmp/inline.rs";
    s.open(uri, SRC);
    // Cursor inside `foo()`: the rest of the line is `);`, only closers.
    let col = "    let sum = foo(".len() as u32;
    let r = s.result("textDocument/inlineCompletion", inline_params(uri, 1, col));
    let items = r["items"].as_array().expect("an InlineCompletionList");
    assert!(
        !items.is_empty(),
        "the loose settings should give items: {r}"
    );
    for item in items {
        let text = item["insertText"].as_str().unwrap();
        assert!(
            text.ends_with(");"),
            "Tabby's rule re-types the closers: {text:?}"
        );
        assert_eq!(item["range"]["start"], pos(1, col));
        assert_eq!(
            item["range"]["end"],
            pos(1, col + 2),
            "the range covers `);`"
        );
        assert_eq!(item["command"]["command"], "diffusion-ls.acceptCompletion");
    }
    // Blank line in an empty block: a block completion at the cursor, nothing to replace.
    let r = s.result("textDocument/inlineCompletion", inline_params(uri, 6, 4));
    for item in r["items"].as_array().unwrap() {
        assert_eq!(item["range"]["start"], item["range"]["end"]);
    }
    // Accepting runs the listed command.
    let r = s.request(
        "workspace/executeCommand",
        json!({"command": "diffusion-ls.acceptCompletion", "arguments": [{"uri": uri, "version": 1, "index": 0}]}),
    );
    assert!(r.get("error").is_none(), "{r}");
    s.shutdown();
}

#[test]
fn completion_items_for_menus() {
    let mut s = Client::start();
    s.initialize(&["utf-8", "utf-16"], loose());
    s.wait_ready();
    let uri = "file:///tmp/menu.rs";
    s.open(uri, SRC);
    let r = s.result("textDocument/completion", at(uri, 2, 7));
    assert_eq!(r["isIncomplete"], true);
    let items = r["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{r}");
    for item in items {
        assert_eq!(item["filterText"], "    sum");
        assert!(item["detail"].as_str().unwrap().contains("diffusion"));
        let edit = &item["textEdit"];
        assert_eq!(edit["range"]["start"], pos(2, 0));
        assert_eq!(edit["range"]["end"], pos(2, 7));
        let new_text = edit["newText"].as_str().unwrap();
        assert!(new_text.starts_with("    sum"), "{new_text:?}");
        let label = item["label"].as_str().unwrap();
        assert!(!label.contains('\n') && !label.is_empty());
    }
    s.shutdown();
}

#[test]
fn typing_into_a_completion_is_served_from_it() {
    let mut s = Client::start();
    s.initialize(&["utf-8"], loose());
    s.wait_ready();
    let uri = "file:///tmp/typing.rs";
    s.open(uri, SRC);
    // The first cursor where the random model offers an item of two characters or more (the
    // fixture is deterministic: always the same one).
    let lines: Vec<&str> = SRC.lines().collect();
    let cursors = [
        (1, "    let sum = foo(".len()),
        (1, "    let sum = ".len()),
        (2, 7),
        (6, 4),
    ];
    let (line, col, completion, closers) = cursors
        .iter()
        .find_map(|&(line, col)| {
            let r = s.result(
                "textDocument/inlineCompletion",
                inline_params(uri, line, col as u32),
            );
            let closers = &lines[line as usize][col..];
            r["items"].as_array()?.iter().find_map(|i| {
                let text = i["insertText"].as_str()?.strip_suffix(closers)?;
                let mut c = text.chars();
                (c.next().is_some() && !c.as_str().trim().is_empty())
                    .then(|| (line, col as u32, text.to_string(), closers.to_string()))
            })
        })
        .expect("an item of two characters or more at one of the cursors");
    let typed: String = completion.chars().take(1).collect();
    let rest = &completion[typed.len()..];
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2},
               "contentChanges": [{"range": {"start": pos(line, col), "end": pos(line, col)}, "text": typed}]}),
    );
    let r = s.result(
        "textDocument/inlineCompletion",
        inline_params(uri, line, col + typed.len() as u32),
    );
    let texts: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["insertText"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&format!("{rest}{closers}").as_str()),
        "{texts:?} should contain {rest:?}"
    );
    s.shutdown();
}

/// LSP's answers for work that stopped: RequestCancelled for `$/cancelRequest` and for
/// requests still running at `shutdown`, ContentModified for a request a newer one replaced
/// or an edit made stale (rust-analyzer's convention: the client asks again).
#[test]
fn cancelled_superseded_and_stale_requests_answer_with_lsp_errors() {
    let mut s = Client::start();
    // A long debounce keeps the requests pending long enough to cancel them.
    s.initialize(&["utf-16"], json!({"verify": false, "debounceMs": 800}));
    s.wait_ready();
    let uri = "file:///tmp/cancel.rs";
    s.open(uri, SRC);
    let id = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    s.notify("$/cancelRequest", json!({"id": id}));
    let r = s.wait_response(id);
    assert_eq!(r["error"]["code"], -32800, "cancelled request: {r}");
    // A newer request for the same document supersedes the older one.
    let old = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    let new = s.send_request("textDocument/completion", at(uri, 2, 6));
    let r_old = s.wait_response(old);
    assert_eq!(r_old["error"]["code"], -32801, "superseded: {r_old}");
    let r_new = s.wait_response(new);
    assert!(r_new["result"]["items"].is_array(), "{r_new}");
    // An edit makes a pending request stale.
    let stale = s.send_request("textDocument/completion", at(uri, 2, 7));
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2},
               "contentChanges": [{"range": {"start": pos(2, 7), "end": pos(2, 7)}, "text": "x"}]}),
    );
    let r = s.wait_response(stale);
    assert_eq!(r["error"]["code"], -32801, "stale: {r}");
    // So does closing the document.
    let closed = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    s.notify(
        "textDocument/didClose",
        json!({"textDocument": {"uri": uri}}),
    );
    let r = s.wait_response(closed);
    assert_eq!(r["error"]["code"], -32801, "closed: {r}");
    // Shutdown stops what is still running.
    s.open(uri, SRC);
    let running = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    let shutdown = s.send_request("shutdown", Value::Null);
    let r = s.wait_response(running);
    assert_eq!(r["error"]["code"], -32800, "running at shutdown: {r}");
    let r = s.wait_response(shutdown);
    assert!(r.get("error").is_none(), "{r}");
    s.notify("exit", Value::Null);
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

fn code_actions(s: &mut Client, uri: &str, range: Value) -> Value {
    s.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": range, "context": {"diagnostics": []}}),
    )
}

#[test]
fn code_actions_and_commands_apply_edits() {
    // A model that always writes text: this test checks the command path, not the model.
    let mut s = Client::spawn(Options {
        args: vec!["--model".into(), writing_fixture().display().to_string()],
        ..Options::default()
    });
    s.initialize(&["utf-16"], loose());
    s.wait_ready();
    let uri = "file:///tmp/actions.rs";
    s.open(uri, SRC);
    let selection = json!({"start": pos(1, 14), "end": pos(1, 19)});
    let r = code_actions(&mut s, uri, selection.clone());
    let actions = r["result"].as_array().unwrap();
    let commands: Vec<&str> = actions
        .iter()
        .map(|a| a["command"]["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        ["diffusion-ls.fillSelection", "diffusion-ls.rewriteFunction"]
    );
    // Outside any function: no rewrite.
    let r = code_actions(&mut s, uri, json!({"start": pos(4, 0), "end": pos(4, 0)}));
    assert_eq!(r["result"], json!([]), "{r}");

    // Run the commands as the client would: with the arguments the actions carry.
    let fill = actions[0]["command"].clone();
    assert_eq!(fill["arguments"], json!([{"uri": uri, "range": selection}]));
    let r = s.result("workspace/executeCommand", fill);
    assert_eq!(r, json!({"applied": true}));
    let (method, params) = s.server_requests.last().unwrap().clone();
    assert_eq!(method, "workspace/applyEdit");
    let edit = &params["edit"]["changes"][uri][0];
    assert_eq!(edit["range"], selection);
    assert!(
        !edit["newText"].as_str().unwrap().trim().is_empty(),
        "{edit}"
    );
    // The server never edits the document itself.
    assert_eq!(s.text(uri).1, SRC);

    let rewrite = actions[1]["command"].clone();
    assert_eq!(
        rewrite["arguments"],
        json!([{"uri": uri, "position": pos(1, 14)}])
    );
    let r = s.result("workspace/executeCommand", rewrite);
    assert_eq!(r, json!({"applied": true}));
    let (_, params) = s.server_requests.last().unwrap().clone();
    let edit = &params["edit"]["changes"][uri][0];
    assert_eq!(
        edit["range"],
        json!({"start": pos(0, 31), "end": pos(3, 0)}),
        "the body inside the braces"
    );
    // A client that refuses the edit: the answer says so.
    s.apply_edit_reply = json!({"applied": false});
    let r = s.result(
        "workspace/executeCommand",
        json!({"command": "diffusion-ls.rewriteFunction", "arguments": [{"uri": uri, "position": pos(2, 4)}]}),
    );
    assert_eq!(r["applied"], false, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("client"), "{r}");
    assert_eq!(s.text(uri).1, SRC);
    s.shutdown();
}

/// Every request that cannot be carried out answers InvalidParams, naming what is wrong.
#[test]
fn bad_requests_answer_invalid_params() {
    let mut s = Client::start();
    s.initialize(&["utf-16"], loose());
    let uri = "file:///tmp/invalid.rs";
    s.open(uri, SRC);
    let command = |command: &str, args: Value| json!({"command": command, "arguments": [args]});
    let cases = [
        (
            "workspace/executeCommand",
            command("diffusion-ls.nope", json!({})),
            "unknown command",
        ),
        (
            "workspace/executeCommand",
            command("diffusion-ls.fillSelection", json!({"nope": 1})),
            "bad arguments",
        ),
        (
            "workspace/executeCommand",
            command(
                "diffusion-ls.fillSelection",
                json!({"uri": uri, "range": {"start": pos(1, 4), "end": pos(1, 4)}}),
            ),
            "selection is empty",
        ),
        (
            "workspace/executeCommand",
            command(
                "diffusion-ls.fillSelection",
                json!({"uri": uri, "range": {"start": pos(1, 9), "end": pos(1, 4)}}),
            ),
            "range ends before it starts",
        ),
        (
            "workspace/executeCommand",
            command(
                "diffusion-ls.fillSelection",
                json!({"uri": "file:///nowhere.rs", "range": {"start": pos(0, 0), "end": pos(0, 1)}}),
            ),
            "unknown document",
        ),
        (
            "workspace/executeCommand",
            command(
                "diffusion-ls.rewriteFunction",
                json!({"uri": uri, "position": pos(4, 0)}),
            ),
            "not inside a function",
        ),
        (
            "workspace/executeCommand",
            command(
                "diffusion-ls.rewriteFunction",
                json!({"uri": uri, "position": pos(99, 0)}),
            ),
            "past the end",
        ),
        (
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri}, "range": {"start": pos(1, 9), "end": pos(1, 4)},
                   "context": {"diagnostics": []}}),
            "range ends before it starts",
        ),
        (
            "diffusionLs/debugDocument",
            json!({"uri": "file:///nowhere.rs"}),
            "unknown document",
        ),
    ];
    for (method, params, says) in cases {
        let r = s.request(method, params.clone());
        assert_eq!(r["error"]["code"], -32602, "{method} {params}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(says),
            "{method} {params}: {message:?} should say {says:?}"
        );
    }
    s.shutdown();
}

#[test]
fn bad_input_never_kills_the_server() {
    let mut s = Client::start();
    s.initialize(&["utf-16"], json!({"debounceMs": 0}));
    let uri = "file:///tmp/bad.rs";
    s.open(uri, "fn a() { let s = \"😀\"; }\n");
    // Malformed JSON: a parse error with a null id.
    s.write_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 99, \"method\": ");
    let r = s.try_response(&Value::Null, TIMEOUT).unwrap();
    assert_eq!(r["error"]["code"], -32700, "{r}");
    // Past the end of the document, and inside a surrogate pair: clear errors.
    let r = s.request("textDocument/inlineCompletion", inline_params(uri, 40, 0));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let col = "fn a() { let s = \"".encode_utf16().count() as u32 + 1;
    let r = s.request("textDocument/completion", at(uri, 0, col));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("surrogate"),
        "{r}"
    );
    // Column past the end of a line: clamped, as the specification says.
    let r = s.request("textDocument/completion", at(uri, 0, 500));
    assert!(r.get("error").is_none(), "{r}");
    // Unknown document: an empty answer.
    let r = s.result(
        "textDocument/inlineCompletion",
        inline_params("file:///nowhere.rs", 0, 0),
    );
    assert!(r.is_null(), "{r}");
    // Bad edit ranges are reported in the log, not applied, and do not stop the server.
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2},
               "contentChanges": [{"range": {"start": pos(9, 0), "end": pos(9, 1)}, "text": "x"}]}),
    );
    s.notify("textDocument/didChange", json!({"nonsense": true}));
    // Parameters of the wrong shape.
    let r = s.request("textDocument/completion", json!({"textDocument": 5}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // A huge document is accepted and answered with nothing.
    let huge = "// padding\n".repeat(200_000);
    s.open("file:///tmp/huge.rs", &huge);
    let r = s.result(
        "textDocument/inlineCompletion",
        inline_params("file:///tmp/huge.rs", 10, 0),
    );
    assert!(
        r.is_null() || r["items"].as_array().is_some_and(|i| i.is_empty()),
        "{r}"
    );
    // A handler that panics answers an internal error; the server keeps going.
    let r = s.request("diffusionLs/debugPanic", Value::Null);
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert_eq!(s.text(uri).1, "fn a() { let s = \"😀\"; }\n");
    s.shutdown();
}

#[test]
fn exit_without_shutdown_is_an_error_exit() {
    let mut s = Client::start();
    s.initialize(&["utf-16"], json!({}));
    s.notify("exit", Value::Null);
    let status = s.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{status:?}");
}

#[test]
fn missing_model_keeps_answering_empty() {
    let mut s = Client::spawn(Options {
        args: vec!["--model".into(), "/nonexistent/model".into()],
        ..Options::default()
    });
    s.initialize(&["utf-16"], json!({}));
    let status = s.status();
    assert_eq!(status["ready"], false);
    assert!(
        status["model"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/model"),
        "{status}"
    );
    let uri = "file:///tmp/nomodel.rs";
    s.open(uri, SRC);
    let r = s.result("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    assert!(r.is_null(), "{r}");
    // The reason is shown to the user.
    let shown = s.wait_notification("window/showMessage", |_| true);
    assert!(
        shown["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/model"),
        "{shown}"
    );
    s.shutdown();
}
