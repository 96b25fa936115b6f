//! `cargo xtask kube`: the Kubernetes binaries the tests and the real cluster use, built once
//! and cached.
//!
//! No registry reachable from CI ships Kubernetes binaries, but Debian bookworm's `kubernetes`
//! source package holds the whole 1.20.2 tree with `vendor/` (`handbook/kube-apiserver.md`,
//! `handbook/real-cluster.md`). This module fetches it through a private apt configuration
//! (its own sources list, state, cache and lists under the cache directory, so the machine's apt
//! state is never touched), unpacks it and runs the upstream `make` once for every command:
//! the API suites need the kube-apiserver; `cargo xtask cluster` needs the node's kubelet,
//! kube-proxy, controller-manager, scheduler and kubectl; the cluster tests run upstream's
//! NetworkPolicy e2e (`e2e.test`, `ginkgo`) with the `agnhost` test image built from the same
//! tree.
//!
//! Layout under `cache_dir()/kube/<version>/`:
//! - `bin/` and `built`: the binaries and their stamp. Only binaries next to a stamp that
//!   names the same build (version and target list) are taken as done; the stamp is written
//!   last.
//! - `lock`: held (flock) while building, so two runs never build into one tree; a second run
//!   waits and then finds the first one's binaries.
//! - `work/`: the private apt configuration, the downloaded source and the unpacked tree with
//!   the go build cache. Each step skips what a previous, interrupted run finished, so a rerun
//!   resumes. After a successful build `work/` is deleted (the tree and the go build cache need
//!   about 3 GB, ten times the binaries).
//!
//! The mirror is never written here: it is read from the machine's own apt sources and reused
//! for the `deb-src` line. What the build needs from Debian (`golang-go`, `rsync`, `dpkg-dev`,
//! `gcc`) is installed by `cargo xtask setup`. It runs nothing it builds: the tests crate runs
//! the API server (`tests/src/apiserver.rs`), `cargo xtask cluster` the node.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use xtask::cache_dir;

use crate::exec;

/// The Kubernetes release Debian bookworm's `kubernetes` source package holds.
pub const KUBE_VERSION: &str = "v1.20.2";

/// The Debian source package and the suite it is taken from.
const SOURCE_PACKAGE: &str = "kubernetes";
const SUITE: &str = "bookworm";

/// Used when the machine's sources name no `Signed-By` keyring for the mirror.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where the machine's apt sources live.
const APT_SOURCES_LIST: &str = "/etc/apt/sources.list";
const APT_SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// What one `make` builds, as upstream names the targets. The tree's own rules make the server
/// binaries static and build kubelet with cgo, as its releases do. Ginkgo is the vendored CLI
/// that runs `e2e.test` in parallel.
const MAKE_TARGETS: &[&str] = &[
    "cmd/kube-apiserver",
    "cmd/kube-controller-manager",
    "cmd/kube-scheduler",
    "cmd/kube-proxy",
    "cmd/kubelet",
    "cmd/kubectl",
    "test/e2e/e2e.test",
    "vendor/github.com/onsi/ginkgo/ginkgo",
];

/// The e2e image binary, built static in GOPATH mode as the tree's image scripts do.
const AGNHOST_PACKAGE: &str = "k8s.io/kubernetes/test/images/agnhost";

/// The pod sandbox's process, compiled static from the tree (no registry serves the image).
const PAUSE_SOURCE: &str = "build/pause/linux/pause.c";

#[derive(clap::Args, Default)]
pub struct Options {}

/// Builds the binaries if needed and prints their directory on stdout (progress goes to
/// stderr).
pub fn run(_options: &Options) -> Result<()> {
    let binaries = ensure_kube()?;
    // The tests need etcd beside them: say now if it is missing, not in the middle of a run.
    let etcd = etcd_binary()?;
    eprintln!("kube: etcd for the tests is {}", etcd.display());
    println!("{}", binaries.dir.display());
    Ok(())
}

/// The cached binaries of one build.
pub struct KubeBinaries {
    pub dir: PathBuf,
}

