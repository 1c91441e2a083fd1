//! `diffusion-train`: trains the default masked-diffusion code model on the corpus built by
//! scripts/corpus/build.py, resuming from a checkpoint, and exports f16 weights.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use candle_nn::Optimizer;
use clap::Parser;
use model::config::{Config, LogitsConvention};
use model::tokenizer::Tokenizer;
use model::train::{collate, diffusion_loss, init_params, SampleMaker, Trainable};
use model::transformer::Exec;
use model::weights::TensorStore;
use rand::{rngs::StdRng, Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Train the masked-diffusion code model")]
struct Args {
    /// Folder with train.jsonl and val.jsonl ({"text": ...} per line).
    #[arg(long, default_value = "corpus")]
    corpus: PathBuf,
    #[arg(long, default_value = "model/default/tokenizer.json")]
    tokenizer: PathBuf,
    /// Run folder: checkpoint (f32), log.jsonl.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Also export f16 weights here at every save (e.g. model/default).
    #[arg(long)]
    export: Option<PathBuf>,
    /// Start from this HF-format folder's weights (and its config) instead of random ones.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 6)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    #[arg(long, default_value_t = 768)]
    ffn: usize,
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Stop after this many steps...
    #[arg(long, default_value_t = 1_000_000)]
    steps: usize,
    /// ...or this many minutes; the learning rate decays over the last 20% of whichever ends first.
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    #[arg(long, default_value_t = 0.5)]
    infill_share: f64,
    #[arg(long, default_value_t = 128)]
    max_span: usize,
    /// Plain samples mask each token with probability t ~ U(0, this]; 1 = MDLM.
    #[arg(long, default_value_t = 1.0)]
    max_mask_rate: f64,
    /// Average each sample's masked-token loss instead of weighting it by 1/t.
    #[arg(long)]
    mean_loss: bool,
    /// Which hidden state predicts a position: its own (in-place, MDLM) or the one before it
    /// (shifted, as Dream), which sees the previous token directly once it is unmasked.
    /// Default: in-place for a new model, the checkpoint's own when resuming.
    #[arg(long, value_enum)]
    logits: Option<Logits>,
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    #[arg(long, default_value_t = 100)]
    val_every: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
            if t.len() > 64 {
                out.push(t.to_owned());
            }
        }
    }
    if out.is_empty() {
        bail!("{} holds no texts", path.display());
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Logits {
    InPlace,
    Shifted,
}

fn main() -> anyhow::Result<()> {
    model::pin_thread_count();
    let args = Args::parse();
    let device = Device::Cpu;
    let (mut cfg, params) = match &args.resume {
        Some(dir) => {
            let cfg = Config::from_file(&dir.join("config.json"))?;
            let store = TensorStore::load_dir(dir, &device)?;
            let params = model::transformer::parameter_shapes(&cfg)
                .into_iter()
                .map(|(n, s)| Ok((n.clone(), store.get(&n, &s)?)))
                .collect::<anyhow::Result<_>>()?;
            eprintln!("resuming from {}", dir.display());
            (cfg, params)
        }
        None => {
            // RoPE does not extrapolate far past the trained length: advertise that length.
            let probe = Config::default_family(
                0,
                args.hidden,
                args.layers,
                args.heads,
                args.kv_heads,
                args.ffn,
                args.seq_len,
            );
            let tok = tokenizers::Tokenizer::from_file(&args.tokenizer)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.tokenizer.display()))?;
            let vocab = tok.get_vocab_size(true).div_ceil(64) * 64;
            let cfg = Config {
                vocab_size: vocab,
                mask_token_id: tok.token_to_id("<|mask|>"),
                pad_token_id: tok.token_to_id("<|endoftext|>"),
                eos_token_id: tok.token_to_id("<|endoftext|>"),
                ..probe
            };
            let params = init_params(&cfg, DType::F32, &device, args.seed)?;
            (cfg, params)
        }
    };
    match args.logits {
        Some(Logits::InPlace) => cfg.logits = LogitsConvention::InPlace,
        Some(Logits::Shifted) => cfg.logits = LogitsConvention::Shifted,
        None => {}
    }
    let shifted = cfg.logits == LogitsConvention::Shifted;
    let tokenizer = Tokenizer::from_file(&args.tokenizer, &cfg)?;
    eprintln!(
        "model: {:.2}M params, vocab {}",
        cfg.num_params() as f64 / 1e6,
        cfg.vocab_size
    );
    let train = read_texts(&args.corpus.join("train.jsonl"))?;
    let val = read_texts(&args.corpus.join("val.jsonl"))?;
    let train_bytes: usize = train.iter().map(String::len).sum();
    eprintln!(
        "corpus: {} train files ({:.1} MB), {} val files",
        train.len(),
        train_bytes as f64 / 1e6,
        val.len()
    );

    let trainable = Trainable::new(&cfg, params, &device)?;
    let mut opt = trainable.optimizer(args.lr, 0.01)?;
    std::fs::create_dir_all(&args.out)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.out.join("log.jsonl"))?;
    let prior_tokens = read_prior_tokens(&args.out.join("log.jsonl"));

    // Batches are made on a separate thread so tokenizing overlaps the matmuls.
    let (tx, rx) = mpsc::sync_channel(4);
    {
        let (seq_len, batch, infill_share, max_span, seed) = (
            args.seq_len,
            args.batch,
            args.infill_share,
            args.max_span,
            args.seed,
        );
        let (max_mask_rate, mean_loss) = (args.max_mask_rate, args.mean_loss);
        let tok_path = args.tokenizer.clone();
        let cfg = cfg.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let tokenizer = Tokenizer::from_file(&tok_path, &cfg)?;
            let maker = SampleMaker {
                tokenizer: &tokenizer,
                seq_len,
                infill_share,
                max_span,
                max_mask_rate,
                mean_loss,
                shifted,
            };
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed ^ prior_tokens as u64);
            loop {
                let mut samples = Vec::with_capacity(batch);
                while samples.len() < batch {
                    let text = &train[rng.random_range(0..train.len())];
                    samples.push(maker.make(text, &mut rng)?);
                }
                if tx.send(samples).is_err() {
                    return Ok(());
                }
            }
        });
    }
    // A fixed validation set.
    let val_batches = {
        // Always the MDLM objective, whatever the training options, so that runs compare.
        let maker = SampleMaker {
            tokenizer: &tokenizer,
            seq_len: args.seq_len,
            infill_share: args.infill_share,
            max_span: args.max_span,
            max_mask_rate: 1.0,
            mean_loss: false,
            shifted,
        };
        let mut rng = StdRng::seed_from_u64(1234);
        (0..6)
            .map(|_| {
                let s: Vec<_> = (0..args.batch)
                    .map(|_| maker.make(&val[rng.random_range(0..val.len())], &mut rng))
                    .collect::<Result<_, _>>()?;
                Ok(collate(&s, shifted, &device, DType::F32)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };

    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {permille}‰ {msg}",
    )?);
    let mut tokens_seen = prior_tokens;
    let mut ema: Option<f32> = None;
    for step in 1..=args.steps {
        let progress = (step as f64 / args.steps as f64)
            .max(started.elapsed().as_secs_f64() / (args.minutes * 60.0));
        if progress >= 1.0 {
            break;
        }
        let warm = (step as f64 / args.warmup.max(1) as f64).min(1.0);
        let decay = if progress > 0.8 {
            1.0 - 0.9 * (progress - 0.8) / 0.2
        } else {
            1.0
        };
        opt.set_learning_rate(args.lr * warm * decay);
        let samples = rx.recv()?;
        let batch = collate(&samples, shifted, &device, DType::F32)?;
        tokens_seen += batch.tokens;
        let loss = trainable.step(&mut opt, &batch)?;
        ema = Some(ema.map_or(loss, |e| 0.98 * e + 0.02 * loss));
        let tok_s = (tokens_seen - prior_tokens) as f64 / started.elapsed().as_secs_f64();
        bar.set_position((progress * 1000.0) as u64);
        bar.set_message(format!(
            "step {step} loss {:.3} {:.0} tok/s {:.1}M tokens",
            ema.unwrap(),
            tok_s,
            tokens_seen as f64 / 1e6
        ));
        let mut entry = serde_json::json!({
            "step": step, "tokens": tokens_seen, "loss": loss, "lr": args.lr * warm * decay,
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        if step % args.val_every == 0 {
            let mut total = 0.0;
            for b in &val_batches {
                total += diffusion_loss(&trainable.model, b, Exec::Infer)?.to_scalar::<f32>()?;
            }
            entry["val_loss"] = serde_json::json!(total / val_batches.len() as f32);
        }
        writeln!(log, "{entry}")?;
        if step % args.save_every == 0 {
            save(&trainable, &args)?;
        }
    }
    save(&trainable, &args)?;
    bar.finish();
    eprintln!(
        "done: {:.1}M tokens seen in total",
        tokens_seen as f64 / 1e6
    );
    Ok(())
}

fn save(t: &Trainable, args: &Args) -> anyhow::Result<()> {
    t.save(&args.out.join("checkpoint"), DType::F32, &args.tokenizer)?;
    if let Some(dir) = &args.export {
        t.save(dir, DType::F16, &args.tokenizer)?;
    }
    Ok(())
}

/// Tokens seen by earlier runs in the same folder (the log is appended to).
fn read_prior_tokens(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|s| {
            s.lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        })
        .and_then(|v| v.get("tokens").and_then(|t| t.as_u64()))
        .unwrap_or(0) as usize
}
