//! The fuzzer's messages: each generator returns what to send and what the answer must be.

use diffusion_ls::LineCol;
use serde_json::{json, Value};

use crate::fuzz::{Out, Session};
use crate::text::{addressable, inside_a_char, lines, pick, width};

const FRAGMENTS: &[&str] = &[
    "fn f() {",
    "}",
    "\n",
    "\r\n",
    "\r",
    " ",
    "x",
    "é",
    "日本",
    "😀",
    "👩‍💻",
    "\"",
    "'",
    "{",
    "(",
    ")",
    "/*",
    "*/",
    "// ",
    "\t",
    "ü\u{308}",
    "\u{2028}",
    "\u{feff}",
    "\0",
    "let a = 1;\n",
];
const WEIRD_URIS: &[&str] = &[
    "untitled:Untitled-1",
    "file:///",
    "not a uri at all",
    "",
    "file:///%ZZ",
    "file:///nowhere.rs",
];
const METHODS: &[&str] = &[
    "textDocument/completion",
    "textDocument/inlineCompletion",
    "textDocument/codeAction",
    "workspace/executeCommand",
    "diffusionLs/debugDocument",
    "textDocument/hover",
];

fn lc(p: LineCol) -> Value {
    json!({"line": p.line, "character": p.col})
}

fn message(id: &Value, method: &str, params: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .unwrap()
}

