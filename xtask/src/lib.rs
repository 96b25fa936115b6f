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
/// `cargo xtask test` builds or reuses it (`cargo xtask kube`) and sets this.
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

/// Names of the real cluster (`cargo xtask cluster`) that its tests use too.
pub mod cluster {
    use std::path::PathBuf;

    /// The node as the API knows it.
    pub const NODE_NAME: &str = "netpol-node";
    /// The node's address, inside the cluster namespace.
    pub const NODE_IP: &str = "10.250.0.1";
    /// The network namespace the whole cluster runs in.
    pub const NETNS: &str = "netpol-cluster";
    /// "The internet" behind the node's default route: external clients and servers.
    pub const EXT_NETNS: &str = "netpol-cluster-ext";
    /// Hosts of the ext namespace: the documentation ranges and an SLB health-check address.
    pub const EXT_HOSTS: &[&str] = &[
        "198.51.100.7",
        "198.51.100.20",
        "198.51.100.53",
        "203.0.113.1",
        "203.0.113.10",
        "100.64.0.5",
    ];
    /// The pod network's name in the CNI configuration (and host-local's lease directory).
    pub const CNI_NETWORK: &str = "netpol-cluster";
    /// Overrides the cluster directory (default `/var/lib/netpol-cluster`).
    pub const DIR_ENV: &str = "NETPOL_CLUSTER_DIR";
    /// Tells the cluster tests where the Kubernetes binaries are (`e2e.test`, `ginkgo`);
    /// `cargo xtask test` sets it.
    pub const KUBE_BIN_ENV: &str = "NETPOL_KUBE_BIN";

    /// The cluster directory.
    pub fn dir() -> PathBuf {
        std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/netpol-cluster"))
    }

    /// The kubectl wrapper `up` writes (inside the namespace, as the cluster's admin).
    pub fn kubectl() -> PathBuf {
        dir().join("bin").join("kubectl")
    }
}
