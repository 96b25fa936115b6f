//! The kernels of the matrix: which Debian package holds each series, fetching and unpacking
//! it into the cache once, and the modules a guest needs from it.
//!
//! Cache layout (under `xtask::cache_dir()/kernels`):
//! - `<package>/`: an unpacked image package (`boot/vmlinuz-*`, `lib/modules/*` with a
//!   `modules.dep` that depmod wrote, since the package leaves that to its postinst). A
//!   directory only gets this name once it is complete.
//! - `apt-bullseye/`: the private apt configuration for 5.10 (see [`super::apt`]).
//!
//! The newest package of a series is looked up in the package lists each run (no network when
//! the lists are fresh); it is only downloaded when its directory is missing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::apt::{Apt, OLD_SUITE};
use crate::exec;

/// A kernel series of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Series {
    /// Debian 11 (bullseye), through the private apt configuration.
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12 (bookworm).
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12 (bookworm updates and security).
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub const ALL: [Series; 3] = [Series::V5_10, Series::V6_1, Series::V6_12];

    pub fn label(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// The `apt-cache search --names-only` expression for the series' image packages.
    fn pattern(self) -> &'static str {
        match self {
            Series::V5_10 => r"^linux-image-5\.10\.0-[0-9]+-amd64(-unsigned)?$",
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64(-unsigned)?$",
        }
    }

    /// The number that orders the series' packages (the ABI number, or for 6.12 the stable
    /// release), or `None` if `package` is not an image package of this series.
    fn abi(self, package: &str) -> Option<u64> {
        let rest = package.strip_prefix("linux-image-")?;
        let rest = rest.strip_suffix("-unsigned").unwrap_or(rest);
        let rest = rest.strip_suffix("-amd64")?;
        let number = match self {
            Series::V5_10 => rest.strip_prefix("5.10.0-")?,
            Series::V6_1 => rest.strip_prefix("6.1.0-")?,
            Series::V6_12 => rest.strip_prefix("6.12.")?.strip_suffix("+deb12")?,
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        number.parse().ok()
    }

    fn apt(self, cache: &Path) -> Result<Apt> {
        match self {
            Series::V5_10 => Apt::old_suite(&cache.join(format!("apt-{OLD_SUITE}"))),
            Series::V6_1 | Series::V6_12 => Ok(Apt::Host),
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An unpacked kernel image package.
pub struct Kernel {
    pub series: Series,
    pub package: String,
    /// `uname -r` of the kernel, the directory name under `lib/modules`.
    pub release: String,
    root: PathBuf,
}

/// A module ready for the initramfs: `<name>.ko`, decompressed.
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.series, self.package)
    }
}

/// How long to wait for another xtask that holds the kernel cache (a download takes seconds).
const CACHE_LOCK_WAIT: Duration = Duration::from_secs(600);

/// The newest kernel of `series`, from the cache when it is there.
pub fn fetch(series: Series, cache: &Path) -> Result<Kernel> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(cache)?;
    let attempt =
        |apt: &Apt| newest(series, apt).and_then(|names| obtain(series, apt, cache, &names));
    let apt = match series.apt(cache) {
        Ok(apt) => apt,
        Err(error) => return cached(series, cache, error),
    };
    let error = match attempt(&apt) {
        Ok(kernel) => return Ok(kernel),
        Err(error) => error,
    };
    eprintln!("vm: {series}: {error:#}\nvm: {series}: refreshing the package lists and retrying");
    let retried = apt.refresh().and_then(|()| attempt(&apt));
    match retried {
        Ok(kernel) => Ok(kernel),
        Err(error) => cached(series, cache, error),
    }
}

