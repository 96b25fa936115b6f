//! `cargo xtask cluster down`: stops the cluster and undoes what it changed on the machine,
//! also when `up` failed half way or the components were killed.
//!
//! Order matters: workloads first (kubelet's CNI DEL frees veths and addresses), then the
//! components by pid, then whatever containers are left (by their shims and cgroups), mounts
//! under the cluster directory (lazily, deepest first), the namespaces, the host paths kubelet
//! and containerd use whatever their flags say, empty cgroups, and the sysctls kubelet wrote.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    CNI_NETWORK, COMPONENTS, EXT_NETNS, KUBELET_SYSCTLS, Layout, NETNS, kubectl, running_pid,
};

/// Paths kubelet 1.20 and containerd 1.6 use whatever their flags say.
const HOST_PATHS: &[&str] = &[
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/containerd",
    // The agent's CNI socket directory (deploy/base/daemonset.yaml).
    "/run/netpol",
];

/// Cgroups kubelet (cgroupfs driver) and containerd create at the top of every hierarchy.
const CGROUPS: &[&str] = &["kubepods", "k8s.io"];
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

const WORKLOADS_GONE_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Records what `down` must restore or leave: sysctl values and which host paths and cgroups
/// existed. Kept from a previous partial run, so a value kubelet already changed is never
/// taken as the original.
pub fn record_host_state(layout: &Layout) -> Result<()> {
    if !layout.saved_sysctls().exists() {
        let mut saved = String::new();
        for key in KUBELET_SYSCTLS {
            let value = fs::read_to_string(sysctl_path(key))
                .with_context(|| format!("reading sysctl {key}"))?;
            saved.push_str(&format!("{key}={}\n", value.trim()));
        }
        super::files::write(&layout.saved_sysctls(), &saved)?;
    }
    if !layout.preexisting().exists() {
        let existing: Vec<String> = HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(cgroup_dirs())
            .filter(|path| path.exists())
            .map(|path| path.display().to_string())
            .collect();
        super::files::write(&layout.preexisting(), &(existing.join("\n") + "\n"))?;
    }
    Ok(())
}

