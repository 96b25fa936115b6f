//! `cargo xtask image`: container images made from files on this machine, without pulling any
//! base image (no registry is reachable from CI, and none is needed).
//!
//! An image here is one layer: a root filesystem assembled from host files, each copied with
//! every symlink on its way (so `/usr/sbin/iptables` keeps its alternatives chain) and the
//! shared libraries `ldd` names for each ELF file, packed as a docker-archive tarball
//! (`manifest.json`, a config JSON and the layer), which `ctr images import`, `docker load` and
//! `podman load` all read. Entries are sorted with zero mtimes, so the same files give the same
//! image digest.
//!
//! The agent image holds the agent, the chained CNI plugin the DaemonSet installs on the node
//! (static), and everything the agent executes: `iptables`/`ip6tables` in both
//! flavours with their `-save`/`-restore` forms and extension modules, and `ipset`. The same tree
//! is written out as a directory for `deploy/Dockerfile` (`FROM scratch`), so users who build
//! with Docker get the same content. The cluster's own images (pause, busybox, agnhost, the
//! stand-in `nginx`) are built with the same code (`cluster.rs`).

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use xtask::EBPF_OBJECT_ENV;

use crate::{build_ebpf, exec, setup};

/// The image reference `deploy/` uses; `--tag` gives another (a rolling upgrade needs two).
pub const AGENT_IMAGE: &str = "netpol-agent:latest";

/// What the agent runs, besides itself (`agent/src/backend/iptables/tools.rs`).
const AGENT_TOOLS: &[&str] = &[
    "/usr/sbin/ipset",
    "/usr/sbin/iptables",
    "/usr/sbin/iptables-save",
    "/usr/sbin/iptables-restore",
    "/usr/sbin/ip6tables",
    "/usr/sbin/ip6tables-save",
    "/usr/sbin/ip6tables-restore",
    "/usr/sbin/iptables-nft",
    "/usr/sbin/iptables-nft-save",
    "/usr/sbin/iptables-nft-restore",
    "/usr/sbin/ip6tables-nft",
    "/usr/sbin/ip6tables-nft-save",
    "/usr/sbin/ip6tables-nft-restore",
    "/usr/sbin/iptables-legacy",
    "/usr/sbin/iptables-legacy-save",
    "/usr/sbin/iptables-legacy-restore",
    "/usr/sbin/ip6tables-legacy",
    "/usr/sbin/ip6tables-legacy-save",
    "/usr/sbin/ip6tables-legacy-restore",
];

/// The target the static CNI plugin is built for (a `--target` build keeps its flags apart
/// from the rest of the workspace's).
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// iptables loads its match and target modules from here at run time (`dlopen`).
const XTABLES_MODULES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Files the tools read: protocol names for `-p`, the connlabel names of the xtables modules.
const AGENT_DATA: &[&str] = &["/etc/protocols", "/etc/services", "/etc/xtables"];

#[derive(clap::Args, Default)]
pub struct Options {
    /// The image reference to give the image (default `netpol-agent:latest`, the name
    /// `deploy/` uses).
    #[arg(long)]
    pub tag: Option<String>,
    /// Where to write the docker-archive tarball (default `target/image/netpol-agent.tar`).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Builds the agent (release), assembles its image and prints the tarball's path.
pub fn run(options: &Options) -> Result<()> {
    let tarball = build_agent_image(options)?;
    println!("{}", tarball.display());
    Ok(())
}

pub fn build_agent_image(options: &Options) -> Result<PathBuf> {
    let toolchain = setup::run(&setup::Options::default())?;
    let object = build_ebpf::build(&toolchain)?;
    let root = exec::workspace_root();
    exec::run(
        Command::new("cargo")
            .args(["build", "--release", "--package", "netpol-agent", "--bin"])
            .arg("netpol-agent")
            .current_dir(root)
            .env(EBPF_OBJECT_ENV, &object),
    )?;
    // The CNI plugin runs on the node, not in the container: static, so that it runs on any
    // node's libc.
    exec::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--package",
                "netpol-cni",
                "--target",
                HOST_TARGET,
            ])
            .current_dir(root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    let plugin = root
        .join("target")
        .join(HOST_TARGET)
        .join("release/netpol-cni");
    let agent = root.join("target/release/netpol-agent");
    let image_dir = root.join("target/image");
    let mut rootfs = RootFs::new();
    rootfs.add_elf_as(&agent, Path::new("/usr/local/bin/netpol-agent"))?;
    rootfs.add_elf_as(&plugin, Path::new("/usr/local/bin/netpol-cni"))?;
    for tool in AGENT_TOOLS {
        rootfs.add_elf(Path::new(tool))?;
    }
    for module in sorted_entries(Path::new(XTABLES_MODULES))? {
        rootfs.add_elf(&module)?;
    }
    for data in AGENT_DATA {
        let path = Path::new(data);
        if path.is_dir() {
            for file in sorted_entries(path)? {
                rootfs.add_path(&file)?;
            }
        } else if path.exists() {
            rootfs.add_path(path)?;
        }
    }
    let config = ImageConfig {
        entrypoint: vec!["/usr/local/bin/netpol-agent".to_owned()],
        cmd: Vec::new(),
    };
    // The tree for `deploy/Dockerfile` (`COPY target/image/rootfs /`).
    rootfs.write_dir(&image_dir.join("rootfs"))?;
    let tarball = options
        .output
        .clone()
        .unwrap_or_else(|| image_dir.join("netpol-agent.tar"));
    let tag = options.tag.as_deref().unwrap_or(AGENT_IMAGE);
    write_docker_archive(&tarball, tag, &rootfs, &config)?;
    eprintln!(
        "image: {} ({tag}) with {} files",
        tarball.display(),
        rootfs.entries.len()
    );
    Ok(tarball)
}

