//! `cargo xtask build-ebpf`: builds the eBPF object once, for every later cargo context.
//!
//! The same flags as `aya_build::build_ebpf` (which `agent/build.rs` uses when no prebuilt
//! object is given), plus `-D warnings`: the host build only sees an empty stub of the crate, so
//! this is where its warnings are caught.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use xtask::{EBPF_BIN, EBPF_PACKAGE, EBPF_TOOLCHAIN};

use crate::{exec, setup};

const TARGET: &str = "bpfel-unknown-none";

#[derive(clap::Args, Default)]
pub struct Options {}

/// Builds the object and returns its path.
pub fn run(_options: &Options) -> Result<PathBuf> {
    let toolchain = setup::run(&setup::Options::default())?;
    build(&toolchain)
}

pub fn build(toolchain: &setup::Toolchain) -> Result<PathBuf> {
    let root = exec::workspace_root();
    let target_dir = root.join("target").join("ebpf");
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Dwarnings",
    ]
    .join("\x1f");
    exec::run(
        Command::new("rustup")
            .args(["run", EBPF_TOOLCHAIN, "cargo", "build", "--quiet"])
            .args(["--package", EBPF_PACKAGE, "--bins", "--release"])
            .args(["--target", TARGET, "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(root)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env("PATH", path_with(&toolchain.linker_dir)?)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )
    .context("building the eBPF object failed")?;
    let object = target_dir.join(TARGET).join("release").join(EBPF_BIN);
    anyhow::ensure!(
        object.is_file(),
        "the build left no object at {}",
        object.display()
    );
    eprintln!("xtask: eBPF object at {}", object.display());
    Ok(object)
}

/// `PATH` with `dir` in front.
pub fn path_with(dir: &std::path::Path) -> Result<std::ffi::OsString> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&old)))
        .context("PATH contains an entry that cannot be joined")
}
