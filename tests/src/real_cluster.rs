//! The project's real single-node cluster (`cargo xtask cluster up`), driven as its users
//! drive theirs: `kubectl` (inside the cluster's network namespace), the agent deployed with
//! `kubectl apply -k` of a `deploy/` overlay, real pods, kube-proxy's DNAT.
//!
//! The cluster is shared by the suite and outlives each test: every test deploys the agent in
//! the state it needs and deletes the objects it made (a guard, also on failure). Hosts of "the
//! internet" are addresses of the cluster's ext namespace (documentation ranges).

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, Server, enter};

pub use xtask::cluster::{EXT_NETNS, NETNS, NODE_IP, NODE_NAME};

/// How long an expectation may take to hold after the change that causes it (a policy
/// applied, a pod started): the agent programs changes in well under a second; pods start in
/// seconds on this machine.
pub const SETTLE: Duration = Duration::from_secs(30);
const ROLLOUT_TIMEOUT: &str = "180s";

/// The enforcement backend, as the ConfigMap's `backend` key names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Ebpf,
    Iptables,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Iptables => "iptables",
        }
    }
}

/// The running cluster.
pub struct RealCluster {
    kubectl: PathBuf,
    /// The ext namespace (owned by the cluster: never deleted here).
    pub ext: Netns,
}

impl RealCluster {
    /// The cluster `cargo xtask cluster up` started; an error says how to start one.
    pub fn connect() -> Result<Self> {
        let kubectl = xtask::cluster::kubectl();
        if !kubectl.exists() {
            bail!(
                "no cluster: {} does not exist; run `cargo xtask cluster up` (as root) first",
                kubectl.display()
            );
        }
        let cluster = Self {
            kubectl,
            ext: Netns::existing(EXT_NETNS),
        };
        cluster
            .kubectl(&["get", "--raw", "/readyz"])
            .context("the cluster's API server does not answer")?;
        Ok(cluster)
    }

