//! A JSON-RPC client of the `diffusion-ls` binary over real stdio framing, shared by the
//! end-to-end test binaries (`#[path]`-included; not every binary uses every method).
//!
//! Responses are matched by id whatever order they come in; server-to-client requests are
//! answered on the way (`workspace/applyEdit` with [`Client::apply_edit_reply`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const TIMEOUT: Duration = Duration::from_secs(120);

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/qwen2-gqa-untied")
}

/// The fixture rewritten so that every span position's best token is `x` or `y`: the final
/// norm keeps only hidden dimension 0 and the output head maps it to `x` (positive) or `y`
/// (negative), every other token at 0. A model that always writes text, for the tests of what
/// the server does with an answer (the random weights often write nothing that survives, and
/// which draws do changes with every sampler change). Written once per test process.
pub fn writing_fixture() -> PathBuf {
    let src = fixture();
    let dir = std::env::temp_dir().join(format!("diffusion-ls-writing-{}", std::process::id()));
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy the fixture");
    }
    let tokenizer: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).unwrap()).unwrap();
    let id = |t: &str| {
        tokenizer["model"]["vocab"][t]
            .as_u64()
            .expect("token in vocab") as usize
    };
    let (x, y) = (id("x"), id("y"));
    // safetensors: u64 header length, the JSON header, then the tensors' bytes.
    let mut bytes = std::fs::read(src.join("model.safetensors")).expect("fixture weights");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let tensor = |name: &str| -> (usize, Vec<usize>) {
        let t = &header[name];
        assert_eq!(t["dtype"], "F32", "{name}");
        let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
        let shape = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize);
        (start, shape.collect())
    };
    let (norm, norm_shape) = tensor("model.norm.weight");
    let (head, head_shape) = tensor("lm_head.weight");
    let hidden = norm_shape[0];
    let mut put = |at: usize, v: f32| bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    for i in 0..hidden {
        put(norm + 4 * i, if i == 0 { 1.0 } else { 0.0 });
    }
    for row in 0..head_shape[0] {
        for i in 0..hidden {
            let v = match (row, i) {
                (r, 0) if r == x => 10.0,
                (r, 0) if r == y => -10.0,
                _ => 0.0,
            };
            put(head + 4 * (row * hidden + i), v);
        }
    }
    let tmp = dir.join("model.safetensors.tmp");
    std::fs::write(&tmp, &bytes).expect("write the weights");
    std::fs::rename(&tmp, dir.join("model.safetensors")).expect("rename the weights");
    dir
}

/// What the server wrote, frame by frame.
pub enum Incoming {
    Message(Value),
    /// A frame that is not JSON or has no Content-Length: the output stream is out of step.
    Garbage(String),
}

#[derive(Debug)]
pub enum WaitError {
    Timeout,
    /// stdout closed: the server exited or crashed.
    Closed,
    Garbage(String),
}

pub struct Client {
    pub child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Incoming>,
    next_id: i64,
    /// Responses read while waiting for another one, by `id.to_string()`.
    unclaimed: HashMap<String, Value>,
    pub server_requests: Vec<(String, Value)>,
    pub notifications: Vec<(String, Value)>,
    /// The `result` sent back for `workspace/applyEdit`.
    pub apply_edit_reply: Value,
    /// Where the server's stderr goes (the log), if kept.
    pub log: Option<PathBuf>,
}

pub struct Options<'a> {
    pub args: Vec<String>,
    /// Keep stderr (the log) in this file.
    pub log: Option<PathBuf>,
    pub log_level: &'a str,
    pub env: Vec<(&'a str, &'a str)>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            args: vec!["--model".into(), fixture().display().to_string()],
            log: None,
            log_level: "debug",
            env: vec![],
        }
    }
}