/// How a container of the image starts.
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// One entry of a root filesystem, by its absolute path inside the image.
enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
}

/// A root filesystem being assembled; paths are absolute inside the image.
pub struct RootFs {
    entries: BTreeMap<PathBuf, Entry>,
}

impl RootFs {
    /// Debian's merged-/usr layout and the directories every container expects.
    pub fn new() -> Self {
        let mut rootfs = Self {
            entries: BTreeMap::new(),
        };
        for (link, target) in [
            ("/bin", "usr/bin"),
            ("/sbin", "usr/sbin"),
            ("/lib", "usr/lib"),
            ("/lib64", "usr/lib64"),
            ("/var/run", "../run"),
        ] {
            rootfs.insert(PathBuf::from(link), Entry::Symlink(PathBuf::from(target)));
        }
        for dir in ["/dev", "/proc", "/sys", "/etc", "/run", "/tmp", "/usr/bin"] {
            rootfs.insert(PathBuf::from(dir), Entry::Dir);
        }
        rootfs
    }

    fn insert(&mut self, path: PathBuf, entry: Entry) {
        let mut parent = path.parent();
        while let Some(dir) = parent {
            if dir == Path::new("/") {
                break;
            }
            self.entries.entry(dir.to_path_buf()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path, entry);
    }

    /// A host file at the same path, with every symlink met on the way to it (in any
    /// component) recreated in the image.
    pub fn add_path(&mut self, path: &Path) -> Result<()> {
        let mut current = absolute(path)?;
        // Bounded: a symlink loop on the host must not hang the build.
        for _ in 0..40 {
            let mut prefix = PathBuf::from("/");
            let mut resolved = None;
            let components: Vec<Component> = current.components().skip(1).collect();
            for (index, component) in components.iter().enumerate() {
                prefix.push(component);
                let metadata = fs::symlink_metadata(&prefix)
                    .with_context(|| format!("reading {}", prefix.display()))?;
                if metadata.file_type().is_symlink() {
                    let target = fs::read_link(&prefix)
                        .with_context(|| format!("reading the link {}", prefix.display()))?;
                    let parent = prefix.parent().unwrap_or(Path::new("/")).to_path_buf();
                    // Links the layout already holds (`/lib` -> `usr/lib`) are not replaced.
                    if !self.entries.contains_key(&prefix) || index + 1 == components.len() {
                        self.insert(prefix.clone(), Entry::Symlink(target.clone()));
                    }
                    let mut next = normalize(&parent.join(&target));
                    for rest in &components[index + 1..] {
                        next.push(rest);
                    }
                    resolved = Some(next);
                    break;
                }
            }
            match resolved {
                Some(next) => current = next,
                None => {
                    let metadata = fs::metadata(&current)
                        .with_context(|| format!("reading {}", current.display()))?;
                    let entry = if metadata.is_dir() {
                        Entry::Dir
                    } else {
                        Entry::File {
                            source: current.clone(),
                            mode: metadata.permissions().mode() & 0o7777,
                        }
                    };
                    self.insert(current, entry);
                    return Ok(());
                }
            }
        }
        bail!("{}: too many levels of symbolic links", path.display())
    }

    /// An executable or library with the shared libraries it loads.
    pub fn add_elf(&mut self, path: &Path) -> Result<()> {
        self.add_path(path)?;
        self.add_libraries_of(path)
    }

    /// A host executable placed at another path, with its libraries.
    pub fn add_elf_as(&mut self, source: &Path, target: &Path) -> Result<()> {
        let mode = fs::metadata(source)
            .with_context(|| format!("reading {}", source.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.insert(
            target.to_path_buf(),
            Entry::File {
                source: source.to_path_buf(),
                mode,
            },
        );
        self.add_libraries_of(source)
    }

    /// Bytes written as a file.
    pub fn add_bytes(&mut self, target: &Path, data: Vec<u8>, mode: u32) {
        self.insert(target.to_path_buf(), Entry::Bytes { data, mode });
    }

    /// A symlink.
    pub fn add_symlink(&mut self, link: &Path, target: &Path) {
        self.insert(link.to_path_buf(), Entry::Symlink(target.to_path_buf()));
    }

    fn add_libraries_of(&mut self, path: &Path) -> Result<()> {
        for library in shared_libraries(path)? {
            self.add_path(&library)?;
        }
        Ok(())
    }

    /// The tree as a directory (replacing what was there).
    fn write_dir(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (path, entry) in &self.entries {
            let target = dir.join(path.strip_prefix("/").unwrap_or(path));
            let result = match entry {
                Entry::Dir => fs::create_dir_all(&target),
                Entry::File { source, mode } => fs::copy(source, &target)
                    .and_then(|_| fs::set_permissions(&target, fs::Permissions::from_mode(*mode))),
                Entry::Bytes { data, mode } => fs::write(&target, data)
                    .and_then(|()| fs::set_permissions(&target, fs::Permissions::from_mode(*mode))),
                Entry::Symlink(link) => std::os::unix::fs::symlink(link, &target),
            };
            result.with_context(|| format!("writing {}", target.display()))?;
        }
        Ok(())
    }

    /// The layer as an uncompressed tar.
    fn layer(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.entries {
            let name = path.strip_prefix("/").unwrap_or(path);
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(if name == Path::new("tmp") {
                        0o1777
                    } else {
                        0o755
                    });
                    header.set_size(0);
                    builder.append_data(&mut header, name, std::io::empty())
                }
                Entry::File { source, mode } => {
                    let data = fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, name, data.as_slice())
                }
                Entry::Bytes { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, name, data.as_slice())
                }
                Entry::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, name, target)
                }
            }
            .with_context(|| format!("adding {} to the layer", path.display()))?;
        }
        builder.into_inner().context("finishing the layer")
    }
}

