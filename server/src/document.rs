//! Open documents: a rope, its version, and a tree-sitter tree kept up to date off the request
//! path.
//!
//! An edit changes the rope and edits the old tree (both cheap); the reparse is a [`ParseJob`]
//! that the server runs on a blocking thread and hands back with [`Document::finish_parse`].
//! Edits that arrive while a job is out are replayed onto its tree, so nothing waits for a
//! parse except the requests that need the tree of exactly their version (see
//! `service::documents`). A parse past [`DOCUMENT_PARSE_BUDGET`] turns syntax off for
//! the document until a full-text change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ropey::Rope;
use tree_sitter::{InputEdit, Parser, Point, Tree};

use crate::language::{self, Grammar};
use crate::position::{self, Encoding, LineCol, PositionError};
use crate::syntax::{parse_bounded, DOCUMENT_PARSE_BUDGET};

/// Documents larger than this get no syntax tree and no completions: nobody wants model output
/// in a generated file of megabytes.
pub const MAX_SYNTAX_BYTES: usize = 1 << 20;

/// Source of [`Document::generation`]s: unique across documents, so a parse result can never be
/// installed into a document reopened under the same URI.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// One `contentChanges` entry: replace `range` (or the whole text when `None`) by `text`.
#[derive(Clone, Debug)]
pub struct TextChange {
    pub range: Option<(LineCol, LineCol)>,
    pub text: String,
}

/// Where a document's syntax tree stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntaxState {
    /// The tree matches the text.
    Ready,
    /// A parse of the current text is due or running.
    Pending,
    /// No tree, and none coming: no grammar, too large, or a parse ran past its budget.
    Off(&'static str),
}

pub struct Document {
    /// Never repeats: a parse result finds its own document even if the URI was reopened.
    id: u64,
    pub language_id: String,
    pub version: i32,
    /// Identity of the current text: changes with every edit, never repeats (client versions
    /// may).
    pub generation: u64,
    pub rope: Rope,
    grammar: Option<&'static Grammar>,
    /// `None` while a [`ParseJob`] holds it.
    parser: Option<Parser>,
    /// The last parsed tree, edited through every change since (so byte ranges stay close).
    tree: Option<Tree>,
    /// Whether `tree` was parsed from the current text.
    tree_current: bool,
    /// Edits made while a job is out, replayed onto its tree; `None` after a full-text change
    /// (the job's tree is then of no use).
    edits_during_job: Option<Vec<InputEdit>>,
    off: Option<&'static str>,
}

/// An immutable view of a document for work off the message loop. Cloning a rope or a tree is
/// O(1) (both are reference counted), so taking one per request is cheap.
#[derive(Clone)]
pub struct Snapshot {
    pub uri: String,
    pub version: i32,
    pub generation: u64,
    pub rope: Rope,
    /// Only a tree parsed from exactly this text.
    pub tree: Option<Tree>,
    pub grammar: Option<&'static Grammar>,
}

/// A reparse to run away from the message loop: owns the document's parser meanwhile.
pub struct ParseJob {
    document: u64,
    parser: Parser,
    rope: Rope,
    old: Option<Tree>,
    generation: u64,
}

/// What a [`ParseJob`] gives back to [`Document::finish_parse`].
pub struct Parsed {
    document: u64,
    parser: Parser,
    /// `None`: the parse ran past its budget.
    tree: Option<Tree>,
    generation: u64,
    pub elapsed: Duration,
}

impl ParseJob {
    pub fn run(mut self, budget: Duration) -> Parsed {
        let t0 = Instant::now();
        let rope = &self.rope;
        let len = rope.len_bytes();
        let mut read = |byte: usize, _: Point| -> &[u8] {
            if byte >= len {
                return &[];
            }
            let (chunk, chunk_start, _, _) = rope.chunk_at_byte(byte);
            &chunk.as_bytes()[byte - chunk_start..]
        };
        let tree = parse_bounded(
            &mut self.parser,
            &mut read,
            self.old.as_ref(),
            t0 + budget,
            None,
        )
        .ok();
        Parsed {
            document: self.document,
            parser: self.parser,
            tree,
            generation: self.generation,
            elapsed: t0.elapsed(),
        }
    }
}

impl Document {
    /// A document with its syntax [`SyntaxState::Pending`]: call [`Self::parse_now`] or run
    /// the jobs of [`Self::take_parse_job`].
    pub fn new(language_id: &str, version: i32, text: &str) -> Document {
        let grammar = language::by_language_id(language_id);
        Document {
            id: next_generation(),
            language_id: language_id.to_string(),
            version,
            generation: next_generation(),
            rope: Rope::from_str(text),
            grammar,
            parser: grammar.map(Grammar::parser),
            tree: None,
            tree_current: false,
            edits_during_job: None,
            off: None,
        }
    }

