//! `cargo xtask bench <target>`: runs one benchmark, which prints its own figures.
//!
//! Benchmarks are not timed tests: they print figures (recorded in `docs/`) and fail only if
//! they cannot run. Each target is one cargo bench of the workspace, run with the prebuilt eBPF
//! object so the agent crate does not rebuild it.

use std::process::Command;

use anyhow::Result;
use xtask::{EBPF_OBJECT_ENV, KUBE_APISERVER_ENV};

use crate::{build_ebpf, exec, kube};

#[derive(clap::Args)]
pub struct Options {
    /// What to measure.
    #[arg(value_enum)]
    target: Target,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Target {
    /// The policy engine: full compile and deltas on a synthetic 10,000-pod cluster
    /// (`agent/benches/engine.rs`, figures in `docs/ENGINE-BENCH.md`).
    Engine,
    /// The tc programs: ns per packet through test runs (`agent/benches/datapath.rs`, figures
    /// in `docs/DATAPATH-BENCH.md`; needs root).
    Datapath,
    /// The iptables backend against the eBPF one: rules, set entries, full sync and update
    /// times for 100 to 10,000 policies (`agent/benches/iptables.rs`, figures in
    /// `docs/IPTABLES-BENCH.md`; needs root, runs in a network namespace of its own).
    Iptables,
    /// Holding a pod's start until it is enforced: CNI ADD to return with the real plugin and
    /// agent on a simulated node (`tests/benches/cni.rs`, figures in `docs/CNI-BENCH.md`;
    /// needs root).
    Cni,
    /// An idle agent's CPU and the time from a policy file written to the probe flipping,
    /// objects-dir source, both backends, 100 and 10,000 policies (`tests/benches/idle.rs`,
    /// figures in `docs/CONVERGENCE-BENCH.md`; needs root).
    Idle,
    /// The kube source against a real API server holding a synthetic cluster (10,000 pods
    /// and policies by default; `NETPOL_SCALE_PODS`, `NETPOL_SCALE_POLICIES`): start to
    /// ready, memory, idle CPU, change to enforced (`tests/benches/scale.rs`, figures in
    /// `docs/SCALE-BENCH.md`; needs root).
    Scale,
    /// Real connections through a simulated node of 110 pods with 100 and 10,000 policies:
    /// request/response, new connections and bulk (iperf3), no enforcement against each
    /// backend interleaved, and the programs' run time from the kernel's BPF statistics
    /// (`tests/benches/traffic.rs`, figures in `docs/TRAFFIC-BENCH.md`; needs root).
    Traffic,
}

impl Target {
    /// The package and bench target that measure it.
    fn bench(self) -> (&'static str, &'static str) {
        match self {
            Self::Engine => ("netpol-agent", "engine"),
            Self::Datapath => ("netpol-agent", "datapath"),
            Self::Iptables => ("netpol-agent", "iptables"),
            Self::Cni => ("netpol-tests", "cni"),
            Self::Idle => ("netpol-tests", "idle"),
            Self::Scale => ("netpol-tests", "scale"),
            Self::Traffic => ("netpol-tests", "traffic"),
        }
    }
}

pub fn run(options: &Options) -> Result<()> {
    let object = build_ebpf::run(&build_ebpf::Options::default())?;
    let (package, bench) = options.target.bench();
    if let Target::Cni | Target::Idle | Target::Scale | Target::Traffic = options.target {
        // The bench runs the agent (and the plugin) binaries, which it does not build itself.
        exec::run(
            Command::new("cargo")
                .current_dir(exec::workspace_root())
                .env(EBPF_OBJECT_ENV, &object)
                .args([
                    "build",
                    "--release",
                    "--package",
                    "netpol-agent",
                    "--bin",
                    "netpol-agent",
                ])
                .args(["--package", "netpol-cni", "--bin", "netpol-cni"]),
        )?;
    }
    let mut command = Command::new("cargo");
    command
        .current_dir(exec::workspace_root())
        .env(EBPF_OBJECT_ENV, &object)
        .args(["bench", "--package", package, "--bench", bench]);
    if let Target::Scale = options.target {
        // A real API server: the cached Kubernetes binaries (built the first time) and etcd.
        let kube = kube::ensure_kube()?;
        kube::etcd_binary()?;
        command.env(KUBE_APISERVER_ENV, kube.get("kube-apiserver"));
    }
    exec::run(&mut command)
}
