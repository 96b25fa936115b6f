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
        kubectl_stdout(args, &output)
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
        kubectl_stdout(args, &output)
    }

    /// Points the agent's DaemonSet at image `reference` (a rolling update when it changes).
    pub fn set_agent_image(&self, reference: &str) -> Result<()> {
        self.kubectl(&[
            "-n",
            "kube-system",
            "set",
            "image",
            "ds/netpol-agent",
            &format!("agent={reference}"),
        ])
        .map(drop)
    }

    /// Keeps the agent off the node (`away`: its DaemonSet selects no node) or lets it back.
    pub fn set_agent_away(&self, away: bool) -> Result<()> {
        let selector = if away {
            r#"{"netpol.example/absent":"true"}"#
        } else {
            "null"
        };
        self.kubectl(&[
            "-n",
            "kube-system",
            "patch",
            "ds",
            "netpol-agent",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"template":{{"spec":{{"nodeSelector":{selector}}}}}}}}}"#),
        ])
        .map(drop)
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

    /// Deletes objects (`kind/name` in `namespace`) and waits until they are gone, so that
    /// the next test can create objects of the same names.
    pub fn delete(&self, namespace: &str, objects: &[&str]) {
        let mut args = vec![
            "-n",
            namespace,
            "delete",
            "--ignore-not-found",
            "--grace-period=1",
            "--timeout=120s",
        ];
        args.extend_from_slice(objects);
        if let Err(error) = self.kubectl(&args) {
            eprintln!("cleanup: {error:#}");
        }
    }
}

/// A kubectl run's stdout, or an error with its stderr.
fn kubectl_stdout(args: &[&str], output: &std::process::Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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
    /// The CNI plugin in the node's chain, and its binary.
    pub cni_plugin_chained: bool,
    pub cni_plugin_binary: bool,
}

impl NodeState {
    pub fn is_clean(&self) -> bool {
        self.pins.is_empty()
            && self.tc_programs.is_empty()
            && self.chains.is_empty()
            && self.sets.is_empty()
            && !self.cni_plugin_chained
            && !self.cni_plugin_binary
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
    state.cni_plugin_chained = chain_has_plugin();
    state.cni_plugin_binary = xtask::cluster::dir().join("cni/bin/netpol-cni").exists();
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

/// The outcome of one upstream e2e case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaseOutcome {
    Passed,
    Failed,
    Skipped,
}

/// Runs upstream's NetworkPolicy e2e (the 1.20 tree's `e2e.test`, unchanged) against the
/// cluster with ginkgo's parallel runner, as upstream CI does, and returns every case with
/// its outcome (from the JUnit reports). SCTP cases are skipped: this kernel has no SCTP
/// module to load.
pub fn run_network_policy_e2e(nodes: u32) -> Result<Vec<(String, CaseOutcome)>> {
    let bin = std::env::var_os(xtask::cluster::KUBE_BIN_ENV)
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "{} is not set: it names the directory of e2e.test and ginkgo (`cargo xtask \
                 kube` prints it; `cargo xtask test` sets it)",
                xtask::cluster::KUBE_BIN_ENV
            )
        })?;
    let report = tempdir("e2e-report")?;
    let log_path = report.join("e2e.log");
    let log = std::fs::File::create(&log_path).context("creating the e2e log")?;
    let dir = xtask::cluster::dir();
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NETNS}"))
        .arg("--")
        .arg(bin.join("ginkgo"))
        .arg(format!("-nodes={nodes}"))
        .args([
            "-noColor",
            "-focus=NetworkPolicy",
            "-skip=SCTP|Serial|Disruptive",
        ])
        .arg(bin.join("e2e.test"))
        .arg("--")
        .args([
            "--provider=skeleton",
            "--num-nodes=1",
            "--allowed-not-ready-nodes=0",
            "--minStartupPods=0",
            "--disable-log-dump",
            "--system-pods-startup-timeout=1m",
            "--node-schedulable-timeout=1m",
            "--system-daemonsets-startup-timeout=1m",
            "--container-runtime=remote",
        ])
        .arg(format!(
            "--container-runtime-endpoint=unix://{}",
            dir.join("containerd/containerd.sock").display()
        ))
        .arg(format!(
            "--kubeconfig={}",
            dir.join("admin.kubeconfig").display()
        ))
        .arg(format!("--report-dir={}", report.display()))
        .stdout(log.try_clone().context("duplicating the e2e log")?)
        .stderr(log)
        .status()
        .context("running ginkgo")?;
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&report).context("reading the e2e reports")? {
        let path = entry.context("reading the e2e reports")?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        if name.is_some_and(|name| name.starts_with("junit") && name.ends_with(".xml")) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            cases.extend(junit_cases(&text));
        }
    }
    if cases.is_empty() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        bail!(
            "the e2e run ({status}) left no JUnit report; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    cases.sort();
    eprintln!("e2e: ginkgo {status}; log {}", log_path.display());
    Ok(cases)
}

