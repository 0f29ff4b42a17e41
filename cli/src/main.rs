//! `flotilla`: serve, ctl, certs. Parse, build, run, wait for a signal, drain.

use clap::{Parser, Subcommand};
use flotilla::{app, certs, ctl};
use flotilla_common::config::{ServeArgs, ServeConfig};
use std::process::ExitCode;
use std::time::Duration;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "OpAMP control plane for large agent fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Flotilla (both roles, embedded store and bus, unless told otherwise).
    Serve(Box<ServeArgs>),
    /// Admin CLI over the API.
    Ctl(ctl::CtlArgs),
    /// Development PKI: CA, server and agent certificates; revocation.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

/// How long draining may take after SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Ctl(args) => ctl::run(args).await,
        Command::Certs(cmd) => certs::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the config: the default connection cap follows the open-file limit.
    flotilla_common::config::raise_open_file_limit();
    let cfg = ServeConfig::load(args)?;
    flotilla_common::telemetry::init_logging();
    info!(config = %cfg, "starting");
    let running = app::start(cfg).await?;
    wait_for_signal().await?;
    info!("draining");
    running.shutdown(GRACE).await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