/// An exclusive lock on the cache, so concurrent runs do not unpack into the same staging
/// directory or update the private lists together. Released when the file is dropped.
fn lock(cache: &Path) -> Result<fs::File> {
    let path = cache.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let until = Instant::now() + CACHE_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(fs::TryLockError::WouldBlock) => bail!(
                "another process held {} for {} s",
                path.display(),
                CACHE_LOCK_WAIT.as_secs()
            ),
            Err(fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// Falls back to the newest cached kernel of `series` when apt cannot help (offline).
fn cached(series: Series, cache: &Path, error: anyhow::Error) -> Result<Kernel> {
    let newest = fs::read_dir(cache)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((series.abi(&name)?, name))
        })
        .max();
    let Some((_, package)) = newest else {
        return Err(error.context(format!("no kernel {series} could be had, none is cached")));
    };
    eprintln!("vm: {series}: {error:#}\nvm: {series}: using the cached {package}");
    Kernel::open(series, &package, &cache.join(&package))
}

/// The image packages of the newest version of `series`, the signed (plain) name first.
fn newest(series: Series, apt: &Apt) -> Result<Vec<String>> {
    let mut found: Vec<(u64, bool, String)> = apt
        .search(series.pattern())?
        .into_iter()
        .filter_map(|name| {
            let abi = series.abi(&name)?;
            Some((abi, name.ends_with("-unsigned"), name))
        })
        .collect();
    found.sort();
    let Some(&(newest, _, _)) = found.last() else {
        bail!(
            "no package matches {} in the package lists",
            series.pattern()
        );
    };
    Ok(found
        .into_iter()
        .filter(|(abi, _, _)| *abi == newest)
        .map(|(_, _, name)| name)
        .collect())
}

/// The first of `names` that is cached, or else the first that downloads and holds a kernel.
fn obtain(series: Series, apt: &Apt, cache: &Path, names: &[String]) -> Result<Kernel> {
    for name in names {
        let dir = cache.join(name);
        if dir.is_dir() {
            return Kernel::open(series, name, &dir);
        }
    }
    let mut last_error = None;
    for name in names {
        match download(series, apt, cache, name) {
            Ok(kernel) => return Ok(kernel),
            Err(error) => {
                eprintln!("vm: {series}: {error:#}");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no package to download for {series}")))
}

/// Downloads and unpacks `package`, runs depmod on it, and only then gives it its cache name.
fn download(series: Series, apt: &Apt, cache: &Path, package: &str) -> Result<Kernel> {
    let staging = cache.join(format!("{package}.partial"));
    let downloads = cache.join("downloads").join(package);
    for dir in [&staging, &downloads] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    eprintln!("vm: {series}: downloading {package}");
    let deb = apt.download(package, &downloads)?;
    exec::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let kernel = Kernel::open(series, package, &staging)?;
    exec::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&staging)
            .arg(&kernel.release),
    )
    .with_context(|| format!("depmod for {package} (is kmod installed?)"))?;
    let done = cache.join(package);
    fs::rename(&staging, &done)
        .with_context(|| format!("renaming {} to {}", staging.display(), done.display()))?;
    fs::remove_dir_all(&downloads).with_context(|| format!("removing {}", downloads.display()))?;
    Kernel::open(series, package, &done)
}

impl Kernel {
    /// An unpacked package in `root`: exactly one `lib/modules/<release>` and its vmlinuz.
    fn open(series: Series, package: &str, root: &Path) -> Result<Kernel> {
        let modules = root.join("lib/modules");
        let releases: Vec<String> = fs::read_dir(&modules)
            .with_context(|| format!("{package} has no {}", modules.display()))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        let [release] = releases.as_slice() else {
            bail!(
                "{package}: expected one kernel release in {}, found {releases:?}",
                modules.display()
            );
        };
        let kernel = Kernel {
            series,
            package: package.to_owned(),
            release: release.clone(),
            root: root.to_path_buf(),
        };
        let vmlinuz = kernel.vmlinuz();
        if !vmlinuz.is_file() {
            bail!("{package} holds no {}", vmlinuz.display());
        }
        Ok(kernel)
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The modules named in `wanted` that are not built in, with their dependencies, in load
    /// order (dependencies first), decompressed.
    pub fn modules(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let dir = self.modules_dir();
        let dep_path = dir.join("modules.dep");
        let dep_text = fs::read_to_string(&dep_path)
            .with_context(|| format!("{self}: reading {}", dep_path.display()))?;
        let builtin_path = dir.join("modules.builtin");
        let builtin: BTreeSet<String> = match fs::read_to_string(&builtin_path) {
            Ok(text) => text.lines().map(module_name).collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("{self}: reading {}", builtin_path.display()));
            }
        };
        let deps: BTreeMap<&str, Vec<&str>> = dep_text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(path, deps)| (path.trim(), deps.split_whitespace().collect()))
            .collect();
        let by_name: BTreeMap<String, &str> =
            deps.keys().map(|path| (module_name(path), *path)).collect();

        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let name = module_name(name);
            if builtin.contains(&name) {
                continue;
            }
            let Some(path) = by_name.get(&name) else {
                bail!("{self}: module {name} is neither built in nor in modules.dep");
            };
            visit(path, &deps, &mut seen, &mut order);
        }
        order
            .into_iter()
            .map(|path| {
                let data = read_module(&dir.join(path))
                    .with_context(|| format!("{self}: reading module {path}"))?;
                Ok(Module {
                    name: module_name(path),
                    data,
                })
            })
            .collect()
    }
}

