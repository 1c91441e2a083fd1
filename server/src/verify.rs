//! The syntax check between refinement steps: a [`model::StepHook`] that splices each
//! candidate into the document, reparses incrementally and remasks or rejects what breaks it.
//!
//! Where the document with the span empty has errors only at the hole, a candidate must make
//! the file parse. Elsewhere only NEW errors count: the document may be broken away from the
//! cursor (the user is typing). The baseline is the document with the span empty; an error of
//! the spliced file is old when the baseline has an error of the same kind whose range, mapped
//! through the insertion, is the same, unless it lies wholly inside the inserted text.
//!
//! Remask rule while masks remain: a hole may still explain an error, so an error whose range
//! touches a masked position's place is left alone, and so are errors outside the span (an
//! unclosed `{` is normal until the `}` is committed). Otherwise the committed tokens overlapping
//! the error are remasked, except those next to a masked position, whose context is still
//! changing. At the final state every new error counts: the tokens overlapping it are remasked
//! (or, for an error outside the span, the tokens carrying brackets or quotes, else the last
//! one), at most [`MAX_FINAL_RETRIES`] times; then the candidate is cut to its longest
//! beginning that adds no error, or rejected when there is none.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use model::{StepHook, StepView, Verdict};
use tree_sitter::{InputEdit, Parser, Point, Tree};

use crate::document::Snapshot;
use crate::engine::CancelToken;
use crate::finish::Finish;
use crate::syntax::{self, parse_bounded, SyntaxError, CHECK_PARSE_BUDGET};

/// Remask rounds allowed after the planned steps before a candidate is truncated or rejected.
pub const MAX_FINAL_RETRIES: usize = 2;
/// Cut points tried when a final candidate is truncated.
const MAX_TRUNCATION_CHECKS: usize = 24;

/// The document with the span cut out, its tree and its errors: where candidates are spliced.
pub struct Site {
    base: String,
    /// Byte offset of the span in `base`.
    at: usize,
    at_point: Point,
    tree: Tree,
    baseline: HashSet<SyntaxError>,
    /// The document parses but for the hole: candidates must make the whole file parse.
    strict: bool,
    parser: Parser,
    /// Stops the check parses of a cancelled request, and all of them past a deadline (see
    /// [`Site::bounded`]).
    cancel: Option<CancelToken>,
    deadline: Option<Instant>,
}

