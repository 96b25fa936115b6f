//! `netpol-agent`: the per-node daemon. Parsing and validation live in `cli`; this only
//! dispatches and prints the error chain once.

use clap::Parser as _;
use netpol_agent::{
    cli::{self, Cli, Command},
    debug,
};
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
        Command::Status(target) => debug_answer(debug::status(&target)),
        Command::Endpoints(target) => debug_answer(debug::endpoints(&target)),
        Command::Explain(args) => debug_answer(debug::explain(&args)),
        Command::Monitor(args) => debug_answer(debug::monitor(&args)),
        Command::Ct(args) => match args.action {
            debug::CtAction::List {
                pod,
                numeric,
                target,
            } => debug_answer(debug::ct_list(pod.as_deref(), numeric, &target)),
        },
        Command::Maps(args) => match args.action {
            debug::MapsAction::Dump {
                map,
                numeric,
                target,
            } => debug_answer(debug::dump(map, numeric, &target)),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if error.is::<Unhealthy>() => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("netpol-agent: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A debug command answered, and its answer is bad news (agent down, drift): exit 1, the
/// output said why.
#[derive(Debug, thiserror::Error)]
#[error("unhealthy")]
struct Unhealthy;

fn debug_answer(answer: anyhow::Result<debug::Healthy>) -> anyhow::Result<()> {
    match answer? {
        true => Ok(()),
        false => Err(Unhealthy.into()),
    }
}
