//! `diffusion-ls eval`: fill-in-the-middle cases (JSONL of id, lang, kind, prefix, middle,
//! suffix: the dev set's format) through the same pipeline as the server, with accuracy, parse
//! rate, latency and verifier counters.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use model::DecodingPolicy;
use serde::Deserialize;

use crate::cli::RunArgs;
use crate::complete;
use crate::context::SpanKind;
use crate::service::{Completed, Options};
use crate::verify::Site;

fn parse_policy(name: &str) -> Result<DecodingPolicy, String> {
    DecodingPolicy::named(name).ok_or_else(|| {
        format!(
            "unknown policy {name:?}; known: {}",
            DecodingPolicy::names().join(", ")
        )
    })
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// JSONL file of cases: id, lang, kind, prefix, middle, suffix.
    #[arg(long)]
    pub cases: PathBuf,
    /// Stop after this many cases (after the kind filter).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these kinds, comma separated (line,expr,span,block,body).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Option<Vec<String>>,
    /// Span length = tokens of the reference middle + 1 (end token), not the syntax-sized one.
    #[arg(long)]
    pub oracle_length: bool,
    /// Complete at the cursor as tokenized: no token healing.
    #[arg(long)]
    pub no_heal: bool,
    /// Decode every case with this named policy instead of the span kind's (see
    /// `model::DecodingPolicy::ALL`: parallel, parallel-threshold, free-ends, left-to-right,
    /// left-to-right-threshold, left-to-right-cache, left-to-right-reuse, left-to-right-backtrack).
    #[arg(long, value_parser = parse_policy)]
    pub policy: Option<DecodingPolicy>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Write one JSON line per case here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    #[serde(default = "rust")]
    lang: String,
    kind: String,
    prefix: String,
    middle: String,
    suffix: String,
}

fn rust() -> String {
    "rust".into()
}

#[derive(serde::Serialize)]
struct CaseResult<'a> {
    id: &'a str,
    /// The case's kind in the dev set (line, expr, span, block, body): what the hole is.
    kind: &'a str,
    /// The span kind the server chose at the cursor (`line`, `block`), as in config.json's
    /// `span_kinds`; absent when there was no answer.
    span: Option<SpanKind>,
    completion: &'a str,
    /// Every returned candidate, best first (`completion` is the first), with its mean
    /// log-probability: what a better ranking could pick from.
    candidates: Vec<(&'a str, f32)>,
    middle: &'a str,
    exact: bool,
    em: bool,
    es: f64,
    parses: Option<bool>,
    adds_error: Option<bool>,
    empty: bool,
    latency_ms: f64,
    stats: &'a complete::Stats,
}

#[derive(Default)]
struct Tally {
    n: usize,
    exact: usize,
    em: usize,
    es: f64,
    returned: usize,
    parses: usize,
    /// Returned completions whose case's file parses with the reference.
    parseable: usize,
    clean: usize,
    truncations: usize,
    latencies: Vec<f64>,
    remasks: usize,
    rejections: usize,
    checks: usize,
    encode_ms: f64,
    denoise_ms: f64,
    verify_ms: f64,
}

impl Tally {
    fn add(&mut self, r: &CaseResult<'_>) {
        self.n += 1;
        self.exact += r.exact as usize;
        self.em += r.em as usize;
        self.es += r.es;
        if !r.empty {
            self.returned += 1;
            self.parses += r.parses.unwrap_or(false) as usize;
            self.parseable += r.parses.is_some() as usize;
            self.clean += (r.adds_error == Some(false)) as usize;
        }
        self.latencies.push(r.latency_ms);
        self.remasks += r.stats.remasks;
        self.rejections += r.stats.rejections;
        self.truncations += r.stats.truncations;
        self.checks += r.stats.checks;
        self.encode_ms += r.stats.window_ms + r.stats.encode_ms;
        self.denoise_ms += r.stats.denoise_ms;
        self.verify_ms += r.stats.verify_ms;
    }

    fn pct(a: usize, b: usize) -> f64 {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    }