impl Site {
    /// `None` when the document has no grammar or no tree (nothing to verify against), or when
    /// reparsing it without the span takes longer than a document parse may.
    pub fn new(snap: &Snapshot, replace: Range<usize>) -> Option<Site> {
        let grammar = snap.grammar?;
        let mut tree = snap.tree.clone()?;
        let mut parser = grammar.parser();
        let mut base = snap.rope.to_string();
        if !replace.is_empty() {
            let start_position = syntax::point_of(&base, replace.start);
            let old_end_position = syntax::point_of(&base, replace.end);
            base.replace_range(replace.clone(), "");
            tree.edit(&InputEdit {
                start_byte: replace.start,
                old_end_byte: replace.end,
                new_end_byte: replace.start,
                start_position,
                old_end_position,
                new_end_position: start_position,
            });
            let deadline = Instant::now() + syntax::DOCUMENT_PARSE_BUDGET;
            let bytes = base.as_bytes();
            let mut read = |b: usize, _: Point| &bytes[b.min(bytes.len())..];
            tree = parse_bounded(&mut parser, &mut read, Some(&tree), deadline, None).ok()?;
        }
        let at = replace.start;
        let baseline: HashSet<SyntaxError> = syntax::errors(&tree).into_iter().collect();
        // Where every error is at the hole (reaches the hole's line), the hole is what breaks
        // the file: a completion must mend it, so every error of the spliced file counts.
        let line_start = base[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = base[at..].find('\n').map_or(base.len(), |i| at + i);
        let strict = baseline
            .iter()
            .all(|e| e.range.start <= line_end && line_start <= e.range.end);
        Some(Site {
            strict,
            at_point: syntax::point_of(&base, replace.start),
            at: replace.start,
            base,
            tree,
            baseline,
            parser,
            cancel: None,
            deadline: None,
        })
    }

    /// Check parses stop (and count as failed) once `cancel` is set, and `total` after now.
    pub fn bounded(mut self, cancel: CancelToken, total: Duration) -> Site {
        self.cancel = Some(cancel);
        self.deadline = Some(Instant::now() + total);
        self
    }

    /// Parses the document with `insert` at the span.
    fn parse_with(&mut self, insert: &str) -> Option<Tree> {
        let (base, at) = (self.base.as_bytes(), self.at);
        let ins = insert.as_bytes();
        let mut tree = self.tree.clone();
        tree.edit(&InputEdit {
            start_byte: at,
            old_end_byte: at,
            new_end_byte: at + ins.len(),
            start_position: self.at_point,
            old_end_position: self.at_point,
            new_end_position: syntax::advance_point(self.at_point, insert),
        });
        let mut read = |byte: usize, _: Point| -> &[u8] {
            if byte < at {
                &base[byte..at]
            } else if byte < at + ins.len() {
                &ins[byte - at..]
            } else if byte - ins.len() < base.len() {
                &base[byte - ins.len()..]
            } else {
                &[]
            }
        };
        let mut deadline = Instant::now() + CHECK_PARSE_BUDGET;
        if let Some(d) = self.deadline {
            deadline = deadline.min(d);
        }
        parse_bounded(
            &mut self.parser,
            &mut read,
            Some(&tree),
            deadline,
            self.cancel.as_ref(),
        )
        .ok()
    }

    /// Errors a candidate may not have: all of them on a strict site, else those of the
    /// spliced file that the baseline does not have, as byte ranges relative to the start of
    /// `insert` (they may reach outside it, or lie wholly outside it).
    pub fn new_errors(&mut self, insert: &str) -> Vec<Range<isize>> {
        self.errors_against(insert, self.strict)
    }

    /// Whether `insert` adds an error the document did not have (strict or not: what eval
    /// reports beside the parse rate).
    pub fn adds_error(&mut self, insert: &str) -> bool {
        !self.errors_against(insert, false).is_empty()
    }

    fn errors_against(&mut self, insert: &str, every_error: bool) -> Vec<Range<isize>> {
        let Some(tree) = self.parse_with(insert) else {
            // Past the budget, or cancelled: fail closed.
            return std::iter::once(0..insert.len() as isize).collect();
        };
        let (at, n) = (self.at, insert.len());
        let map = |x: usize| {
            if x <= at {
                x
            } else if x < at + n {
                at
            } else {
                x - n
            }
        };
        syntax::errors(&tree)
            .into_iter()
            .filter(|e| {
                let (s, t) = (e.range.start, e.range.end);
                let inside =
                    n > 0 && s >= at && t <= at + n && !(s == t && (s == at || s == at + n));
                let mapped = SyntaxError {
                    range: map(s)..map(t),
                    missing: e.missing,
                };
                inside || every_error || !self.baseline.contains(&mapped)
            })
            .map(|e| e.range.start as isize - at as isize..e.range.end as isize - at as isize)
            .collect()
    }

    /// Whether a candidate must make the whole file parse (the document's only errors are at
    /// the hole), rather than add no error.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Whether the spliced file has no syntax error at all (eval's parse rate).
    pub fn parses_cleanly(&mut self, insert: &str) -> bool {
        self.parse_with(insert)
            .is_some_and(|t| !t.root_node().has_error())
    }
}

/// Counters for one request, reported in logs and by eval.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyStats {
    pub checks: usize,
    /// Checks skipped because the candidate's text had not changed.
    pub unchanged: usize,
    pub remasked: usize,
    pub rejected: usize,
    /// Final candidates cut to their longest beginning that adds no error.
    pub truncated: usize,
    pub verify_ms: f64,
}

#[derive(Default)]
struct CandidateState {
    last_clean_text: Option<String>,
    final_retries: usize,
}

/// The step hook. Also carries the request's cancellation token, so it is the hook used even
/// when verification is off (`site == None`).
pub struct Verifier<'a> {
    site: Option<&'a mut Site>,
    finish: &'a Finish,
    cancel: CancelToken,
    candidates: HashMap<usize, CandidateState>,
    pub stats: VerifyStats,
}