pub fn down(layout: &Layout) -> Result<()> {
    super::require_root()?;
    let started = Instant::now();
    if !layout.dir.exists() {
        eprintln!(
            "cluster: nothing to tear down ({} does not exist)",
            layout.dir.display()
        );
        return Ok(());
    }
    let preexisting: Vec<PathBuf> = fs::read_to_string(layout.preexisting())
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.is_empty())
        .map(PathBuf::from)
        .collect();

    delete_workloads(layout);
    for name in COMPONENTS.iter().rev() {
        stop_component(layout, name);
    }
    kill_leftover_containers(layout);
    unmount_under(&layout.dir);
    if !preexisting
        .iter()
        .any(|path| path == Path::new("/run/containerd"))
    {
        unmount_under(Path::new("/run/containerd"));
    }
    for netns in [NETNS, EXT_NETNS] {
        if Path::new("/run/netns").join(netns).exists() {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
    }
    for path in HOST_PATHS {
        let path = Path::new(path);
        if preexisting.iter().any(|kept| kept == path) {
            // Only what the cluster's network wrote.
            if path == Path::new("/var/lib/cni") {
                remove_matching(&path.join("results"), CNI_NETWORK);
            }
            continue;
        }
        remove_dir(path);
    }
    for cgroup in cgroup_dirs() {
        if !preexisting.contains(&cgroup) {
            remove_cgroup_tree(&cgroup);
        }
    }
    restore_sysctls(layout);
    // Mounts inside must be gone before the tree is removed: checked, not assumed.
    let left = mounts_under(&layout.dir);
    if !left.is_empty() {
        anyhow::bail!(
            "still mounted under {}: {}; not removing it",
            layout.dir.display(),
            left.iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    fs::remove_dir_all(&layout.dir)
        .with_context(|| format!("removing {}", layout.dir.display()))?;
    eprintln!("cluster: down in {:.0?}", started.elapsed());
    Ok(())
}

/// Deletes every workload so that kubelet stops their sandboxes (CNI DEL), and waits for the
/// pod veths to go. Best effort: without an API server or kubelet, later steps clean up.
fn delete_workloads(layout: &Layout) {
    if running_pid(layout, "kube-apiserver").is_none() || running_pid(layout, "kubelet").is_none() {
        return;
    }
    eprintln!("cluster: deleting workloads");
    let _ = kubectl(layout)
        .args([
            "delete",
            "daemonsets,deployments,replicasets,statefulsets,jobs",
            "--all",
            "--all-namespaces",
            "--wait=false",
        ])
        .stdout(Stdio::null())
        .status();
    let _ = kubectl(layout)
        .args([
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=0",
            "--force",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let started = Instant::now();
    while started.elapsed() < WORKLOADS_GONE_TIMEOUT {
        let links = Command::new("ip")
            .args(["-n", NETNS, "-o", "link", "show"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        if !links.contains(": veth") {
            return;
        }
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!("cluster: pod veths still present after {WORKLOADS_GONE_TIMEOUT:?}; going on");
}

fn stop_component(layout: &Layout, name: &str) {
    let Some(pid) = running_pid(layout, name) else {
        return;
    };
    // SAFETY: kill has no memory preconditions; the pid is one this cluster recorded.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        if running_pid(layout, name).is_none() {
            eprintln!("cluster: stopped {name}");
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eprintln!("cluster: killed {name} (no exit {STOP_TIMEOUT:?} after SIGTERM)");
}

/// containerd's shims (found by the cluster's socket on their command line) and every process
/// left in the cluster's cgroups.
fn kill_leftover_containers(layout: &Layout) {
    let socket = layout.containerd_socket().display().to_string();
    let mut pids = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                pids.push(pid);
            }
        }
    }
    for cgroup in cgroup_dirs() {
        collect_cgroup_pids(&cgroup, &mut pids);
    }
    for pid in pids {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    thread::sleep(Duration::from_millis(300));
}

fn collect_cgroup_pids(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            procs
                .lines()
                .filter_map(|line| line.trim().parse::<i32>().ok()),
        );
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                collect_cgroup_pids(&entry.path(), pids);
            }
        }
    }
}

/// `kubepods` and `k8s.io` at the top of every cgroup hierarchy that has them.
fn cgroup_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = fs::read_dir(CGROUP_ROOT) {
        for entry in entries.flatten() {
            for name in CGROUPS {
                let dir = entry.path().join(name);
                if dir.is_dir() {
                    dirs.push(dir);
                }
            }
        }
    }
    // A cgroup v2 (unified) layout has them at the root.
    for name in CGROUPS {
        let dir = Path::new(CGROUP_ROOT).join(name);
        if dir.join("cgroup.procs").exists() {
            dirs.push(dir);
        }
    }
    dirs
}

/// Removes a cgroup and its children, deepest first (rmdir: only empty cgroups go).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    if let Err(error) = fs::remove_dir(dir) {
        eprintln!("cluster: cgroup {} stays: {error}", dir.display());
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_point(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts.dedup();
    mounts
}

fn unmount_under(dir: &Path) {
    // A mount can be stacked several times (kubelet's rshared bind of its own root).
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for point in mounts {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&point)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_point(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(code) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(code));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn remove_dir(path: &Path) {
    if path.exists() {
        unmount_under(path);
        if let Err(error) = fs::remove_dir_all(path) {
            eprintln!("cluster: could not remove {}: {error}", path.display());
        }
    }
}

/// Removes the entries of `dir` whose name starts with `prefix`.
fn remove_matching(dir: &Path, prefix: &str) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn restore_sysctls(layout: &Layout) {
    let Ok(saved) = fs::read_to_string(layout.saved_sysctls()) else {
        return;
    };
    for line in saved.lines() {
        if let Some((key, value)) = line.split_once('=')
            && let Err(error) = fs::write(sysctl_path(key), value)
        {
            eprintln!("cluster: could not restore {key}={value}: {error}");
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_unescape_octal_in_mount_points() {
        assert_eq!(unescape_mount_point(r"/var/a\040b"), "/var/a b");
        assert_eq!(unescape_mount_point("/plain"), "/plain");
    }
}
