//! `cargo xtask test`: everything CI runs, in the order that fails fastest.

use std::{path::Path, process::Command};

use anyhow::Result;
use xtask::{EBPF_OBJECT_ENV, KUBE_APISERVER_ENV};

use crate::{build_ebpf, check_ebpf, cluster, exec, image, kube, setup, vm};

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
    // The suites that talk to a real API server get the cached kube-apiserver (built with the
    // other Kubernetes binaries from Debian's source the first time, about 20 minutes).
    let kube = kube::ensure_kube()?;
    let kube_apiserver = kube.get("kube-apiserver");
    kube::etcd_binary()?;
    // The end-to-end suites run the agent binary, which `cargo test` does not build for
    // another package's tests.
    exec::run(cargo(root, &object).args([
        "build",
        "--package",
        "netpol-agent",
        "--bin",
        "netpol-agent",
    ]))?;
    let agent = root.join("target").join("debug").join("netpol-agent");
    // One thread: the integration suites share kernel state (bpffs, test namespaces).
    exec::run(
        cargo(root, &object)
            .args(["test", "--workspace", "--", "--test-threads=1"])
            .env(KUBE_APISERVER_ENV, &kube_apiserver)
            .env("NETPOL_AGENT_BIN", &agent),
    )?;
    // The test-run suite again, inside the Debian 5.10, 6.1 and 6.12 kernels.
    vm::run_matrix(&object, &vm::Options::default())?;
    real_cluster(root, &object, &kube)
}

/// The agent as a DaemonSet on the real single-node cluster: its image built and loaded, the
/// suite of `tests/real_cluster.rs` (ignored by a plain `cargo test`), and the cluster torn
/// down again unless it was up before this run.
fn real_cluster(root: &Path, object: &Path, kube: &kube::KubeBinaries) -> Result<()> {
    let was_up = cluster::is_up();
    let tarball = image::build_agent_image(&image::Options::default())?;
    cluster::up_with_image(&tarball)?;
    let suite = exec::run(
        cargo(root, object)
            .args([
                "test",
                "--package",
                "netpol-tests",
                "--test",
                "real_cluster",
            ])
            .args(["--", "--ignored", "--test-threads=1"])
            .env(xtask::cluster::KUBE_BIN_ENV, &kube.dir),
    );
    if was_up {
        eprintln!("xtask: the cluster was up before this run; leaving it up");
        return suite;
    }
    let down = cluster::down();
    suite.and(down)
}

/// A cargo command for the host workspace that reuses the prebuilt eBPF object.
fn cargo(root: &Path, object: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).env(EBPF_OBJECT_ENV, object);
    cmd
}
