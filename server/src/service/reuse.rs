//! Answering from the previous answer: when the user types the first characters of the
//! completion shown, the rest of it is still the answer, so the model is not run again.

use ropey::Rope;

use crate::complete::{Answer, Item, Stats};
use crate::context::SpanKind;

/// The last model answer at a cursor, with the document it was computed for.
#[derive(Clone)]
pub struct LastAnswer {
    rope: Rope,
    /// Byte offset of the cursor the answer was computed at.
    anchor: usize,
    kind: SpanKind,
    items: Vec<Item>,
}

impl LastAnswer {
    /// `answer` was computed at byte `anchor` of `rope`.
    pub fn new(rope: Rope, anchor: usize, answer: &Answer) -> Self {
        LastAnswer {
            rope,
            anchor,
            kind: answer.kind,
            items: answer.items.clone(),
        }
    }

    /// The answer at `cursor` of `rope` when the only change since is text typed at the old
    /// cursor that starts some items: those items less the typed text, with their scores and
    /// kind, best first as before. `None` when the document differs in any other way (the old
    /// answer then says nothing) or nothing would be left to insert.
    pub fn serve(&self, rope: &Rope, cursor: usize) -> Option<Answer> {
        if cursor < self.anchor || self.items.is_empty() {
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
        let items: Vec<Item> = self
            .items
            .iter()
            .filter_map(|item| {
                let rest = item.text.strip_prefix(typed.as_str())?;
                (!rest.trim().is_empty()).then(|| Item {
                    text: rest.to_string(),
                    mean_logprob: item.mean_logprob,
                })
            })
            .collect();
        (!items.is_empty()).then(|| Answer {
            kind: self.kind,
            replace: cursor..cursor,
            items,
            // No model work went into it.
            stats: Stats::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str, mean_logprob: f32) -> Item {
        Item {
            text: text.into(),
            mean_logprob,
        }
    }

    #[test]
    fn serves_typed_prefix_only() {
        let old = Rope::from_str("let x = ;\n");
        let answer = Answer {
            kind: SpanKind::Line,
            replace: 8..8,
            items: vec![item("foo(1)", -0.5), item("bar", -0.7)],
            stats: Stats::default(),
        };
        let last = LastAnswer::new(old, 8, &answer);
        let served = |text: &str, cursor: usize| {
            last.serve(&Rope::from_str(text), cursor)
                .map(|a| (a.replace, a.items))
        };
        assert_eq!(served("let x = ;\n", 8), Some((8..8, answer.items.clone())));
        assert_eq!(
            served("let x = fo;\n", 10),
            Some((10..10, vec![item("o(1)", -0.5)])),
            "the typed text is taken off; the score stays the item's"
        );
        assert_eq!(served("let x = fx;\n", 10), None);
        assert_eq!(served("let y = fo;\n", 10), None, "edit elsewhere");
        assert_eq!(served("let x = foo(1);\n", 14), None, "fully typed");
        let kind = last
            .serve(&Rope::from_str("let x = f;\n"), 9)
            .map(|a| a.kind);
        assert_eq!(kind, Some(SpanKind::Line));
    }
}
