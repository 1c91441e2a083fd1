//! LSP positions over a plain `String`, computed independently of ropey: lines split at `\n`,
//! `\r\n` and `\r`, columns counted in the negotiated encoding.

use diffusion_ls::{Encoding, LineCol};

/// Lines of `text`: (start byte, end of content byte).
pub fn lines(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < b.len() {
        let brk = match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
            b'\r' | b'\n' => 1,
            _ => 0,
        };
        if brk > 0 {
            out.push((start, i));
            i += brk;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push((start, b.len()));
    out
}

pub fn width(s: &str, enc: Encoding) -> u32 {
    match enc {
        Encoding::Utf8 => s.len() as u32,
        Encoding::Utf16 => s.encode_utf16().count() as u32,
        Encoding::Utf32 => s.chars().count() as u32,
    }
}

/// Every byte offset an LSP position can name, with its position.
pub fn addressable(text: &str, enc: Encoding) -> Vec<(usize, LineCol)> {
    let mut out = Vec::new();
    for (line, &(start, end)) in lines(text).iter().enumerate() {
        let mut col = 0;
        for (i, ch) in text[start..end].char_indices() {
            out.push((start + i, LineCol::new(line as u32, col)));
            col += width(ch.encode_utf8(&mut [0; 4]), enc);
        }
        out.push((end, LineCol::new(line as u32, col)));
    }
    out
}

/// The addressable point at fraction `f` of `points`.
pub fn pick(points: &[(usize, LineCol)], f: f64) -> (usize, LineCol) {
    points[((points.len() as f64 * f) as usize).min(points.len() - 1)]
}

/// A column that falls inside a character (a surrogate pair in UTF-16, a multi-byte sequence
/// in UTF-8), if the text has one; UTF-32 has none.
pub fn inside_a_char(text: &str, enc: Encoding) -> Option<LineCol> {
    for (line, &(start, end)) in lines(text).iter().enumerate() {
        let content = &text[start..end];
        for (i, ch) in content.char_indices() {
            let split = match enc {
                Encoding::Utf8 => ch.len_utf8() > 1,
                Encoding::Utf16 => ch.len_utf16() > 1,
                Encoding::Utf32 => false,
            };
            if split {
                return Some(LineCol::new(line as u32, width(&content[..i], enc) + 1));
            }
        }
    }
    None
}
