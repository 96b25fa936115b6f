//! `cargo xtask vm`: the kernel matrix. Boots Debian's 5.10, 6.1 and 6.12 kernels under qemu
//! (TCG) with a minimal initramfs and runs the [`SUITES`] of `netpol-tests` inside each, as
//! root, with the Rust init of `tests/src/bin/vm-init.rs`.
//!
//! - [`kernel`]: the image packages (newest of each series, from apt, cached unpacked);
//! - [`apt`]: the machine's apt, and the private configuration for bullseye;
//! - [`binaries`]: cargo builds of the init and the suites;
//! - [`initramfs`]: the cpio archive;
//! - [`qemu`]: one boot, its console and its verdict.
//!
//! It does not decide which tests fit which kernel: a suite that needs something a kernel
//! lacks says so (skip or failure) inside the guest, and this reports it per kernel.

mod apt;
mod binaries;
mod initramfs;
mod kernel;
mod qemu;

use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use kernel::Series;
use xtask::cache_dir;

use crate::{build_ebpf, exec};

/// The test targets of `netpol-tests` that run in the guests. A suite belongs here once it
/// needs nothing but the kernel: the guests have no host tools (`real_traffic` runs `ip` and
/// `iptables`, which would need those binaries and the netfilter modules in the initramfs).
const SUITES: &[&str] = &["test_run", "differential"];

/// Modules the suites need that Debian builds as modules (the loader skips built-in ones):
/// - `sch_ingress`: the clsact qdisc that tc programs attach to through netlink;
/// - `cls_bpf`: the tc classifier that runs them;
/// - `veth`: the pod-like interface pairs of the namespace suites.
const GUEST_MODULES: &[&str] = &["sch_ingress", "cls_bpf", "veth"];

/// Seconds a guest may run by default. A boot with the test-run suite takes well under a
/// minute under TCG; the rest is slack for a busy machine.
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Lines of a failed guest's console repeated in the summary.
const NOTABLE_LINES: usize = 20;

#[derive(clap::Args)]
pub struct Options {
    /// A kernel series to boot; repeat for several [default: all]
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<Series>,
    /// Seconds a guest may run before qemu is killed and the kernel counts as failed
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Guests booted at once (each takes one host core)
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub jobs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernels: Vec::new(),
            timeout: DEFAULT_TIMEOUT_SECS,
            jobs: 2,
        }
    }
}

/// `cargo xtask vm`: builds the eBPF object (running setup), then [`run_matrix`].
pub fn run(options: &Options) -> Result<()> {
    let object = build_ebpf::run(&build_ebpf::Options::default())?;
    run_matrix(&object, options)
}

/// Builds the suites against the prebuilt eBPF `object`, boots every kernel of `options` and
/// fails unless each one printed `init: success`. Expects setup to have run (qemu, busybox,
/// kmod). Prints a per-kernel summary with durations either way.
pub fn run_matrix(object: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    let mut series = if options.kernels.is_empty() {
        Series::ALL.to_vec()
    } else {
        options.kernels.clone()
    };
    series.sort();
    series.dedup();
    let timeout = Duration::from_secs(options.timeout);

    let build_started = Instant::now();
    let binaries = binaries::build(object, SUITES)?;
    eprintln!(
        "vm: built the suites ({}) and the init in {:.1} s",
        SUITES.join(", "),
        build_started.elapsed().as_secs_f64()
    );

    let cache = cache_dir().join("kernels");
    let out_dir = exec::workspace_root().join("target").join("vm");
    let mut results: Vec<Outcome> = Vec::new();
    let mut ready = VecDeque::new();
    for series in series {
        let prepared = Instant::now();
        match prepare(series, &cache, &out_dir, &binaries) {
            Ok(guest) => {
                eprintln!(
                    "vm: {series}: {} ready in {:.1} s",
                    guest.package,
                    prepared.elapsed().as_secs_f64()
                );
                ready.push_back(guest);
            }
            Err(error) => results.push(Outcome {
                series,
                package: None,
                passed: false,
                summary: format!("not booted: {error:#}"),
                notable: Vec::new(),
                duration: Duration::ZERO,
            }),
        }
    }

    let queue = Mutex::new(ready);
    let finished = Mutex::new(Vec::new());
    let jobs = options.jobs.max(1);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut queue| queue.pop_front());
                    let Ok(Some(guest)) = next else { break };
                    let outcome = boot(&guest, timeout);
                    if let Ok(mut finished) = finished.lock() {
                        finished.push(outcome);
                    }
                }
            });
        }
    });
    results.extend(
        finished
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a boot thread panicked"))?,
    );
    results.sort_by_key(|outcome| outcome.series);

    eprintln!(
        "\nvm: kernel matrix ({:.0} s in all):",
        started.elapsed().as_secs_f64()
    );
    for outcome in &results {
        eprintln!(
            "vm:   {:<5} {:<4} {:>6.1} s  {}  {}",
            outcome.series.label(),
            if outcome.passed { "PASS" } else { "FAIL" },
            outcome.duration.as_secs_f64(),
            outcome.package.as_deref().unwrap_or("-"),
            outcome.summary
        );
        for line in outcome.notable.iter().take(NOTABLE_LINES) {
            eprintln!("vm:         {line}");
        }
        if let Some(more) = outcome.notable.len().checked_sub(NOTABLE_LINES)
            && more > 0
        {
            eprintln!(
                "vm:         ... and {more} more (see the [{}] lines above)",
                outcome.series
            );
        }
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|outcome| !outcome.passed)
        .map(|outcome| outcome.series.label())
        .collect();
    if !failed.is_empty() {
        bail!("the test suites failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// A kernel with its initramfs, ready to boot.
struct Guest {
    series: Series,
    package: String,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
}

struct Outcome {
    series: Series,
    package: Option<String>,
    passed: bool,
    summary: String,
    notable: Vec<String>,
    duration: Duration,
}

fn prepare(
    series: Series,
    cache: &Path,
    out_dir: &Path,
    binaries: &binaries::Binaries,
) -> Result<Guest> {
    let kernel = kernel::fetch(series, cache)?;
    let modules = kernel.modules(GUEST_MODULES)?;
    let dir = out_dir.join(series.label());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initramfs = dir.join("initramfs.cpio");
    initramfs::write(
        &initramfs,
        &initramfs::Contents {
            init: &binaries.init,
            tests: &binaries.tests,
            modules: &modules,
        },
    )
    .with_context(|| format!("{kernel}: writing the initramfs"))?;
    Ok(Guest {
        series,
        package: kernel.package.clone(),
        vmlinuz: kernel.vmlinuz(),
        initramfs,
    })
}

fn boot(guest: &Guest, timeout: Duration) -> Outcome {
    let report = qemu::boot(&qemu::Boot {
        label: guest.series.label(),
        vmlinuz: &guest.vmlinuz,
        initramfs: &guest.initramfs,
        timeout,
    });
    match report {
        Ok(report) => Outcome {
            series: guest.series,
            package: Some(guest.package.clone()),
            passed: report.passed,
            summary: report.summary,
            notable: report.notable,
            duration: report.duration,
        },
        Err(error) => Outcome {
            series: guest.series,
            package: Some(guest.package.clone()),
            passed: false,
            summary: format!("{error:#}"),
            notable: Vec::new(),
            duration: Duration::ZERO,
        },
    }
}
