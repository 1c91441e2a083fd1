//! Soak: completion requests while edits stream in (typing, deleting, pasting, undo, accepting
//! answers), with cancels and supersedes, against the real binary and the tiny fixture model.
//!
//! Stale results: the server answers in the order its handlers finish and applies edits in
//! arrival order, so when a `debugDocument` barrier sent after an edit is answered before a
//! completion made for the text before that edit, that completion finished after the edit and
//! must answer ContentModified (or `null`). A result is a stale one a client trusting the
//! server would apply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{self, Client, Options, WaitError};
use crate::Rng;

const SNIPPETS: &[&str] = &[
    "let v: Vec<u8> = Vec::new();\n    ",
    "if x > 0 {\n        return x;\n    }\n    ",
    "// 日本語のコメント 😀\n    ",
    "match s {\n        Some(é) => é,\n        None => 0,\n    }",
    "println!(\"{}\", ü);",
];
const TYPED: &str = "abcdefxyz_ (){};.é日😀\n";
/// Past this size the soak cuts instead of pasting, so the document (and what the server
/// legitimately holds for it) stays about the same size and RSS shows leaks, not growth.
const MAX_BYTES: usize = 4_000;

struct Pending {
    version: i64,
    sent: Instant,
    cancelled: bool,
}

#[derive(Default, Debug)]
pub struct Figures {
    pub requests: usize,
    pub edits: usize,
    pub accepted: usize,
    pub cancels: usize,
    pub supersedes: usize,
    pub stale_applied: usize,
    pub old_version_not_null: usize,
    pub lost_edits: usize,
    pub errors: Vec<String>,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// RSS every tenth of the run (KiB), and the document's final size (bytes).
    pub rss_samples: Vec<u64>,
    pub final_bytes: usize,
    pub latencies_ms: Vec<f64>,
}

struct Soak {
    s: Client,
    rng: Rng,
    uri: String,
    text: String,
    version: i64,
    /// Cursor byte offset.
    cursor: usize,
    undo: Vec<(usize, usize, String)>,
    pending: HashMap<i64, Pending>,
    /// Barrier id → (client version, client text) when it was sent.
    barriers: HashMap<i64, (i64, String)>,
    /// Highest client version a barrier has confirmed the server applied.
    confirmed: i64,
    /// The last non-empty answer for the current version: (range, insert text).
    offer: Option<(Value, String, i64)>,
    f: Figures,
}

/// UTF-16 position of a byte offset (the soak text uses `\n` line ends only).
fn position(text: &str, byte: usize) -> Value {
    let line_start = text[..byte].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..line_start].matches('\n').count();
    json!({"line": line, "character": text[line_start..byte].encode_utf16().count()})
}

