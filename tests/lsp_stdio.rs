//! End-to-end tests of the `diffusion-ls` binary over stdio with real JSON-RPC framing.
//!
//! The model is the tiny random-weight fixture, so these tests check protocol mechanics
//! (framing, ordering, encodings, ranges, cancellation, commands, robustness), never content.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

fn fixture() -> String {
    format!(
        "{}/../model/tests/fixtures/qwen2-gqa-untied",
        env!("CARGO_MANIFEST_DIR")
    )
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: i64,
    /// Server-to-client requests seen (method, params), answered automatically.
    pub server_requests: Vec<(String, Value)>,
    pub notifications: Vec<(String, Value)>,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&["--model", &fixture()])
    }

    fn start_with(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diffusion-ls"))
            .args(args)
            .env("DIFFUSION_LS_LOG", "debug")
            .env("DIFFUSION_LS_TEST_PANIC", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn diffusion-ls");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; len.expect("Content-Length header")];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: Value = serde_json::from_slice(&body).expect("server sent valid JSON");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Server {
            child,
            stdin,
            rx,
            next_id: 1,
            server_requests: vec![],
            notifications: vec![],
        }
    }

    fn write_raw(&mut self, body: &[u8]) {
        write!(self.stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        self.stdin.write_all(body).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, v: &Value) {
        self.write_raw(serde_json::to_string(v).unwrap().as_bytes());
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its id without waiting.
    fn send_request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Next message that is a response (for `id`, or with a null id when `id` is None),
    /// answering server requests on the way.
    fn wait_response(&mut self, id: Option<i64>) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match self.rx.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no response for {id:?} within {TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server closed stdout waiting for {id:?}")
                }
            };
            if let Some(method) = msg.get("method").and_then(Value::as_str) {
                let params = msg.get("params").cloned().unwrap_or(Value::Null);
                if let Some(req_id) = msg.get("id") {
                    let result = match method {
                        "workspace/applyEdit" => json!({"applied": true}),
                        _ => Value::Null,
                    };
                    let reply = json!({"jsonrpc": "2.0", "id": req_id, "result": result});
                    self.server_requests.push((method.to_string(), params));
                    self.send(&reply);
                } else {
                    self.notifications.push((method.to_string(), params));
                }
                continue;
            }
            let got = msg.get("id").and_then(Value::as_i64);
            if got == id {
                return msg;
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.wait_response(Some(id))
    }

    fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    fn initialize(&mut self, encodings: &[&str], options: Value) -> Value {
        let r = self.result(
            "initialize",
            json!({
                "processId": null,
                "rootUri": null,
                "capabilities": {"general": {"positionEncodings": encodings}},
                "initializationOptions": options,
            }),
        );
        self.notify("initialized", json!({}));
        r
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "rust", "version": 1, "text": text}}),
        );
    }

    fn text(&mut self, uri: &str) -> (i64, String) {
        let r = self.result("diffusionLs/debugDocument", json!({"uri": uri}));
        (
            r["version"].as_i64().unwrap(),
            r["text"].as_str().unwrap().to_string(),
        )
    }

    fn wait_ready(&mut self) {
        let r = self.result("diffusionLs/status", Value::Null);
        assert_eq!(r["ready"], true, "model did not load: {r}");
    }

    fn shutdown(mut self) {
        let r = self.request("shutdown", Value::Null);
        assert!(r.get("error").is_none(), "{r}");
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after `exit`"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings that make the random model produce items: no syntax check, several candidates.
fn loose() -> Value {
    json!({"verify": false, "candidates": 3, "debounceMs": 0})
}

fn pos(line: u32, character: u32) -> Value {
    json!({"line": line, "character": character})
}

fn at(uri: &str, line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": uri}, "position": pos(line, character)})
}

fn inline_params(uri: &str, line: u32, character: u32) -> Value {
    let mut p = at(uri, line, character);
    p["context"] = json!({"triggerKind": 2});
    p
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
    let mut s = Server::start();
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
    let mut s = Server::start();
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .notifications
        .iter()
        .any(|(m, p)| m == "$/progress" && p["value"]["kind"] == "end")
    {
        assert!(
            Instant::now() < deadline,
            "no end of progress: {:?}",
            s.notifications
        );
        s.result("diffusionLs/status", Value::Null);
    }
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
        "model": null, "steps": 3, "maxSpanTokens": 256, "candidates": 1, "temperature": 0.0,
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
    let mut s = Server::start();
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
    let mut s = Server::start();
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
    let mut s = Server::start();
    s.initialize(&["utf-8"], loose());
    s.wait_ready();
    let uri = "file:///tmp/typing.rs";
    s.open(uri, SRC);
    let col = "    let sum = foo(".len() as u32;
    let r = s.result("textDocument/inlineCompletion", inline_params(uri, 1, col));
    let first = r["items"][0]["insertText"]
        .as_str()
        .expect("an item")
        .to_string();
    let completion = first.strip_suffix(");").unwrap();
    let typed: String = completion.chars().take(1).collect();
    let rest = &completion[typed.len()..];
    if rest.trim().is_empty() {
        return; // nothing left to serve; the random model gave a one-character answer
    }
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2},
               "contentChanges": [{"range": {"start": pos(1, col), "end": pos(1, col)}, "text": typed}]}),
    );
    let r = s.result(
        "textDocument/inlineCompletion",
        inline_params(uri, 1, col + typed.len() as u32),
    );
    let texts: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["insertText"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&format!("{rest});").as_str()),
        "{texts:?} should contain {rest:?}"
    );
    s.shutdown();
}

