//! `xks-emulator`: serve the KMS custom-key-store API and the XKS proxies
//! it reaches on one listener, for the tests of anything that manages
//! external key stores. See docs/emulator.md.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// An AWS KMS custom-key-store (XKS) emulator and XKS proxy emulator.
#[derive(Parser)]
#[command(name = "xks-emulator", version, about)]
struct Cli {
    /// Address to listen on (KMS API, proxies by Host header, /_emulator/).
    #[arg(long, default_value = "127.0.0.1:4566")]
    listen: SocketAddr,
    /// Configuration (YAML); without it, the embedded demo default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "XKS_LOG", default_value = "warn")]
    log_level: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match xks_emulator::run_cli(cli.listen, cli.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