    pub fn syntax(&self) -> SyntaxState {
        if self.grammar.is_none() {
            SyntaxState::Off("no grammar for this language")
        } else if self.rope.len_bytes() > MAX_SYNTAX_BYTES {
            SyntaxState::Off("the document is larger than 1 MiB")
        } else if let Some(why) = self.off {
            SyntaxState::Off(why)
        } else if self.tree_current {
            SyntaxState::Ready
        } else {
            SyntaxState::Pending
        }
    }

    /// Applies the changes of one `didChange` in order. On a bad range the remaining changes are
    /// skipped and the error returned: the client and the server now disagree, which only a
    /// full-text change or reopening repairs, and the caller logs it.
    pub fn apply_changes(
        &mut self,
        changes: &[TextChange],
        version: i32,
        enc: Encoding,
    ) -> Result<(), PositionError> {
        self.version = version;
        let mut result = Ok(());
        for change in changes {
            if let Err(e) = self.apply_one(change, enc) {
                result = Err(e);
                break;
            }
            self.generation = next_generation();
            self.tree_current = false;
        }
        result
    }

    fn apply_one(&mut self, change: &TextChange, enc: Encoding) -> Result<(), PositionError> {
        let Some((start, end)) = change.range else {
            self.rope = Rope::from_str(&change.text);
            self.tree = None;
            self.edits_during_job = None;
            self.off = None;
            return Ok(());
        };
        let chars = position::to_char_range(&self.rope, start, end, enc)?;
        let start_byte = self.rope.char_to_byte(chars.start);
        let old_end_byte = self.rope.char_to_byte(chars.end);
        let start_position = self.point(start_byte);
        let old_end_position = self.point(old_end_byte);
        self.rope.remove(chars.clone());
        self.rope.insert(chars.start, &change.text);
        let edit = InputEdit {
            start_byte,
            old_end_byte,
            new_end_byte: start_byte + change.text.len(),
            start_position,
            old_end_position,
            new_end_position: crate::syntax::advance_point(start_position, &change.text),
        };
        if let Some(tree) = &mut self.tree {
            tree.edit(&edit);
        }
        if let Some(edits) = &mut self.edits_during_job {
            edits.push(edit);
        }
        Ok(())
    }

    /// Tree-sitter point of a byte offset. Rows are rope lines, which differ from tree-sitter's
    /// `\n` count only after a lone `\r`; the server reads byte ranges, never points.
    fn point(&self, byte: usize) -> Point {
        let row = self.rope.byte_to_line(byte);
        Point {
            row,
            column: byte - self.rope.line_to_byte(row),
        }
    }

    /// The reparse the current text needs, unless one is already out or syntax is off.
    pub fn take_parse_job(&mut self) -> Option<ParseJob> {
        if self.syntax() != SyntaxState::Pending {
            return None;
        }
        let parser = self.parser.take()?;
        self.edits_during_job = Some(Vec::new());
        Some(ParseJob {
            document: self.id,
            parser,
            rope: self.rope.clone(),
            old: self.tree.clone(),
            generation: self.generation,
        })
    }

    /// Installs a job's result. Returns whether another job is due (the text changed meanwhile).
    /// The result of another document's job (closed and reopened under this URI) is dropped.
    pub fn finish_parse(&mut self, parsed: Parsed) -> bool {
        if parsed.document != self.id {
            return false;
        }
        self.parser = Some(parsed.parser);
        let edits = self.edits_during_job.take();
        match (parsed.tree, edits) {
            (None, _) => {
                self.tree = None;
                self.off = Some("parsing took longer than the budget");
            }
            (Some(mut tree), Some(edits)) => {
                for e in &edits {
                    tree.edit(e);
                }
                self.tree = Some(tree);
                self.tree_current = parsed.generation == self.generation;
            }
            // A full-text change came in meanwhile: the tree is of another text.
            (Some(_), None) => {}
        }
        self.syntax() == SyntaxState::Pending
    }

    /// Parses on this thread until the tree matches the text (CLI, eval, tests).
    pub fn parse_now(&mut self, budget: Duration) {
        while let Some(job) = self.take_parse_job() {
            let parsed = job.run(budget);
            self.finish_parse(parsed);
        }
    }

    pub fn grammar(&self) -> Option<&'static Grammar> {
        self.grammar
    }

    /// The last tree, possibly parsed from an older text and edited since (requests use the
    /// snapshot's, which is current or none).
    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    /// The snapshot a request works on; its tree is `None` unless it matches the text.
    pub fn snapshot(&self, uri: &str) -> Snapshot {
        Snapshot {
            uri: uri.to_string(),
            version: self.version,
            generation: self.generation,
            rope: self.rope.clone(),
            tree: if self.tree_current {
                self.tree.clone()
            } else {
                None
            },
            grammar: self.grammar,
        }
    }
}

