//! The verifier's rules on hand-made step views.

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
fn a_cut_out_opening_line_makes_the_site_strict_though_its_error_is_far_away() {
    // `if ready {` cut out: the error shows at the unmatched `}` lines below the hole.
    let doc = "fn main() {\n    $0\n        go();\n        more();\n    }\n}\n";
    let mut s = site(doc);
    assert!(s.is_strict(), "a filler at the hole mends the file");
    assert!(
        !s.new_errors("go();").is_empty(),
        "leaves the closing brace unmatched"
    );
    assert!(s.new_errors("if ready {").is_empty());
    // An error no filler at the hole can mend leaves the site lenient.
    assert!(!site(BROKEN).is_strict());
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
fn the_verification_budget_counts_parse_time_not_the_time_between_checks() {
    // The model's steps run between checks; a slow step must not use up the checks' budget.
    let mut s = site(DOC).bounded(CancelToken::default(), Duration::from_millis(40));
    assert!(s.new_errors("42").is_empty());
    std::thread::sleep(Duration::from_millis(60));
    assert!(s.new_errors("42").is_empty());
    assert!(!s.new_errors("42 }").is_empty());
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

/// A line span's candidate whose committed leading run holds the line break is finished there:
/// what its later positions would hold is cut by the finisher anyway.
#[test]
fn a_line_span_is_settled_at_its_line_break() {
    let doc = "fn main() {\n    $0\n    g();\n}\n";
    let finish = Finish {
        single_line: true,
        ..Finish::default()
    };
    let judge = |parts: &[Option<&str>]| {
        let mut s = site(doc);
        let mut v = Verifier::new(Some(&mut s), &finish, CancelToken::default());
        let f = fake(parts);
        let verdict = v.after_step(&view(&f, false));
        (verdict, v.stats.settled)
    };
    let line = [Some("f"), Some("();"), Some("\n    "), None, Some("x")];
    assert_eq!(judge(&line), (Verdict::Truncate(3), 1));
    // A masked position before the line break: the line may still change.
    let open = [Some("f"), None, Some("\n    "), None];
    assert_eq!(judge(&open), (Verdict::Keep, 0));
    // Settled, but the kept line breaks the file: remasked like a final candidate, not kept.
    let broken = [Some("f"), Some("(;"), Some("\n"), None];
    assert!(matches!(judge(&broken).0, Verdict::Remask(p) if p.contains(&1)));
    // Without verification the settled candidate is finished all the same.
    let f = fake(&line);
    let mut v = Verifier::new(None, &finish, CancelToken::default());
    assert_eq!(v.after_step(&view(&f, false)), Verdict::Truncate(3));
}

#[test]
fn a_string_being_written_is_not_blamed_before_it_closes() {
    // Left to right, `"a` has its closing quote still to come: unclosed, the literal runs on
    // into the suffix, and its opening quote was remasked (a dev case ended as `a`).
    let doc = "fn main() {\n    let p = Path::new($0);\n    assert!(p.is_ok());\n}\n";
    let (verdict, _) = run(doc, &[Some("\""), Some("a"), None, None], false);
    assert_eq!(verdict, Verdict::Keep);
    // Final, nothing is left to close it: blamed as before.
    let (verdict, _) = run(doc, &[Some("\""), Some("a")], true);
    assert!(matches!(verdict, Verdict::Remask(_)), "{verdict:?}");
    assert!(opens_string("\"a"));
    assert!(opens_string("x(\"a\", \"b"));
    assert!(!opens_string("x(\"a\\\"\")"));
    assert!(!opens_string("c == '\"'"));
    assert!(!opens_string("c == '\\\"' || c == '\\\\'"));
    assert!(!opens_string("'a"));
}
