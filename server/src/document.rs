//! Open documents: a rope, its version, and an incrementally maintained tree-sitter tree.

use ropey::Rope;
use tree_sitter::{InputEdit, Parser, Point, Tree};

use crate::language::{self, Grammar};
use crate::position::{self, Encoding, LineCol, PositionError};

/// Documents larger than this get no syntax tree and no completions: a full parse of a few MiB
/// would stall the message loop, and nobody wants model output in a generated file.
pub const MAX_SYNTAX_BYTES: usize = 1 << 20;

/// One `contentChanges` entry: replace `range` (or the whole text when `None`) by `text`.
#[derive(Clone, Debug)]
pub struct TextChange {
    pub range: Option<(LineCol, LineCol)>,
    pub text: String,
}

pub struct Document {
    pub language_id: String,
    pub version: i32,
    pub rope: Rope,
    grammar: Option<&'static Grammar>,
    parser: Option<Parser>,
    tree: Option<Tree>,
}

/// An immutable view of a document for work off the message loop. Cloning a rope or a tree is
/// O(1) (both are reference counted), so taking one per request is cheap.
#[derive(Clone)]
pub struct Snapshot {
    pub uri: String,
    pub version: i32,
    pub rope: Rope,
    pub tree: Option<Tree>,
    pub grammar: Option<&'static Grammar>,
}

impl Document {
    pub fn new(language_id: &str, version: i32, text: &str) -> Document {
        let grammar = language::by_language_id(language_id);
        let mut doc = Document {
            language_id: language_id.to_string(),
            version,
            rope: Rope::from_str(text),
            grammar,
            parser: grammar.map(Grammar::parser),
            tree: None,
        };
        doc.reparse();
        doc
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
        }
        self.reparse();
        result
    }

    fn apply_one(&mut self, change: &TextChange, enc: Encoding) -> Result<(), PositionError> {
        let Some((start, end)) = change.range else {
            self.rope = Rope::from_str(&change.text);
            self.tree = None;
            return Ok(());
        };
        let chars = position::to_char_range(&self.rope, start, end, enc)?;
        let start_byte = self.rope.char_to_byte(chars.start);
        let old_end_byte = self.rope.char_to_byte(chars.end);
        let start_position = self.point(start_byte);
        let old_end_position = self.point(old_end_byte);
        self.rope.remove(chars.clone());
        self.rope.insert(chars.start, &change.text);
        if let Some(tree) = &mut self.tree {
            tree.edit(&InputEdit {
                start_byte,
                old_end_byte,
                new_end_byte: start_byte + change.text.len(),
                start_position,
                old_end_position,
                new_end_position: crate::syntax::advance_point(start_position, &change.text),
            });
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

    fn reparse(&mut self) {
        let Some(parser) = &mut self.parser else {
            return;
        };
        if self.rope.len_bytes() > MAX_SYNTAX_BYTES {
            self.tree = None;
            return;
        }
        let rope = &self.rope;
        let len = rope.len_bytes();
        let mut read = |byte: usize, _: Point| -> &[u8] {
            if byte >= len {
                return &[];
            }
            let (chunk, chunk_start, _, _) = rope.chunk_at_byte(byte);
            &chunk.as_bytes()[byte - chunk_start..]
        };
        self.tree = parser.parse_with_options(&mut read, self.tree.as_ref(), None);
    }

    pub fn grammar(&self) -> Option<&'static Grammar> {
        self.grammar
    }

    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    pub fn snapshot(&self, uri: &str) -> Snapshot {
        Snapshot {
            uri: uri.to_string(),
            version: self.version,
            rope: self.rope.clone(),
            tree: self.tree.clone(),
            grammar: self.grammar,
        }
    }
}

impl Snapshot {
    /// A snapshot of text that is not open in an editor (CLI, eval).
    pub fn from_text(uri: &str, grammar: Option<&'static Grammar>, text: &str) -> Snapshot {
        let language_id = grammar
            .and_then(|g| g.language_ids.first())
            .copied()
            .unwrap_or("plaintext");
        Document::new(language_id, 0, text).snapshot(uri)
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
        assert!(doc.tree().is_some());
    }
}