impl Snapshot {
    /// A snapshot of text that is not open in an editor (CLI, eval), parsed here.
    pub fn from_text(uri: &str, grammar: Option<&'static Grammar>, text: &str) -> Snapshot {
        let language_id = grammar
            .and_then(|g| g.language_ids.first())
            .copied()
            .unwrap_or("plaintext");
        let mut doc = Document::new(language_id, 0, text);
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        doc.snapshot(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(l0: u32, c0: u32, l1: u32, c1: u32, text: &str) -> TextChange {
        TextChange {
            range: Some((LineCol::new(l0, c0), LineCol::new(l1, c1))),
            text: text.into(),
        }
    }

    #[test]
    fn incremental_edits_match_fresh_parse() {
        let mut doc = Document::new("rust", 1, "fn main() {\n    let s = \"é😀\";\n}\n");
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        // Insert after the emoji (UTF-16: `    let s = "é` is 14 units, the emoji 2 more).
        doc.apply_changes(&[change(1, 16, 1, 16, "日本")], 2, Encoding::Utf16)
            .unwrap();
        assert_eq!(
            doc.rope.to_string(),
            "fn main() {\n    let s = \"é😀日本\";\n}\n"
        );
        doc.apply_changes(
            &[
                change(1, 4, 1, 7, "const"),
                change(2, 0, 2, 1, "}\nfn f() {}"),
            ],
            3,
            Encoding::Utf8,
        )
        .unwrap();
        assert_eq!(doc.syntax(), SyntaxState::Pending);
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        assert_eq!(doc.syntax(), SyntaxState::Ready);
        let text = doc.rope.to_string();
        assert_eq!(
            text,
            "fn main() {\n    const s = \"é😀日本\";\n}\nfn f() {}\n"
        );
        let fresh = language::by_language_id("rust")
            .unwrap()
            .parser()
            .parse(&text, None)
            .unwrap();
        assert_eq!(
            doc.tree().unwrap().root_node().to_sexp(),
            fresh.root_node().to_sexp()
        );
    }

    #[test]
    fn edits_during_a_parse_are_replayed_onto_its_tree() {
        let mut doc = Document::new("rust", 1, "fn a() {}\n");
        let job = doc.take_parse_job().expect("a parse is due");
        assert!(doc.take_parse_job().is_none(), "one job at a time");
        doc.apply_changes(&[change(1, 0, 1, 0, "fn b() {}\n")], 2, Encoding::Utf8)
            .unwrap();
        let snap = doc.snapshot("x");
        assert!(snap.tree.is_none(), "no tree of another text in a snapshot");
        // The job parsed version 1; version 2 is still due.
        assert!(doc.finish_parse(job.run(DOCUMENT_PARSE_BUDGET)));
        assert_eq!(doc.syntax(), SyntaxState::Pending);
        assert_eq!(
            doc.tree().unwrap().root_node().end_byte(),
            doc.rope.len_bytes()
        );
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        let tree = doc.snapshot("x").tree.expect("a current tree");
        assert_eq!(tree.root_node().named_child_count(), 2);
        // A full-text change while a job is out: the job's tree is thrown away.
        doc.apply_changes(&[change(0, 0, 0, 0, " ")], 3, Encoding::Utf8)
            .unwrap();
        let job = doc.take_parse_job().unwrap();
        let full = TextChange {
            range: None,
            text: "struct S;".into(),
        };
        doc.apply_changes(&[full], 4, Encoding::Utf8).unwrap();
        assert!(doc.finish_parse(job.run(DOCUMENT_PARSE_BUDGET)));
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        let tree = doc.snapshot("x").tree.unwrap();
        assert_eq!(tree.root_node().child(0).unwrap().kind(), "struct_item");
    }

    #[test]
    fn a_parse_past_its_budget_turns_syntax_off_until_a_full_change() {
        let mut doc = Document::new("rust", 1, &"\"".repeat(50_000));
        doc.parse_now(Duration::ZERO);
        assert!(matches!(doc.syntax(), SyntaxState::Off(_)));
        assert!(doc.snapshot("x").tree.is_none());
        doc.apply_changes(&[change(0, 0, 0, 0, "x")], 2, Encoding::Utf8)
            .unwrap();
        assert!(
            doc.take_parse_job().is_none(),
            "no retry on every keystroke"
        );
        let full = TextChange {
            range: None,
            text: "fn a() {}".into(),
        };
        doc.apply_changes(&[full], 3, Encoding::Utf8).unwrap();
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        assert_eq!(doc.syntax(), SyntaxState::Ready);
    }

    #[test]
    fn bad_range_is_an_error_not_a_panic() {
        let mut doc = Document::new("rust", 1, "a😀b");
        assert!(doc
            .apply_changes(&[change(0, 2, 0, 2, "x")], 2, Encoding::Utf16)
            .is_err());
        assert!(doc
            .apply_changes(&[change(5, 0, 5, 0, "x")], 3, Encoding::Utf16)
            .is_err());
        assert!(doc
            .apply_changes(&[change(0, 3, 0, 1, "x")], 4, Encoding::Utf16)
            .is_err());
        assert_eq!(doc.rope.to_string(), "a😀b");
        doc.apply_changes(
            &[TextChange {
                range: None,
                text: "fn x() {}".into(),
            }],
            5,
            Encoding::Utf16,
        )
        .unwrap();
        doc.parse_now(DOCUMENT_PARSE_BUDGET);
        assert!(doc.tree().is_some());
    }
}