/// `(name, outcome)` of every `<testcase>` of a JUnit report.
pub fn junit_cases(xml: &str) -> Vec<(String, CaseOutcome)> {
    let mut cases = Vec::new();
    for chunk in xml.split("<testcase ").skip(1) {
        let Some(name) = attribute(chunk, "name") else {
            continue;
        };
        let body = chunk.split("</testcase>").next().unwrap_or(chunk);
        let outcome = if body.contains("<failure") || body.contains("<error") {
            CaseOutcome::Failed
        } else if body.contains("<skipped") {
            CaseOutcome::Skipped
        } else {
            CaseOutcome::Passed
        };
        cases.push((name, outcome));
    }
    cases
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&#39;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// A fresh directory under the system's temporary directory, kept for the logs it holds.
fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "netpol-{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Gives a node-local image a second name in the node's containerd.
pub fn tag_image(from: &str, to: &str) -> Result<()> {
    let normalize = |name: &str| format!("docker.io/library/{name}");
    let socket = xtask::cluster::dir().join("containerd/containerd.sock");
    // Replaces an older image of that name from a previous run.
    let _ = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["-n", "k8s.io", "images", "rm", &normalize(to)])
        .output();
    let output = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args([
            "-n",
            "k8s.io",
            "images",
            "tag",
            &normalize(from),
            &normalize(to),
        ])
        .output()
        .context("running ctr images tag")?;
    if !output.status.success() {
        bail!(
            "ctr images tag {from} {to}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// SIGKILL to the agent's process on the node (found by its command line).
pub fn kill_agent_process() -> Result<()> {
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let mut words = cmdline.split(|byte| *byte == 0);
        let program = words.next().unwrap_or_default();
        if program.ends_with(b"/usr/local/bin/netpol-agent") && words.next() == Some(b"run") {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    if killed != 1 {
        bail!("expected one agent process on the node, killed {killed}");
    }
    Ok(())
}

/// A TCP server in the ext namespace that accepts and closes, remembering every source
/// address that reached it; stopped on drop.
pub struct CountingServer {
    stop: Arc<AtomicBool>,
    sources: Arc<std::sync::Mutex<std::collections::BTreeMap<IpAddr, u64>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CountingServer {
    pub fn start(cluster: &RealCluster, at: &str, port: u16) -> Result<Self> {
        let at: IpAddr = at.parse().context("a server address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let sources = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let path = format!("/run/netns/{}", cluster.ext.name());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            let sources = Arc::clone(&sources);
            thread::spawn(move || {
                enter(&path);
                let listener = match std::net::TcpListener::bind((at, port)) {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = listener.set_nonblocking(true);
                let _ = ready_tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            drop(stream);
                            if let Ok(mut sources) = sources.lock() {
                                *sources.entry(peer.ip()).or_default() += 1;
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                sources,
                thread: Some(thread),
            }),
            Ok(Err(error)) => bail!("the counting server could not bind {at}:{port}: {error}"),
            Err(_) => bail!("the counting server did not start"),
        }
    }

    /// Connections accepted so far, by source address.
    pub fn sources(&self) -> std::collections::BTreeMap<IpAddr, u64> {
        self.sources
            .lock()
            .map(|sources| sources.clone())
            .unwrap_or_default()
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The node's active CNI configuration (the first file of the cluster's conf dir).
pub fn cni_config() -> Result<serde_json::Value> {
    let dir = xtask::cluster::dir().join("cni/net.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "conflist"))
        .collect();
    files.sort();
    let path = files.first().context("no conflist")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Whether the node's CNI chain includes the agent's plugin.
pub fn chain_has_plugin() -> bool {
    cni_config().is_ok_and(|config| {
        config["plugins"]
            .as_array()
            .is_some_and(|plugins| plugins.iter().any(|plugin| plugin["type"] == "netpol-cni"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_outcomes_from_a_ginkgo_junit_report() {
        let xml = r#"<testsuite tests="3">
  <testcase name="[sig-network] NetworkPolicy should allow ingress access from updated pod [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" time="20.1"></testcase>
  <testcase name="[sig-network] NetworkPolicy should deny egress from pods based on PodSelector [Feature:NetworkPolicy] " classname="Kubernetes e2e suite" time="40.2">
      <failure type="Failure">timed out &amp; more</failure>
  </testcase>
  <testcase name="[sig-network] NetworkPolicy should work with &#39;SCTP&#39;" classname="Kubernetes e2e suite" time="0">
      <skipped></skipped>
  </testcase>
</testsuite>"#;
        let cases = junit_cases(xml);
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].1, CaseOutcome::Passed);
        assert_eq!(cases[1].1, CaseOutcome::Failed);
        assert_eq!(
            cases[2].0,
            "[sig-network] NetworkPolicy should work with 'SCTP'"
        );
        assert_eq!(cases[2].1, CaseOutcome::Skipped);
    }

    /// Every key of the agent's ConfigMap reaches the agent: the DaemonSet maps it to an
    /// environment variable, and a flag of `netpol-agent run` reads that variable.
    #[test]
    fn every_configmap_key_reaches_a_flag_of_the_agent() {
        use clap::CommandFactory as _;
        let read = |file: &str| {
            let path = workspace_root().join("deploy/base").join(file);
            let text = std::fs::read_to_string(&path).expect("a deploy file");
            serde_yaml::from_str::<serde_yaml::Value>(&text).expect("YAML")
        };
        let configmap = read("configmap.yaml");
        let keys: Vec<String> = configmap["data"]
            .as_mapping()
            .expect("data")
            .keys()
            .filter_map(|key| key.as_str().map(str::to_owned))
            .collect();
        assert!(!keys.is_empty());
        let daemonset = read("daemonset.yaml");
        let env = &daemonset["spec"]["template"]["spec"]["containers"][0]["env"];
        let command = netpol_agent::cli::Cli::command();
        let run = command.find_subcommand("run").expect("the run subcommand");
        let flag_envs: Vec<String> = run
            .get_arguments()
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect();
        for key in &keys {
            let variable = env
                .as_sequence()
                .expect("env")
                .iter()
                .find(|entry| {
                    let reference = &entry["valueFrom"]["configMapKeyRef"];
                    reference["name"].as_str() == Some("netpol-agent")
                        && reference["key"].as_str() == Some(key)
                })
                .and_then(|entry| entry["name"].as_str())
                .unwrap_or_else(|| panic!("ConfigMap key {key} reaches no environment variable"));
            assert!(
                flag_envs.iter().any(|name| name == variable),
                "{variable} (ConfigMap key {key}) is read by no flag of netpol-agent run"
            );
        }
    }
}
