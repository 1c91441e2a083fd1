//! Edit-sequence properties: random incremental edits, in UTF-8, UTF-16 and UTF-32 positions
//! over multi-byte text, keep the document's rope equal to a plain `String` model, and the
//! incrementally maintained tree (including edits made while a parse is out) equal to
//! - a fresh parse of the model, whenever that parse has no syntax error;
//! - always, the tree tree-sitter itself gives for the same edits and parses done directly on
//!   the `String` (edits computed from it, not from the rope).
//!
//! Why not a fresh parse always: tree-sitter's error recovery depends on the old tree, so an
//! incremental reparse of broken code may recover differently from a fresh one (seed 12 finds
//! `fn main() {\nstruct S { a: u8 }\n/*im-> u8 { self.a }\n}\n` after one deletion). Those
//! cases are counted, not failed.
//!
//! The model's positions come from its own line splitting and unit counting, not from ropey.

use diffusion_ls::{by_language_id, for_each_node, Document, Encoding, LineCol, TextChange};

use crate::text::{addressable, lines, pick, width};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::cell::Cell;
use std::time::Duration;
use tree_sitter::{InputEdit, Parser, Point, Tree};

const FRAGMENTS: &[&str] = &[
    "fn main() {\n",
    "}\n",
    "let x = 1;",
    "\"",
    "'a'",
    "é",
    "日本",
    "😀",
    "👩‍💻",
    "\r\n",
    "\n",
    "\r",
    " ",
    "{",
    "}",
    "(",
    ")",
    "/*",
    "*/",
    "// ",
    "x",
    "\t",
    "ü\u{308}",
    "\u{2028}",
    "r#\"",
    "struct S { a: u8 }\n",
    "impl S {\n    fn f(&self) -> u8 { self.a }\n}\n",
];

/// One change of a `didChange`: the range as fractions of the current text's addressable
/// positions, whether the end column overshoots its line, and the new text.
#[derive(Clone, Debug)]
struct Change {
    a: f64,
    b: f64,
    end_past_line: bool,
    full: bool,
    text: Vec<&'static str>,
}

#[derive(Clone, Debug)]
struct Batch {
    changes: Vec<Change>,
    /// Take a parse job before the batch and finish it after (edits replayed onto its tree).
    during_parse: bool,
    parse_after: bool,
}

fn fragments(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..max)
}

fn change() -> impl Strategy<Value = Change> {
    (
        0.0f64..=1.0,
        0.0f64..=1.0,
        any::<bool>(),
        prop::bool::weighted(0.03),
        fragments(4),
    )
        .prop_map(|(a, b, end_past_line, full, text)| Change {
            a,
            b,
            end_past_line,
            full,
            text,
        })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        prop::collection::vec(change(), 1..4),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.5),
    )
        .prop_map(|(changes, during_parse, parse_after)| Batch {
            changes,
            during_parse,
            parse_after,
        })
}

/// Node kinds and byte ranges in document order.
fn shape(tree: &tree_sitter::Tree) -> Vec<(u16, usize, usize, bool)> {
    let mut out = Vec::new();
    for_each_node(tree, |n| {
        out.push((n.kind_id(), n.start_byte(), n.end_byte(), n.is_missing()));
        true
    });
    out
}

const BUDGET: Duration = Duration::from_secs(60);

fn parser() -> Parser {
    by_language_id("rust").unwrap().parser()
}

/// Tree-sitter point of `byte` in `text` (rows count `\n` only, as tree-sitter's do).
fn point(text: &str, byte: usize) -> Point {
    let before = &text[..byte];
    let row = before.matches('\n').count();
    let column = byte - before.rfind('\n').map_or(0, |i| i + 1);
    Point { row, column }
}

/// Tree-sitter driven directly over the `String` model, mirroring the document's edits and
/// parses (a parse job: `job`, the tree it parsed, `None` once a full change made it useless).
struct Reference {
    parser: Parser,
    tree: Option<Tree>,
    job: Option<Option<Tree>>,
}

impl Reference {
    fn edit(&mut self, before: &str, start: usize, old_end: usize, new: &str) {
        let after = format!("{}{new}", &before[..start]);
        let edit = InputEdit {
            start_byte: start,
            old_end_byte: old_end,
            new_end_byte: start + new.len(),
            start_position: point(before, start),
            old_end_position: point(before, old_end),
            new_end_position: point(&after, after.len()),
        };
        for t in [
            self.tree.as_mut(),
            self.job.as_mut().and_then(Option::as_mut),
        ]
        .into_iter()
        .flatten()
        {
            t.edit(&edit);
        }
    }
    fn replace(&mut self) {
        self.tree = None;
        if let Some(j) = &mut self.job {
            *j = None;
        }
    }
    fn parse(&mut self, model: &str) {
        self.tree = self.parser.parse(model, self.tree.as_ref());
    }
}