#[test]
fn cancellation_and_supersession() {
    let mut s = Server::start();
    // A long debounce keeps the requests pending long enough to cancel them.
    s.initialize(&["utf-16"], json!({"verify": false, "debounceMs": 800}));
    s.wait_ready();
    let uri = "file:///tmp/cancel.rs";
    s.open(uri, SRC);
    let id = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    s.notify("$/cancelRequest", json!({"id": id}));
    let r = s.wait_response(Some(id));
    assert_eq!(r["error"]["code"], -32800, "cancelled request: {r}");
    // A newer request for the same document supersedes the older one, which answers nothing.
    let old = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    let new = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 6));
    let r_old = s.wait_response(Some(old));
    assert!(r_old["result"].is_null(), "superseded: {r_old}");
    let r_new = s.wait_response(Some(new));
    assert!(r_new.get("error").is_none(), "{r_new}");
    // An edit makes a pending request stale.
    let stale = s.send_request("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2},
               "contentChanges": [{"range": {"start": pos(2, 7), "end": pos(2, 7)}, "text": "x"}]}),
    );
    let r = s.wait_response(Some(stale));
    assert!(r["result"].is_null(), "stale: {r}");
    s.shutdown();
}

#[test]
fn code_actions_and_commands_apply_edits() {
    let mut s = Server::start();
    s.initialize(&["utf-16"], loose());
    s.wait_ready();
    let uri = "file:///tmp/actions.rs";
    s.open(uri, SRC);
    let selection = json!({"start": pos(1, 14), "end": pos(1, 19)});
    let r = s.result(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": selection, "context": {"diagnostics": []}}),
    );
    let commands: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["command"]["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        ["diffusion-ls.fillSelection", "diffusion-ls.rewriteFunction"]
    );
    // Outside any function: no rewrite.
    let r = s.result(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "range": {"start": pos(4, 0), "end": pos(4, 0)}, "context": {"diagnostics": []}}),
    );
    assert_eq!(r.as_array().unwrap().len(), 0, "{r}");

    let args = r#"{"command": "diffusion-ls.fillSelection", "arguments": [{"uri": "file:///tmp/actions.rs", "range": {"start": {"line": 1, "character": 14}, "end": {"line": 1, "character": 19}}}]}"#;
    let r = s.result(
        "workspace/executeCommand",
        serde_json::from_str(args).unwrap(),
    );
    if r["applied"] == true {
        let (method, params) = s
            .server_requests
            .last()
            .expect("an applyEdit request")
            .clone();
        assert_eq!(method, "workspace/applyEdit");
        let edit = &params["edit"]["changes"][uri][0];
        assert_eq!(edit["range"], selection);
    } else {
        assert!(r["reason"].is_string(), "{r}");
    }
    // The server never edits the document itself.
    assert_eq!(s.text(uri).1, SRC);

    let r = s.result(
        "workspace/executeCommand",
        json!({"command": "diffusion-ls.rewriteFunction", "arguments": [{"uri": uri, "position": pos(2, 4)}]}),
    );
    if r["applied"] == true {
        let (_, params) = s.server_requests.last().unwrap().clone();
        let edit = &params["edit"]["changes"][uri][0];
        assert_eq!(
            edit["range"],
            json!({"start": pos(0, 31), "end": pos(3, 0)}),
            "the body inside the braces"
        );
    }
    let r = s.request(
        "workspace/executeCommand",
        json!({"command": "diffusion-ls.nope", "arguments": []}),
    );
    assert_eq!(r["error"]["code"], -32602);
    s.shutdown();
}

#[test]
fn bad_input_never_kills_the_server() {
    let mut s = Server::start();
    s.initialize(&["utf-16"], json!({"debounceMs": 0}));
    let uri = "file:///tmp/bad.rs";
    s.open(uri, "fn a() { let s = \"😀\"; }\n");
    // Malformed JSON: a parse error with a null id.
    s.write_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 99, \"method\": ");
    let r = s.wait_response(None);
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
    let mut s = Server::start();
    s.initialize(&["utf-16"], json!({}));
    s.notify("exit", Value::Null);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(1));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after `exit`"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_model_keeps_answering_empty() {
    let mut s = Server::start_with(&["--model", "/nonexistent/model"]);
    s.initialize(&["utf-16"], json!({}));
    let status = s.result("diffusionLs/status", Value::Null);
    assert_eq!(status["ready"], false);
    let uri = "file:///tmp/nomodel.rs";
    s.open(uri, SRC);
    let r = s.result("textDocument/inlineCompletion", inline_params(uri, 2, 7));
    assert!(r.is_null(), "{r}");
    // The reason is shown to the user (the message may trail the status answer a little).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .notifications
        .iter()
        .any(|(m, _)| m == "window/showMessage")
        && Instant::now() < deadline
    {
        let _ = s.text(uri);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, p) = s
        .notifications
        .iter()
        .find(|(m, _)| m == "window/showMessage")
        .expect("a showMessage");
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/model"),
        "{p}"
    );
    s.shutdown();
}
