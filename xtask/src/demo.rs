//! `cargo xtask demo`: the seed guide's four scenarios on a simulated node (the README's main
//! command). Bootstraps, builds the agent and the demo driver, and runs the driver as root.

use std::process::Command;

use anyhow::{Context as _, Result};
use xtask::EBPF_OBJECT_ENV;

use crate::{build_ebpf, exec, setup};

#[derive(clap::Args, Default)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    let toolchain = setup::run(&setup::Options::default())?;
    let object = build_ebpf::build(&toolchain)?;
    let root = exec::workspace_root();
    exec::run(
        Command::new("cargo")
            .args([
                "build",
                "--quiet",
                "-p",
                "netpol-agent",
                "--bin",
                "netpol-agent",
            ])
            .args(["-p", "netpol-tests", "--bin", "netpol-demo"])
            .current_dir(root)
            .env(EBPF_OBJECT_ENV, &object),
    )
    .context("building the agent and the demo")?;
    let bin_dir = root.join("target").join("debug");
    exec::run(
        Command::new(bin_dir.join("netpol-demo"))
            .current_dir(root)
            .env("NETPOL_AGENT_BIN", bin_dir.join("netpol-agent")),
    )
}