impl<'a> Verifier<'a> {
    /// The longest beginning of a final candidate that adds no error, as the span position it
    /// ends before: a completion that stops early beats none. Cuts at line ends are tried
    /// first, then the others, longest first, at most [`MAX_TRUNCATION_CHECKS`] of them.
    fn longest_clean_beginning(
        &mut self,
        view: &StepView<'_>,
        limit: usize,
        keep: usize,
    ) -> Option<usize> {
        let site = self.site.as_deref_mut()?;
        let text = view.text;
        let cut_end = |j: usize| view.token_ranges[j - 1].end;
        let mut cuts: Vec<usize> = (1..limit)
            .filter(|&j| view.tokens[j - 1].is_some() && cut_end(j) <= keep && cut_end(j) > 0)
            .collect();
        cuts.dedup_by_key(|j| cut_end(*j));
        // Byte offsets: a byte-level token may end inside a character.
        let at_line_end = |j: usize| text.as_bytes().get(cut_end(j)) == Some(&b'\n');
        cuts.sort_by_key(|&j| (!at_line_end(j), std::cmp::Reverse(j)));
        for j in cuts.into_iter().take(MAX_TRUNCATION_CHECKS) {
            let Some(head) = text.get(..cut_end(j)) else {
                continue;
            };
            let head = &head[..self.finish.keep_len(head)];
            if head.trim().is_empty() {
                continue;
            }
            self.stats.checks += 1;
            if site.new_errors(head).is_empty() {
                return Some(j);
            }
        }
        None
    }

    pub fn new(site: Option<&'a mut Site>, finish: &'a Finish, cancel: CancelToken) -> Self {
        Verifier {
            site,
            finish,
            cancel,
            candidates: HashMap::new(),
            stats: VerifyStats::default(),
        }
    }

    fn judge(&mut self, view: &StepView<'_>) -> Verdict {
        let Some(site) = self.site.as_deref_mut() else {
            return Verdict::Keep;
        };
        let keep = self.finish.keep_len(view.text);
        let visible = &view.text[..keep];
        let state = self.candidates.entry(view.candidate).or_default();
        if state.last_clean_text.as_deref() == Some(visible) {
            self.stats.unchanged += 1;
            return Verdict::Keep;
        }
        self.stats.checks += 1;
        let errors = site.new_errors(visible);
        if errors.is_empty() {
            state.last_clean_text = Some(visible.to_string());
            return Verdict::Keep;
        }
        state.last_clean_text = None;
        let limit = view.end.unwrap_or(view.tokens.len()).min(view.tokens.len());
        // Committed positions whose text is (at least partly) inserted.
        let visible_pos = |i: usize| view.tokens[i].is_some() && view.token_ranges[i].start < keep;
        let overlaps = |i: usize, e: &Range<isize>| {
            let r = &view.token_ranges[i];
            let (a, b) = (r.start as isize, r.end as isize);
            if e.start == e.end {
                a <= e.start && e.start <= b
            } else {
                a < e.end && b > e.start
            }
        };
        let mut remask = BTreeSet::new();
        if !view.is_final {
            let holes = hole_offsets(view, limit);
            let masked = |i: usize| i < limit && view.tokens[i].is_none();
            for e in &errors {
                if e.end < 0 || e.start > keep as isize {
                    continue;
                }
                if holes.iter().any(|&h| e.start <= h && h <= e.end) {
                    continue;
                }
                for i in (0..limit).filter(|&i| visible_pos(i) && overlaps(i, e)) {
                    let near_hole = (i > 0 && masked(i - 1)) || masked(i + 1);
                    if !near_hole {
                        remask.insert(i);
                    }
                }
            }
            if remask.is_empty() {
                return Verdict::Keep;
            }
        } else {
            state.final_retries += 1;
            if state.final_retries > MAX_FINAL_RETRIES {
                if let Some(at) = self.longest_clean_beginning(view, limit, keep) {
                    self.stats.truncated += 1;
                    return Verdict::Truncate(at);
                }
                self.stats.rejected += 1;
                return Verdict::Reject;
            }
            for e in &errors {
                remask.extend((0..limit).filter(|&i| visible_pos(i) && overlaps(i, e)));
            }
            if remask.is_empty() {
                let structural = |i: usize| structural(view.text, view.token_ranges[i].clone());
                remask.extend((0..limit).filter(|&i| visible_pos(i) && structural(i)));
            }
            if remask.is_empty() {
                remask.extend((0..limit).rev().find(|&i| visible_pos(i)));
            }
            if remask.is_empty() {
                self.stats.rejected += 1;
                return Verdict::Reject;
            }
        }
        self.stats.remasked += remask.len();
        Verdict::Remask(remask.into_iter().collect())
    }
}

/// Whether a token's text carries a bracket or a quote. By bytes: a byte-level token may end
/// inside a multi-byte character of the decoded text (a `str` slice there panicked on the model
/// thread in the soak).
fn structural(text: &str, range: Range<usize>) -> bool {
    text.as_bytes()
        .get(range)
        .is_some_and(|b| b.iter().any(|c| b"()[]{}\"'".contains(c)))
}

