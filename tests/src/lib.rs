//! Shared pieces of the integration suites.
//!
//! - [`packet`]: crafted frames for BPF_PROG_TEST_RUN.
//! - [`raw`]: forged packets through raw sockets from a pod, and a counter of what arrives.
//! - [`netns`]: a simulated node with pods as network namespaces, for real traffic.
//! - [`agent`]: the real `netpol-agent` binary run inside a simulated node.
//! - [`clusters`]: seeded random clusters and flows for the differential suites.
//! - [`objects`]: an objects directory and the helpers of the suites that use one.
//! - [`reference`]: the real-traffic case every backend is held to.
//! - [`scenarios`]: the seed guide's four scenarios, for the demo and the agent suites.
//! - [`apiserver`]: a real kube-apiserver and etcd on loopback, for the API-driven suites.
//! - [`real_cluster`]: the real single-node cluster of `cargo xtask cluster`, through kubectl.
//! - [`require_root`]: the skip rule for tests that need root.

pub mod agent;
pub mod apiserver;
pub mod clusters;
pub mod conformance;
pub mod measure;
pub mod netns;
pub mod objects;
pub mod packet;
pub mod raw;
pub mod real_cluster;
pub mod reference;
pub mod scenarios;
pub mod verifier_stats;

/// Whether this process may load BPF programs. Tests that need it print why they skip
/// otherwise (CI runs as root, so there they always run).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN)");
    }
    root
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
