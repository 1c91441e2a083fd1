//! The `diffusion-ls` binary: LSP server (default), `complete` and `eval` subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use diffusion_ls::{CompleteArgs, EvalArgs};

/// candle allocates on every op; mimalloc avoids glibc malloc's page faults on every one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "diffusion-ls",
    version,
    about = "Code completion with a masked-diffusion language model"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// HF-format model folder (config.json, tokenizer.json, model.safetensors); default: the
    /// embedded model. Wins over initializationOptions.model.
    #[arg(long, global = true)]
    model: Option<PathBuf>,
    /// Serve LSP over TCP on this address (one client) instead of stdio.
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Accepted and ignored: stdio is the default (editors pass it by habit).
    #[arg(long, global = true, hide = true)]
    stdio: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Language server on stdio (the default).
    Serve,
    /// Complete at a position in a file and print the completion with timings.
    Complete(CompleteArgs),
    /// Run fill-in-the-middle cases and print accuracy, parse rate and latency.
    Eval(EvalArgs),
}

fn main() -> anyhow::Result<()> {
    model::pin_thread_count();
    // stdout is the protocol channel: logs go to stderr only. Level from DIFFUSION_LS_LOG.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIFFUSION_LS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let exit = rt.block_on(async {
                match cli.listen {
                    Some(addr) => diffusion_ls::serve_tcp(addr, cli.model).await,
                    None => Ok(diffusion_ls::serve_stdio(cli.model).await),
                }
            })?;
            // The model thread may be mid-request; exit without waiting for it.
            std::process::exit(exit.code());
        }
        Some(Command::Complete(mut args)) => {
            args.run.model = args.run.model.or(cli.model);
            diffusion_ls::run_complete(args)
        }
        Some(Command::Eval(mut args)) => {
            args.run.model = args.run.model.or(cli.model);
            diffusion_ls::run_eval(args)
        }
    }
}