// Tree comparisons, and fresh parses of broken texts that differ from the incremental tree (error
// recovery, see the module comment).
thread_local! {
    static RECOVERED_DIFFERENTLY: Cell<u64> = const { Cell::new(0) };
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

fn check_tree(
    doc: &mut Document,
    reference: &mut Reference,
    model: &str,
) -> Result<(), TestCaseError> {
    doc.parse_now(BUDGET);
    reference.parse(model);
    let tree = doc
        .snapshot("t")
        .tree
        .expect("a current tree after parse_now");
    let direct = reference.tree.as_ref().expect("tree-sitter parses");
    prop_assert!(
        shape(&tree) == shape(direct),
        "document tree {} != tree-sitter's own incremental tree {} for {:?}",
        tree.root_node().to_sexp(),
        direct.root_node().to_sexp(),
        model
    );
    let fresh = parser().parse(model, None).unwrap();
    CHECKS.with(|c| c.set(c.get() + 1));
    if shape(&tree) != shape(&fresh) {
        prop_assert!(
            fresh.root_node().has_error(),
            "incremental tree {} != fresh {} for error-free {:?}",
            tree.root_node().to_sexp(),
            fresh.root_node().to_sexp(),
            model
        );
        RECOVERED_DIFFERENTLY.with(|c| c.set(c.get() + 1));
    }
    Ok(())
}

fn run_case(initial: &[&str], enc: Encoding, batches: &[Batch]) -> Result<(), TestCaseError> {
    let mut model = initial.concat();
    let mut doc = Document::new("rust", 1, &model);
    doc.parse_now(BUDGET);
    let mut reference = Reference {
        parser: parser(),
        tree: None,
        job: None,
    };
    reference.parse(&model);
    for (v, batch) in batches.iter().enumerate() {
        let job = if batch.during_parse {
            doc.take_parse_job()
        } else {
            None
        };
        if job.is_some() {
            let parsed = reference.parser.parse(&model, reference.tree.as_ref());
            reference.job = Some(parsed);
        }
        let mut changes = Vec::new();
        for c in &batch.changes {
            let text = c.text.concat();
            if c.full {
                model = text.clone();
                reference.replace();
                changes.push(TextChange { range: None, text });
                continue;
            }
            let points = addressable(&model, enc);
            let (mut x, mut y) = (pick(&points, c.a), pick(&points, c.b));
            if y.0 < x.0 {
                std::mem::swap(&mut x, &mut y);
            }
            if c.end_past_line {
                // A column past the end of its line means the end of that line.
                let (start, end) = lines(&model)[y.1.line as usize];
                y = (
                    end,
                    LineCol::new(y.1.line, width(&model[start..end], enc) + 3),
                );
            }
            reference.edit(&model, x.0, y.0, &text);
            model.replace_range(x.0..y.0, &text);
            changes.push(TextChange {
                range: Some((x.1, y.1)),
                text,
            });
        }
        doc.apply_changes(&changes, v as i32 + 2, enc)
            .map_err(|e| TestCaseError::fail(format!("valid change refused: {e}")))?;
        prop_assert_eq!(doc.rope.to_string(), model.clone());
        if let Some(job) = job {
            doc.finish_parse(job.run(BUDGET));
            if let Some(Some(t)) = reference.job.take() {
                reference.tree = Some(t);
            }
        }
        if batch.parse_after {
            check_tree(&mut doc, &mut reference, &model)?;
        }
    }
    check_tree(&mut doc, &mut reference, &model)
}

pub struct Figures {
    pub cases: u32,
    /// Tree comparisons, and those where a broken text's fresh parse recovered differently.
    pub checks: u64,
    pub recovered_differently: u64,
    pub failure: Option<String>,
}

pub fn run(cases: u32, seed: u64) -> Figures {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let encodings = prop::sample::select(vec![Encoding::Utf8, Encoding::Utf16, Encoding::Utf32]);
    let strategy = (
        fragments(30),
        encodings,
        prop::collection::vec(batch(), 1..12),
    );
    let result = runner.run(&strategy, |(initial, enc, batches)| {
        run_case(&initial, enc, &batches)
    });
    Figures {
        cases,
        checks: CHECKS.with(Cell::get),
        recovered_differently: RECOVERED_DIFFERENTLY.with(Cell::get),
        failure: result.err().map(|e| e.to_string()),
    }
}
