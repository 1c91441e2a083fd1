//! Turning raw model text into the text to insert: cut at a line break for a line span, stop
//! where the completion starts repeating the suffix, drop a tail that duplicates what follows
//! the span (closers the editor already typed). Applied at every refinement step too, so the
//! verifier checks exactly what would be inserted.

use std::ops::Range;

use ropey::Rope;

/// Characters an editor auto-inserts after the cursor; a line rest made only of these does not
/// stop a completion from ending the line (or opening a block).
pub fn is_closing(c: char) -> bool {
    matches!(c, ')' | ']' | '}' | '>' | '"' | '\'' | '`' | ';' | ',')
}

/// Turns raw model text into the text to insert. Applied at every refinement step too, so the
/// verifier checks exactly what would be inserted.
#[derive(Clone, Debug, Default)]
pub struct Finish {
    /// Cut at the first line break.
    pub single_line: bool,
    /// Document text right after the replaced range (at most [`SUFFIX_HEAD_BYTES`]).
    pub suffix_head: String,
    /// First line after the replaced range with more than closing characters, trimmed: a
    /// completion that reaches a copy of it has started repeating the suffix.
    pub next_line: Option<String>,
    /// A block span: the indentation of the line that opens the block. A later line of the
    /// completion indented no deeper has left the block (the model closed it and went on), and
    /// is cut with all that follows it.
    pub block_indent: Option<usize>,
}

const SUFFIX_HEAD_BYTES: usize = 256;

impl Finish {
    pub fn new(rope: &Rope, replace: &Range<usize>, single_line: bool) -> Finish {
        let end = rope.byte_to_char(replace.end);
        let head: String = rope.chars_at(end).take(SUFFIX_HEAD_BYTES / 2).collect();
        let next_line = rope
            .chars_at(end)
            .take(4096)
            .collect::<String>()
            .lines()
            .map(str::trim)
            .find(|l| {
                !l.chars()
                    .all(|c| is_closing(c) || matches!(c, '{' | '(' | '['))
            })
            .filter(|l| l.len() >= 3)
            .map(str::to_string);
        Finish {
            single_line,
            suffix_head: head,
            next_line,
            block_indent: None,
        }
    }

    /// The same, for a span that fills the block opened by the last `{` before it.
    pub fn inside_block(mut self, rope: &Rope, at: usize) -> Finish {
        let before = rope.byte_slice(..at);
        let chars = before.len_chars();
        let opener = (0..chars)
            .rev()
            .map(|i| (i, before.char(i)))
            .find(|(_, c)| !c.is_whitespace());
        if let Some((i, '{')) = opener {
            let line = rope.line(rope.char_to_line(i));
            self.block_indent = Some(line.chars().take_while(|c| matches!(c, ' ' | '\t')).count());
        }
        self
    }

