//! Fault matrix for model files: each broken model folder must give a clear message to the
//! editor (`window/showMessage`) and to the log, while the server keeps serving everything that
//! needs no model, without a busy loop. Plus a panic on the model thread in the middle of a
//! request: that request gets an error, the next one works.

// Test code: an unwrap is an assertion, and figures go to stdout and stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "support/client.rs"]
mod client;

use std::path::{Path, PathBuf};
use std::time::Duration;

use client::{fixture, inline_params, Client, Options};
use serde_json::{json, Value};

/// One broken model: how to break a copy of the fixture, and what the message must name.
struct Fault {
    name: &'static str,
    /// Breaks the copy in `dir` (absent for a folder that is not there).
    breaks: fn(&Path),
    expect: &'static [&'static str],
}

fn write(dir: &Path, file: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(dir.join(file), bytes).unwrap();
}

fn remove(dir: &Path, file: &str) {
    std::fs::remove_file(dir.join(file)).unwrap();
}

/// Rewrites the header of `model.safetensors` (8-byte length, JSON) with `edit`.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_string(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

fn edit_json(dir: &Path, file: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(file);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "missing folder",
        breaks: |dir| std::fs::remove_dir_all(dir).unwrap(),
        expect: &["not a model folder"],
    },
    Fault {
        name: "missing model.safetensors",
        breaks: |dir| remove(dir, "model.safetensors"),
        expect: &["model.safetensors"],
    },
    Fault {
        name: "empty model.safetensors",
        breaks: |dir| write(dir, "model.safetensors", b""),
        expect: &["model.safetensors"],
    },
    Fault {
        name: "corrupt model.safetensors",
        breaks: |dir| {
            write(
                dir,
                "model.safetensors",
                b"\x10\0\0\0\0\0\0\0{not json at all",
            )
        },
        expect: &["model.safetensors"],
    },
    Fault {
        name: "truncated model.safetensors",
        breaks: |dir| {
            let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
            write(dir, "model.safetensors", &bytes[..bytes.len() / 2]);
        },
        expect: &["model.safetensors"],
    },
    Fault {
        name: "wrong tensor shape",
        breaks: |dir| {
            edit_header(dir, |h| {
                h["model.layers.0.mlp.down_proj.weight"]["shape"] = json!([128, 64]);
            })
        },
        expect: &["model.layers.0.mlp.down_proj.weight"],
    },
    Fault {
        name: "wrong dtype",
        breaks: |dir| {
            edit_header(dir, |h| {
                h["model.embed_tokens.weight"]["dtype"] = json!("U32")
            })
        },
        expect: &["model.embed_tokens.weight", "dtype"],
    },
    Fault {
        name: "missing tokenizer",
        breaks: |dir| remove(dir, "tokenizer.json"),
        expect: &["tokenizer.json"],
    },
    Fault {
        // Config and weights agree (422 rows); the tokenizer has a token past them.
        name: "tokenizer vocabulary past the config's vocab_size",
        breaks: |dir| {
            edit_json(dir, "tokenizer.json", |t| {
                let extra = json!({"id": 500, "content": "<|extra|>", "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true});
                t["added_tokens"].as_array_mut().unwrap().push(extra);
            })
        },
        // tokenizers renumbers the added token to the next free id, 422.
        expect: &["tokenizer.json", "token id 422", "vocab_size 422"],
    },
    Fault {
        name: "unknown architecture",
        breaks: |dir| {
            edit_json(dir, "config.json", |c| {
                c["architectures"] = json!(["GPT2LMHeadModel"]);
                c["model_type"] = json!("gpt2");
            })
        },
        expect: &["GPT2LMHeadModel"],
    },
    Fault {
        name: "huge max_position_embeddings",
        breaks: |dir| {
            edit_json(dir, "config.json", |c| {
                c["max_position_embeddings"] = json!(1_000_000_000_000_000u64)
            })
        },
        expect: &["max_position_embeddings", "1000000000000000"],
    },
    Fault {
        name: "corrupt config.json",
        breaks: |dir| write(dir, "config.json", "{\"vocab_size\": "),
        expect: &["config.json"],
    },
];

/// A scratch copy of the fixture, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir =
            std::env::temp_dir().join(format!("diffusion-ls-fault-{}-{slug}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
        }
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SRC: &str = "fn main() {\n    let x = 1;\n    \n}\n";

/// Checks one fault; the error describes what went wrong.
fn check(fault: &Fault) -> Result<(), String> {
    let scratch = Scratch::new(fault.name);
    (fault.breaks)(&scratch.0);
    let log = scratch.0.with_extension("log");
    let mut s = Client::spawn(Options {
        args: vec!["--model".into(), scratch.0.display().to_string()],
        log: Some(log.clone()),
        log_level: "info",
        env: vec![],
    });
    s.initialize(&["utf-16"], json!({"debounceMs": 0}));
    let status = s.status();
    let reason = status["model"].as_str().unwrap_or("").to_string();
    eprintln!("{}: {reason}", fault.name); // shown with --nocapture
    let names_all = |text: &str| fault.expect.iter().all(|e| text.contains(e));
    if status["ready"] != false || !names_all(&reason) {
        return Err(format!("status {status} should name {:?}", fault.expect));
    }
    let shown = s.wait_notification("window/showMessage", |_| true);
    let message = shown["message"].as_str().unwrap_or("");
    if shown["type"] != 1 || !names_all(message) {
        return Err(format!(
            "showMessage {shown} should be an error naming {:?}",
            fault.expect
        ));
    }
    let logged = s.log_text();
    if !logged.lines().any(|l| l.contains("ERROR") && names_all(l)) {
        return Err(format!("the log should name {:?}:\n{logged}", fault.expect));
    }
    // Everything that needs no model still works.
    let uri = "file:///tmp/fault.rs";
    s.open(uri, SRC);
    let r = s.result("textDocument/inlineCompletion", inline_params(uri, 2, 4));
    if !r.is_null() {
        return Err(format!("a completion without a model should be null: {r}"));
    }
    let actions = s.result(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri}, "context": {"diagnostics": []},
               "range": {"start": {"line": 1, "character": 8}, "end": {"line": 1, "character": 9}}}),
    );
    if actions.as_array().map_or(0, Vec::len) != 2 {
        return Err(format!("code actions: {actions}"));
    }
    if s.text(uri).1 != SRC {
        return Err("the document changed".into());
    }
    // No busy loop: idle for a second, the server uses well under half of it.
    let before = s.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = s.cpu_ticks() - before;
    if used > 50 {
        return Err(format!("{used} CPU ticks in one idle second: a busy loop"));
    }
    s.shutdown();
    let _ = std::fs::remove_file(log);
    Ok(())
}

