//! `cargo xtask cluster up|down|status|load-image`: a real single-node Kubernetes 1.20 on this
//! machine (`handbook/real-cluster.md`), the project's stand-in for kind.
//!
//! Everything runs inside a network namespace of its own (`netpol-cluster`), with the node
//! address on a veth whose other end is a second namespace (`netpol-cluster-ext`) playing "the
//! internet" and external clients with documentation addresses. Nothing is linked to the root
//! namespace, so no packet leaves the two. The components are the Kubernetes binaries of
//! `cargo xtask kube` and Debian's etcd, containerd, runc and CNI plugins (ptp + host-local:
//! routed host-side veths, the shape Terway gives). Images are made from files on this machine
//! (`images.rs`) and imported into containerd: no registry is needed.
//!
//! State lives in one directory (`/var/lib/netpol-cluster`, or `NETPOL_CLUSTER_DIR`): the PKI,
//! configuration, logs, pid files, containerd's root and state, kubelet's root and a bpffs of
//! the cluster's own (shared, as the DaemonSet's Bidirectional mount needs). `down` removes it
//! and everything the components change outside it (machine-wide sysctls kubelet writes,
//! paths kubelet and containerd use whatever their flags say, cgroups, mounts), also after a
//! failed `up`.

mod files;
pub mod images;
mod teardown;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{exec, image, kube};

pub use xtask::cluster::{CNI_NETWORK, EXT_HOSTS, EXT_NETNS, NETNS, NODE_IP, NODE_NAME};

/// The "internet" side of the node's link, in the ext namespace: the node's default gateway.
pub const EXT_IP: &str = "10.250.0.2";
pub const API_PORT: u16 = 6443;
/// Large enough that a long e2e run never reuses an address.
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The sandbox image kubelet 1.20 and containerd ask for by default.
pub const PAUSE_IMAGE: &str = "k8s.gcr.io/pause:3.2";

const NODE_LINK: &str = "np-node";
const EXT_LINK: &str = "np-ext";

/// Machine-wide sysctls kubelet 1.20 writes when it starts: recorded by `up`, restored by `down`.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
];

/// The components, in start order; `down` stops them in reverse.
const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

const API_READY_TIMEOUT: Duration = Duration::from_secs(90);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Start the cluster (tearing down what a failed run left first) and load the images,
    /// the agent's included (built with `cargo xtask image`).
    Up {
        /// Do not build and load the agent image (the cluster alone).
        #[arg(long)]
        no_agent_image: bool,
    },
    /// Stop everything and leave the machine as it was.
    Down,
    /// Which components run, the node's readiness, and how to reach the cluster.
    Status,
    /// Import a docker-archive image tarball into the node's containerd.
    LoadImage { tarball: PathBuf },
}

pub fn run(options: &Options) -> Result<()> {
    let layout = Layout::from_env();
    match &options.action {
        Action::Up { no_agent_image } => up(&layout, !no_agent_image),
        Action::Down => teardown::down(&layout),
        Action::Status => status(&layout),
        Action::LoadImage { tarball } => load_image(&layout, tarball),
    }
}

/// Every path of the cluster directory.
pub struct Layout {
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub containerd: PathBuf,
    pub kubelet: PathBuf,
    pub logs: PathBuf,
    pub pids: PathBuf,
    pub bpffs: PathBuf,
    pub images: PathBuf,
}

impl Layout {
    pub fn from_env() -> Self {
        let dir = xtask::cluster::dir();
        Self {
            pki: dir.join("pki"),
            containerd: dir.join("containerd"),
            kubelet: dir.join("kubelet"),
            logs: dir.join("logs"),
            pids: dir.join("pids"),
            bpffs: dir.join("bpffs"),
            images: dir.join("images"),
            dir,
        }
    }

    pub fn kubeconfig(&self, identity: &str) -> PathBuf {
        self.dir.join(format!("{identity}.kubeconfig"))
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd.join("containerd.sock")
    }

    pub fn containerd_config(&self) -> PathBuf {
        self.containerd.join("config.toml")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni").join("net.d")
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni").join("bin")
    }

    /// `kubectl` for the cluster: runs inside its network namespace with the admin identity.
    pub fn kubectl_wrapper(&self) -> PathBuf {
        xtask::cluster::kubectl()
    }

    fn pid_file(&self, component: &str) -> PathBuf {
        self.pids.join(format!("{component}.pid"))
    }

    /// The sysctl values before the first `up` (restored by `down`).
    fn saved_sysctls(&self) -> PathBuf {
        self.dir.join("sysctls.saved")
    }

    /// Host paths that existed before `up` (so `down` leaves them).
    fn preexisting(&self) -> PathBuf {
        self.dir.join("preexisting-paths")
    }
}

