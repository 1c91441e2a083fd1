//! Serving a keystroke from the previous answer: when the user types the first characters of
//! the completion shown, the rest of it is still the answer, so the model is not run again.

use ropey::Rope;

/// The last model answer at a cursor, with the document it was computed for.
#[derive(Clone)]
pub struct LastAnswer {
    pub uri: String,
    rope: Rope,
    /// Byte offset of the cursor the answer was computed at.
    anchor: usize,
    items: Vec<String>,
}

impl LastAnswer {
    pub fn new(uri: &str, rope: Rope, anchor: usize, items: Vec<String>) -> Self {
        LastAnswer {
            uri: uri.to_string(),
            rope,
            anchor,
            items,
        }
    }

    /// The remaining text of every item that the typing since then is a prefix of, or `None`
    /// when the document differs in any other way (so the old answer says nothing).
    pub fn serve(&self, uri: &str, rope: &Rope, cursor: usize) -> Option<Vec<String>> {
        if uri != self.uri || cursor < self.anchor || self.items.is_empty() {
            return None;
        }
        let typed_len = cursor - self.anchor;
        if rope.len_bytes() != self.rope.len_bytes() + typed_len || cursor > rope.len_bytes() {
            return None;
        }
        let boundary =
            |r: &Rope, b: usize| r.try_byte_to_char(b).is_ok_and(|c| r.char_to_byte(c) == b);
        if !boundary(rope, self.anchor) || !boundary(rope, cursor) {
            return None;
        }
        if rope.byte_slice(..self.anchor) != self.rope.byte_slice(..self.anchor)
            || rope.byte_slice(cursor..) != self.rope.byte_slice(self.anchor..)
        {
            return None;
        }
        let typed = rope.byte_slice(self.anchor..cursor).to_string();
        let rest: Vec<String> = self
            .items
            .iter()
            .filter_map(|t| t.strip_prefix(typed.as_str()))
            .filter(|r| !r.trim().is_empty())
            .map(str::to_string)
            .collect();
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_typed_prefix_only() {
        let old = Rope::from_str("let x = ;\n");
        let last = LastAnswer::new("u", old, 8, vec!["foo(1)".into(), "bar".into()]);
        assert_eq!(
            last.serve("u", &Rope::from_str("let x = ;\n"), 8),
            Some(vec!["foo(1)".into(), "bar".into()])
        );
        assert_eq!(
            last.serve("u", &Rope::from_str("let x = fo;\n"), 10),
            Some(vec!["o(1)".into()])
        );
        assert_eq!(last.serve("u", &Rope::from_str("let x = fx;\n"), 10), None);
        assert_eq!(
            last.serve("u", &Rope::from_str("let y = fo;\n"), 10),
            None,
            "edit elsewhere"
        );
        assert_eq!(
            last.serve("u", &Rope::from_str("let x = foo(1);\n"), 14),
            None,
            "fully typed"
        );
        assert_eq!(last.serve("v", &Rope::from_str("let x = fo;\n"), 10), None);
    }
}