fn read_frames(stdout: impl Read, tx: std::sync::mpsc::Sender<Incoming>) {
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
        let Some(len) = len else {
            let _ = tx.send(Incoming::Garbage("frame without Content-Length".into()));
            return;
        };
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let msg = match serde_json::from_slice(&body) {
            Ok(v) => Incoming::Message(v),
            Err(e) => Incoming::Garbage(format!("{e}: {}", String::from_utf8_lossy(&body))),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

impl Client {
    pub fn start() -> Client {
        Client::spawn(Options::default())
    }

    pub fn spawn(opts: Options<'_>) -> Client {
        let stderr = match &opts.log {
            Some(p) => Stdio::from(File::create(p).expect("create the log file")),
            None => Stdio::null(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_diffusion-ls"))
            .args(&opts.args)
            .env("DIFFUSION_LS_LOG", opts.log_level)
            .env("DIFFUSION_LS_TEST_PANIC", "1")
            .envs(opts.env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn diffusion-ls");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || read_frames(stdout, tx));
        Client {
            child,
            stdin,
            rx,
            next_id: 1,
            unclaimed: HashMap::new(),
            server_requests: vec![],
            notifications: vec![],
            apply_edit_reply: json!({"applied": true}),
            log: opts.log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// User + system CPU time in clock ticks (Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Writes one frame; `false` once the server stopped reading.
    pub fn write_raw(&mut self, body: &[u8]) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        let header = format!("Content-Length: {}\r\n\r\n", body.len());
        stdin.write_all(header.as_bytes()).is_ok()
            && stdin.write_all(body).is_ok()
            && stdin.flush().is_ok()
    }

    /// Closes the server's stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn send(&mut self, v: &Value) -> bool {
        self.write_raw(serde_json::to_string(v).unwrap().as_bytes())
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    pub fn fresh_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request and returns its id without waiting.
    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.fresh_id();
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Next message, answering server requests and recording notifications on the way; those
    /// are returned too.
    pub fn next_message(&mut self, timeout: Duration) -> Result<Value, WaitError> {
        let msg = match self.rx.recv_timeout(timeout) {
            Ok(Incoming::Message(m)) => m,
            Ok(Incoming::Garbage(g)) => return Err(WaitError::Garbage(g)),
            Err(RecvTimeoutError::Timeout) => return Err(WaitError::Timeout),
            Err(RecvTimeoutError::Disconnected) => return Err(WaitError::Closed),
        };
        if let Some(method) = msg.get("method").and_then(Value::as_str) {
            let params = msg.get("params").cloned().unwrap_or(Value::Null);
            if let Some(req_id) = msg.get("id") {
                let result = match method {
                    "workspace/applyEdit" => self.apply_edit_reply.clone(),
                    _ => Value::Null,
                };
                let reply = json!({"jsonrpc": "2.0", "id": req_id, "result": result});
                self.server_requests.push((method.to_string(), params));
                self.send(&reply);
            } else {
                self.notifications.push((method.to_string(), params));
            }
        }
        Ok(msg)
    }

    /// The response with this id (`Value::Null` for the null id), keeping others for later.
    pub fn try_response(&mut self, id: &Value, timeout: Duration) -> Result<Value, WaitError> {
        let key = id.to_string();
        if let Some(r) = self.unclaimed.remove(&key) {
            return Ok(r);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.next_message(left)?;
            if msg.get("method").is_some() {
                continue;
            }
            let got = msg.get("id").cloned().unwrap_or(Value::Null).to_string();
            if got == key {
                return Ok(msg);
            }
            self.unclaimed.insert(got, msg);
        }
    }

    pub fn wait_response(&mut self, id: i64) -> Value {
        match self.try_response(&json!(id), TIMEOUT) {
            Ok(r) => r,
            Err(e) => panic!("no response for {id}: {e:?}"),
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.wait_response(id)
    }

    pub fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    pub fn initialize(&mut self, encodings: &[&str], options: Value) -> Value {
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

    pub fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "rust", "version": 1, "text": text}}),
        );
    }

    /// The server's copy: (version, text).
    pub fn text(&mut self, uri: &str) -> (i64, String) {
        let r = self.result("diffusionLs/debugDocument", json!({"uri": uri}));
        (
            r["version"].as_i64().unwrap(),
            r["text"].as_str().unwrap().to_string(),
        )
    }

    pub fn status(&mut self) -> Value {
        self.result("diffusionLs/status", Value::Null)
    }

    pub fn wait_ready(&mut self) {
        let r = self.status();
        assert_eq!(r["ready"], true, "model did not load: {r}");
    }

    /// The first notification `method` whose params satisfy `pred`, reading until it comes.
    pub fn wait_notification(&mut self, method: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = 0;
        loop {
            while seen < self.notifications.len() {
                let (m, p) = &self.notifications[seen];
                if m == method && pred(p) {
                    return p.clone();
                }
                seen += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left) {
                Ok(msg) => {
                    if msg.get("method").is_none() {
                        let id = msg.get("id").cloned().unwrap_or(Value::Null).to_string();
                        self.unclaimed.insert(id, msg);
                    }
                }
                Err(e) => panic!("no {method} notification: {e:?}"),
            }
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling the child: std has no wait with a timeout.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `shutdown`, `exit`, and a clean exit status.
    pub fn shutdown(mut self) {
        let r = self.request("shutdown", Value::Null);
        assert!(r.get("error").is_none(), "{r}");
        self.notify("exit", Value::Null);
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "exit status {status:?}"
        );
    }

    /// The log so far (empty when stderr was not kept).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pos(line: u32, character: u32) -> Value {
    json!({"line": line, "character": character})
}

pub fn inline_params(uri: &str, line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": uri}, "position": pos(line, character), "context": {"triggerKind": 2}})
}