#[test]
fn broken_model_files_give_a_clear_message_and_the_server_keeps_serving() {
    let failures: Vec<String> = FAULTS
        .iter()
        .filter_map(|f| check(f).err().map(|e| format!("{}: {e}", f.name)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn model_thread_panic_mid_request_fails_that_request_only() {
    let log = std::env::temp_dir().join(format!("diffusion-ls-panic-{}.log", std::process::id()));
    let mut s = Client::spawn(Options {
        log: Some(log.clone()),
        ..Options::default()
    });
    s.initialize(&["utf-16"], json!({"verify": false, "debounceMs": 0}));
    s.wait_ready();
    let bad = "file:///tmp/panic.rs";
    s.open(
        bad,
        "fn main() {\n    // DIFFUSION_LS_MODEL_PANIC\n    let x = \n}\n",
    );
    let r = s.request("textDocument/inlineCompletion", inline_params(bad, 2, 12));
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("panicked"),
        "{r}"
    );
    assert!(s.log_text().contains("test panic on the model thread"));
    // The next request, on another document and on this one once the marker is gone, works.
    let good = "file:///tmp/fine.rs";
    s.open(good, SRC);
    let r = s.result("textDocument/inlineCompletion", inline_params(good, 2, 4));
    assert!(r["items"].is_array(), "{r}");
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": bad, "version": 2},
               "contentChanges": [{"range": {"start": {"line": 1, "character": 7},
                                             "end": {"line": 1, "character": 31}}, "text": ""}]}),
    );
    let r = s.result("textDocument/inlineCompletion", inline_params(bad, 2, 12));
    assert!(r["items"].is_array(), "{r}");
    s.shutdown();
    let _ = std::fs::remove_file(log);
}