/// Byte offsets in the step text where masked positions sit (between their neighbours' text).
fn hole_offsets(view: &StepView<'_>, limit: usize) -> Vec<isize> {
    let mut holes = Vec::new();
    let mut offset = 0usize;
    for i in 0..limit {
        if view.tokens[i].is_some() {
            offset = view.token_ranges[i].end;
        } else {
            holes.push(offset as isize);
        }
    }
    holes
}

impl StepHook for Verifier<'_> {
    fn after_step(&mut self, view: &StepView<'_>) -> Verdict {
        let t0 = Instant::now();
        let verdict = self.judge(view);
        tracing::trace!(
            step = view.step, candidate = view.candidate, end = ?view.end, is_final = view.is_final,
            masked = view.tokens.iter().filter(|t| t.is_none()).count(), text = ?view.text, ?verdict, "step"
        );
        self.stats.verify_ms += t0.elapsed().as_secs_f64() * 1e3;
        verdict
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Snapshot;
    use crate::language;

    /// Site for a fixture with `$0` at the cursor.
    fn site(src: &str) -> Site {
        let at = src.find("$0").unwrap();
        let text = src.replace("$0", "");
        let snap = Snapshot::from_text("file:///t.rs", language::by_language_id("rust"), &text);
        Site::new(&snap, at..at).unwrap()
    }

    /// A step view over whole tokens given as strings (`None` = masked).
    struct Fake {
        tokens: Vec<Option<u32>>,
        ranges: Vec<Range<usize>>,
        text: String,
        conf: Vec<f32>,
    }

    fn fake(parts: &[Option<&str>]) -> Fake {
        let mut text = String::new();
        let mut ranges = Vec::new();
        for p in parts {
            let s = text.len();
            text.push_str(p.unwrap_or(""));
            ranges.push(s..text.len());
        }
        Fake {
            tokens: parts
                .iter()
                .enumerate()
                .map(|(i, p)| p.map(|_| i as u32))
                .collect(),
            ranges,
            text,
            conf: vec![0.5; parts.len()],
        }
    }

    fn view(f: &Fake, is_final: bool) -> StepView<'_> {
        StepView {
            step: 0,
            steps: 4,
            candidate: 0,
            tokens: &f.tokens,
            confidence: &f.conf,
            text: &f.text,
            token_ranges: &f.ranges,
            end: None,
            is_final,
        }
    }

    fn run(src: &str, parts: &[Option<&str>], is_final: bool) -> (Verdict, VerifyStats) {
        let mut s = site(src);
        let finish = Finish::default();
        let mut v = Verifier::new(Some(&mut s), &finish, CancelToken::default());
        let f = fake(parts);
        let verdict = v.after_step(&view(&f, is_final));
        (verdict, v.stats)
    }

    const DOC: &str = "fn main() {\n    let x = $0;\n    println!(\"{x}\");\n}\n";
    /// Same, with an unrelated error further down.
    const BROKEN: &str =
        "fn main() {\n    let x = $0;\n    println!(\"{x}\");\n}\n\nfn other( {\n    let = ;\n}\n";

    #[test]
    fn token_ranges_inside_a_character_do_not_panic() {
        let text = "x(é)";
        assert!(structural(text, 0..2));
        assert!(!structural(text, 2..3), "inside `é`");
        assert!(structural(text, 3..5));
        assert!(!structural(text, 4..9), "past the end");
    }

    #[test]
    fn clean_candidate_is_kept() {
        for doc in [DOC, BROKEN] {
            let (v, stats) = run(doc, &[Some("foo"), Some("("), Some("1"), Some(")")], true);
            assert!(matches!(v, Verdict::Keep), "{doc}");
            assert_eq!(stats.checks, 1);
        }
    }

    #[test]
    fn unbalanced_brace_is_remasked_then_rejected() {
        for doc in [DOC, BROKEN] {
            let mut s = site(doc);
            let finish = Finish::default();
            let mut v = Verifier::new(Some(&mut s), &finish, CancelToken::default());
            let f = fake(&[Some("if"), Some(" a"), Some(" {"), Some(" 1")]);
            match v.after_step(&view(&f, true)) {
                Verdict::Remask(p) => assert!(p.contains(&2), "the `{{` is blamed: {p:?}"),
                _ => panic!("final candidate with an unclosed brace must be remasked ({doc})"),
            }
            for _ in 1..MAX_FINAL_RETRIES {
                assert!(matches!(v.after_step(&view(&f, true)), Verdict::Remask(_)));
            }
            assert!(matches!(v.after_step(&view(&f, true)), Verdict::Reject));
            assert_eq!(v.stats.rejected, 1);
        }
    }

    #[test]
    fn extra_closer_in_span_is_remasked_mid_denoising() {
        // `foo(1))` while a later position is still masked: the `)` error is not next to the hole.
        let (v, _) = run(
            DOC,
            &[
                Some("foo"),
                Some("("),
                Some("1"),
                Some(")"),
                Some(")"),
                Some(" +"),
                None,
            ],
            false,
        );
        assert!(
            matches!(v, Verdict::Remask(ref p) if p.contains(&4)),
            "{:?}",
            matches!(v, Verdict::Keep)
        );
    }

    #[test]
    fn holes_explain_errors_mid_denoising() {
        // `foo(` + hole + `)`: incomplete, not wrong.
        let (v, _) = run(
            DOC,
            &[Some("foo"), Some("("), None, Some(" +"), None, Some(")")],
            false,
        );
        assert!(matches!(v, Verdict::Keep));
        // An unclosed block while masks remain is left for later steps.
        let (v, _) = run(DOC, &[Some("{"), Some(" 1"), None, None], false);
        assert!(matches!(v, Verdict::Keep));
    }

    #[test]
    fn where_the_only_errors_are_at_the_hole_a_candidate_must_make_the_file_parse() {
        let mut s = site(DOC);
        assert!(s.is_strict());
        assert!(
            !s.new_errors("").is_empty(),
            "`let x = ;` was broken at the hole"
        );
        assert!(s.new_errors("1").is_empty());
        assert!(!site(BROKEN).is_strict());
        // A hole in a file that parses without it: strict too.
        assert!(site("fn main() {\n    $0\n}\n").is_strict());
    }

    #[test]
    fn a_final_candidate_that_breaks_late_is_cut_to_its_clean_beginning() {
        let mut s = site("fn main() {\n    $0\n}\n");
        let finish = Finish::default();
        let mut v = Verifier::new(Some(&mut s), &finish, CancelToken::default());
        let f = fake(&[Some("let a = 1;"), Some("\n    let"), Some(" = ;")]);
        for _ in 0..MAX_FINAL_RETRIES {
            assert!(matches!(v.after_step(&view(&f, true)), Verdict::Remask(_)));
        }
        assert_eq!(v.after_step(&view(&f, true)), Verdict::Truncate(1));
        assert_eq!((v.stats.truncated, v.stats.rejected), (1, 0));
    }

    #[test]
    fn unchanged_text_is_not_rechecked() {
        let mut s = site(DOC);
        let finish = Finish::default();
        let mut v = Verifier::new(Some(&mut s), &finish, CancelToken::default());
        let f = fake(&[Some("1"), None]);
        v.after_step(&view(&f, false));
        v.after_step(&view(&f, false));
        assert_eq!((v.stats.checks, v.stats.unchanged), (1, 1));
    }

    #[test]
    fn old_errors_do_not_count() {
        let mut s = site(BROKEN);
        assert!(s.new_errors("42").is_empty());
        assert!(!s.new_errors("42 }").is_empty());
        assert!(!s.parses_cleanly("42"));
        assert!(site(DOC).parses_cleanly("42"));
    }

    #[test]
    fn a_cancelled_check_fails_closed() {
        // Long enough that the parser reaches its progress check.
        let doc = format!(
            "fn main() {{\n    let x = $0;\n{}}}\n",
            "    f(1, \"a\");\n".repeat(5000)
        );
        let token = CancelToken::default();
        let mut s = site(&doc).bounded(token.clone(), Duration::from_secs(60));
        assert!(s.new_errors("1").is_empty());
        token.cancel();
        assert_eq!(s.new_errors("\"1\""), vec![0..3]);
        // Past the request's verification budget every check fails closed.
        let mut s = site(&doc).bounded(CancelToken::default(), Duration::ZERO);
        assert_eq!(s.new_errors("\"1\""), vec![0..3]);
    }

    #[test]
    fn selection_site_removes_the_span() {
        let text = "fn f() { let a = (1 + 2); }";
        let start = text.find("(1").unwrap();
        let end = text.find("; }").unwrap();
        let snap = Snapshot::from_text("file:///t.rs", language::by_language_id("rust"), text);
        let mut s = Site::new(&snap, start..end).unwrap();
        assert!(s.new_errors("3").is_empty());
        assert!(!s.new_errors("(3").is_empty());
    }
}
