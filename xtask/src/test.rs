//! `cargo xtask test`: everything CI runs, in the order that fails fastest.

use std::{path::Path, process::Command};

use anyhow::Result;
use xtask::EBPF_OBJECT_ENV;

use crate::{build_ebpf, check_ebpf, exec, setup};

#[derive(clap::Args, Default)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    let toolchain = setup::run(&setup::Options::default())?;
    let root = exec::workspace_root();
    exec::run(
        Command::new("cargo")
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(root),
    )?;
    let object = build_ebpf::build(&toolchain)?;
    check_ebpf::check_file(&object)?;
    exec::run(cargo(root, &object).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    exec::run(cargo(root, &object).args(["test", "--workspace", "--", "--test-threads=1"]))?;
    Ok(())
}

/// A cargo command for the host workspace that reuses the prebuilt eBPF object.
fn cargo(root: &Path, object: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).env(EBPF_OBJECT_ENV, object);
    cmd
}
