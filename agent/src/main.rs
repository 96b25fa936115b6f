//! `netpol-agent`: the per-node daemon. Parsing and validation live in `cli`; this only
//! dispatches and prints the error chain once.

use clap::Parser as _;
use netpol_agent::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Run(args) => args.validate().and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(cli::run(config)))
        }),
        Command::Cleanup(args) => cli::cleanup(args),
        Command::InstallCni(args) => cli::install_cni(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("netpol-agent: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
