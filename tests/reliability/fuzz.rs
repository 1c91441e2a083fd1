//! Protocol fuzzer: random and mutated JSON-RPC into the real binary over stdio, in sessions
//! (start, messages before `initialize`, `initialize`, the fuzzed traffic, an ending: `shutdown`
//! and `exit`, `exit` alone, or end of input).
//!
//! Checked all along: every request gets exactly one answer, with the error code the message
//! calls for where there is one (MethodNotFound for unknown methods and `$/` requests,
//! InvalidParams for bad positions, ParseError with a null id for a frame that is no JSON-RPC
//! message); the server never writes anything but framed JSON. Every few hundred messages a
//! liveness check waits for every outstanding answer (a hang past [`HANG`]) and compares a
//! tracked document, edited with valid and invalid changes, with the fuzzer's own copy (a
//! desync). The process must exit as the ending demands (a crash otherwise).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diffusion_ls::Encoding;
use serde_json::{json, Value};

use crate::client::{Client, Options, WaitError};
use crate::Rng;

/// No answer for this long while requests are out is a hang.
pub const HANG: Duration = Duration::from_secs(60);
const SESSION_MESSAGES: usize = 5_000;
const LIVENESS_EVERY: usize = 250;

/// One thing the fuzzer sends.
pub enum Out {
    /// `code`: the error the answer must carry; `text`: the (version, text) a `debugDocument`
    /// answer must show.
    Request {
        id: Value,
        method: String,
        params: Value,
        code: Option<i64>,
        text: Option<(i64, String)>,
    },
    Notify(String, Value),
    /// Not a JSON-RPC message: answered with a null id.
    Garbage(Vec<u8>),
    /// Answered by nothing (a response to no request, ...).
    Silent(Vec<u8>),
}

pub struct Tracked {
    pub uri: String,
    pub text: String,
    pub version: i64,
    /// The last changes sent, for the report of a desync.
    pub history: std::collections::VecDeque<String>,
}

struct Expect {
    method: String,
    code: Option<i64>,
    text: Option<(i64, String)>,
    sent: Instant,
    /// What the request was about (for the slowest-answers figure).
    what: String,
}

#[derive(Default)]
pub struct Figures {
    pub messages: usize,
    pub sessions: usize,
    pub requests: usize,
    pub malformed: usize,
    pub liveness: usize,
    pub crashes: usize,
    pub hangs: usize,
    pub desyncs: usize,
    pub wrong: usize,
    pub errors: Vec<String>,
    /// The slowest answers: (seconds, method and parameters).
    pub slowest: Vec<(f64, String)>,
}

pub struct Session<'a> {
    pub c: Client,
    pub rng: &'a mut Rng,
    pub enc: Encoding,
    pub tracked: Tracked,
    /// Other documents the fuzzer opens and closes (by URI; their text, when open).
    pub others: Vec<(String, Option<String>)>,
    pending: HashMap<String, Expect>,
    null_expected: usize,
    null_received: usize,
    next_id: i64,
    pub initialized: bool,
    pub shut_down: bool,
    f: &'a mut Figures,
    /// Set when the session cannot go on (a crash, a hang, garbage on stdout).
    dead: bool,
}

