//! Decides what the model sees and fills: the masked span (kind and size, from syntax and the
//! model), and the prefix/suffix token windows. The rules that turn raw model text into an
//! insertion are [`crate::finish`]'s.
//!
//! Everything here is plain text and token arithmetic so the CLI, eval and the server share it.

use std::ops::Range;

use ropey::Rope;

use crate::config::Settings;
use crate::document::Snapshot;
use crate::finish::{is_closing, Finish};
use crate::syntax;

/// Text is read around the cursor in byte windows this many times the token budget, which
/// holds more than enough tokens (code averages ~3 bytes per token) without tokenizing a file.
const BYTES_PER_TOKEN_WINDOW: usize = 8;

/// What the user asked to fill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Complete at a byte offset.
    Cursor(usize),
    /// Replace the selected bytes.
    Selection(Range<usize>),
    /// Replace the body of the function around a byte offset.
    Function(usize),
}

/// What the masked span is. The names (`line`, `block`, ...) are the one vocabulary: the keys
/// of `span_kinds` in the model's config.json, and what eval reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// Rest of the current line.
    Line,
    /// A new block body, after `{` or inside an empty block.
    Block,
    Selection,
    Function,
}

/// Masked positions for the span kinds sized by the model rather than by the text: the
/// trainer writes them into config.json (`span_kinds`, from `SPAN_KINDS` in
/// train/diffusion_train/data.py); a config without them gets the lengths of that same
/// definition, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanTokens {
    /// A completion that finishes the current line.
    pub line: usize,
    /// A completion that opens a new block body.
    pub block: usize,
}

impl Default for SpanTokens {
    fn default() -> Self {
        SpanTokens {
            line: 24,
            block: 64,
        }
    }
}

