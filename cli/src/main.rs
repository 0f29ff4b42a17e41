//! `flotilla`: serve, ctl, certs. Parse, build, run, wait for a signal, drain.

use clap::{CommandFactory, Parser, Subcommand};
use flotilla::{app, certs, ctl};
use flotilla_common::config::{ServeArgs, ServeConfig};
use std::process::ExitCode;
use std::time::Duration;
use tracing::info;

/// Many connections each allocating and freeing messages of tens of KB: glibc's allocator kept
/// that memory (docs/adr/0017-allocator.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Prints a shell completion script, e.g. `flotilla completions bash >
    /// /etc/bash_completion.d/flotilla` or `source <(flotilla completions zsh)`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How long draining may take after SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match blamed_on_env(&e) {
            Some(msg) => {
                eprintln!("{msg}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Ctl(args) => ctl::run(args).await,
        Command::Certs(cmd) => certs::run(cmd),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut script);
            ctl::emit(String::from_utf8_lossy(&script).trim_end());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A bad value clap read from a `FLOTILLA_*` variable rather than the command line: clap names
/// the flag, which the user never typed; this names the variable.
fn blamed_on_env(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    fn find(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| find(c, long)))
    }
    let var = find(&Cli::command(), long)?;
    let typed =
        std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if typed || std::env::var_os(&var).is_none() {
        return None;
    }
    let text = e.render().to_string();
    Some(text.replacen(
        &format!("for '{arg}'"),
        &format!("in the environment variable {var} (read as --{long})"),
        1,
    ))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the config: the default connection cap follows the open-file limit.
    flotilla_common::config::raise_open_file_limit();
    let cfg = ServeConfig::load(args)?;
    let service = flotilla_common::telemetry::traces::ServiceInfo {
        name: match (cfg.gateway, cfg.coordinator) {
            (true, false) => "flotilla-gateway",
            (false, true) => "flotilla-coordinator",
            _ => "flotilla",
        },
        instance: cfg.node_id.clone(),
        region: cfg.region.clone(),
    };
    let telemetry = flotilla_common::telemetry::init(
        cfg.log_format,
        cfg.log_level.as_deref(),
        &cfg.trace,
        &service,
    )
    .map_err(anyhow::Error::msg)?;
    info!(config = %cfg, traces = telemetry.tracing(), "starting");
    let running = app::start(cfg).await?;
    wait_for_signal().await?;
    info!("draining");
    running.shutdown(GRACE).await;
    info!("stopped");
    telemetry.shutdown().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` is the reference: every subcommand and every flag says what it is for.
    #[test]
    fn every_command_and_flag_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "flotilla", &mut missing);
        assert!(missing.is_empty(), "without a description: {missing:#?}");
    }
}