fn up(layout: &Layout, with_agent_image: bool) -> Result<()> {
    require_root()?;
    let started = Instant::now();
    if layout.dir.exists() {
        if all_running(layout) {
            eprintln!("cluster: already up");
            return status(layout);
        }
        eprintln!(
            "cluster: {} holds a stopped or partial cluster; tearing it down first",
            layout.dir.display()
        );
        teardown::down(layout)?;
    }
    let kube = kube::ensure_kube()?;
    for (tool, package) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/ptp", "containernetworking-plugins"),
        ("/usr/sbin/conntrack", "conntrack"),
        (xtask::DEBIAN_ETCD, "etcd-server"),
    ] {
        if !Path::new(tool).exists() {
            bail!("{tool} is missing: install Debian's {package} (`cargo xtask setup` does)");
        }
    }
    fs::create_dir_all(&layout.dir)
        .with_context(|| format!("creating {}", layout.dir.display()))?;
    // From here a failure leaves state that `down` removes: do it now rather than leave a
    // half-started cluster behind.
    match start(layout, &kube) {
        Ok(()) => {}
        Err(error) => {
            eprintln!("cluster: start failed: {error:#}\ncluster: the last log lines:");
            print_log_tails(layout);
            eprintln!("cluster: tearing down what was started");
            if let Err(teardown) = teardown::down(layout) {
                eprintln!("cluster: teardown failed too: {teardown:#}");
            }
            return Err(error);
        }
    }
    if with_agent_image {
        let tarball = image::build_agent_image(&image::Options::default())?;
        load_image(layout, &tarball)?;
    }
    eprintln!("cluster: up in {:.0?}", started.elapsed());
    status(layout)
}

/// Whether every component of the cluster runs.
pub fn is_up() -> bool {
    all_running(&Layout::from_env())
}

/// The cluster up (started unless it runs), with the agent image `tarball` loaded.
pub fn up_with_image(tarball: &Path) -> Result<()> {
    let layout = Layout::from_env();
    up(&layout, false)?;
    load_image(&layout, tarball)
}

pub fn down() -> Result<()> {
    teardown::down(&Layout::from_env())
}

