//! `cargo xtask`: the awkward build steps of the workspace, one module per subcommand.

mod bench;
mod build_ebpf;
mod check_ebpf;
mod cluster;
mod demo;
mod exec;
mod image;
mod kube;
mod setup;
mod test;
mod vm;

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
    /// The seed guide's four scenarios on a simulated node, with real traffic (needs root).
    Demo(demo::Options),
    /// Setup, build, format and lint checks, the object check and every test.
    Test(test::Options),
    /// Build or reuse the cached Kubernetes binaries; print their directory.
    Kube(kube::Options),
    /// Boot Debian kernels (5.10, 6.1, 6.12) under qemu and run the test suites in each.
    Vm(vm::Options),
    /// A real single-node Kubernetes in a network namespace: `up`, `down`, `status`.
    Cluster(cluster::Options),
    /// The agent's container image, built without pulling any base image.
    Image(image::Options),
    /// Run a benchmark and print its figures (`cargo xtask bench engine`).
    Bench(bench::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup(options) => setup::run(&options).map(drop),
        Command::BuildEbpf(options) => build_ebpf::run(&options).map(drop),
        Command::CheckEbpf(options) => check_ebpf::run(&options),
        Command::Demo(options) => demo::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Kube(options) => kube::run(&options),
        Command::Vm(options) => vm::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Image(options) => image::run(&options),
        Command::Cluster(options) => cluster::run(&options),
    }
}
