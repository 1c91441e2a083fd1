//! Tree-sitter queries the server needs: syntax errors, the function around a byte, edit points.

use std::cell::Cell;
use std::ops::{ControlFlow, Range};
use std::time::{Duration, Instant};

use tree_sitter::{Node, ParseOptions, ParseState, Parser, Point, Tree};

use crate::engine::CancelToken;
use crate::language::Grammar;

/// Longest a document parse may take (off the request path, see [`crate::document`]). Past it
/// the document gets no syntax features: 700,000 `"` take ~7 s at ~10 µs a byte, and every edit
/// near the start reparses all of it.
pub const DOCUMENT_PARSE_BUDGET: Duration = Duration::from_secs(3);
/// Longest one verifier parse (a candidate spliced into the document) may take; past it the
/// candidate counts as broken (fail closed).
pub const CHECK_PARSE_BUDGET: Duration = Duration::from_millis(500);
/// Longest all the verifier parses of one request may take together (their own time, not the
/// model's between them): a document where every check is slow would otherwise hold the model
/// thread for steps × candidates × the above.
pub const REQUEST_VERIFY_BUDGET: Duration = Duration::from_secs(2);

/// Why [`parse_bounded`] produced no tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseStop {
    /// Past the deadline.
    Budget,
    /// The request's token was cancelled.
    Cancelled,
}

/// Parses the text `read` yields (reusing `old`), stopping at `deadline` or once `cancel` is
/// set. A stopped parser is reset, so its next parse starts afresh instead of resuming this one.
pub fn parse_bounded<T: AsRef<[u8]>>(
    parser: &mut Parser,
    read: &mut impl FnMut(usize, Point) -> T,
    old: Option<&Tree>,
    deadline: Instant,
    cancel: Option<&CancelToken>,
) -> Result<Tree, ParseStop> {
    let stop = Cell::new(None);
    let mut progress = |_: &ParseState| {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            stop.set(Some(ParseStop::Cancelled));
        } else if Instant::now() >= deadline {
            stop.set(Some(ParseStop::Budget));
        }
        match stop.get() {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    };
    let options = ParseOptions::new().progress_callback(&mut progress);
    match parser.parse_with_options(read, old, Some(options)) {
        Some(tree) => Ok(tree),
        None => {
            parser.reset();
            // `None` without a stop is a parser without a language, which `Grammar::parser`
            // never builds; report it as the budget rather than panic.
            Err(stop.get().unwrap_or(ParseStop::Budget))
        }
    }
}

/// An ERROR node (parser skipped text) or a MISSING node (parser invented a zero-width token).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyntaxError {
    pub range: Range<usize>,
    pub missing: bool,
}

/// Visits the nodes of `tree` in document order (a node before its children); `visit` answers
/// whether to go into the node's children.
pub fn for_each_node(tree: &Tree, mut visit: impl FnMut(Node<'_>) -> bool) {
    let mut cursor = tree.walk();
    'walk: loop {
        if visit(cursor.node()) && cursor.goto_first_child() {
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
}

/// All ERROR and MISSING nodes, in document order. Only subtrees with `has_error` are visited,
/// so a clean tree costs one check.
pub fn errors(tree: &Tree) -> Vec<SyntaxError> {
    let mut out = Vec::new();
    if !tree.root_node().has_error() {
        return out;
    }
    for_each_node(tree, |node| {
        if node.is_error() || node.is_missing() {
            out.push(SyntaxError {
                range: node.byte_range(),
                missing: node.is_missing(),
            });
        }
        node.has_error()
    });
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
    fn bounded_parse_stops_and_recovers() {
        let mut parser = language::by_language_id("rust").unwrap().parser();
        let src = "\"".repeat(20_000);
        let mut read = |b: usize, _: Point| &src.as_bytes()[b.min(src.len())..];
        let past = Instant::now();
        assert_eq!(
            parse_bounded(&mut parser, &mut read, None, past, None).unwrap_err(),
            ParseStop::Budget
        );
        let cancel = CancelToken::default();
        cancel.cancel();
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            parse_bounded(&mut parser, &mut read, None, later, Some(&cancel)).unwrap_err(),
            ParseStop::Cancelled
        );
        // The stopped parses left nothing behind: a fresh text parses completely.
        let ok = "fn a() {}";
        let mut read = |b: usize, _: Point| &ok.as_bytes()[b.min(ok.len())..];
        let tree = parse_bounded(&mut parser, &mut read, None, later, None).unwrap();
        assert_eq!(tree.root_node().end_byte(), ok.len());
        assert!(!tree.root_node().has_error());
    }

    #[test]
    fn points() {
        let p = advance_point(Point { row: 2, column: 4 }, "ab\ncd");
        assert_eq!(p, Point { row: 3, column: 2 });
        assert_eq!(point_of("x\ny", 3), Point { row: 1, column: 1 });
    }
}