    /// Where `text` leaves the block it fills (see [`Finish::block_indent`]): the byte offsets
    /// of the start and of the first non-blank character of the first line after its first
    /// that is indented no deeper than the block's opening line.
    fn block_exit(&self, text: &str) -> Option<(usize, usize)> {
        let indent = self.block_indent?;
        let mut line_start = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let content = line.trim_start_matches([' ', '\t']);
            let ws = line.len() - content.len();
            if i > 0 && !content.trim().is_empty() && ws <= indent {
                return Some((line_start, line_start + ws));
            }
            line_start += line.len();
        }
        None
    }

    /// Length of the prefix of `text` that is kept: cut at a line break (single-line spans), cut
    /// before a line repeating the suffix, and drop a tail that duplicates what follows the span.
    pub fn keep_len(&self, text: &str) -> usize {
        // A byte-level tokenizer can end on half a character, decoded as U+FFFD: never insert it.
        let mut n = text.find('\u{FFFD}').unwrap_or(text.len());
        if self.single_line {
            n = n.min(text.find(['\n', '\r']).unwrap_or(n));
        }
        if let Some(next) = &self.next_line {
            let mut line_start = 0;
            for line in text[..n].split_inclusive('\n') {
                if line.trim() == next.as_str() {
                    n = text[..line_start].trim_end().len();
                    break;
                }
                line_start += line.len();
            }
        }
        if let Some((line_start, content_start)) = self.block_exit(&text[..n]) {
            // Where the suffix starts a line break of its own, the completion ends with its last
            // line; before a closer on the same line, it keeps the line break and indentation
            // that put the closer in its place.
            let rest = self.suffix_head.trim_start_matches([' ', '\t']);
            let suffix_breaks = rest.is_empty() || rest.starts_with(['\n', '\r']);
            n = if suffix_breaks {
                text[..line_start].trim_end().len()
            } else {
                content_start
            };
        }
        n - overlap_to_trim(&text[..n], &self.suffix_head)
    }

    /// Byte offset in `text` from which nothing more the model writes can be kept: the first
    /// line break of a single-line span, the start of a whole line (its line break written)
    /// that repeats the suffix, or the first character of a line that has left the block. A
    /// candidate whose leading run of committed tokens reaches it is finished, whatever its
    /// later positions would hold.
    pub fn settled_at(&self, text: &str) -> Option<usize> {
        let line_break = self.single_line.then(|| text.find(['\n', '\r'])).flatten();
        let repeat = self.next_line.as_ref().and_then(|next| {
            let mut line_start = 0;
            for line in text.split_inclusive('\n') {
                if line.ends_with('\n') && line.trim() == next.as_str() {
                    return Some(line_start);
                }
                line_start += line.len();
            }
            None
        });
        let exit = self
            .block_exit(text)
            .map(|(_, content_start)| content_start);
        [line_break, repeat, exit].into_iter().flatten().min()
    }

    /// The insertion for `text`, or `None` when nothing but whitespace remains.
    pub fn apply(&self, text: &str) -> Option<String> {
        let kept = &text[..self.keep_len(text)];
        (!kept.trim().is_empty()).then(|| kept.to_string())
    }
}

fn opener_of(c: char) -> Option<char> {
    match c {
        ')' => Some('('),
        ']' => Some('['),
        '}' => Some('{'),
        _ => None,
    }
}

/// Closing brackets of `text` with no opener in `text`.
fn unmatched_closers(text: &str) -> usize {
    let mut stack = Vec::new();
    let mut unmatched = 0;
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => stack.push(c),
            _ => {
                if let Some(open) = opener_of(c) {
                    if stack.last() == Some(&open) {
                        stack.pop();
                    } else {
                        unmatched += 1;
                    }
                }
            }
        }
    }
    unmatched
}

