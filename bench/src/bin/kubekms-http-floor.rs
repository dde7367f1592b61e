//! The HTTP floor as a process of its own (as the servers it is compared with are): prints
//! `listening on <addr>` once it listens, then serves until killed.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use clap::Parser;

/// The cheapest server of the AWS KMS API on kubekms-server's stack: a fixed KMS-shaped
/// reply to `POST /` (the baseline of the api_load benchmark).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads);
    }
    runtime.build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{}{addr}", kubekms_bench::floor::LISTENING)?;
        stdout.flush()?;
        kubekms_bench::floor::serve(listener)
            .await
            .context("serving")
    })
}