    /// `kubectl ARGS`; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.kubectl)
            .args(args)
            .output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl ARGS` with `input` on stdin (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        child
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(input.as_bytes())
            .context("writing to kubectl")?;
        let output = child.wait_with_output().context("waiting for kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply -f -` of one or more documents.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml).map(drop)
    }

    /// Deploys the agent as a user does (`kubectl apply -k` of the cluster's overlay of
    /// `deploy/`), on `backend` (the ConfigMap's `backend` key), and waits for the rollout.
    pub fn deploy_agent(&self, backend: Backend) -> Result<()> {
        self.kubectl(&["apply", "-k", &overlay("netpol-cluster")])?;
        let current = self.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "netpol-agent",
            "-o",
            "jsonpath={.data.backend}",
        ])?;
        if current.trim() != backend.name() {
            self.kubectl(&[
                "-n",
                "kube-system",
                "patch",
                "configmap",
                "netpol-agent",
                "--type=merge",
                "-p",
                &format!(r#"{{"data":{{"backend":"{}"}}}}"#, backend.name()),
            ])?;
            // The ConfigMap reaches the agent as environment: a new pod reads it.
            self.kubectl(&["-n", "kube-system", "rollout", "restart", "ds/netpol-agent"])?;
        }
        self.wait_agent_rollout()
    }

    pub fn wait_agent_rollout(&self) -> Result<()> {
        self.kubectl(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "ds/netpol-agent",
            &format!("--timeout={ROLLOUT_TIMEOUT}"),
        ])
        .map(drop)
    }

    /// The agent pod's log (for failure messages).
    pub fn agent_logs(&self) -> String {
        self.kubectl(&["-n", "kube-system", "logs", "ds/netpol-agent", "--tail=40"])
            .unwrap_or_else(|error| format!("(no agent logs: {error:#})"))
    }

    /// `kubectl run NAME --image=IMAGE [--labels=L] -- ARGS` in `namespace`, then waits until
    /// the pod runs. Returns its address.
    pub fn run_pod(
        &self,
        namespace: &str,
        name: &str,
        image: &str,
        labels: Option<&str>,
        command: &[&str],
    ) -> Result<String> {
        let mut args = vec![
            "-n",
            namespace,
            "run",
            name,
            "--image",
            image,
            "--image-pull-policy=Never",
            "--restart=Never",
        ];
        let labels_arg;
        if let Some(labels) = labels {
            labels_arg = format!("--labels={labels}");
            args.push(&labels_arg);
        }
        if !command.is_empty() {
            args.push("--");
            args.extend_from_slice(command);
        }
        self.kubectl(&args)?;
        self.wait_running(namespace, name)
    }

    /// Waits for a pod to run; returns its address.
    pub fn wait_running(&self, namespace: &str, name: &str) -> Result<String> {
        self.kubectl(&[
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])?;
        self.kubectl(&[
            "-n",
            namespace,
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .map(|ip| ip.trim().to_owned())
    }

    /// A Service's ClusterIP.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Result<String> {
        self.kubectl(&[
            "-n",
            namespace,
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .map(|ip| ip.trim().to_owned())
    }

    /// Runs `script` with `sh -c` in a pod's container; whether it exits 0.
    pub fn exec_ok(&self, namespace: &str, pod: &str, script: &str) -> bool {
        Command::new(&self.kubectl)
            .args(["-n", namespace, "exec", pod, "--", "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Whether a TCP connection from a pod to `ip:port` gets `marker` back. Busybox's `nc`
    /// stands in for `wget` (whose Debian build crashes); `request` is sent first.
    pub fn pod_tcp_probe(
        &self,
        namespace: &str,
        pod: &str,
        ip: &str,
        port: u16,
        request: &str,
        marker: &str,
    ) -> bool {
        self.exec_ok(
            namespace,
            pod,
            &format!(
                "printf '{request}' | timeout 4 nc -w 2 {ip} {port} 2>/dev/null | grep -q '{marker}'"
            ),
        )
    }

    /// Whether a DNS query from a pod to `resolver` (UDP 53) is answered.
    pub fn pod_dns_probe(&self, namespace: &str, pod: &str, resolver: &str) -> bool {
        self.exec_ok(
            namespace,
            pod,
            &format!("timeout 6 nslookup -timeout=2 -retry=1 probe.example {resolver} 2>&1 | grep -q '^Server:'"),
        )
    }

    /// Whether a TCP connection from the ext namespace, from the address `src`, to
    /// `ip:port` is answered by an HTTP server.
    pub fn outside_http_probe(&self, src: &str, ip: &str, port: u16) -> bool {
        let (src, dst): (IpAddr, IpAddr) = match (src.parse(), ip.parse()) {
            (Ok(src), Ok(dst)) => (src, dst),
            _ => return false,
        };
        self.ext
            .run(|| http_get_from(src, SocketAddr::new(dst, port)))
    }

    /// A TCP and UDP server in the ext namespace at `at:port` answering with `reply`.
    pub fn outside_server(&self, at: &str, port: u16, reply: &'static str) -> Result<Server> {
        let at: IpAddr = at.parse().context("a server address")?;
        Ok(self.ext.serve_at(at, port, reply))
    }

    /// A DNS resolver in the ext namespace at `at`: answers every query with an empty
    /// NOERROR response (enough for `nslookup` to say which server answered).
    pub fn outside_resolver(&self, at: &str) -> Result<Resolver> {
        let at: IpAddr = at.parse().context("a resolver address")?;
        Resolver::start(&self.ext, at)
    }

    /// Deletes objects (`kind/name` in `namespace`), not waiting for their pods to go.
    pub fn delete(&self, namespace: &str, objects: &[&str]) {
        let mut args = vec![
            "-n",
            namespace,
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "--grace-period=1",
        ];
        args.extend_from_slice(objects);
        if let Err(error) = self.kubectl(&args) {
            eprintln!("cleanup: {error:#}");
        }
    }
}

/// The path of an overlay under `deploy/overlays/`.
pub fn overlay(name: &str) -> String {
    workspace_root()
        .join("deploy/overlays")
        .join(name)
        .display()
        .to_string()
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
}

/// Retries `check` until it holds or `SETTLE` passes; returns whether it held. Changes reach
/// the node asynchronously (pods start, the agent programs a policy), so an expectation is
/// met once, then confirmed by the caller's next checks.
pub fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if check() {
            return true;
        }
        if started.elapsed() > SETTLE {
            return false;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn http_get_from(src: IpAddr, dst: SocketAddr) -> bool {
    use std::io::Read as _;
    let Ok(socket) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
    else {
        return false;
    };
    if socket.bind(&SocketAddr::new(src, 0).into()).is_err()
        || socket
            .connect_timeout(&dst.into(), Duration::from_secs(2))
            .is_err()
    {
        return false;
    }
    let mut stream: std::net::TcpStream = socket.into();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).contains("nginx")
}

/// A minimal DNS responder; stopped on drop.
pub struct Resolver {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Resolver {
    fn start(netns: &Netns, at: IpAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", netns.name());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                enter(&path);
                let socket = match UdpSocket::bind((at, 53)) {
                    Ok(socket) => socket,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
                let _ = ready_tx.send(Ok(()));
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf)
                        && n >= 12
                    {
                        // The query back as a response: QR and RA set, NOERROR, no answers.
                        buf[2] |= 0x80;
                        buf[3] = 0x80;
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(error)) => bail!("the resolver could not bind {at}:53: {error}"),
            Err(_) => bail!("the resolver did not start"),
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `f` when dropped (cleanup of a test's objects, also when it fails).
pub struct Cleanup<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for Cleanup<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// What the agent leaves on the node: pins, tc programs, iptables chains and ipsets.
#[derive(Debug, Default)]
pub struct NodeState {
    pub pins: Vec<String>,
    pub tc_programs: Vec<String>,
    pub chains: Vec<String>,
    pub sets: Vec<String>,
}

impl NodeState {
    pub fn is_clean(&self) -> bool {
        self.pins.is_empty()
            && self.tc_programs.is_empty()
            && self.chains.is_empty()
            && self.sets.is_empty()
    }
}

/// Reads the node's state from outside the agent (its pins in the cluster's bpffs, and the
/// cluster namespace's tc attachments, chains in both iptables flavours and ipsets).
pub fn node_state() -> NodeState {
    let mut state = NodeState::default();
    let pin_root = xtask::cluster::dir()
        .join("bpffs")
        .join(agent_common::PIN_DIR.trim_start_matches("/sys/fs/bpf/"));
    collect_files(&pin_root, &mut state.pins);
    // Nothing else in the cluster namespace attaches BPF programs (kube-proxy uses iptables,
    // ptp plain routes): every tc or tcx attachment there is ours.
    let net = node_command("bpftool", &["-j", "net", "show"]);
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&net) {
        for entry in json.as_array().into_iter().flatten() {
            for kind in ["tc", "tcx"] {
                for attachment in entry[kind].as_array().into_iter().flatten() {
                    state.tc_programs.push(format!(
                        "{} {} {}",
                        attachment["devname"].as_str().unwrap_or("?"),
                        attachment["kind"].as_str().unwrap_or(kind),
                        attachment["name"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
    } else {
        state
            .tc_programs
            .push(format!("bpftool net show said: {net}"));
    }
    for save in [
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
    ] {
        for line in node_command(save, &[]).lines() {
            if let Some(chain) = line.strip_prefix(':')
                && chain.starts_with("NP-")
            {
                state.chains.push(format!(
                    "{save}: {}",
                    chain.split_whitespace().next().unwrap_or(chain)
                ));
            }
        }
    }
    for line in node_command("ipset", &["list", "-n"]).lines() {
        if line.starts_with("np-") {
            state.sets.push(line.to_owned());
        }
    }
    state
}

fn collect_files(dir: &Path, out: &mut Vec<String>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect_files(&path, out);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
}

/// A command's stdout, run inside the cluster's network namespace.
fn node_command(program: &str, args: &[&str]) -> String {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NETNS}"))
        .arg("--")
        .arg(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}