impl Session<'_> {
    pub fn id(&mut self) -> Value {
        self.next_id += 1;
        match self.rng.below(10) {
            0 => json!(format!("s{}", self.next_id)),
            1 => json!(-self.next_id),
            _ => json!(self.next_id),
        }
    }

    pub fn pending_ids(&self) -> Vec<Value> {
        self.pending
            .keys()
            .filter_map(|k| serde_json::from_str(k).ok())
            .collect()
    }

    fn problem(&mut self, kind: &str, e: String) {
        match kind {
            "crash" => self.f.crashes += 1,
            "hang" => self.f.hangs += 1,
            "desync" => self.f.desyncs += 1,
            _ => self.f.wrong += 1,
        }
        if self.f.errors.len() < 200 {
            self.f
                .errors
                .push(format!("session {}: {kind}: {e}", self.f.sessions));
        }
    }

    fn send(&mut self, out: Out) {
        self.f.messages += 1;
        let ok = match out {
            Out::Request {
                id,
                method,
                params,
                code,
                text,
            } => {
                self.f.requests += 1;
                let code = if !self.initialized && method != "initialize" {
                    Some(-32002)
                } else if self.shut_down {
                    Some(-32600)
                } else {
                    code
                };
                let key = id.to_string();
                let what = format!("{method} {params:.120}");
                let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
                let sent = Instant::now();
                self.pending.insert(
                    key,
                    Expect {
                        method,
                        code,
                        text,
                        sent,
                        what,
                    },
                );
                self.c.send(&msg)
            }
            Out::Notify(method, params) => self
                .c
                .send(&json!({"jsonrpc": "2.0", "method": method, "params": params})),
            Out::Garbage(bytes) => {
                self.f.malformed += 1;
                self.null_expected += 1;
                self.c.write_raw(&bytes)
            }
            Out::Silent(bytes) => self.c.write_raw(&bytes),
        };
        if !ok {
            self.problem("crash", "the server stopped reading its input".into());
            self.dead = true;
        }
    }

    fn handle(&mut self, msg: Value) {
        if msg.get("method").is_some() {
            return; // a server request (answered by the client) or a notification
        }
        let has_result = msg.get("result").is_some();
        let error = msg.get("error");
        if has_result == error.is_some() {
            self.problem(
                "wrong",
                format!("neither or both of result and error: {msg}"),
            );
        }
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        if id.is_null() {
            self.null_received += 1;
            if error.is_none() {
                self.problem("wrong", format!("a null-id answer without an error: {msg}"));
            }
            return;
        }
        let Some(expect) = self.pending.remove(&id.to_string()) else {
            self.problem("desync", format!("an answer to no pending request: {msg}"));
            return;
        };
        let took = expect.sent.elapsed().as_secs_f64();
        if self.f.slowest.len() < 8 || took > self.f.slowest[7].0 {
            self.f.slowest.push((took, expect.what.clone()));
            self.f.slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
            self.f.slowest.truncate(8);
        }
        // The first `initialize`'s answer (a repeated one is an error and changes nothing).
        if expect.method == "initialize" && has_result {
            self.enc = match msg["result"]["capabilities"]["positionEncoding"].as_str() {
                Some("utf-8") => Encoding::Utf8,
                Some("utf-32") => Encoding::Utf32,
                _ => Encoding::Utf16,
            };
        }
        let code = error.and_then(|e| e["code"].as_i64());
        if let Some(want) = expect.code {
            // A cancelled request may answer -32800 instead.
            if code != Some(want) && code != Some(-32800) {
                self.problem(
                    "wrong",
                    format!("{} wanted error {want}: {msg}", expect.method),
                );
            }
        }
        if let Some((version, text)) = expect.text {
            let r = &msg["result"];
            if let Some(got) = r["text"]
                .as_str()
                .filter(|&t| t != text || r["version"] != version)
            {
                let history: Vec<&String> = self.tracked.history.iter().collect();
                self.problem(
                    "desync",
                    format!("tracked document v{version}: server {got:?}, fuzzer {text:?}; last changes {history:#?}"),
                );
                // Go on from the server's copy, so one desync is reported once.
                if version == self.tracked.version {
                    self.tracked.text = got.to_string();
                }
            }
        }
    }

    /// Reads answers; with `all`, until none is outstanding (a hang after [`HANG`] of silence).
    fn drain(&mut self, all: bool) {
        while !self.dead {
            let wait = if all && !self.pending.is_empty() {
                HANG
            } else {
                Duration::ZERO
            };
            match self.c.next_message(wait) {
                Ok(msg) => self.handle(msg),
                Err(WaitError::Timeout) if wait.is_zero() => return,
                Err(WaitError::Timeout) => {
                    let out: Vec<&String> = self.pending.values().map(|e| &e.method).collect();
                    self.problem(
                        "hang",
                        format!("no answer for {HANG:?}; waiting for {out:?}"),
                    );
                    self.dead = true;
                }
                Err(WaitError::Closed) => {
                    let status = self.c.child.try_wait();
                    self.problem("crash", format!("stdout closed: {status:?}"));
                    self.dead = true;
                }
                Err(WaitError::Garbage(g)) => {
                    self.problem("desync", format!("garbage on stdout: {g:.300}"));
                    self.dead = true;
                }
            }
        }
    }

    fn liveness(&mut self) {
        self.f.liveness += 1;
        let id = self.id();
        self.send(Out::Request {
            id,
            method: "diffusionLs/status".into(),
            params: Value::Null,
            code: None,
            text: None,
        });
        let id = self.id();
        let t = &self.tracked;
        let text = Some((t.version, t.text.clone()));
        let params = json!({"uri": t.uri});
        self.send(Out::Request {
            id,
            method: "diffusionLs/debugDocument".into(),
            params,
            code: None,
            text,
        });
        self.drain(true);
        if !self.dead && self.null_expected != self.null_received {
            let (e, r) = (self.null_expected, self.null_received);
            self.problem(
                "wrong",
                format!("{e} malformed frames, {r} null-id answers"),
            );
            self.null_received = self.null_expected;
        }
    }

    fn initialize(&mut self) {
        let all = ["utf-8", "utf-16", "utf-32"];
        let offered: Vec<&str> = all
            .iter()
            .copied()
            .filter(|_| self.rng.chance(0.5))
            .collect();
        let params = json!({
            "processId": null,
            "capabilities": {
                "general": {"positionEncodings": offered},
                "window": {"workDoneProgress": self.rng.chance(0.5)},
                "workspace": {"workspaceEdit": {"documentChanges": self.rng.chance(0.5)}},
            },
            "initializationOptions": {
                "debounceMs": self.rng.below(20), "verify": self.rng.chance(0.5),
                "candidates": 1 + self.rng.below(3), "steps": 2 + self.rng.below(6),
            },
        });
        let id = self.id();
        self.send(Out::Request {
            id,
            method: "initialize".into(),
            params,
            code: None,
            text: None,
        });
        self.drain(true); // sets `enc` from the answer
        self.initialized = true;
        self.send(Out::Notify("initialized".into(), json!({})));
        let t = &self.tracked;
        let params = json!({"textDocument": {"uri": t.uri, "languageId": "rust", "version": t.version, "text": t.text}});
        self.send(Out::Notify("textDocument/didOpen".into(), params));
    }

    /// The session's ending; checks the exit status it calls for.
    fn end(&mut self) {
        let how = self.rng.below(10);
        let want_code = match how {
            0 => {
                self.c.close_stdin();
                None
            }
            1 => {
                self.send(Out::Notify("exit".into(), Value::Null));
                Some(1)
            }
            _ => {
                let id = self.id();
                self.send(Out::Request {
                    id,
                    method: "shutdown".into(),
                    params: Value::Null,
                    code: None,
                    text: None,
                });
                self.drain(true);
                self.shut_down = true;
                for _ in 0..self.rng.below(5) {
                    for out in self.random_message() {
                        self.send(out);
                    }
                }
                self.drain(true);
                self.send(Out::Notify("exit".into(), Value::Null));
                Some(0)
            }
        };
        if self.dead {
            return;
        }
        match self.c.wait_exit(Duration::from_secs(30)) {
            None => self.problem("hang", "the server did not exit".into()),
            Some(status) => {
                if want_code.is_some_and(|c| status.code() != Some(c)) {
                    self.problem(
                        "crash",
                        format!("exit status {status}, wanted {want_code:?}"),
                    );
                }
            }
        }
    }
}