/// Byte offset of a UTF-16 position (None if it does not fall on a character).
fn offset(text: &str, p: &Value) -> Option<usize> {
    let (line, col) = (
        p["line"].as_u64()? as usize,
        p["character"].as_u64()? as usize,
    );
    let start = if line == 0 {
        0
    } else {
        text.match_indices('\n').nth(line - 1)?.0 + 1
    };
    let mut units = 0;
    for (i, ch) in text[start..].char_indices() {
        if units == col {
            return Some(start + i);
        }
        if ch == '\n' || units > col {
            return None;
        }
        units += ch.len_utf16();
    }
    (units == col).then_some(text.len())
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Soak {
    fn edit(&mut self, start: usize, end: usize, new: &str, record_undo: bool) {
        let range = json!({"start": position(&self.text, start), "end": position(&self.text, end)});
        let old = self.text[start..end].to_string();
        self.text.replace_range(start..end, new);
        self.version += 1;
        self.f.edits += 1;
        self.offer = None;
        if record_undo {
            self.undo.push((start, start + new.len(), old));
        }
        self.cursor = start + new.len();
        self.s.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": self.uri, "version": self.version},
                   "contentChanges": [{"range": range, "text": new}]}),
        );
    }

    fn keystroke(&mut self) {
        let r = self.rng.below(100);
        let len = self.text.len();
        match r {
            0..=49 => {
                let ch = TYPED
                    .chars()
                    .nth(self.rng.below(TYPED.chars().count()))
                    .unwrap();
                self.edit(self.cursor, self.cursor, &ch.to_string(), true);
            }
            50..=64 if self.cursor > 0 => {
                let n = 1 + self.rng.below(3);
                let start = floor_char(&self.text, self.cursor.saturating_sub(n));
                self.edit(start, self.cursor, "", true);
            }
            65..=74 if len > MAX_BYTES => {
                let start = floor_char(&self.text, self.rng.below(len));
                let end = floor_char(&self.text, (start + 20 + self.rng.below(200)).min(len));
                self.edit(start, end, "", true);
            }
            65..=74 => {
                let snippet = SNIPPETS[self.rng.below(SNIPPETS.len())];
                self.edit(self.cursor, self.cursor, snippet, true);
            }
            75..=84 => match self.undo.pop() {
                Some((start, end, old)) if end <= len => self.edit(start, end, &old, false),
                _ => {}
            },
            85..=94 => self.cursor = floor_char(&self.text, self.rng.below(len + 1)),
            _ => {
                if let Some((range, insert, version)) = self.offer.take() {
                    if version == self.version {
                        let start = offset(&self.text, &range["start"]);
                        let end = offset(&self.text, &range["end"]);
                        if let (Some(a), Some(b)) = (start, end) {
                            self.f.accepted += 1;
                            self.edit(a, b, &insert, true);
                        }
                    }
                }
            }
        }
    }

    fn complete(&mut self) -> i64 {
        let p = position(&self.text, self.cursor);
        let id = if self.rng.chance(0.8) {
            self.s.send_request(
                "textDocument/inlineCompletion",
                json!({"textDocument": {"uri": self.uri}, "position": p, "context": {"triggerKind": 2}}),
            )
        } else {
            self.s.send_request(
                "textDocument/completion",
                json!({"textDocument": {"uri": self.uri}, "position": p}),
            )
        };
        self.f.requests += 1;
        let pending = Pending {
            version: self.version,
            sent: Instant::now(),
            cancelled: false,
        };
        self.pending.insert(id, pending);
        id
    }

    fn barrier(&mut self) {
        let id = self
            .s
            .send_request("diffusionLs/debugDocument", json!({"uri": self.uri}));
        self.barriers.insert(id, (self.version, self.text.clone()));
    }

    fn handle(&mut self, msg: Value) {
        let Some(id) = msg.get("id").and_then(Value::as_i64) else {
            return;
        };
        if msg.get("method").is_some() {
            return;
        }
        if let Some((version, text)) = self.barriers.remove(&id) {
            let got = msg["result"]["text"].as_str().unwrap_or("");
            if got != text || msg["result"]["version"] != version {
                self.f.lost_edits += 1;
                self.f
                    .errors
                    .push(format!("v{version}: server text differs"));
            }
            self.confirmed = self.confirmed.max(version);
            return;
        }
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        self.f
            .latencies_ms
            .push(p.sent.elapsed().as_secs_f64() * 1e3);
        if let Some(e) = msg.get("error") {
            // Superseded and stale requests answer ContentModified; cancelled ones
            // RequestCancelled.
            let dropped = e["code"] == -32801 || (p.cancelled && e["code"] == -32800);
            if !dropped {
                self.f.errors.push(format!("request {id}: {e}"));
            }
            return;
        }
        let result = &msg["result"];
        if result.is_null() {
            return;
        }
        if self.confirmed > p.version {
            self.f.stale_applied += 1;
            self.f.errors.push(format!(
                "request {id} for v{} answered after v{} was confirmed: {result}",
                p.version, self.confirmed
            ));
        }
        if p.version != self.version {
            self.f.old_version_not_null += 1;
            return;
        }
        let (range, insert) = if let Some(items) = result.get("items").and_then(Value::as_array) {
            match items.first() {
                Some(i) if result.get("isIncomplete").is_some() => (
                    i["textEdit"]["range"].clone(),
                    i["textEdit"]["newText"].clone(),
                ),
                Some(i) => (i["range"].clone(), i["insertText"].clone()),
                None => return,
            }
        } else {
            return;
        };
        if let Some(insert) = insert.as_str() {
            self.offer = Some((range, insert.to_string(), p.version));
        }
    }

    /// Reads what has arrived; blocks while more than `max_pending` requests are out.
    fn pump(&mut self, max_pending: usize) -> Result<(), String> {
        loop {
            let out = self.pending.len() + self.barriers.len();
            let wait = if out > max_pending {
                client::TIMEOUT
            } else {
                Duration::ZERO
            };
            match self.s.next_message(wait) {
                Ok(msg) => self.handle(msg),
                Err(WaitError::Timeout) if out <= max_pending => return Ok(()),
                Err(e) => return Err(format!("{e:?} with {out} requests out: a hang or a crash")),
            }
        }
    }
}

