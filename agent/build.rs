//! Provides the eBPF object to `include_bytes!`: either the prebuilt one named by
//! `NETPOL_EBPF_OBJECT` (what `cargo xtask` passes, so check, clippy and tests do not rebuild
//! `core` for the bpf target in every cargo context), or a fresh build through aya-build, so a
//! plain `cargo build` works once `cargo xtask setup` has run.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use xtask::{EBPF_BIN, EBPF_OBJECT_ENV, EBPF_PACKAGE, EBPF_TOOLCHAIN, bpf_linker_bin_dir};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    println!("cargo:rerun-if-env-changed={EBPF_OBJECT_ENV}");
    if let Some(prebuilt) = env::var_os(EBPF_OBJECT_ENV) {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        fs::copy(&prebuilt, out_dir.join(EBPF_BIN)).with_context(|| {
            format!(
                "{EBPF_OBJECT_ENV}={}: cannot copy the object",
                prebuilt.display()
            )
        })?;
        return Ok(());
    }

    // The bpf-linker that `cargo xtask setup` built lives in the project cache, not on PATH.
    let linker_dir = bpf_linker_bin_dir();
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(linker_dir).chain(env::split_paths(&path)))?;
    // SAFETY: build scripts are single-threaded here; nothing else reads the environment.
    unsafe { env::set_var("PATH", path) };

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("agent is inside the workspace")?;
    let ebpf_dir = workspace.join(EBPF_PACKAGE);
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("agent-common").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir.to_str().context("non-UTF-8 workspace path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the eBPF object failed; run `cargo xtask setup` first, or set NETPOL_EBPF_OBJECT",
    )
}