/// Depth first: a module's dependencies (which modules.dep lists in full) before it.
fn visit<'a>(
    path: &'a str,
    deps: &BTreeMap<&str, Vec<&'a str>>,
    seen: &mut BTreeSet<&'a str>,
    order: &mut Vec<&'a str>,
) {
    if !seen.insert(path) {
        return;
    }
    for dep in deps.get(path).into_iter().flatten() {
        visit(dep, deps, seen, order);
    }
    order.push(path);
}

/// `kernel/net/sched/cls-bpf.ko.xz` -> `cls_bpf` (the kernel treats `-` and `_` alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module's ELF bytes, decompressed on the host: not every kernel can take compressed
/// modules through finit_module (5.10 cannot; 6.12 can, with a flag).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!("{}: unknown module compression", path.display());
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} -dc {}", path.display()))?;
    if !output.status.success() {
        bail!(
            "{tool} -dc {} failed: {}\n{}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_ordered_by_their_abi_within_a_series() {
        assert_eq!(Series::V6_1.abi("linux-image-6.1.0-56-amd64"), Some(56));
        assert_eq!(
            Series::V6_1.abi("linux-image-6.1.0-9-amd64-unsigned"),
            Some(9)
        );
        assert_eq!(Series::V6_1.abi("linux-image-6.1.0-56-cloud-amd64"), None);
        assert_eq!(Series::V6_1.abi("linux-image-6.1.0-56-amd64-dbg"), None);
        assert_eq!(Series::V6_1.abi("linux-image-6.12.117+deb12-amd64"), None);
        assert_eq!(
            Series::V6_12.abi("linux-image-6.12.117+deb12-amd64"),
            Some(117)
        );
        assert_eq!(
            Series::V6_12.abi("linux-image-6.12.117+deb12-rt-amd64"),
            None
        );
        assert_eq!(Series::V5_10.abi("linux-image-5.10.0-46-amd64"), Some(46));
        assert_eq!(
            Series::V5_10.abi("linux-image-5.10.0-46-amd64.partial"),
            None
        );
        assert_eq!(Series::V5_10.abi("linux-image-5.10.0--amd64"), None);
    }

    #[test]
    fn module_names_drop_directory_suffix_and_dashes() {
        assert_eq!(module_name("kernel/net/sched/cls_bpf.ko"), "cls_bpf");
        assert_eq!(
            module_name("kernel/net/sched/sch-ingress.ko.xz"),
            "sch_ingress"
        );
        assert_eq!(module_name("veth"), "veth");
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let deps: BTreeMap<&str, Vec<&str>> = [
            ("a.ko", vec!["b.ko", "c.ko"]),
            ("b.ko", vec!["c.ko"]),
            ("c.ko", vec![]),
            ("d.ko", vec!["c.ko"]),
        ]
        .into_iter()
        .collect();
        let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
        visit("a.ko", &deps, &mut seen, &mut order);
        visit("d.ko", &deps, &mut seen, &mut order);
        assert_eq!(order, ["c.ko", "b.ko", "a.ko", "d.ko"]);
    }
}
