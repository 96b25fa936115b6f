//! Names shared by the xtask binary and the build scripts of the workspace.
//!
//! Kept free of logic so build scripts can depend on it cheaply.

use std::path::PathBuf;

/// Points `agent/build.rs` at a prebuilt eBPF object instead of building it again. `cargo xtask`
/// sets it for every cargo command it runs, so check, clippy and tests share one build.
pub const EBPF_OBJECT_ENV: &str = "NETPOL_EBPF_OBJECT";

/// The eBPF binary target (agent-ebpf's `[[bin]]`), which is also the file name of the object
/// in the agent's `OUT_DIR`.
pub const EBPF_BIN: &str = "netpol-tc";

/// The eBPF package.
pub const EBPF_PACKAGE: &str = "agent-ebpf";

/// The nightly toolchain the eBPF crate is built with.
pub const EBPF_TOOLCHAIN: &str = "nightly";

/// Overrides the cache directory (default `$XDG_CACHE_HOME/netpol` or `~/.cache/netpol`).
pub const CACHE_DIR_ENV: &str = "NETPOL_CACHE_DIR";

/// Where the bootstrap keeps what it builds or downloads: bpf-linker, kernels, the apiserver.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("netpol")
}

/// The directory holding the `bpf-linker` that setup built.
pub fn bpf_linker_bin_dir() -> PathBuf {
    cache_dir().join("bpf-linker").join("bin")
}

/// Tells the tests crate where the kube-apiserver binary is (`tests/src/apiserver.rs`).
/// `cargo xtask test` builds or reuses it (`cargo xtask kube-apiserver`) and sets this.
pub const KUBE_APISERVER_ENV: &str = "NETPOL_KUBE_APISERVER";

/// Where Debian's `etcd-server` installs etcd.
pub const DEBIAN_ETCD: &str = "/usr/bin/etcd";

/// Debian's etcd, or an `etcd` found on `PATH` (the API-server suites and the xtask that
/// prepares them look it up the same way).
pub fn find_etcd() -> Option<PathBuf> {
    let debian = PathBuf::from(DEBIAN_ETCD);
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|path| path.is_file())
}