pub fn run(requests: usize, seed: u64) -> Figures {
    // mimalloc hands freed pages back at once, so RSS follows what the server really holds.
    let env = vec![("MIMALLOC_PURGE_DELAY", "0")];
    // SOAK_LOG=FILE keeps the server's log (with panic backtraces).
    let log = std::env::var_os("SOAK_LOG").map(std::path::PathBuf::from);
    let mut s = Client::spawn(Options {
        log_level: "warn",
        env,
        log,
        ..Options::default()
    });
    s.initialize(
        &["utf-16"],
        json!({"verify": false, "candidates": 2, "steps": 4, "debounceMs": 0}),
    );
    s.wait_ready();
    let uri = "file:///tmp/soak.rs".to_string();
    let text = "fn main() {\n    let s = \"héllo 😀\";\n    \n}\n".to_string();
    s.open(&uri, &text);
    let cursor = text.find("\n    \n").unwrap() + 5;
    let mut k = Soak {
        s,
        rng: Rng::new(seed),
        uri,
        text,
        version: 1,
        cursor,
        undo: vec![],
        pending: HashMap::new(),
        barriers: HashMap::new(),
        confirmed: 0,
        offer: None,
        f: Figures::default(),
    };
    // Warm-up (tokenizer cache, allocator heaps, parser buffers): the first fifth.
    let warm = (requests / 5).max(30);
    let (mut verify, mut next_flip) = (false, 1000);
    while k.f.requests < requests {
        for _ in 0..1 + k.rng.below(3) {
            k.keystroke();
        }
        k.barrier();
        let id = k.complete();
        if k.rng.chance(0.15) {
            k.f.supersedes += 1;
            k.complete();
        } else if k.rng.chance(0.1) {
            k.f.cancels += 1;
            k.s.notify("$/cancelRequest", json!({"id": id}));
            k.pending.get_mut(&id).unwrap().cancelled = true;
        }
        // Now and then wait for the answers, so some arrive before the next keystroke.
        let max_pending = if k.rng.chance(0.3) { 0 } else { 6 };
        if let Err(e) = k.pump(max_pending) {
            k.f.errors.push(e);
            break;
        }
        if k.f.requests >= warm && k.f.rss_start_kib == 0 {
            k.pump(0).ok();
            k.f.rss_start_kib = k.s.rss_kib();
        }
        if k.f.requests * 10 >= requests * (k.f.rss_samples.len() + 1) {
            k.f.rss_samples.push(k.s.rss_kib());
        }
        // Every thousand requests the verifier goes on or off.
        if k.f.requests >= next_flip {
            next_flip += 1000;
            verify = !verify;
            k.s.notify(
                "workspace/didChangeConfiguration",
                json!({"settings": {"verify": verify}}),
            );
        }
    }
    if k.pump(0).is_ok() {
        k.f.rss_end_kib = k.s.rss_kib();
        k.f.final_bytes = k.text.len();
        let (version, server_text) = k.s.text(&k.uri.clone());
        if version != k.version || server_text != k.text {
            k.f.lost_edits += 1;
            k.f.errors
                .push("the server's text differs at the end".into());
        }
        k.s.shutdown();
    }
    k.f
}
