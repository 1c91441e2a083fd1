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

/// Fillers tried at the hole of a document that does not parse: if one makes it parse, the
/// errors are the hole's (see [`Site::new`]). Openers and closers of blocks, calls and strings,
/// alone and after an expression, the shapes a cut-out line most often breaks.
const HOLE_PROBES: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ";",
    "\"",
    "x {",
    "if x {",
    "match x {",
    "for x in x {",
    "x)",
    "x))",
    "x);",
    "x));",
    "\")",
    "\");",
    "x }",
    "x)}",
    "})",
    "}}",
    "x,",
    "x =>",
];

/// All the hole probes of one site together: past it, the site stays lenient.
const HOLE_PROBE_BUDGET: Duration = Duration::from_millis(60);

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
    /// Stops the check parses of a cancelled request (see [`Site::bounded`]).
    cancel: Option<CancelToken>,
    /// Parse time the checks may still spend; `None` is only [`CHECK_PARSE_BUDGET`] a parse.
    /// It counts the parses alone, not the model's steps between them: a request whose
    /// denoising is slow (a loaded machine, three candidates of a long block) keeps its checks.
    parse_time_left: Option<Duration>,
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
        let mut site = Site {
            strict,
            at_point: syntax::point_of(&base, replace.start),
            at: replace.start,
            base,
            tree,
            baseline,
            parser,
            cancel: None,
            parse_time_left: None,
        };
        if !site.strict && !site.baseline.is_empty() {
            // Errors away from the hole's line may still be the hole's: an opening `{` cut
            // out shows up at the far `}`. If a small filler at the hole makes the whole file
            // parse, the document parses apart from the hole.
            site.parse_time_left = Some(HOLE_PROBE_BUDGET);
            site.strict = HOLE_PROBES.iter().any(|p| site.parses_cleanly(p));
            site.parse_time_left = None;
        }
        Some(site)
    }

    /// Check parses stop (and count as failed) once `cancel` is set, and once together they
    /// have taken `total`.
    pub fn bounded(mut self, cancel: CancelToken, total: Duration) -> Site {
        self.cancel = Some(cancel);
        self.parse_time_left = Some(total);
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
        let start = Instant::now();
        let allowed = self
            .parse_time_left
            .map_or(CHECK_PARSE_BUDGET, |left| left.min(CHECK_PARSE_BUDGET));
        let parsed = parse_bounded(
            &mut self.parser,
            &mut read,
            Some(&tree),
            start + allowed,
            self.cancel.as_ref(),
        );
        if let Some(left) = self.parse_time_left.as_mut() {
            *left = left.saturating_sub(start.elapsed());
        }
        parsed.ok()
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
    /// Candidates finished where their kept text ended, before their span did.
    pub settled: usize,
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

    /// The span position a candidate ends before once the finisher's hard cut (see
    /// [`Finish::settled_at`]) lies in its leading run of committed tokens: the positions after
    /// the token that holds the cut can no longer change what is inserted, so decoding them
    /// (a line span's next lines) is wasted steps.
    fn settled_end(&self, view: &StepView<'_>) -> Option<usize> {
        let cut = self.finish.settled_at(view.text)?;
        let limit = view.end.unwrap_or(view.tokens.len()).min(view.tokens.len());
        for j in 0..limit {
            view.tokens[j]?;
            if view.token_ranges[j].end > cut {
                return Some(j + 1);
            }
        }
        None
    }

    fn judge(&mut self, view: &StepView<'_>) -> Verdict {
        let settled = self.settled_end(view);
        // A clean candidate that is settled is finished there.
        let clean = |stats: &mut VerifyStats| match settled {
            Some(at) => {
                stats.settled += 1;
                Verdict::Truncate(at)
            }
            None => Verdict::Keep,
        };
        let Some(site) = self.site.as_deref_mut() else {
            return clean(&mut self.stats);
        };
        let keep = self.finish.keep_len(view.text);
        let visible = &view.text[..keep];
        let state = self.candidates.entry(view.candidate).or_default();
        if state.last_clean_text.as_deref() == Some(visible) {
            self.stats.unchanged += 1;
            return clean(&mut self.stats);
        }
        self.stats.checks += 1;
        let errors = site.new_errors(visible);
        if errors.is_empty() {
            state.last_clean_text = Some(visible.to_string());
            return clean(&mut self.stats);
        }
        state.last_clean_text = None;
        let is_final = view.is_final || settled.is_some();
        let limit = view.end.unwrap_or(view.tokens.len()).min(view.tokens.len());
        let limit = settled.map_or(limit, |at| at.min(limit));
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
        if !is_final {
            let holes = hole_offsets(view, limit);
            // A string being written: its text up to the first masked position opens a literal
            // that a later position closes. Unclosed, the literal runs on into the suffix and
            // the errors land on its opening quote, which would be remasked again and again.
            if let Some(&hole) = holes.first() {
                let hole = hole as usize;
                if hole <= keep && opens_string(&visible[..hole]) {
                    let closed = format!("{}\"{}", &visible[..hole], &visible[hole..]);
                    self.stats.checks += 1;
                    if site.new_errors(&closed).is_empty() {
                        return Verdict::Keep;
                    }
                }
            }
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

/// Whether `text` ends inside a string literal it opened (`"` outside a literal, escapes
/// inside one; `'"'` and `'\"'` are characters, not quotes). Raw strings are not followed.
fn opens_string(text: &str) -> bool {
    let b = text.as_bytes();
    let (mut i, mut inside) = (0, false);
    while i < b.len() {
        match (inside, b[i]) {
            (true, b'\\') => i += 1,
            (_, b'"') => inside = !inside,
            (false, b'\'') if b.get(i + 1) == Some(&b'"') && b.get(i + 2) == Some(&b'\'') => i += 2,
            (false, b'\'') if b.get(i + 1) == Some(&b'\\') => i += 2,
            _ => {}
        }
        i += 1;
    }
    inside
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
mod tests;