fn session(rng: &mut Rng, f: &mut Figures, messages: usize) {
    f.sessions += 1;
    // FUZZ_LOG=DIR keeps each session's server log (info level) in DIR/session-N.log.
    let log = std::env::var_os("FUZZ_LOG")
        .map(|d| std::path::Path::new(&d).join(format!("session-{}.log", f.sessions)));
    let level = if log.is_some() { "info" } else { "error" };
    let mut c = Client::spawn(Options {
        log_level: level,
        log,
        ..Options::default()
    });
    // A real client applies the edit and sends didChange; this one keeps its tracked copy.
    c.apply_edit_reply = json!({"applied": false});
    let tracked = Tracked {
        uri: "file:///tmp/fuzz/tracked.rs".into(),
        text: "fn main() {\n    let s = \"héllo 😀 wörld\";\n    // 日本語 👩‍💻\n}\n".into(),
        version: 1,
        history: Default::default(),
    };
    let others = ["a.rs", "b.rs", "ü 日.rs", "big.rs"]
        .iter()
        .map(|n| (format!("file:///tmp/fuzz/{}", n.replace(' ', "%20")), None))
        .collect();
    let mut s = Session {
        c,
        rng,
        enc: Encoding::Utf16,
        tracked,
        others,
        pending: HashMap::new(),
        null_expected: 0,
        null_received: 0,
        next_id: 0,
        initialized: false,
        shut_down: false,
        f,
        dead: false,
    };
    let start = s.f.messages;
    for _ in 0..s.rng.below(8) {
        for out in s.random_message() {
            s.send(out);
        }
    }
    s.drain(true);
    s.initialize();
    let mut next_liveness = start + LIVENESS_EVERY;
    while !s.dead && s.f.messages - start < messages {
        for out in s.random_message() {
            s.send(out);
        }
        if std::env::var_os("FUZZ_CHECK_EDITS").is_some() {
            let id = s.id();
            let t = &s.tracked;
            let text = Some((t.version, t.text.clone()));
            let params = json!({"uri": t.uri});
            s.send(Out::Request {
                id,
                method: "diffusionLs/debugDocument".into(),
                params,
                code: None,
                text,
            });
        }
        if s.f.messages >= next_liveness {
            s.liveness();
            next_liveness = s.f.messages + LIVENESS_EVERY;
        } else {
            s.drain(false);
        }
    }
    if !s.dead {
        s.liveness();
        s.end();
    }
}

pub fn run(messages: usize, seed: u64) -> Figures {
    let mut rng = Rng::new(seed);
    let mut f = Figures::default();
    while f.messages < messages {
        let n = SESSION_MESSAGES.min(messages - f.messages).max(100);
        session(&mut rng, &mut f, n);
    }
    f
}