impl SpanTokens {
    /// The model's lengths (config.json's `span_kinds`), each kind it does not name at its
    /// default.
    pub fn of(config: &model::Config) -> SpanTokens {
        let default = SpanTokens::default();
        let get = |kind: &str, or: usize| config.span_kinds.get(kind).copied().unwrap_or(or);
        SpanTokens {
            line: get("line", default.line),
            block: get("block", default.block),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the cursor is not inside a function with a `{{ }}` body")]
    NoFunction,
    #[error("no syntax tree for this document (unknown language or file too large)")]
    NoSyntax,
    #[error("offset {0} is outside the document")]
    OutOfRange(usize),
}

/// The masked span and how to post-process its text.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kind: SpanKind,
    /// Bytes of the document the completion replaces (empty at a cursor).
    pub replace: Range<usize>,
    /// Masked positions given to the model.
    pub span_len: usize,
    /// The model may not end the completion before this many tokens: a rewritten function body
    /// is at least half as long as the original (an empty rewrite is no rewrite).
    pub min_tokens: usize,
    pub finish: Finish,
}

pub fn plan(
    snap: &Snapshot,
    target: &Target,
    settings: &Settings,
    spans: &SpanTokens,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Result<Plan, PlanError> {
    let rope = &snap.rope;
    let len = rope.len_bytes();
    let (kind, replace) = match target {
        Target::Cursor(at) => {
            let at = check(rope, *at)?;
            (cursor_kind(rope, at), at..at)
        }
        Target::Selection(r) => (
            SpanKind::Selection,
            check(rope, r.start)?..check(rope, r.end)?,
        ),
        Target::Function(at) => {
            let at = check(rope, *at)?;
            let (Some(tree), Some(grammar)) = (&snap.tree, snap.grammar) else {
                return Err(PlanError::NoSyntax);
            };
            (
                SpanKind::Function,
                syntax::function_body(tree, grammar, at).ok_or(PlanError::NoFunction)?,
            )
        }
    };
    debug_assert!(replace.end <= len);
    let max = settings.max_span_tokens.max(1);
    let original = match kind {
        SpanKind::Selection | SpanKind::Function => {
            count_tokens(&rope.byte_slice(replace.clone()).to_string())
        }
        _ => 0,
    };
    let span_len = match kind {
        SpanKind::Line => spans.line,
        SpanKind::Block => spans.block,
        // Slack lets the rewrite be a little longer than the original; +1 for the end token.
        SpanKind::Selection | SpanKind::Function => original + (original / 4).max(4) + 1,
    }
    .min(max);
    let min_tokens = if kind == SpanKind::Function {
        (original / 2).clamp(1, span_len)
    } else {
        1
    };
    let mut finish = Finish::new(rope, &replace, kind == SpanKind::Line);
    if kind == SpanKind::Block {
        finish = finish.inside_block(rope, replace.start);
    }
    Ok(Plan {
        kind,
        replace,
        span_len,
        min_tokens,
        finish,
    })
}

fn check(rope: &Rope, at: usize) -> Result<usize, PlanError> {
    if at > rope.len_bytes()
        || !rope
            .try_byte_to_char(at)
            .is_ok_and(|c| rope.char_to_byte(c) == at)
    {
        return Err(PlanError::OutOfRange(at));
    }
    Ok(at)
}

/// The current line split at byte `at`: (text before, text after without the line break).
pub fn line_around(rope: &Rope, at: usize) -> (String, String) {
    let line = rope.byte_to_line(at);
    let start = rope.line_to_byte(line);
    let end = if line + 1 < rope.len_lines() {
        rope.line_to_byte(line + 1)
    } else {
        rope.len_bytes()
    };
    let before = rope.byte_slice(start..at).to_string();
    let after = rope.byte_slice(at..end).to_string();
    (before, after.trim_end_matches(['\n', '\r']).to_string())
}

/// Span kind at a cursor: a block after `{` (or inside an empty block on a blank line), else
/// the rest of the line.
pub fn cursor_kind(rope: &Rope, at: usize) -> SpanKind {
    let (before, after) = line_around(rope, at);
    if !after.chars().all(|c| is_closing(c) || c.is_whitespace()) {
        return SpanKind::Line;
    }
    if before.trim_end().ends_with('{') {
        return SpanKind::Block;
    }
    if before.trim().is_empty() {
        let prev = rope
            .byte_slice(..at)
            .chars_at(rope.byte_to_char(at))
            .reversed()
            .find(|c| !c.is_whitespace());
        let next = rope.byte_slice(at..).chars().find(|c| !c.is_whitespace());
        if prev == Some('{') && next == Some('}') {
            return SpanKind::Block;
        }
    }
    SpanKind::Line
}

/// Token windows on both sides of the span.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

/// Window edges move in steps of this many bytes of text...
const EDGE_BYTES: usize = 1024;

/// Builds the prefix/suffix windows within `budget` tokens: 3/4 for the prefix and 1/4 for the
/// suffix, the share one side cannot use going to the other.
///
/// The windows are kept stable while the user types, so the model's context K/V cache (which
/// reuses the common prefix and common suffix of consecutive requests) keeps hitting: text is
/// read from line starts chosen on a 1 KiB grid, and tokens are dropped from the far ends in
/// whole quanta of `budget / 16` tokens, not one by one. A window therefore holds between
/// `budget - quantum` and `budget` tokens.
pub fn window<E>(
    rope: &Rope,
    replace: &Range<usize>,
    budget: usize,
    encode: &dyn Fn(&str) -> Result<Vec<u32>, E>,
) -> Result<Window, E> {
    let quantum = (budget / 16).max(1);
    let bytes = budget * BYTES_PER_TOKEN_WINDOW;
    let len = rope.len_bytes();
    let line_start_from = |b: usize| -> usize {
        // First line start at or after `b` (whole lines: no word fragment at the edge).
        let line = rope.byte_to_line(b);
        if rope.line_to_byte(line) == b {
            b
        } else {
            rope.line_to_byte((line + 1).min(rope.len_lines() - 1))
        }
    };
    let from = match replace.start.saturating_sub(bytes) / EDGE_BYTES * EDGE_BYTES {
        0 => 0,
        b => line_start_from(b).min(replace.start),
    };
    let to = ((replace.end + bytes) / EDGE_BYTES + 1) * EDGE_BYTES;
    let to = if to >= len {
        len
    } else {
        line_start_from(to).max(replace.end)
    };
    let prefix = encode(&rope.byte_slice(from..replace.start).to_string())?;
    let suffix = encode(&rope.byte_slice(replace.end..to).to_string())?;
    let prefix_budget = budget * 3 / 4;
    let suffix_budget = budget - prefix_budget;
    // What a short prefix leaves over goes to the suffix, in whole quanta.
    let spare = prefix_budget.saturating_sub(prefix.len()) / quantum * quantum;
    let s_take = suffix.len().min(suffix_budget + spare);
    let drop = prefix
        .len()
        .saturating_sub(budget - s_take)
        .div_ceil(quantum)
        * quantum;
    let prefix = prefix[drop.min(prefix.len())..].to_vec();
    Ok(Window {
        prefix,
        suffix: suffix[..s_take].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(src: &str) -> (Rope, usize) {
        let i = src.find("$0").unwrap();
        (Rope::from_str(&src.replace("$0", "")), i)
    }

    #[test]
    fn span_kinds() {
        let cases = [
            ("fn f() {\n    let x = foo($0);\n}\n", SpanKind::Line),
            ("fn f() {\n    let x = $0\n}\n", SpanKind::Line),
            (
                "fn f() {\n    let x = 1;\n    $0\n    g();\n}\n",
                SpanKind::Line,
            ),
            ("fn f() {$0}\n", SpanKind::Block),
            ("fn f() {\n    if x {$0\n}\n", SpanKind::Block),
            ("fn f() {\n    $0\n}\n", SpanKind::Block),
            ("fn f() {\n    while x { $0 }\n}\n", SpanKind::Block),
            ("fn f() { x$0 }\n", SpanKind::Line),
        ];
        for (src, want) in cases {
            let (rope, i) = at(src);
            assert_eq!(cursor_kind(&rope, i), want, "{src:?}");
        }
    }

    #[test]
    fn span_lengths_come_from_the_model() {
        let mut cfg = model::Config::default_family(16, 8, 1, 2, 2, 16, 128);
        assert_eq!(SpanTokens::of(&cfg), SpanTokens::default());
        cfg.span_kinds.insert("line".into(), 16);
        let spans = SpanTokens {
            line: 16,
            block: 64,
        };
        assert_eq!(SpanTokens::of(&cfg), spans);
    }

    /// The shipped model and the trainer's fixtures carry `span_kinds` as the trainer writes
    /// them: the server's kind names, with the lengths of the one definition.
    #[test]
    fn models_name_the_server_span_kinds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model");
        let names: Vec<String> = [SpanKind::Line, SpanKind::Block]
            .iter()
            .map(|k| {
                serde_json::to_value(k)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        for dir in [
            "default",
            "tests/fixtures/trainer-spm",
            "tests/fixtures/trainer-inplace",
        ] {
            let path = root.join(dir).join("config.json");
            let cfg = model::Config::from_file(&path).unwrap();
            let keys: Vec<&String> = cfg.span_kinds.keys().collect();
            assert_eq!(keys, ["block", "line"], "{}", path.display());
            assert!(keys.iter().all(|k| names.contains(k)));
            assert_eq!(SpanTokens::of(&cfg), SpanTokens::default(), "{dir}");
        }
    }

    #[test]
    fn windows_share_budget() {
        let text = "a\n".repeat(100);
        let rope = Rope::from_str(&text);
        let enc = |s: &str| Ok::<_, ()>(s.bytes().map(u32::from).collect::<Vec<_>>());
        let w = window(&rope, &(20..20), 40, &enc).unwrap();
        assert_eq!((w.prefix.len(), w.suffix.len()), (20, 20));
        let w = window(&rope, &(190..190), 40, &enc).unwrap();
        assert_eq!((w.prefix.len(), w.suffix.len()), (30, 10));
        let w = window(&rope, &(196..200), 40, &enc).unwrap();
        assert_eq!((w.prefix.len(), w.suffix.len()), (40, 0));
    }

    #[test]
    fn windows_stay_put_while_typing() {
        // Typing at the end of a long prefix: the window's first token moves rarely.
        let mut text = "let x = 1;\n".repeat(2000);
        let start = text.len() / 2;
        let enc = |s: &str| Ok::<_, ()>(s.bytes().map(u32::from).collect::<Vec<_>>());
        let mut moves = 0;
        let mut last: Option<Vec<u32>> = None;
        for typed in 0..200 {
            text.insert(start + typed, 'y');
            let at = start + typed + 1;
            let rope = Rope::from_str(&text);
            let w = window(&rope, &(at..at), 1024, &enc).unwrap();
            assert!(w.prefix.len() + w.suffix.len() <= 1024);
            assert!(w.prefix.len() + w.suffix.len() >= 1024 - 64);
            if let Some(prev) = &last {
                if prev[..16] != w.prefix[..16] {
                    moves += 1;
                }
            }
            last = Some(w.prefix);
        }
        assert!(
            moves <= 4,
            "the window start moved {moves} times in 200 keystrokes"
        );
    }
}
