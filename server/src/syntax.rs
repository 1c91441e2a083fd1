//! Tree-sitter queries the server needs: syntax errors, the function around a byte, edit points.

use std::ops::Range;

use tree_sitter::{Node, Point, Tree};

use crate::language::Grammar;

/// An ERROR node (parser skipped text) or a MISSING node (parser invented a zero-width token).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyntaxError {
    pub range: Range<usize>,
    pub missing: bool,
}

/// All ERROR and MISSING nodes, in document order. Only subtrees with `has_error` are visited,
/// so a clean tree costs one check.
pub fn errors(tree: &Tree) -> Vec<SyntaxError> {
    let mut out = Vec::new();
    let root = tree.root_node();
    if !root.has_error() {
        return out;
    }
    let mut cursor = root.walk();
    'walk: loop {
        let node = cursor.node();
        if node.is_error() || node.is_missing() {
            out.push(SyntaxError {
                range: node.byte_range(),
                missing: node.is_missing(),
            });
        }
        if node.has_error() && cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                continue 'walk;
            }
            if !cursor.goto_parent() {
                break 'walk;
            }
        }
    }
    out
}

/// Byte range strictly inside the braces of the body of the innermost function around `byte`.
pub fn function_body(tree: &Tree, grammar: &Grammar, byte: usize) -> Option<Range<usize>> {
    let mut node: Option<Node<'_>> = tree.root_node().descendant_for_byte_range(byte, byte);
    while let Some(n) = node {
        if grammar.function_kinds.contains(&n.kind()) {
            if let Some(body) = n.child_by_field_name("body") {
                let r = body.byte_range();
                // Only `{ ... }` bodies: a closure like `|x| x + 1` has nothing to mask inside braces.
                if body.kind() == "block" && r.len() >= 2 {
                    return Some(r.start + 1..r.end - 1);
                }
            }
        }
        node = n.parent();
    }
    None
}

/// Tree-sitter point (row, byte column) reached after `text` starting at `start`.
pub fn advance_point(start: Point, text: &str) -> Point {
    match text.rfind('\n') {
        Some(i) => Point {
            row: start.row + text.bytes().filter(|&b| b == b'\n').count(),
            column: text.len() - i - 1,
        },
        None => Point {
            row: start.row,
            column: start.column + text.len(),
        },
    }
}

/// Tree-sitter point of byte offset `byte` in `text`.
pub fn point_of(text: &str, byte: usize) -> Point {
    advance_point(Point { row: 0, column: 0 }, &text[..byte])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::language;

    fn parse(src: &str) -> Tree {
        language::by_language_id("rust")
            .unwrap()
            .parser()
            .parse(src, None)
            .unwrap()
    }

    #[test]
    fn finds_errors() {
        assert!(errors(&parse("fn a() { let x = 1; }")).is_empty());
        let errs = errors(&parse("fn a() { let x = ; }"));
        assert!(!errs.is_empty());
        let errs = errors(&parse("fn a() { if x { }"));
        assert!(!errs.is_empty(), "unbalanced brace must show up");
    }

    #[test]
    fn body_of_innermost_function() {
        let src = "fn outer() {\n    fn inner() { 1 }\n    2\n}\n";
        let tree = parse(src);
        let grammar = language::by_language_id("rust").unwrap();
        let at = src.find("1 }").unwrap();
        let body = function_body(&tree, grammar, at).unwrap();
        assert_eq!(&src[body], " 1 ");
        let at = src.find("2\n").unwrap();
        let body = function_body(&tree, grammar, at).unwrap();
        assert_eq!(&src[body], "\n    fn inner() { 1 }\n    2\n");
        assert!(function_body(&tree, grammar, src.len()).is_none());
    }

    #[test]
    fn points() {
        let p = advance_point(Point { row: 2, column: 4 }, "ab\ncd");
        assert_eq!(p, Point { row: 3, column: 2 });
        assert_eq!(point_of("x\ny", 3), Point { row: 1, column: 1 });
    }
}