fn start(layout: &Layout, kube: &kube::KubeBinaries) -> Result<()> {
    teardown::record_host_state(layout)?;
    create_network()?;
    mount_bpffs(layout)?;
    files::write_credentials(layout)?;
    write_kubectl_wrapper(layout, kube)?;

    spawn(
        layout,
        "etcd",
        Command::new(xtask::DEBIAN_ETCD)
            .arg(format!("--data-dir={}", layout.dir.join("etcd").display()))
            .args([
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
            ]),
    )?;
    let pki = |name: &str| layout.pki.join(name).display().to_string();
    spawn(
        layout,
        "kube-apiserver",
        Command::new(kube.get("kube-apiserver")).args([
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            &format!("--advertise-address={NODE_IP}"),
            &format!("--secure-port={API_PORT}"),
            "--insecure-port=0",
            &format!(
                "--cert-dir={}",
                layout.dir.join("apiserver-certs").display()
            ),
            &format!("--tls-cert-file={}", pki("apiserver.crt")),
            &format!("--tls-private-key-file={}", pki("apiserver.key")),
            &format!("--client-ca-file={}", pki("ca.crt")),
            &format!("--token-auth-file={}", pki("tokens.csv")),
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            &format!(
                "--kubelet-client-certificate={}",
                pki("apiserver-kubelet-client.crt")
            ),
            &format!(
                "--kubelet-client-key={}",
                pki("apiserver-kubelet-client.key")
            ),
            "--kubelet-preferred-address-types=InternalIP",
            &format!("--service-account-key-file={}", pki("sa.pub")),
            &format!("--service-account-signing-key-file={}", pki("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--profiling=false",
        ]),
    )?;
    files::write_containerd_config(layout)?;
    files::write_cni_config(layout)?;
    spawn(
        layout,
        "containerd",
        Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(layout.containerd_config()),
    )?;
    wait_for_api(layout)?;
    let tarballs = images::build_all(kube, &layout.images)?;
    wait_for_containerd(layout)?;
    for tarball in &tarballs {
        load_image(layout, tarball)?;
    }
    spawn(
        layout,
        "kube-controller-manager",
        Command::new(kube.get("kube-controller-manager")).args([
            &format!(
                "--kubeconfig={}",
                layout.kubeconfig("kube-controller-manager").display()
            ),
            // Keep nodelifecycle: without it the node keeps its not-ready taint.
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-route,-service",
            "--use-service-account-credentials=true",
            &format!("--service-account-private-key-file={}", pki("sa.key")),
            &format!("--root-ca-file={}", pki("ca.crt")),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--port=0",
        ]),
    )?;
    spawn(
        layout,
        "kube-scheduler",
        Command::new(kube.get("kube-scheduler")).args([
            &format!(
                "--kubeconfig={}",
                layout.kubeconfig("kube-scheduler").display()
            ),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--port=0",
        ]),
    )?;
    files::write_kubelet_config(layout)?;
    let runtime = format!("unix://{}", layout.containerd_socket().display());
    spawn(
        layout,
        "kubelet",
        Command::new(kube.get("kubelet")).args([
            &format!(
                "--config={}",
                layout.dir.join("kubelet-config.yaml").display()
            ),
            &format!("--kubeconfig={}", layout.kubeconfig("kubelet").display()),
            &format!("--root-dir={}", layout.kubelet.display()),
            &format!("--cert-dir={}", layout.kubelet.join("pki").display()),
            "--container-runtime=remote",
            &format!("--container-runtime-endpoint={runtime}"),
            &format!("--image-service-endpoint={runtime}"),
            &format!("--pod-infra-container-image={PAUSE_IMAGE}"),
            &format!("--hostname-override={NODE_NAME}"),
            &format!("--node-ip={NODE_IP}"),
        ]),
    )?;
    files::write_kube_proxy_config(layout)?;
    spawn(
        layout,
        "kube-proxy",
        Command::new(kube.get("kube-proxy")).arg(format!(
            "--config={}",
            layout.dir.join("kube-proxy-config.yaml").display()
        )),
    )?;
    wait_for_node(layout)
}

/// The cluster namespace with the node address, and the ext namespace behind its default
/// route. Both ends of the link stay inside the two.
fn create_network() -> Result<()> {
    let ip = |args: &[&str]| exec::run(Command::new("ip").args(args));
    ip(&["netns", "add", NETNS])?;
    ip(&["netns", "add", EXT_NETNS])?;
    ip(&[
        "-n", NETNS, "link", "add", NODE_LINK, "type", "veth", "peer", "name", EXT_LINK, "netns",
        EXT_NETNS,
    ])?;
    for (netns, link) in [(NETNS, NODE_LINK), (EXT_NETNS, EXT_LINK)] {
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&["-n", netns, "link", "set", link, "up"])?;
    }
    ip(&[
        "-n",
        NETNS,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        NODE_LINK,
    ])?;
    ip(&["-n", NETNS, "route", "add", "default", "via", EXT_IP])?;
    ip(&[
        "-n",
        EXT_NETNS,
        "addr",
        "add",
        &format!("{EXT_IP}/24"),
        "dev",
        EXT_LINK,
    ])?;
    for client in EXT_HOSTS {
        ip(&[
            "-n",
            EXT_NETNS,
            "addr",
            "add",
            &format!("{client}/32"),
            "dev",
            EXT_LINK,
        ])?;
    }
    // Replies to pods go back through the node; the ext namespace forwards nothing.
    ip(&["-n", EXT_NETNS, "route", "add", POD_CIDR, "via", NODE_IP])?;
    exec::run(in_netns(NETNS, "sysctl").args(["-q", "-w", "net.ipv4.ip_forward=1"]))
}

/// A bpffs of the cluster's own, shared: the DaemonSet mounts it with Bidirectional
/// propagation, which needs a shared source (the host's /sys/fs/bpf is not touched).
fn mount_bpffs(layout: &Layout) -> Result<()> {
    fs::create_dir_all(&layout.bpffs)
        .with_context(|| format!("creating {}", layout.bpffs.display()))?;
    exec::run(
        Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&layout.bpffs),
    )?;
    exec::run(
        Command::new("mount")
            .arg("--make-shared")
            .arg(&layout.bpffs),
    )
}

