//! `diffusion-ls complete`: one completion from the command line, with timings.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::config::Settings;
use crate::language;
use crate::service::{Completed, Options, Service};

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
    #[command(flatten)]
    pub run: RunArgs,
}

/// The model and the settings `complete` and `eval` both take.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// HF-format model folder (default: the embedded model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Refinement steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Candidates decoded together.
    #[arg(long)]
    pub candidates: Option<usize>,
    /// Prefix + suffix budget in tokens.
    #[arg(long)]
    pub context_tokens: Option<usize>,
    /// Turn the tree-sitter check off.
    #[arg(long)]
    pub no_verify: bool,
}

impl RunArgs {
    /// The server's default settings with these flags on top, and no debounce: one request at a
    /// time, nobody typing, nothing to wait for.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.steps = self.steps.unwrap_or(s.steps);
        s.candidates = self.candidates.unwrap_or(s.candidates);
        s.context_tokens = self.context_tokens.unwrap_or(s.context_tokens);
        s.verify = !self.no_verify;
        s.debounce_ms = 0;
        s
    }
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

/// A runtime for a command that drives the [`Service`] from the main thread (the model runs on
/// its own thread, parses on the blocking pool).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A service with the model of `--model` loaded: its description and the time it took.
pub fn loaded_service(
    rt: &tokio::runtime::Runtime,
    model: Option<PathBuf>,
) -> anyhow::Result<(Service, String, f64)> {
    let t0 = Instant::now();
    let service = Service::new(model);
    service.load();
    let described = rt.block_on(service.ready()).context("loading the model")?;
    Ok((service, described, t0.elapsed().as_secs_f64() * 1e3))
}

/// The language id for a file, by its extension (`plaintext` without a grammar).
pub fn language_id(path: &std::path::Path) -> &'static str {
    language::by_path(path)
        .and_then(|g| g.language_ids.first())
        .copied()
        .unwrap_or("plaintext")
}

pub fn run(args: CompleteArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let at = cursor_byte(&ropey::Rope::from_str(&text), args.line, args.col)?;
    let rt = runtime()?;
    let _in_runtime = rt.enter();
    let (service, described, load_ms) = loaded_service(&rt, args.run.model.clone())?;
    service.set_settings(args.run.settings());
    let uri = format!("file://{}", args.file.display());
    service.open(&uri, language_id(&args.file), 0, &text);
    let done = rt.block_on(service.complete(&uri, |_| Ok(at), Options::default()))?;
    let Some(Completed { answer, .. }) = done else {
        anyhow::bail!("no completion: the model gave no answer");
    };
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
        described, answer.kind, s.span_len, s.context_tokens, s.steps, s.forward_passes, s.checks, s.remasks, s.rejections
    )?;
    writeln!(
        out,
        "timings: load={load_ms:.1}ms window={:.1}ms encode={:.1}ms denoise={:.1}ms verify={:.1}ms total={:.1}ms",
        s.window_ms,
        s.encode_ms, s.denoise_ms, s.verify_ms, s.total_ms
    )?;
    Ok(())
}