impl KubeBinaries {
    /// One binary by name (`kube-apiserver`, `kubelet`, `e2e.test`, `agnhost`, ...).
    pub fn get(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Returns the cached binaries, building them first when there are none (about 20 minutes on
/// 2 cores). Safe to call concurrently and to interrupt: a rerun resumes.
pub fn ensure_kube() -> Result<KubeBinaries> {
    let dir = cache_dir().join("kube").join(KUBE_VERSION);
    let layout = Layout::new(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // Cheap path first, without the lock: a finished build is never modified again.
    if layout.is_done() {
        return Ok(KubeBinaries { dir: layout.bin });
    }
    let lock = File::create(&layout.lock)
        .with_context(|| format!("creating {}", layout.lock.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "kube: another run holds {}; waiting for it",
            layout.lock.display()
        );
        lock.lock()
            .with_context(|| format!("locking {}", layout.lock.display()))?;
    }
    if layout.is_done() {
        return Ok(KubeBinaries { dir: layout.bin });
    }
    let started = Instant::now();
    eprintln!(
        "kube: no finished {KUBE_VERSION} build in {}; building it (about 20 minutes on 2 \
         cores, resumable)",
        dir.display()
    );
    build(&layout)?;
    eprintln!(
        "kube: built {} in {:.0?}",
        layout.bin.display(),
        started.elapsed()
    );
    Ok(KubeBinaries { dir: layout.bin })
}

/// Debian's `/usr/bin/etcd` (package `etcd-server`), or an `etcd` found on `PATH`.
pub fn etcd_binary() -> Result<PathBuf> {
    xtask::find_etcd().with_context(|| {
        format!(
            "no etcd at {} or on PATH: install Debian's etcd-server (`cargo xtask setup` does)",
            xtask::DEBIAN_ETCD
        )
    })
}

/// Every path of one version's cache entry.
struct Layout {
    bin: PathBuf,
    stamp: PathBuf,
    lock: PathBuf,
    work: PathBuf,
    apt: PathBuf,
    download: PathBuf,
    tree: PathBuf,
    unpacked_stamp: PathBuf,
    go_cache: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        let work = dir.join("work");
        Self {
            bin: dir.join("bin"),
            stamp: dir.join("built"),
            lock: dir.join("lock"),
            apt: work.join("apt"),
            download: work.join("download"),
            tree: work.join("tree"),
            unpacked_stamp: work.join("unpacked"),
            go_cache: work.join("go-build"),
            work,
        }
    }

    /// What the stamp of a finished build says: a new target means a new build.
    fn stamp_text() -> String {
        format!(
            "kubernetes {KUBE_VERSION} from Debian {SUITE} source package {SOURCE_PACKAGE}: {} \
             {AGNHOST_PACKAGE} {PAUSE_SOURCE}\n",
            MAKE_TARGETS.join(" ")
        )
    }

    fn is_done(&self) -> bool {
        self.bin.is_dir()
            && fs::read_to_string(&self.stamp).is_ok_and(|stamp| stamp == Self::stamp_text())
    }
}

fn build(layout: &Layout) -> Result<()> {
    for tool in ["apt-get", "dpkg-source", "go", "make", "rsync", "gcc"] {
        if !on_path(tool) {
            bail!(
                "building Kubernetes needs `{tool}`, which is not on PATH: run `cargo xtask \
                 setup` (it installs golang-go, rsync, dpkg-dev and gcc)"
            );
        }
    }
    // A stamp from an interrupted run must not survive a rebuild.
    remove_file_if_present(&layout.stamp)?;

    let dsc = download_source(layout)?;
    unpack(layout, &dsc)?;
    make(layout)?;
    build_agnhost(layout)?;
    build_pause(layout)?;

    let output = layout.tree.join("_output/bin");
    let partial = layout.bin.with_extension("partial");
    remove_dir_if_present(&partial)?;
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let names = MAKE_TARGETS
        .iter()
        .map(|target| target.rsplit('/').next().unwrap_or(target))
        .chain(["agnhost", "pause"]);
    for name in names {
        let built = output.join(name);
        fs::copy(&built, partial.join(name))
            .with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    }
    remove_dir_if_present(&layout.bin)?;
    fs::rename(&partial, &layout.bin)
        .with_context(|| format!("renaming {} to {}", partial.display(), layout.bin.display()))?;
    let apiserver = layout.bin.join("kube-apiserver");
    let version = exec::capture(Command::new(&apiserver).arg("--version"))?;
    if !version.contains(KUBE_VERSION) {
        bail!(
            "{} reports {:?}, expected {KUBE_VERSION}",
            apiserver.display(),
            version.trim()
        );
    }
    fs::write(&layout.stamp, Layout::stamp_text())
        .with_context(|| format!("writing {}", layout.stamp.display()))?;
    eprintln!(
        "kube: {} ready; removing the build tree {}",
        version.trim(),
        layout.work.display()
    );
    fs::remove_dir_all(&layout.work)
        .with_context(|| format!("removing {}", layout.work.display()))?;
    Ok(())
}

/// Step 1: `apt-get update` and `apt-get source --download-only` with a private configuration.
/// Returns the `.dsc`. Skipped when a previous run already downloaded it.
fn download_source(layout: &Layout) -> Result<PathBuf> {
    if let Some(dsc) = find_dsc(&layout.download)? {
        eprintln!("kube: [1/4] source already downloaded ({})", dsc.display());
        return Ok(dsc);
    }
    let mirror = debian_mirror()?;
    eprintln!(
        "kube: [1/4] downloading the {SOURCE_PACKAGE} source package from {} \
         ({SUITE}, taken from the machine's apt sources)",
        mirror.uri
    );
    let apt_config = write_private_apt_config(&layout.apt, &mirror)?;
    exec::run(apt(&apt_config).args(["update", "-q"]))
        .context("apt-get update with the private configuration failed")?;
    // Download into a fresh partial directory, then rename: a half-finished download is never
    // mistaken for a finished one.
    let partial = layout.work.join("download.partial");
    remove_dir_if_present(&partial)?;
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    exec::run(
        apt(&apt_config)
            .args(["source", "--download-only", "-q", SOURCE_PACKAGE])
            .current_dir(&partial),
    )
    .with_context(|| format!("downloading the {SOURCE_PACKAGE} source package failed"))?;
    fs::rename(&partial, &layout.download).with_context(|| {
        format!(
            "renaming {} to {}",
            partial.display(),
            layout.download.display()
        )
    })?;
    find_dsc(&layout.download)?.with_context(|| {
        format!(
            "apt-get source left no .dsc in {}",
            layout.download.display()
        )
    })
}

/// Step 2: `dpkg-source -x` (which also checks the checksums the `.dsc` lists).
fn unpack(layout: &Layout, dsc: &Path) -> Result<()> {
    if layout.unpacked_stamp.is_file() && layout.tree.is_dir() {
        eprintln!(
            "kube: [2/4] source already unpacked ({})",
            layout.tree.display()
        );
        return Ok(());
    }
    let dsc_text = fs::read_to_string(dsc).with_context(|| format!("reading {}", dsc.display()))?;
    let debian_version = dsc_text
        .lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(str::trim)
        .with_context(|| format!("{} has no Version field", dsc.display()))?;
    // Debian's version looks like `1.20.5+really1.20.2-1`: the tree is 1.20.2.
    let upstream = KUBE_VERSION.trim_start_matches('v');
    if !debian_version.contains(upstream) {
        bail!(
            "{} is version {debian_version}, which does not hold kubernetes {upstream}: update \
             KUBE_VERSION in xtask/src/kube.rs",
            dsc.display()
        );
    }
    eprintln!(
        "kube: [2/4] unpacking {SOURCE_PACKAGE} {debian_version} into {}",
        layout.tree.display()
    );
    remove_dir_if_present(&layout.tree)?;
    exec::run(
        // apt already checked the files against the signed Sources index. dpkg-source checks
        // the checksums again and warns that it cannot check the uploader's signature (that
        // needs the debian-keyring package): expected, and harmless.
        tool("dpkg-source")
            .args(["--no-copy", "-x"])
            .arg(dsc)
            .arg(&layout.tree),
    )
    .with_context(|| format!("unpacking {} failed", dsc.display()))?;
    fs::write(&layout.unpacked_stamp, debian_version)
        .with_context(|| format!("writing {}", layout.unpacked_stamp.display()))
}

/// Step 3: the upstream build of every target, with the version baked in. `make` and the go
/// build cache make a rerun after an interruption cheap.
fn make(layout: &Layout) -> Result<()> {
    let what = MAKE_TARGETS.join(" ");
    eprintln!(
        "kube: [3/4] make WHAT=\"{what}\" in {} (the long step; go prints little until it \
         links)",
        layout.tree.display()
    );
    let started = Instant::now();
    exec::run(
        go_build_env(tool("make"), layout)
            .arg(format!("WHAT={what}"))
            .current_dir(&layout.tree),
    )
    .with_context(|| {
        format!(
            "building Kubernetes in {} failed; rerun to resume",
            layout.tree.display()
        )
    })?;
    eprintln!("kube: [3/4] make finished in {:.0?}", started.elapsed());
    Ok(())
}

/// Step 4: agnhost, the one image the NetworkPolicy e2e runs, static. The tree's image scripts
/// build it in GOPATH mode from the `_output/local/go` link that `make` left.
fn build_agnhost(layout: &Layout) -> Result<()> {
    eprintln!("kube: [4/4] building agnhost");
    let gopath = layout.tree.join("_output/local/go");
    let package_dir = gopath.join("src/k8s.io/kubernetes");
    exec::run(
        go_build_env(tool("go"), layout)
            .args(["build", "-o"])
            .arg(layout.tree.join("_output/bin/agnhost"))
            .arg(AGNHOST_PACKAGE)
            .current_dir(&package_dir)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOPATH", &gopath)
            .env("CGO_ENABLED", "0"),
    )
    .with_context(|| format!("building agnhost in {} failed", package_dir.display()))
}

/// The pause binary, as the tree's image build compiles it (static, `-Os`), with its version.
fn build_pause(layout: &Layout) -> Result<()> {
    eprintln!("kube: building pause from {PAUSE_SOURCE}");
    exec::run(
        tool("gcc")
            .args(["-Os", "-Wall", "-Werror", "-static"])
            .arg(format!("-DVERSION={KUBE_VERSION}"))
            .arg("-o")
            .arg(layout.tree.join("_output/bin/pause"))
            .arg(layout.tree.join(PAUSE_SOURCE)),
    )
    .context("compiling pause (gcc and libc6-dev come with `cargo xtask setup`)")
}

/// The environment of every go build of the tree.
fn go_build_env(mut cmd: Command, layout: &Layout) -> Command {
    // There is no .git in a Debian source tree: say what it is, or the binaries report v0.0.0
    // and clients' version checks misbehave.
    cmd.env("KUBE_GIT_VERSION", KUBE_VERSION)
        .env("KUBE_GIT_TREE_STATE", "clean")
        // Everything comes from vendor/: never reach for a module proxy.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=vendor")
        // Inside work/, so it goes when the tree goes.
        .env("GOCACHE", &layout.go_cache);
    cmd
}

fn find_dsc(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "dsc") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// A Debian archive the machine already uses.
#[derive(Debug, PartialEq)]
struct Mirror {
    uri: String,
    signed_by: Option<String>,
}

/// Finds the archive the machine's apt sources use for `SUITE` (deb822 `.sources` files first,
/// then one-line `.list` files and `/etc/apt/sources.list`).
fn debian_mirror() -> Result<Mirror> {
    let mut deb822 = Vec::new();
    let mut one_line = vec![PathBuf::from(APT_SOURCES_LIST)];
    if let Ok(entries) = fs::read_dir(APT_SOURCES_DIR) {
        for entry in entries.flatten() {
            let path = entry.path();
            match path.extension().and_then(|ext| ext.to_str()) {
                Some("sources") => deb822.push(path),
                Some("list") => one_line.push(path),
                _ => {}
            }
        }
    }
    deb822.sort();
    one_line.sort();
    for path in &deb822 {
        if let Ok(text) = fs::read_to_string(path)
            && let Some(mirror) = mirror_from_deb822(&text)
        {
            return Ok(mirror);
        }
    }
    for path in &one_line {
        if let Ok(text) = fs::read_to_string(path)
            && let Some(mirror) = mirror_from_one_line(&text)
        {
            return Ok(mirror);
        }
    }
    bail!(
        "no `deb` source for suite {SUITE} in {APT_SOURCES_DIR}/*.sources, {APT_SOURCES_DIR}/*.list \
         or {APT_SOURCES_LIST}: the Kubernetes build takes its mirror from there"
    )
}

/// The first enabled `Types: deb` paragraph whose `Suites` include `SUITE`.
fn mirror_from_deb822(text: &str) -> Option<Mirror> {
    for paragraph in text.split("\n\n") {
        let field = |name: &str| {
            paragraph
                .lines()
                // Comments, and continuation lines (an inline key) are no fields.
                .filter(|line| !line.starts_with(['#', ' ', '\t']))
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
        };
        let words = |name: &str| field(name).unwrap_or_default();
        let enabled = field("Enabled").is_none_or(|value| !value.eq_ignore_ascii_case("no"));
        let is_deb = words("Types").split_whitespace().any(|t| t == "deb");
        let has_suite = words("Suites").split_whitespace().any(|s| s == SUITE);
        if !(enabled && is_deb && has_suite) {
            continue;
        }
        if let Some(uri) = words("URIs").split_whitespace().next() {
            return Some(Mirror {
                uri: uri.to_owned(),
                // An inline key block starts on the next line; only a keyring path is reused.
                signed_by: field("Signed-By").filter(|value| value.starts_with('/')),
            });
        }
    }
    None
}

/// The first `deb [options] URI SUITE components...` line.
fn mirror_from_one_line(text: &str) -> Option<Mirror> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let Some(mut rest) = line.trim().strip_prefix("deb ") else {
            continue;
        };
        rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else {
                continue;
            };
            signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = after;
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if suite == SUITE {
            return Some(Mirror {
                uri: uri.to_owned(),
                signed_by,
            });
        }
    }
    None
}

/// Writes `dir/apt.conf` and `dir/sources.list`: apt state, cache and lists all inside `dir`,
/// one `deb-src` line for the mirror. The machine's apt.conf.d and trusted keys still apply.
fn write_private_apt_config(dir: &Path, mirror: &Mirror) -> Result<PathBuf> {
    for sub in [
        "state/lists/partial",
        "cache/archives/partial",
        "sources.list.d",
    ] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    let status = dir.join("state/status");
    if !status.exists() {
        fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;
    }
    let keyring = mirror.signed_by.as_deref().unwrap_or(DEBIAN_KEYRING);
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb-src [signed-by={keyring}] {} {SUITE} main\n",
            mirror.uri
        ),
    )
    .with_context(|| format!("writing {}", sources.display()))?;
    let config = dir.join("apt.conf");
    let path = |sub: &str| dir.join(sub).display().to_string();
    fs::write(
        &config,
        format!(
            "Dir::Etc::sourcelist \"{}\";\n\
             Dir::Etc::sourceparts \"{}\";\n\
             Dir::State \"{}\";\n\
             Dir::State::lists \"{}\";\n\
             Dir::State::status \"{}\";\n\
             Dir::Cache \"{}\";\n\
             // The files live in root's cache, which the _apt user cannot write.\n\
             APT::Sandbox::User \"root\";\n",
            sources.display(),
            path("sources.list.d"),
            path("state"),
            path("state/lists"),
            status.display(),
            path("cache"),
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    Ok(config)
}

/// `apt-get` reading only the private configuration's sources and state.
fn apt(config: &Path) -> Command {
    let mut cmd = tool("apt-get");
    cmd.env("APT_CONFIG", config)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// A build command whose output goes to stderr: stdout carries only the binary's path, for
/// `$(cargo xtask kube)`.
fn tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdout(Stdio::from(std::io::stderr()));
    cmd
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(tool).is_file())
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Host names in these tests are placeholders: no mirror is named in the code.

    #[test]
    fn should_take_the_mirror_of_the_bookworm_paragraph_from_deb822() {
        let text = "Types: deb\n\
                    # a comment: with a colon\n\
                    URIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\n\
                    Components: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
                    \n\
                    Types: deb\n\
                    URIs: http://mirror.example/debian-security\n\
                    Suites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(text),
            Some(Mirror {
                uri: "http://mirror.example/debian".to_owned(),
                signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".to_owned()),
            })
        );
    }

    #[test]
    fn should_skip_disabled_and_source_only_deb822_paragraphs() {
        let text = "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://on.example/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_deb822(text),
            Some(Mirror {
                uri: "http://on.example/debian".to_owned(),
                signed_by: None,
            })
        );
    }

    #[test]
    fn should_take_the_mirror_of_a_one_line_bookworm_entry() {
        let text = "# deb http://old.example/debian bookworm main\n\
                    deb http://mirror.example/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text),
            Some(Mirror {
                uri: "http://mirror.example/debian".to_owned(),
                signed_by: Some("/k.gpg".to_owned()),
            })
        );
    }

    #[test]
    fn should_find_no_mirror_without_a_bookworm_entry() {
        assert_eq!(
            mirror_from_one_line("deb http://mirror.example/debian trixie main\n"),
            None
        );
        assert_eq!(
            mirror_from_deb822("Types: deb\nURIs: http://m.example/d\nSuites: trixie\n"),
            None
        );
    }
}
