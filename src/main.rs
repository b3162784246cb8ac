use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use std::path::PathBuf;
use std::process::ExitCode;
use xks_operator::api::ExternalKeyStore;
use xks_operator::cli;

/// Manage AWS KMS external key stores (XKS) declaratively.
#[derive(Parser)]
#[command(name = "xks-operator", version, about)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. info or xks_operator=debug.
    #[arg(long, global = true, env = "XKS_LOG", default_value = "warn")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the in-cluster controller (watches ExternalKeyStores and their
    /// Secrets; serves /health, /ready and /metrics).
    Run(xks_operator::controller::RunArgs),
    /// Run against an embedded KMS + XKS proxy emulator: create and connect a
    /// store, rotate its endpoint (disconnect → update → health check →
    /// reconnect), refuse bad changes. Needs no cloud and no cluster.
    #[cfg(feature = "emulator")]
    Demo,
    /// Print the steps a change would take and whether it disconnects the
    /// store, changing nothing. Usable as a GitOps pull-request check.
    Plan {
        /// Files or directories of manifests (ExternalKeyStore, Secret).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        target: cli::Target,
        /// Exit with code 2 when a change would disconnect a store (code 1 when a
        /// resource is invalid).
        #[arg(long)]
        fail_on_disruptive: bool,
    },
    /// Run the engine to completion for the given resources (no cluster) and
    /// print them with their final status as YAML.
    Reconcile {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        target: cli::Target,
        /// Treat the resources as deleted (honours deletionPolicy).
        #[arg(long)]
        delete: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
    },
    /// Serve the KMS custom-key-store emulator and XKS proxy emulator (also
    /// its own program: xks-emulator).
    #[cfg(feature = "emulator")]
    Emulator {
        #[arg(long, default_value = "127.0.0.1:4566")]
        listen: std::net::SocketAddr,
        /// Emulator configuration (YAML); see docs/emulator.md.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the ExternalKeyStore CustomResourceDefinition as YAML.
    Crd,
    /// Measure disruption windows, KMS quota use and operator cost against
    /// the embedded emulator (see BENCHMARKS.md).
    #[cfg(feature = "emulator")]
    Bench(xks_operator::bench::BenchArgs),
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    let result: anyhow::Result<i32> = match cli.command {
        #[cfg(feature = "emulator")]
        Command::Demo => cli::demo::run().await.map(|()| 0),
        Command::Plan {
            files,
            target,
            fail_on_disruptive,
        } => cli::plan_command(&files, &target, fail_on_disruptive).await,
        Command::Reconcile {
            files,
            target,
            delete,
            timeout_seconds,
        } => {
            cli::reconcile_command(
                &files,
                &target,
                delete,
                std::time::Duration::from_secs(timeout_seconds),
            )
            .await
        }
        #[cfg(feature = "emulator")]
        Command::Emulator { listen, config } => {
            xks_emulator::run_cli(listen, config).await.map(|()| 0)
        }
        Command::Run(args) => xks_operator::controller::run(args).await.map(|()| 0),
        #[cfg(feature = "emulator")]
        Command::Bench(args) => xks_operator::bench::run(args).await.map(|()| 0),
        Command::Crd => serde_yaml::to_string(&ExternalKeyStore::crd())
            .map(|yaml| {
                print!("{yaml}");
                0
            })
            .map_err(Into::into),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
