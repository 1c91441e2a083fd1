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
        }
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
        n - overlap_to_trim(&text[..n], &self.suffix_head)
    }

    /// Byte offset in `text` from which nothing more the model writes can be kept: the first
    /// line break of a single-line span, or the start of a whole line (its line break written)
    /// that repeats the suffix. A candidate whose leading run of committed tokens reaches it is
    /// finished, whatever its later positions would hold.
    pub fn settled_at(&self, text: &str) -> Option<usize> {
        let line_break = self
            .single_line
            .then(|| text.find(['\n', '\r']))
            .flatten();
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
        match (line_break, repeat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