impl Session<'_> {
    fn fragments(&mut self, max: usize) -> String {
        (0..self.rng.below(max + 1))
            .map(|_| *self.rng.pick(FRAGMENTS))
            .collect()
    }

    fn request(&mut self, method: &str, params: Value, code: Option<i64>) -> Out {
        Out::Request {
            id: self.id(),
            method: method.into(),
            params,
            code,
            text: None,
        }
    }

    /// A position in `text`: addressable mostly, sometimes past the end of its line.
    fn position(&mut self, text: &str) -> (usize, LineCol) {
        let points = addressable(text, self.enc);
        let (byte, p) = pick(&points, self.rng.unit());
        if self.rng.chance(0.1) {
            let (start, end) = lines(text)[p.line as usize];
            let past = if self.rng.chance(0.5) {
                u32::MAX
            } else {
                1 + self.rng.below(9) as u32
            };
            let col = width(&text[start..end], self.enc).saturating_add(past);
            return (end, LineCol::new(p.line, col));
        }
        (byte, p)
    }

    pub fn random_message(&mut self) -> Vec<Out> {
        let r = self.rng.below(1000);
        match r {
            0..=219 => self.tracked_edit(),
            220..=269 => self.tracked_bad_edit(),
            270..=419 => self.completion(),
            420..=469 => self.bad_position(),
            470..=549 => self.other_document(),
            550..=589 => self.code_action(),
            590..=619 => self.command(),
            620..=639 => self.debug_document(),
            640..=689 => self.cancel(),
            690..=729 => self.unknown_method(),
            730..=759 => self.dollar(),
            760..=859 => vec![self.garbage()],
            860..=879 => self.configuration(),
            880..=889 if self.initialized => {
                vec![self.request("initialize", json!({"capabilities": {}}), Some(-32600))]
            }
            890..=909 => vec![Out::Silent(
                serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 987_654_321, "result": null}))
                    .unwrap(),
            )],
            910..=929 => self.wrong_shapes(),
            930..=934 => vec![self.request("diffusionLs/debugPanic", Value::Null, Some(-32603))],
            935..=937 => {
                let line = "x".repeat(100_000);
                self.edit_tracked(&line)
            }
            938 => {
                let text = "// five megabytes\n".repeat((5 << 20) / 18);
                self.open_other(3, text)
            }
            _ => self.completion(),
        }
    }

    fn did_change(&mut self, uri: &str, version: i64, changes: Vec<Value>) -> Out {
        if uri == self.tracked.uri {
            let h = &mut self.tracked.history;
            h.push_back(format!("v{version} {}", Value::Array(changes.clone())));
            if h.len() > 6 {
                h.pop_front();
            }
        }
        Out::Notify(
            "textDocument/didChange".into(),
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": changes}),
        )
    }

    fn tracked_edit(&mut self) -> Vec<Out> {
        if self.tracked.text.len() > 300_000 || self.rng.chance(0.02) {
            let text = self.fragments(30);
            self.tracked.text = text.clone();
            self.tracked.version += 1;
            let (uri, v) = (self.tracked.uri.clone(), self.tracked.version);
            return vec![self.did_change(&uri, v, vec![json!({"text": text})])];
        }
        let insert = self.fragments(4);
        self.edit_tracked(&insert)
    }

    /// One to three valid changes, the first inserting `first`.
    fn edit_tracked(&mut self, first: &str) -> Vec<Out> {
        let mut changes = Vec::new();
        for i in 0..1 + self.rng.below(3) {
            let text = self.tracked.text.clone();
            let (mut a, mut b) = (self.position(&text), self.position(&text));
            if b.0 < a.0 || (b.0 == a.0 && b.1 < a.1) {
                std::mem::swap(&mut a, &mut b);
            }
            if self.rng.chance(0.5) {
                b = a; // an insertion
            }
            let new = if i == 0 {
                first.to_string()
            } else {
                self.fragments(3)
            };
            self.tracked.text.replace_range(a.0..b.0, &new);
            changes.push(json!({"range": {"start": lc(a.1), "end": lc(b.1)}, "text": new}));
        }
        self.tracked.version += 1;
        let (uri, v) = (self.tracked.uri.clone(), self.tracked.version);
        vec![self.did_change(&uri, v, changes)]
    }

    /// A change the server must refuse, followed by valid ones it must skip.
    fn tracked_bad_edit(&mut self) -> Vec<Out> {
        let text = self.tracked.text.clone();
        let n_lines = lines(&text).len() as u32;
        let x = self.position(&text);
        let bad = match self.rng.below(3) {
            0 => inside_a_char(&text, self.enc).map(|p| (p, p)),
            1 => {
                let y = self.position(&text);
                (y.0 != x.0).then_some(if y.0 > x.0 { (y.1, x.1) } else { (x.1, y.1) })
            }
            _ => None,
        };
        let past = LineCol::new(n_lines + self.rng.below(1000) as u32, 0);
        let (start, end) = bad.unwrap_or((x.1, past));
        let mut changes =
            vec![json!({"range": {"start": lc(start), "end": lc(end)}, "text": "BAD"})];
        for _ in 0..self.rng.below(3) {
            let p = self.position(&text);
            changes.push(json!({"range": {"start": lc(p.1), "end": lc(p.1)}, "text": "skipped"}));
        }
        self.tracked.version += 1;
        let (uri, v) = (self.tracked.uri.clone(), self.tracked.version);
        vec![self.did_change(&uri, v, changes)]
    }

    fn completion(&mut self) -> Vec<Out> {
        let method = if self.rng.chance(0.7) {
            "textDocument/inlineCompletion"
        } else {
            "textDocument/completion"
        };
        let (uri, code, p) = if self.rng.chance(0.7) {
            let text = self.tracked.text.clone();
            let n_lines = lines(&text).len() as u32;
            match self.rng.below(10) {
                0 => (
                    self.tracked.uri.clone(),
                    Some(-32602),
                    LineCol::new(n_lines + 3, 0),
                ),
                1 => match inside_a_char(&text, self.enc) {
                    Some(p) => (self.tracked.uri.clone(), Some(-32602), p),
                    None => (self.tracked.uri.clone(), None, LineCol::new(0, 0)),
                },
                _ => (self.tracked.uri.clone(), None, self.position(&text).1),
            }
        } else {
            let (uri, text) = self.other();
            let p = LineCol::new(self.rng.below(5) as u32, self.rng.below(50) as u32);
            let _ = text;
            (uri, None, p)
        };
        let mut params = json!({"textDocument": {"uri": uri}, "position": lc(p)});
        if method == "textDocument/inlineCompletion" {
            params["context"] = json!({"triggerKind": 1 + self.rng.below(2)});
        }
        vec![self.request(method, params, code)]
    }

    fn bad_position(&mut self) -> Vec<Out> {
        let bad = [
            json!(-1),
            json!(1.5),
            json!("3"),
            json!(null),
            json!(1u64 << 40),
            json!([1]),
        ];
        let mut p = json!({"line": 0, "character": 0});
        let field = if self.rng.chance(0.5) {
            "line"
        } else {
            "character"
        };
        p[field] = self.rng.pick(&bad).clone();
        let method = *self.rng.pick(&METHODS[..2]);
        let mut params = json!({"textDocument": {"uri": self.tracked.uri}, "position": p});
        if method == "textDocument/inlineCompletion" {
            params["context"] = json!({"triggerKind": 1});
        }
        vec![self.request(method, params, Some(-32602))]
    }

    fn other(&mut self) -> (String, Option<String>) {
        if self.rng.chance(0.15) {
            return (self.rng.pick(WEIRD_URIS).to_string(), None);
        }
        self.others[self.rng.below(self.others.len())].clone()
    }

    fn open_other(&mut self, i: usize, text: String) -> Vec<Out> {
        self.others[i].1 = Some(text.clone());
        let language = *self
            .rng
            .pick(&["rust", "rust", "rust", "plaintext", "", "RUST"]);
        let uri = self.others[i].0.clone();
        let version = self.rng.below(100) as i64 - 50;
        vec![Out::Notify(
            "textDocument/didOpen".into(),
            json!({"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}}),
        )]
    }

    fn other_document(&mut self) -> Vec<Out> {
        let i = self.rng.below(self.others.len());
        let uri = self.others[i].0.clone();
        match self.rng.below(10) {
            0..=3 => {
                let text = match self.rng.below(50) {
                    0 => "\"".repeat(100_000),
                    1 => "{".repeat(20_000),
                    2 => "y".repeat(100_000),
                    _ => self.fragments(40),
                };
                self.open_other(i, text)
            }
            4..=7 => {
                let version = self.rng.next_u64() as i32 as i64;
                let range = match &self.others[i].1 {
                    Some(text) if self.rng.chance(0.7) => {
                        let text = text.clone();
                        let (a, b) = (self.position(&text).1, self.position(&text).1);
                        json!({"start": lc(a), "end": lc(b)})
                    }
                    _ => json!({"start": {"line": self.rng.below(9), "character": -1},
                                "end": {"line": u32::MAX, "character": 0}}),
                };
                let text = self.fragments(3);
                vec![self.did_change(&uri, version, vec![json!({"range": range, "text": text})])]
            }
            _ => {
                self.others[i].1 = None;
                vec![Out::Notify(
                    "textDocument/didClose".into(),
                    json!({"textDocument": {"uri": uri}}),
                )]
            }
        }
    }

    fn code_action(&mut self) -> Vec<Out> {
        let text = self.tracked.text.clone();
        let (a, b) = (self.position(&text), self.position(&text));
        let code = (b.0 < a.0).then_some(-32602);
        let params = json!({"textDocument": {"uri": self.tracked.uri}, "context": {"diagnostics": []},
                            "range": {"start": lc(a.1), "end": lc(b.1)}});
        vec![self.request("textDocument/codeAction", params, code)]
    }

    fn command(&mut self) -> Vec<Out> {
        let text = self.tracked.text.clone();
        let (a, b) = (self.position(&text), self.position(&text));
        let uri = self.tracked.uri.clone();
        let (command, args, code) = match self.rng.below(5) {
            0 if a.0 < b.0 => (
                "diffusion-ls.fillSelection",
                json!([{"uri": uri, "range": {"start": lc(a.1), "end": lc(b.1)}}]),
                None,
            ),
            1 => (
                "diffusion-ls.rewriteFunction",
                json!([{"uri": uri, "position": lc(a.1)}]),
                None,
            ),
            2 => ("diffusion-ls.acceptCompletion", json!([{"uri": uri}]), None),
            3 => (
                "diffusion-ls.fillSelection",
                json!([{"nope": 1}]),
                Some(-32602),
            ),
            _ => ("diffusion-ls.unknown", json!([]), Some(-32602)),
        };
        vec![self.request(
            "workspace/executeCommand",
            json!({"command": command, "arguments": args}),
            code,
        )]
    }

    fn debug_document(&mut self) -> Vec<Out> {
        if self.rng.chance(0.5) {
            let t = &self.tracked;
            let (params, text) = (json!({"uri": t.uri}), Some((t.version, t.text.clone())));
            return vec![Out::Request {
                id: self.id(),
                method: "diffusionLs/debugDocument".into(),
                params,
                code: None,
                text,
            }];
        }
        let uri = self.rng.pick(WEIRD_URIS).to_string();
        vec![self.request("diffusionLs/debugDocument", json!({"uri": uri}), None)]
    }

    fn cancel(&mut self) -> Vec<Out> {
        let ids = self.pending_ids();
        let params = match self.rng.below(5) {
            0..=2 if !ids.is_empty() => json!({"id": ids[self.rng.below(ids.len())]}),
            3 => json!({"id": {"not": "an id"}}),
            _ => json!({"id": self.rng.next_u64() as i32}),
        };
        vec![Out::Notify("$/cancelRequest".into(), params)]
    }

    fn unknown_method(&mut self) -> Vec<Out> {
        let name = format!("fuzz/method{}", self.rng.below(100));
        if self.rng.chance(0.6) {
            vec![self.request(&name, json!({"x": 1}), Some(-32601))]
        } else {
            vec![Out::Notify(name, json!([1, 2]))]
        }
    }

    fn dollar(&mut self) -> Vec<Out> {
        let name = *self
            .rng
            .pick(&["$/setTrace", "$/logTrace", "$/progress", "$/fuzz"]);
        if self.rng.chance(0.6) {
            vec![self.request(name, json!({"value": "off"}), Some(-32601))]
        } else {
            vec![Out::Notify(name.into(), json!({"value": "off"}))]
        }
    }

    fn configuration(&mut self) -> Vec<Out> {
        let settings = json!({"diffusion-ls": {
            "steps": self.rng.below(400) as i64 - 20,
            "candidates": self.rng.below(40),
            "debounceMs": self.rng.below(40),
            "verify": self.rng.chance(0.5),
            "contextTokens": if self.rng.chance(0.1) { json!(u64::MAX) } else { json!(self.rng.below(3000)) },
            "maxSpanTokens": self.rng.below(5000),
            "temperature": self.rng.unit() * 6.0 - 1.0,
            "model": "/fuzz/ignored/because/--model/wins",
        }});
        let settings = if self.rng.chance(0.1) {
            json!({"steps": "many"})
        } else {
            settings
        };
        vec![Out::Notify(
            "workspace/didChangeConfiguration".into(),
            json!({"settings": settings}),
        )]
    }

    fn wrong_shapes(&mut self) -> Vec<Out> {
        let method = *self.rng.pick(&METHODS[..5]);
        let params = self
            .rng
            .pick(&[
                json!(5),
                json!([1, 2]),
                json!({"textDocument": 5}),
                json!("s"),
            ])
            .clone();
        vec![self.request(method, params, Some(-32602))]
    }

    /// A frame that is no JSON-RPC message (each is answered with a null-id error).
    fn garbage(&mut self) -> Out {
        let id = json!(self.rng.below(1000));
        let valid = message(
            &id,
            "textDocument/completion",
            json!({"textDocument": {"uri": self.tracked.uri}, "position": {"line": 0, "character": 0}}),
        );
        let bytes = match self.rng.below(13) {
            0 => valid[..self.rng.below(valid.len() - 1)].to_vec(),
            1 => {
                let mut v = valid.clone();
                let at = v.iter().position(|&b| b == b'/').unwrap();
                v.insert(at, 0xff);
                v
            }
            2 => br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"t":""#.iter().chain(b"\xed\xa0\x80\"}}").copied().collect(),
            3 => format!(r#"{{"jsonrpc":"2.0","method":"textDocument/didChange","params":{{"textDocument":{{"uri":"{}","version":1}},"contentChanges":[{{"text":"a\ud800b"}}]}}}}"#, self.tracked.uri).into_bytes(),
            4 => br#"{"jsonrpc":"2.0","id":2,"method":"x","params":"\udc00"}"#.to_vec(),
            5 => format!("[{}]", String::from_utf8(valid).unwrap()).into_bytes(),
            6 => self.rng.pick(&["42", "\"str\"", "null", "true", "", "{}"]).as_bytes().to_vec(),
            7 => br#"{"jsonrpc":"1.0","id":1,"method":"shutdown"}"#.to_vec(),
            8 => br#"{"jsonrpc":"2.0","id":1,"method":5}"#.to_vec(),
            9 => self.rng.pick(&[r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#, r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, r#"{"jsonrpc":"2.0","id":1e400,"method":"x"}"#]).as_bytes().to_vec(),
            10 => format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            11 => vec![b'#'; 100_000],
            _ => br#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"x"}"#.to_vec(),
        };
        Out::Garbage(bytes)
    }
}