    fn percentile(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn es_pct(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            100.0 * self.es / self.n as f64
        }
    }
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.cases)
        .with_context(|| format!("opening {}", args.cases.display()))?;
    let mut cases = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}", args.cases.display(), i + 1))?;
        if args.kinds.as_ref().is_some_and(|k| !k.contains(&case.kind)) {
            continue;
        }
        cases.push(case);
        if args.limit.is_some_and(|l| cases.len() >= l) {
            break;
        }
    }
    let rt = crate::cli::runtime()?;
    let _in_runtime = rt.enter();
    let (service, described, load_ms) = crate::cli::loaded_service(&rt, args.run.model.clone())?;
    tracing::info!(
        "eval: {described} loaded in {load_ms:.0} ms, {} cases",
        cases.len()
    );
    service.set_settings(args.run.settings());
    let mut out = match &args.out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut kinds: BTreeMap<String, Tally> = BTreeMap::new();
    let mut all = Tally::default();
    for case in &cases {
        let text = format!("{}{}", case.prefix, case.suffix);
        let at = case.prefix.len();
        let uri = format!("eval:{}", case.id);
        let span_len = if args.oracle_length {
            Some(rt.block_on(service.token_count(&case.middle))? + 1)
        } else {
            None
        };
        let options = Options {
            span_len,
            heal: !args.no_heal,
            policy: args.policy.clone(),
        };
        service.open(&uri, &case.lang, 0, &text);
        let t = Instant::now();
        let done = rt.block_on(service.complete(&uri, |_| Ok(at), options));
        let latency_ms = t.elapsed().as_secs_f64() * 1e3;
        service.close(&uri);
        let (items, span, stats, snapshot) = match done {
            Ok(Some(Completed {
                answer, snapshot, ..
            })) => (
                answer.items,
                Some(answer.kind),
                answer.stats,
                Some(snapshot),
            ),
            Ok(None) => (Vec::new(), None, complete::Stats::default(), None),
            Err(e) => {
                tracing::warn!("eval: {}: {e}", case.id);
                (Vec::new(), None, complete::Stats::default(), None)
            }
        };
        let completion = items.first().map(|i| i.text.clone()).unwrap_or_default();
        let empty = completion.trim().is_empty();
        let mut site = snapshot.as_ref().and_then(|snap| Site::new(snap, at..at));
        // A case's file can only parse where it parses with the reference (a case may be cut
        // from a longer file): the parse rate counts only those.
        let reference_parses = site
            .as_mut()
            .is_some_and(|s| s.parses_cleanly(&case.middle));
        let parses = (!empty && reference_parses)
            .then(|| site.as_mut().is_some_and(|s| s.parses_cleanly(&completion)));
        let adds_error = (!empty).then(|| site.as_mut().is_none_or(|s| s.adds_error(&completion)));
        let r = CaseResult {
            id: &case.id,
            kind: &case.kind,
            span,
            completion: &completion,
            candidates: items
                .iter()
                .map(|i| (i.text.as_str(), i.mean_logprob))
                .collect(),
            middle: &case.middle,
            exact: completion == case.middle,
            em: squash(&completion) == squash(&case.middle),
            // Edit similarity: 1 - Levenshtein distance / the longer length, over chars.
            es: strsim::normalized_levenshtein(&completion, &case.middle),
            parses,
            adds_error,
            empty,
            latency_ms,
            stats: &stats,
        };
        kinds.entry(case.kind.clone()).or_default().add(&r);
        all.add(&r);
        if let Some(o) = &mut out {
            serde_json::to_writer(&mut *o, &r)?;
            writeln!(o)?;
        }
    }
    if let Some(o) = &mut out {
        o.flush()?;
    }
    let mut stdout = std::io::stdout().lock();
    // noerr%: returned completions that add no syntax error; parse%: returned completions that
    // leave the file parsing, of the cases whose file parses with the reference. Counters and
    // times are means per case; ctx_ms = tokenizing the windows + the context pass.
    writeln!(
        stdout,
        "{:<8} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9}",
        "kind",
        "n",
        "exact%",
        "EM%",
        "ES%",
        "noerr%",
        "parse%",
        "empty%",
        "p50ms",
        "p95ms",
        "checks",
        "remasks",
        "rejects",
        "cuts",
        "ctx_ms",
        "denoise_ms",
        "verify_ms"
    )?;
    for (kind, t) in kinds
        .iter()
        .chain(std::iter::once((&"all".to_string(), &all)))
    {
        writeln!(
            stdout,
            "{:<8} {:>5} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>8.0} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>6.2} {:>9.1} {:>9.1} {:>9.2}",
            kind,
            t.n,
            Tally::pct(t.exact, t.n),
            Tally::pct(t.em, t.n),
            t.es_pct(),
            Tally::pct(t.clean, t.returned),
            Tally::pct(t.parses, t.parseable),
            Tally::pct(t.n - t.returned, t.n),
            t.percentile(0.5),
            t.percentile(0.95),
            t.checks as f64 / t.n.max(1) as f64,
            t.remasks as f64 / t.n.max(1) as f64,
            t.rejections as f64 / t.n.max(1) as f64,
            t.truncations as f64 / t.n.max(1) as f64,
            t.encode_ms / t.n.max(1) as f64,
            t.denoise_ms / t.n.max(1) as f64,
            t.verify_ms / t.n.max(1) as f64,
        )?;
    }
    writeln!(
        stdout,
        "eval: {} cases, EM={:.1}%, ES={:.1}%, noerr={:.1}%, parse={:.1}%, empty={:.1}%, p50={:.0}ms, p95={:.0}ms",
        all.n,
        Tally::pct(all.em, all.n),
        all.es_pct(),
        Tally::pct(all.clean, all.returned),
        Tally::pct(all.parses, all.parseable),
        Tally::pct(all.n - all.returned, all.n),
        all.percentile(0.5),
        all.percentile(0.95),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squash_drops_whitespace() {
        assert_eq!(squash(" a b\n"), "ab");
    }
}