/// Bytes at the end of `text` that repeat the start of `suffix` and should not be inserted.
///
/// A tail of closing characters is dropped only when the completion has that many unmatched
/// closers (`foo(x));` before `);` loses `);`, but `foo(x)` before `)` keeps its `)`); a quote
/// only when the completion has an odd number of them; a tail with other code only when it is
/// long enough to be a real echo of the suffix.
pub fn overlap_to_trim(text: &str, suffix: &str) -> usize {
    let max = text.len().min(suffix.len());
    for k in (1..=max).rev() {
        if !suffix.is_char_boundary(k) || !text.ends_with(&suffix[..k]) {
            continue;
        }
        let tail = &suffix[..k];
        if tail.trim().is_empty() {
            continue;
        }
        let punct_only = tail.chars().all(|c| is_closing(c) || c.is_whitespace());
        if !punct_only {
            if tail.trim().len() >= 6 {
                return k;
            }
            continue;
        }
        let closers = tail.chars().filter(|&c| opener_of(c).is_some()).count();
        let quotes_ok = ['"', '\'', '`']
            .iter()
            .all(|q| !tail.contains(*q) || text.matches(*q).count() % 2 == 1);
        if closers <= unmatched_closers(text) && quotes_ok {
            return k;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(suffix: &str, single_line: bool) -> Finish {
        let rope = Rope::from_str(suffix);
        Finish::new(&rope, &(0..0), single_line)
    }

    #[test]
    fn trims_overlap_only_when_surplus() {
        assert_eq!(
            finish(");\n}", true).apply("foo(x));").as_deref(),
            Some("foo(x)")
        );
        assert_eq!(
            finish(")\n", true).apply("foo(x)").as_deref(),
            Some("foo(x)")
        );
        assert_eq!(
            finish(";\n", true).apply("foo();").as_deref(),
            Some("foo()")
        );
        assert_eq!(finish("\"\n", true).apply("abc\"").as_deref(), Some("abc"));
        assert_eq!(
            finish("}\n", false).apply("\n    x();\n}").as_deref(),
            Some("\n    x();\n")
        );
        assert_eq!(finish("\n", true).apply("a\nb").as_deref(), Some("a"));
        assert_eq!(finish("\n", true).apply("   \nb"), None);
        assert_eq!(
            finish("\n", true).apply("ab\u{FFFD}c").as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn stops_at_suffix_repeat() {
        let f = finish("\n    r.assert_no_errors();\n}\n", false);
        assert_eq!(
            f.apply("let r = run();\n    r.assert_no_errors();\n")
                .as_deref(),
            Some("let r = run();")
        );
        assert_eq!(f.apply("r.assert_no_errors();"), None);
    }

    #[test]
    fn a_block_span_ends_where_a_line_leaves_the_block() {
        // The cursor on the empty line of `if x {` (indent 8); the suffix has its own break.
        let src = "fn f() {\n        if x {\n            \n        }\n}\n";
        let at = src.find("            \n").unwrap() + 12;
        let rope = Rope::from_str(src);
        let f = Finish::new(&rope, &(at..at), false).inside_block(&rope, at);
        assert_eq!(f.block_indent, Some(8));
        let ran_on = "return true;\n        }\n    }\n    g();";
        assert_eq!(f.apply(ran_on).as_deref(), Some("return true;"));
        assert_eq!(f.settled_at(ran_on), Some(21));
        assert_eq!(f.settled_at("return true;\n        "), None);
        // Deeper lines and blank lines are the block's.
        let nested = "let a = 1;\n\n            if a {\n                b();\n            }";
        assert_eq!(f.apply(nested).as_deref(), Some(nested));
        assert_eq!(f.settled_at(nested), None);
        // Before a closer on the cursor's line, the line break and indentation that put the
        // closer in its place stay.
        let src = "fn f() {\n    if x {}\n}\n";
        let at = src.find("{}").unwrap() + 1;
        let rope = Rope::from_str(src);
        let f = Finish::new(&rope, &(at..at), false).inside_block(&rope, at);
        assert_eq!(f.block_indent, Some(4));
        assert_eq!(
            f.apply("\n        y();\n    }\n    z();").as_deref(),
            Some("\n        y();\n    ")
        );
        // Not a block span: nothing is cut.
        let f = Finish::new(&rope, &(at..at), false);
        assert_eq!(f.settled_at("\n        y();\n    }\n    z();"), None);
    }

    #[test]
    fn settles_at_a_line_break_or_a_whole_line_repeating_the_suffix() {
        let line = finish(")\n}\n", true);
        assert_eq!(line.settled_at("foo(x"), None);
        assert_eq!(line.settled_at("foo(x);\n    bar"), Some(7));
        let block = finish("\n    r.assert_no_errors();\n}\n", false);
        assert_eq!(block.settled_at("let r = run();\n"), None);
        // Not yet a whole line: it may still become `r.assert_no_errors_in(x);`.
        assert_eq!(
            block.settled_at("let r = run();\n    r.assert_no_errors();"),
            None
        );
        assert_eq!(
            block.settled_at("let r = run();\n    r.assert_no_errors();\n}"),
            Some(15)
        );
    }
}