/// Writes `rootfs` as a one-layer docker-archive tarball tagged `tag`.
pub fn write_docker_archive(
    tarball: &Path,
    tag: &str,
    rootfs: &RootFs,
    config: &ImageConfig,
) -> Result<()> {
    let layer = rootfs.layer()?;
    let layer_digest = hex_sha256(&layer);
    let image_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "history": [{"created_by": "cargo xtask image (files of the build machine)"}],
    });
    let config_bytes = serde_json::to_vec(&image_config)?;
    let config_name = format!("{}.json", hex_sha256(&config_bytes));
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": [layer_name],
    }]))?;

    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in [
        (config_name.as_str(), config_bytes.as_slice()),
        (layer_name.as_str(), layer.as_slice()),
        ("manifest.json", manifest.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, name, data)
            .with_context(|| format!("adding {name} to {}", tarball.display()))?;
    }
    let archive = builder.into_inner()?;
    if let Some(parent) = tarball.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let partial = tarball.with_extension("partial");
    let mut file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(&archive)
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, tarball).with_context(|| format!("writing {}", tarball.display()))
}

/// The libraries `ldd` says `path` loads, by the paths the loader will open.
fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(path)
        .output()
        .with_context(|| format!("running ldd {}", path.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // A static binary: ldd says so and fails, which is fine.
    if !output.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!(
                "{} needs a library the machine lacks: {line}",
                path.display()
            );
        }
        let candidate = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(library) = candidate.filter(|candidate| candidate.starts_with('/')) {
            libraries.push(PathBuf::from(library));
        }
    }
    Ok(libraries)
}

/// The entries of a directory, sorted.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        bail!("{} is not an absolute path", path.display());
    }
    Ok(normalize(path))
}

/// `a/./b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::Normal(part) => normal.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_normalize_parent_components() {
        assert_eq!(
            normalize(Path::new("/usr/lib64/../lib/x86_64-linux-gnu/./ld.so")),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/ld.so")
        );
    }

    #[test]
    fn should_follow_every_link_to_a_host_file() {
        let mut rootfs = RootFs::new();
        rootfs
            .add_path(Path::new("/lib64/ld-linux-x86-64.so.2"))
            .expect("the host's dynamic loader");
        // The loader is reached through /lib64 -> usr/lib64 and the link inside it.
        assert!(
            rootfs
                .entries
                .values()
                .any(|entry| matches!(entry, Entry::File { source, .. } if source.ends_with("ld-linux-x86-64.so.2")))
        );
    }
}
