//! `cargo xtask setup`: makes a fresh machine able to build and test the project.
//!
//! Idempotent and cheap when everything is in place: each step first checks, then acts, and
//! the summary says what was done and what was skipped. Something that cannot be had stops the
//! run with an error naming it and how to get it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use xtask::{EBPF_TOOLCHAIN, bpf_linker_bin_dir, cache_dir};

use crate::exec;

/// Debian packages, each with the reason the project needs it.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip and tc: test namespaces, veths, qdiscs"),
    ("bpftool", "inspecting loaded programs and pinned maps"),
    (
        "iptables",
        "the kube-proxy stand-in and the iptables backend",
    ),
    ("ipset", "the iptables backend"),
    ("socat", "test servers and probes"),
    (
        "iperf3",
        "bulk streams through allowed connections (fault-injection suite, bench traffic)",
    ),
    (
        "qemu-system-x86",
        "`cargo xtask vm`: boots the Debian kernels of the matrix (TCG)",
    ),
    (
        "busybox-static",
        "`cargo xtask vm`: a shell inside the guests' initramfs",
    ),
    (
        "kmod",
        "`cargo xtask vm`: depmod for the unpacked kernels' module dependencies",
    ),
    (
        "xz-utils",
        "`cargo xtask vm`: decompressing .ko.xz modules (6.12) for the guests",
    ),
    (
        "zstd",
        "`cargo xtask vm`: decompressing .ko.zst modules for the guests",
    ),
    (
        "golang-go",
        "`cargo xtask kube`: go 1.19 builds the Kubernetes binaries from Debian's source",
    ),
    (
        "rsync",
        "`cargo xtask kube`: the upstream kubernetes Makefile copies with it",
    ),
    (
        "dpkg-dev",
        "`cargo xtask kube`: dpkg-source unpacks the kubernetes source package",
    ),
    (
        "etcd-server",
        "the API server tests: etcd is kube-apiserver's storage",
    ),
    (
        "gcc",
        "`cargo xtask kube`: kubelet links with cgo; `cargo xtask cluster`: the static pause",
    ),
    (
        "libc6-dev",
        "`cargo xtask cluster`: static glibc for the pause binary",
    ),
    (
        "containerd",
        "`cargo xtask cluster`: the real node's container runtime (CRI)",
    ),
    ("runc", "`cargo xtask cluster`: containerd's OCI runtime"),
    (
        "containernetworking-plugins",
        "`cargo xtask cluster`: ptp and host-local give pods routed host-side veths",
    ),
    (
        "conntrack",
        "`cargo xtask cluster`: kube-proxy flushes UDP entries with it",
    ),
    (
        "etcd-client",
        "etcdctl, for looking into a test API server's etcd by hand",
    ),
];

/// The bpf-linker release that builds against the nightly toolchain's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args, Default)]
pub struct Options {}

/// What the rest of xtask needs from the bootstrap.
pub struct Toolchain {
    /// Directory with `bpf-linker`, to put first on `PATH` for eBPF builds.
    pub linker_dir: PathBuf,
}

pub fn run(_options: &Options) -> Result<Toolchain> {
    let mut report = Report::default();
    debian_packages(&mut report)?;
    nightly_rust_src(&mut report)?;
    let linker_dir = bpf_linker(&mut report)?;
    report.print();
    Ok(Toolchain { linker_dir })
}

#[derive(Default)]
struct Report {
    done: Vec<String>,
    skipped: Vec<String>,
}

impl Report {
    fn print(&self) {
        for line in &self.done {
            eprintln!("setup: did {line}");
        }
        for line in &self.skipped {
            eprintln!("setup: skipped {line}");
        }
    }
}

fn debian_packages(report: &mut Report) -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !debian_package_installed(name))
        .collect();
    if missing.is_empty() {
        report
            .skipped
            .push("Debian packages (all installed)".to_owned());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?} and not root: run `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    exec::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed: check the machine's apt sources")?;
    exec::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install Debian packages {missing:?}"))?;
    report
        .done
        .push(format!("install Debian packages {}", missing.join(" ")));
    Ok(())
}

fn debian_package_installed(name: &str) -> bool {
    exec::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    exec::probe(Command::new("id").arg("-u"))
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn nightly_rust_src(report: &mut Report) -> Result<()> {
    let installed = exec::capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .with_context(|| {
        format!(
            "the {EBPF_TOOLCHAIN} toolchain is not usable: install it with \
             `rustup toolchain install {EBPF_TOOLCHAIN} --profile minimal`"
        )
    })?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        report
            .skipped
            .push(format!("rust-src for {EBPF_TOOLCHAIN} (installed)"));
        return Ok(());
    }
    exec::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .with_context(|| {
        format!("could not add rust-src: run `rustup component add rust-src --toolchain {EBPF_TOOLCHAIN}`")
    })?;
    report
        .done
        .push(format!("add rust-src to {EBPF_TOOLCHAIN}"));
    Ok(())
}

/// Builds bpf-linker against the nightly toolchain's own LLVM (Debian has no matching LLVM),
/// unless the cached one still runs and was built for the current nightly.
fn bpf_linker(report: &mut Report) -> Result<PathBuf> {
    let bin_dir = bpf_linker_bin_dir();
    let linker = bin_dir.join("bpf-linker");
    let stamp_path = cache_dir().join("bpf-linker").join("built-for");
    let nightly =
        exec::capture(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))?;
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION}\n{nightly}");

    let runs =
        exec::probe(Command::new(&linker).arg("--version")).is_some_and(|out| out.status.success());
    let current = fs::read_to_string(&stamp_path).is_ok_and(|old| old == stamp);
    if runs && current {
        report
            .skipped
            .push(format!("bpf-linker (cached in {})", bin_dir.display()));
        return Ok(bin_dir);
    }
    let why = if runs {
        "built for another nightly"
    } else {
        "missing or broken"
    };
    eprintln!("setup: bpf-linker is {why}; building {BPF_LINKER_VERSION} (about 2 minutes)");

    let llvm_prefix = cache_dir().join("rustllvm");
    let llvm_major = link_nightly_llvm(&llvm_prefix.join("lib"))?;
    exec::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .arg("--root")
            .arg(cache_dir().join("bpf-linker"))
            .env("LLVM_PREFIX", &llvm_prefix),
    )
    .context(
        "building bpf-linker failed (it needs crates.io and the nightly toolchain's libLLVM)",
    )?;
    let check = exec::probe(Command::new(&linker).arg("--version"));
    if !check.is_some_and(|out| out.status.success()) {
        bail!("the freshly built {} does not run", linker.display());
    }
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    report.done.push(format!(
        "build bpf-linker {BPF_LINKER_VERSION} into {}",
        bin_dir.display()
    ));
    Ok(bin_dir)
}

/// Makes `dir` hold the nightly toolchain's libLLVM under the names bpf-linker links and runs
/// with (`libLLVM.so` and the versioned soname), and returns the LLVM major version.
fn link_nightly_llvm(dir: &Path) -> Result<String> {
    let sysroot = exec::capture(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "rustc",
        "--print",
        "sysroot",
    ]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let soname = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the {EBPF_TOOLCHAIN} toolchain ships no LLVM library",
                lib_dir.display()
            )
        })?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major = soname
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {soname}"))?
        .to_owned();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for link in ["libLLVM.so", soname.as_str()] {
        let path = dir.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(lib_dir.join(&soname), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(major)
}