fn write_kubectl_wrapper(layout: &Layout, kube: &kube::KubeBinaries) -> Result<()> {
    let wrapper = layout.kubectl_wrapper();
    files::write(
        &wrapper,
        &format!(
            "#!/bin/sh\n# kubectl for the netpol cluster: inside its network namespace, as its admin.\n\
             exec nsenter --net=/run/netns/{NETNS} {} --kubeconfig={} \"$@\"\n",
            kube.get("kubectl").display(),
            layout.kubeconfig("admin").display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", wrapper.display()))
}

/// `program` inside the network namespace `netns` (`nsenter --net`, not `ip netns exec`: that
/// also makes a mount namespace, and containerd must see kubelet's volume mounts).
fn in_netns(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program);
    cmd
}

/// Starts a component inside the cluster namespace, detached (its own session, output to its
/// log), and records its pid.
fn spawn(layout: &Layout, name: &str, cmd: &mut Command) -> Result<()> {
    fs::create_dir_all(&layout.logs)
        .with_context(|| format!("creating {}", layout.logs.display()))?;
    fs::create_dir_all(&layout.pids)
        .with_context(|| format!("creating {}", layout.pids.display()))?;
    let log_path = layout.logs.join(format!("{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut full = in_netns(NETNS, cmd.get_program());
    full.args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        full.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = full
        .spawn()
        .with_context(|| format!("starting {name} (log {})", log_path.display()))?;
    fs::write(layout.pid_file(name), child.id().to_string())
        .with_context(|| format!("writing the pid of {name}"))?;
    eprintln!(
        "cluster: started {name} (pid {}, log {})",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// The pid of a component that is running, if it is.
fn running_pid(layout: &Layout, name: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(layout.pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // nsenter execs the component, so the pid is the component's own.
    Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
        .filter(|_| !is_zombie(pid))
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|state| state == "Z"))
        })
        .unwrap_or(true)
}

fn all_running(layout: &Layout) -> bool {
    COMPONENTS
        .iter()
        .all(|name| running_pid(layout, name).is_some())
}

fn check_running(layout: &Layout) -> Result<()> {
    for name in COMPONENTS {
        if layout.pid_file(name).exists() && running_pid(layout, name).is_none() {
            bail!(
                "{name} exited; its log is {}",
                layout.logs.join(format!("{name}.log")).display()
            );
        }
    }
    Ok(())
}

fn kubectl(layout: &Layout) -> Command {
    Command::new(layout.kubectl_wrapper())
}

fn wait_for_api(layout: &Layout) -> Result<()> {
    wait_until(
        layout,
        "the API server to be ready",
        API_READY_TIMEOUT,
        || {
            kubectl(layout)
                .args(["get", "--raw", "/readyz"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        },
    )
}

fn wait_for_containerd(layout: &Layout) -> Result<()> {
    wait_until(layout, "containerd to serve", API_READY_TIMEOUT, || {
        ctr(layout)
            .args(["version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

fn wait_for_node(layout: &Layout) -> Result<()> {
    wait_until(layout, "the node to be Ready", NODE_READY_TIMEOUT, || {
        kubectl(layout)
            .args([
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output()
            .is_ok_and(|output| output.stdout == b"True")
    })
}

fn wait_until(
    layout: &Layout,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    eprintln!("cluster: waiting for {what}");
    let started = Instant::now();
    while started.elapsed() < timeout {
        if done() {
            eprintln!("cluster: {what}: after {:.1?}", started.elapsed());
            return Ok(());
        }
        check_running(layout)?;
        thread::sleep(Duration::from_millis(500));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// containerd's own client, on the cluster's socket, in the namespace the CRI uses.
fn ctr(layout: &Layout) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(layout.containerd_socket())
        .args(["--namespace", "k8s.io"]);
    cmd
}

fn load_image(layout: &Layout, tarball: &Path) -> Result<()> {
    require_root()?;
    if running_pid(layout, "containerd").is_none() {
        bail!("the cluster's containerd is not running: `cargo xtask cluster up` first");
    }
    exec::run(
        ctr(layout)
            .args(["images", "import", "--no-unpack"])
            .arg(tarball),
    )
    .with_context(|| format!("importing {}", tarball.display()))
}

fn status(layout: &Layout) -> Result<()> {
    if !layout.dir.exists() {
        println!("cluster: down (no {})", layout.dir.display());
        return Ok(());
    }
    println!("cluster directory: {}", layout.dir.display());
    for name in COMPONENTS {
        match running_pid(layout, name) {
            Some(pid) => println!("  {name:<24} running (pid {pid})"),
            None => println!("  {name:<24} not running"),
        }
    }
    if running_pid(layout, "kube-apiserver").is_some() {
        let nodes = kubectl(layout)
            .args(["get", "nodes", "-o", "wide"])
            .output();
        if let Ok(output) = nodes {
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
    }
    println!(
        "node {NODE_NAME} at {NODE_IP} in network namespace {NETNS}; {}; hosts {} \
         in {EXT_NETNS}",
        files::ranges(),
        EXT_HOSTS.join(", ")
    );
    println!("kubectl: {}", layout.kubectl_wrapper().display());
    println!("bpffs for the agent: {}", layout.bpffs.display());
    Ok(())
}

fn print_log_tails(layout: &Layout) {
    for name in COMPONENTS {
        let path = layout.logs.join(format!("{name}.log"));
        if let Ok(text) = fs::read_to_string(&path) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last 15 lines)", path.display());
            for line in &lines[lines.len().saturating_sub(15)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the cluster needs root (network namespaces, mounts, containerd)");
    }
    Ok(())
}
