//! Converts editor positions (line, column in the negotiated encoding) to rope offsets and back.
//!
//! Columns are counted in UTF-8 bytes, UTF-16 code units or UTF-32 code points (chars), as
//! negotiated in `initialize`.
//! All UTF-16 arithmetic goes through ropey's char/utf16 conversions; this file only decides
//! what to do with positions that do not fall on a character boundary.

use ropey::{Rope, RopeSlice};

/// The position encoding negotiated with the client (LSP 3.17 `positionEncoding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    /// The LSP default, used whenever the client offers neither UTF-8 nor UTF-32.
    #[default]
    Utf16,
    /// Columns in chars: no position can fall inside a character.
    Utf32,
}

/// A zero-based line and a zero-based column counted in the negotiated encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineCol {
    pub line: u32,
    pub col: u32,
}

impl LineCol {
    pub fn new(line: u32, col: u32) -> Self {
        LineCol { line, col }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("line {line} is past the end of the document ({lines} lines)")]
    LinePastEnd { line: u32, lines: usize },
    #[error("column {col} of line {line} falls inside a UTF-16 surrogate pair")]
    InsideSurrogatePair { line: u32, col: u32 },
    #[error("column {col} of line {line} falls inside a multi-byte UTF-8 character")]
    InsideUtf8Char { line: u32, col: u32 },
    #[error("range ends before it starts")]
    ReversedRange,
}

/// Chars of a line without its line break (`\n`, `\r\n` or `\r`, the LSP line ends).
fn content_chars(line: RopeSlice<'_>) -> usize {
    let n = line.len_chars();
    if n >= 2 && line.char(n - 2) == '\r' && line.char(n - 1) == '\n' {
        n - 2
    } else if n >= 1 && matches!(line.char(n - 1), '\n' | '\r') {
        n - 1
    } else {
        n
    }
}

/// Char index of a position. A column past the end of its line means the end of the line
/// (as the LSP specification asks); a line past the end of the document is an error, and so is a
/// column that splits a character.
pub fn to_char(rope: &Rope, pos: LineCol, enc: Encoding) -> Result<usize, PositionError> {
    let line = pos.line as usize;
    let lines = rope.len_lines();
    if line >= lines {
        return Err(PositionError::LinePastEnd {
            line: pos.line,
            lines,
        });
    }
    let start = rope.line_to_char(line);
    let slice = rope.line(line);
    let content = content_chars(slice);
    let col = pos.col as usize;
    let char_col = match enc {
        Encoding::Utf16 => {
            if col >= slice.char_to_utf16_cu(content) {
                content
            } else {
                let c = slice.utf16_cu_to_char(col);
                if slice.char_to_utf16_cu(c) != col {
                    return Err(PositionError::InsideSurrogatePair {
                        line: pos.line,
                        col: pos.col,
                    });
                }
                c
            }
        }
        Encoding::Utf8 => {
            if col >= slice.char_to_byte(content) {
                content
            } else {
                let c = slice.byte_to_char(col);
                if slice.char_to_byte(c) != col {
                    return Err(PositionError::InsideUtf8Char {
                        line: pos.line,
                        col: pos.col,
                    });
                }
                c
            }
        }
        Encoding::Utf32 => col.min(content),
    };
    Ok(start + char_col)
}

/// Byte offset of a position (see [`to_char`] for the rules).
pub fn to_byte(rope: &Rope, pos: LineCol, enc: Encoding) -> Result<usize, PositionError> {
    Ok(rope.char_to_byte(to_char(rope, pos, enc)?))
}

/// Char range of a (start, end) pair of positions.
pub fn to_char_range(
    rope: &Rope,
    start: LineCol,
    end: LineCol,
    enc: Encoding,
) -> Result<std::ops::Range<usize>, PositionError> {
    let (s, e) = (to_char(rope, start, enc)?, to_char(rope, end, enc)?);
    if e < s {
        return Err(PositionError::ReversedRange);
    }
    Ok(s..e)
}

/// Byte range of a (start, end) pair of positions.
pub fn to_byte_range(
    rope: &Rope,
    start: LineCol,
    end: LineCol,
    enc: Encoding,
) -> Result<std::ops::Range<usize>, PositionError> {
    let chars = to_char_range(rope, start, end, enc)?;
    Ok(rope.char_to_byte(chars.start)..rope.char_to_byte(chars.end))
}

