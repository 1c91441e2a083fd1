//! `diffusion-ls complete`: one completion from the command line, with timings.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::complete::{self, Request};
use crate::config::Settings;
use crate::context::Target;
use crate::document::Snapshot;
use crate::engine::{CancelToken, ModelSource};
use crate::language;

#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    /// File to complete in.
    pub file: PathBuf,
    /// 1-based line of the cursor.
    #[arg(long)]
    pub line: usize,
    /// 1-based column of the cursor, counted in characters (Unicode scalar values); a column
    /// past the end of the line means the end of the line.
    #[arg(long)]
    pub col: usize,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub candidates: Option<usize>,
    #[arg(long)]
    pub no_verify: bool,
    /// HF-format model folder (default: the embedded model).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Byte offset of a 1-based (line, char column), the column clamped to the line's end.
pub fn cursor_byte(rope: &ropey::Rope, line: usize, col: usize) -> anyhow::Result<usize> {
    if line == 0 || col == 0 {
        bail!("--line and --col are 1-based");
    }
    if line > rope.len_lines() {
        bail!(
            "line {line} is past the end of the file ({} lines)",
            rope.len_lines()
        );
    }
    let start = rope.line_to_char(line - 1);
    let text = rope.line(line - 1).to_string();
    let content = text.trim_end_matches(['\n', '\r']).chars().count();
    Ok(rope.char_to_byte(start + (col - 1).min(content)))
}

pub fn run(args: CompleteArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let grammar = language::by_path(&args.file);
    let snapshot = Snapshot::from_text(&format!("file://{}", args.file.display()), grammar, &text);
    let at = cursor_byte(&snapshot.rope, args.line, args.col)?;
    let t0 = Instant::now();
    let lm = ModelSource::from_option(args.model)
        .load()
        .context("loading the model")?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut settings = Settings::default();
    settings.steps = args.steps.unwrap_or(settings.steps);
    settings.candidates = args.candidates.unwrap_or(settings.candidates);
    settings.verify = !args.no_verify;
    let req = Request {
        snapshot,
        target: Target::Cursor(at),
        settings,
        span_len: None,
        heal: true,
        policy: None,
        cancel: CancelToken::default(),
    };
    let answer = complete::complete(&lm, &req, None)?;
    let s = &answer.stats;
    let mut out = std::io::stdout().lock();
    if answer.items.is_empty() {
        writeln!(out, "(no completion)")?;
    }
    for (i, item) in answer.items.iter().enumerate() {
        writeln!(
            out,
            "--- completion {} (mean logprob {:.3}) ---",
            i + 1,
            item.mean_logprob
        )?;
        writeln!(out, "{}", item.text)?;
    }
    writeln!(
        out,
        "--- {} | kind={:?} span={} context={} steps={} passes={} checks={} remasks={} rejections={}",
        lm.describe(), answer.kind, s.span_len, s.context_tokens, s.steps, s.forward_passes, s.checks, s.remasks, s.rejections
    )?;
    writeln!(
        out,
        "timings: load={load_ms:.1}ms window={:.1}ms encode={:.1}ms denoise={:.1}ms verify={:.1}ms total={:.1}ms",
        s.window_ms,
        s.encode_ms, s.denoise_ms, s.verify_ms, s.total_ms
    )?;
    Ok(())
}
