//! `cargo xtask check-ebpf`: static check of a built object against the kernel 4.19 contract.

use std::path::{Path, PathBuf};

use anyhow::Result;

#[derive(clap::Args, Default)]
pub struct Options {
    /// The object to check (default: build it first).
    pub object: Option<PathBuf>,
}

pub fn run(options: &Options) -> Result<()> {
    let object = match &options.object {
        Some(path) => path.clone(),
        None => crate::build_ebpf::run(&crate::build_ebpf::Options::default())?,
    };
    check_file(&object)
}

/// Checks the object at `path`, prints the table, fails on any violation.
pub fn check_file(path: &Path) -> Result<()> {
    anyhow::bail!("check-ebpf is not implemented yet ({})", path.display())
}
