//! `cargo xtask`: the awkward build steps of the workspace, one module per subcommand.

mod build_ebpf;
mod check_ebpf;
mod exec;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Workspace tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the project needs on this machine (idempotent).
    Setup(setup::Options),
    /// Build the eBPF object once.
    BuildEbpf(build_ebpf::Options),
    /// Check an eBPF object against the kernel 4.19 contract.
    CheckEbpf(check_ebpf::Options),
    /// Setup, build, format and lint checks, the object check and every test.
    Test(test::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup(options) => setup::run(&options).map(drop),
        Command::BuildEbpf(options) => build_ebpf::run(&options).map(drop),
        Command::CheckEbpf(options) => check_ebpf::run(&options),
        Command::Test(options) => test::run(&options),
    }
}