/// Position of a char index (clamped to the end of the rope).
pub fn from_char(rope: &Rope, char_idx: usize, enc: Encoding) -> LineCol {
    let char_idx = char_idx.min(rope.len_chars());
    let line = rope.char_to_line(char_idx);
    let slice = rope.line(line);
    let in_line = char_idx - rope.line_to_char(line);
    let col = match enc {
        Encoding::Utf16 => slice.char_to_utf16_cu(in_line),
        Encoding::Utf8 => slice.char_to_byte(in_line),
        Encoding::Utf32 => in_line,
    };
    LineCol {
        line: line as u32,
        col: col as u32,
    }
}

/// Position of a byte offset; an offset inside a character counts as that character's start.
pub fn from_byte(rope: &Rope, byte: usize, enc: Encoding) -> LineCol {
    from_char(rope, rope.byte_to_char(byte.min(rope.len_bytes())), enc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference model: split at LSP line ends and count code units with std.
    fn naive(text: &str, pos: LineCol, enc: Encoding) -> Option<usize> {
        let mut line_starts = vec![0usize];
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
                i += 2;
                line_starts.push(i);
            } else if b[i] == b'\n' || b[i] == b'\r' {
                i += 1;
                line_starts.push(i);
            } else {
                i += 1;
            }
        }
        let start = *line_starts.get(pos.line as usize)?;
        let end = line_starts
            .get(pos.line as usize + 1)
            .copied()
            .unwrap_or(text.len());
        let line = text[start..end].trim_end_matches(['\n', '\r']);
        let mut units = 0usize;
        for (off, ch) in line.char_indices() {
            if units == pos.col as usize {
                return Some(text[..start + off].chars().count());
            }
            if units > pos.col as usize {
                return None;
            }
            units += match enc {
                Encoding::Utf16 => ch.len_utf16(),
                Encoding::Utf8 => ch.len_utf8(),
                Encoding::Utf32 => 1,
            };
        }
        if units > pos.col as usize {
            return None;
        }
        Some(text[..start + line.len()].chars().count())
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a",
                "é",
                "日",
                "😀",
                "👩‍💻",
                "\n",
                "\r\n",
                "\r",
                " ",
                "{",
                "\u{2028}",
                "\u{85}",
            ]),
            0..40,
        )
        .prop_map(|v| v.concat())
    }

    fn encoding() -> impl Strategy<Value = Encoding> {
        prop::sample::select(vec![Encoding::Utf8, Encoding::Utf16, Encoding::Utf32])
    }

    proptest! {
        #[test]
        fn char_roundtrip(text in text_strategy(), frac in 0.0f64..=1.0, enc in encoding()) {
            let rope = Rope::from_str(&text);
            let c = ((rope.len_chars() as f64) * frac) as usize;
            // A char between \r and \n is not addressable by LSP positions.
            let splits_crlf = c > 0 && c < rope.len_chars() && rope.char(c - 1) == '\r' && rope.char(c) == '\n';
            prop_assume!(!splits_crlf);
            let pos = from_char(&rope, c, enc);
            prop_assert_eq!(to_char(&rope, pos, enc).unwrap(), c);
            prop_assert_eq!(naive(&text, pos, enc), Some(c));
        }

        #[test]
        fn positions_match_reference(text in text_strategy(), line in 0u32..12, col in 0u32..12, enc in encoding()) {
            let rope = Rope::from_str(&text);
            let pos = LineCol::new(line, col);
            match (to_char(&rope, pos, enc), naive(&text, pos, enc)) {
                (Ok(c), Some(n)) => prop_assert_eq!(c, n),
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{:?} vs {:?} for {:?}", got, want, pos),
            }
        }
    }

    #[test]
    fn surrogate_pair_and_clamping() {
        let rope = Rope::from_str("a😀b\nxy");
        assert_eq!(to_char(&rope, LineCol::new(0, 1), Encoding::Utf16), Ok(1));
        assert!(matches!(
            to_char(&rope, LineCol::new(0, 2), Encoding::Utf16),
            Err(PositionError::InsideSurrogatePair { .. })
        ));
        assert_eq!(to_char(&rope, LineCol::new(0, 3), Encoding::Utf16), Ok(2));
        assert!(matches!(
            to_char(&rope, LineCol::new(0, 3), Encoding::Utf8),
            Err(PositionError::InsideUtf8Char { .. })
        ));
        assert_eq!(to_char(&rope, LineCol::new(0, 5), Encoding::Utf8), Ok(2));
        // Past the end of a line: the end of that line, not the next line.
        assert_eq!(to_char(&rope, LineCol::new(0, 99), Encoding::Utf16), Ok(3));
        assert!(matches!(
            to_char(&rope, LineCol::new(2, 0), Encoding::Utf16),
            Err(PositionError::LinePastEnd { .. })
        ));
        // U+2028 is not a line break for LSP.
        let rope = Rope::from_str("a\u{2028}b\nc");
        assert_eq!(rope.len_lines(), 2);
    }
}
