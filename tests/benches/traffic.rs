//! `cargo xtask bench traffic`: what enforcement costs real connections (root). A simulated
//! node with 110 local pods on routed veths; pod 0 serves, pod 1 is the client; a synthetic
//! cluster of 2,500 pods elsewhere and 100 or 10,000 policies over it, a hundredth of which
//! select the server (one of them allows the client; an egress policy selects the client and
//! allows the server). Four states, interleaved round by round in a rotating order: no
//! enforcement (no agent), the eBPF backend, the iptables backend, and the eBPF backend with
//! the cluster's switch off (programs attached, returning at once: the cost of attaching).
//! Measured in each:
//!
//! - request/response: one TCP connection, a 64-byte request and a 64-byte reply at a time,
//!   for [`SPELL`]: transactions per second and the p99 latency;
//! - new connections: connect, one request and reply, close (the server closes first), for
//!   [`SPELL`]: connections per second;
//! - bulk: iperf3 (Debian's) for [`SPELL`]: bits per second received;
//! - on eBPF, in a separate pass with the kernel's BPF statistics on (they cost the programs two
//!   clock reads, so the passes above run without them): the programs' mean run time per packet
//!   during request/response and new connections.
//!
//! The machine is shared and noisy, so each state's figure is divided by the no-enforcement
//! figure of the same round and the median and spread of those ratios are printed, next to the
//! targets of issue 13. Figures in `docs/TRAFFIC-BENCH.md`; no assertion on time.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use netpol_tests::{
    measure::percentile_ms,
    netns::{Netns, SimulatedNode, enter},
    objects::{ObjectsDir, eni_config, start_agent_on},
    require_root,
    scenarios::NODE,
};

const LOCAL_PODS: usize = 110;
const CLUSTER_PODS: usize = 2_500;
const NAMESPACES: usize = 50;
const SPELL: Duration = Duration::from_secs(3);
const STATS_SPELL: Duration = Duration::from_secs(2);
const RR_PORT: u16 = 7000;
const CRR_PORT: u16 = 7001;
const IPERF_PORT: u16 = 5201;
const MESSAGE: usize = 64;

fn rounds() -> usize {
    std::env::var("NETPOL_TRAFFIC_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5)
}

fn local_ip(index: usize) -> String {
    format!("10.244.{}.{}", 2 + index / 200, 2 + index % 200)
}

fn pod_yaml(name: &str, namespace: &str, app: &str, node: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
    )
}

/// The namespaces, this node's pods and the rest of the cluster's.
fn write_cluster(objects: &ObjectsDir) {
    let mut namespaces =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n");
    for index in 0..NAMESPACES {
        namespaces.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{index}\n  labels:\n    team: t{}\n",
            index % 10
        ));
    }
    objects.write("cluster.yaml", &namespaces);
    let local: String = (0..LOCAL_PODS)
        .map(|index| {
            let app = match index {
                0 => "server".to_owned(),
                1 => "client".to_owned(),
                _ => format!("app-{index}"),
            };
            pod_yaml(
                &format!("local-{index}"),
                "default",
                &app,
                NODE,
                &local_ip(index),
            )
        })
        .collect();
    objects.write("node-pods.yaml", &local);
    let remote: String = (0..CLUSTER_PODS)
        .map(|index| {
            pod_yaml(
                &format!("pod-{index}"),
                &format!("ns-{}", index % NAMESPACES),
                &format!("app-{}", index % 500),
                &format!("node-{}", 2 + index % 20),
                &format!("10.128.{}.{}", index >> 8, index & 255),
            )
        })
        .collect();
    objects.write("cluster-pods.yaml", &remote);
}

/// `count` policies: most over remote pods (an app reachable from another app in a team's
/// namespaces and from an ipBlock with an except, on two ports); every hundredth selects the
/// server from a local app and an ipBlock; one lets the client in, one lets it out.
fn write_policies(objects: &ObjectsDir, count: usize) {
    let ports =
        format!("    - port: {RR_PORT}\n    - port: {CRR_PORT}\n    - port: {IPERF_PORT}\n");
    let mut text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-from-client\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: server\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client\n    ports:\n{ports}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: client-to-server\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: client\n  policyTypes:\n  - Egress\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          app: server\n    ports:\n{ports}"
    );
    for index in 0..count.saturating_sub(1) {
        let block = format!(
            "    - ipBlock:\n        cidr: 172.{0}.0.0/16\n        except:\n        - 172.{0}.{1}.0/24\n",
            16 + index % 16,
            index % 256
        );
        text.push_str(&if index % 100 == 0 {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: server-{index}\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: server\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: app-{}\n{block}    ports:\n    - port: 80\n    - port: {}\n",
                2 + index / 100 % (LOCAL_PODS - 2),
                8000 + index / 100
            )
        } else {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: policy-{index}\n  namespace: ns-{}\nspec:\n  podSelector:\n    matchLabels:\n      app: app-{}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: t{}\n      podSelector:\n        matchLabels:\n          app: app-{}\n{block}    ports:\n    - port: 80\n    - port: 8080\n",
                index % NAMESPACES,
                index % 500,
                index % 10,
                (index + 1) % 500
            )
        });
    }
    objects.write("policies.yaml", &text);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    Ebpf,
    Iptables,
    /// The eBPF programs attached with the cluster's switch off: what attaching costs before
    /// any of the decision runs.
    EbpfSwitchedOff,
}

impl State {
    const ALL: [Self; 4] = [
        Self::Open,
        Self::Ebpf,
        Self::Iptables,
        Self::EbpfSwitchedOff,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Open => "no enforcement",
            Self::Ebpf => "eBPF",
            Self::Iptables => "iptables",
            Self::EbpfSwitchedOff => "eBPF, switch off",
        }
    }
}

/// One state's figures in one round.
#[derive(Clone, Copy, Default)]
struct Figures {
    transactions_per_second: f64,
    rr_p99_us: f64,
    connections_per_second: f64,
    bits_per_second: f64,
}

/// The server pod's TCP servers: request/response (echo a message at a time) and one exchange
/// per connection (the server closes first, so TIME_WAIT stays on its side and the client's
/// ports do not run out).
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    iperf: Child,
}

impl Servers {
    fn start(server: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [(RR_PORT, false), (CRR_PORT, true)]
            .into_iter()
            .map(|(port, once)| {
                let stop = Arc::clone(&stop);
                let path = format!("/run/netns/{}", server.name());
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let thread = std::thread::spawn(move || {
                    enter(&path);
                    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind server");
                    // accept(2) honours the receive timeout, so the loop sees `stop`.
                    socket2::SockRef::from(&listener)
                        .set_read_timeout(Some(Duration::from_millis(100)))
                        .expect("listener timeout");
                    ready_tx.send(()).expect("signal readiness");
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((stream, _)) = listener.accept() else {
                            continue;
                        };
                        if once {
                            answer_once(stream);
                        } else {
                            std::thread::spawn(move || echo(stream));
                        }
                    }
                });
                ready_rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("server started");
                thread
            })
            .collect();
        let iperf = Command::new("ip")
            .args(["netns", "exec", server.name(), "iperf3", "--server"])
            .args(["--port", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 runs (cargo xtask setup installs it)");
        Self {
            stop,
            threads,
            iperf,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = self.iperf.kill();
        let _ = self.iperf.wait();
    }
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; MESSAGE];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            break;
        }
    }
}

fn answer_once(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; MESSAGE];
    if stream.read_exact(&mut buf).is_ok() {
        let _ = stream.write_all(&buf);
    }
}

/// Request/response on one connection for `spell`: (transactions per second, p99 µs).
fn request_response(client: &Netns, server: IpAddr, spell: Duration) -> (f64, f64) {
    client.run(|| {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::new(server, RR_PORT), SPELL)
            .expect("the client reaches the server");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut buf = [0u8; MESSAGE];
        let mut latencies = Vec::with_capacity(200_000);
        let start = Instant::now();
        while start.elapsed() < spell {
            let sent = Instant::now();
            stream.write_all(&buf).expect("request");
            stream.read_exact(&mut buf).expect("reply");
            latencies.push(sent.elapsed());
        }
        let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
        (rate, percentile_ms(&mut latencies, 0.99) * 1000.0)
    })
}

/// New connections for `spell`, each with one exchange: connections per second.
fn connect_request_response(client: &Netns, server: IpAddr, spell: Duration) -> f64 {
    client.run(|| {
        let address = SocketAddr::new(server, CRR_PORT);
        let mut buf = [0u8; MESSAGE];
        let mut count = 0u64;
        let start = Instant::now();
        while start.elapsed() < spell {
            let mut stream =
                TcpStream::connect_timeout(&address, SPELL).expect("the client connects");
            stream.set_nodelay(true).expect("nodelay");
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            stream.write_all(&buf).expect("request");
            stream.read_exact(&mut buf).expect("reply");
            // Wait for the server's FIN: the connection is over on both sides.
            let _ = stream.read(&mut buf);
            count += 1;
        }
        count as f64 / start.elapsed().as_secs_f64()
    })
}

/// iperf3 from the client for `spell`: bits per second received.
fn bulk(client: &Netns, server: IpAddr) -> f64 {
    // The server may take a moment to listen after it was started.
    for _ in 0..50 {
        let output = Command::new("ip")
            .args(["netns", "exec", client.name(), "iperf3", "--json"])
            .args(["--client", &server.to_string()])
            .args(["--port", &IPERF_PORT.to_string()])
            .args(["--time", &SPELL.as_secs().to_string()])
            .output()
            .expect("iperf3 runs");
        if output.status.success() {
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("iperf3 --json prints JSON");
            return report["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .expect("iperf3 reports bits per second");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("iperf3 never completed a test");
}

/// Summed run time and run count of the agent's programs (BPF statistics must be on).
fn program_stats() -> (Duration, u64) {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| {
            info.name_as_str()
                .is_some_and(|name| name.starts_with("netpol_"))
        })
        .fold((Duration::ZERO, 0), |(time, count), info| {
            (time + info.run_time(), count + info.run_count())
        })
}

/// Mean run time per program run while `traffic` runs.
fn mean_run_ns(traffic: impl FnOnce()) -> f64 {
    let (time_before, count_before) = program_stats();
    traffic();
    let (time_after, count_after) = program_stats();
    (time_after - time_before).as_nanos() as f64 / (count_after - count_before).max(1) as f64
}

fn median_and_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    (median, values[0], values[values.len() - 1])
}

fn ratio_line(label: &str, rounds: &[[Figures; 4]], state: usize, pick: fn(&Figures) -> f64) {
    let (median, low, high) = median_and_spread(
        rounds
            .iter()
            .map(|round| pick(&round[state]) / pick(&round[0]))
            .collect(),
    );
    print!("{label} {median:.3} ({low:.3}-{high:.3})  ");
}

fn main() {
    if !require_root("cargo xtask bench traffic") {
        return;
    }
    let rounds = rounds();
    // Fail early where the kernel keeps no BPF statistics (before 5.8).
    drop(enable_stats(Stats::RunTime).expect("BPF statistics (kernel 5.8 or later)"));
    println!(
        "Simulated node, {LOCAL_PODS} local pods, {CLUSTER_PODS} pods elsewhere; {rounds} rounds of {} s per measurement.",
        SPELL.as_secs()
    );
    println!(
        "Targets (issue 13, at 10,000 policies): new-connection overhead of eBPF <= 5 % and at most"
    );
    println!(
        "  half of iptables'; programs' mean run time <= 150 ns per packet; established within noise."
    );
    println!("Ratios to no enforcement in the same round: median (lowest-highest).");
    for policies in [100, 10_000] {
        let mut node = SimulatedNode::new("10.244.0.0/16", &[]);
        for index in 0..LOCAL_PODS {
            node.add_pod(&local_ip(index));
        }
        // Wide client port range: a new-connection spell opens tens of thousands.
        node.pods[1]
            .netns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000");
        let server_ip = node.pods[0].ip;
        let objects = ObjectsDir::new("bench-traffic");
        write_cluster(&objects);
        write_policies(&objects, policies);
        let servers = Servers::start(&node.pods[0].netns);
        let client = &node.pods[1].netns;
        let mut figures: Vec<[Figures; 4]> = Vec::new();
        let mut run_ns: Vec<(f64, f64)> = Vec::new();
        for round in 0..rounds {
            let mut this_round = [Figures::default(); 4];
            for offset in 0..State::ALL.len() {
                let slot = (round + offset) % State::ALL.len();
                let state = State::ALL[slot];
                let switch = objects.0.join("eni-config.yaml");
                let agent = match state {
                    State::Open => None,
                    State::Ebpf => Some(start_agent_on(
                        &node,
                        &objects,
                        &["--backend", "ebpf"],
                        None,
                    )),
                    State::Iptables => Some(start_agent_on(
                        &node,
                        &objects,
                        &["--backend", "iptables"],
                        None,
                    )),
                    State::EbpfSwitchedOff => {
                        objects.write("eni-config.yaml", &eni_config("true"));
                        Some(start_agent_on(
                            &node,
                            &objects,
                            &["--backend", "ebpf"],
                            None,
                        ))
                    }
                };
                let (transactions_per_second, rr_p99_us) =
                    request_response(client, server_ip, SPELL);
                let connections_per_second = connect_request_response(client, server_ip, SPELL);
                let bits_per_second = bulk(client, server_ip);
                this_round[slot] = Figures {
                    transactions_per_second,
                    rr_p99_us,
                    connections_per_second,
                    bits_per_second,
                };
                if state == State::Ebpf {
                    let _stats = enable_stats(Stats::RunTime).expect("BPF statistics");
                    let rr = mean_run_ns(|| {
                        request_response(client, server_ip, STATS_SPELL);
                    });
                    let crr = mean_run_ns(|| {
                        connect_request_response(client, server_ip, STATS_SPELL);
                    });
                    run_ns.push((rr, crr));
                }
                drop(agent);
                let _ = std::fs::remove_file(&switch);
            }
            figures.push(this_round);
        }
        drop(servers);
        println!("{policies} policies:");
        let open = median_and_spread(
            figures
                .iter()
                .map(|round| round[0].transactions_per_second)
                .collect(),
        );
        let open_crr = median_and_spread(
            figures
                .iter()
                .map(|round| round[0].connections_per_second)
                .collect(),
        );
        let open_bulk = median_and_spread(
            figures
                .iter()
                .map(|round| round[0].bits_per_second)
                .collect(),
        );
        let open_p99 = median_and_spread(figures.iter().map(|round| round[0].rr_p99_us).collect());
        println!(
            "  {:>14}: request/response {:.0}/s (p99 {:.0} us), new connections {:.0}/s, bulk {:.2} Gbit/s",
            State::Open.name(),
            open.0,
            open_p99.0,
            open_crr.0,
            open_bulk.0 / 1e9
        );
        for (slot, state) in State::ALL.iter().enumerate().skip(1) {
            print!("  {:>14}: ", state.name());
            ratio_line("request/response", &figures, slot, |f| {
                f.transactions_per_second
            });
            ratio_line("p99 latency", &figures, slot, |f| f.rr_p99_us);
            ratio_line("new connections", &figures, slot, |f| {
                f.connections_per_second
            });
            ratio_line("bulk", &figures, slot, |f| f.bits_per_second);
            println!();
        }
        let new_connection_overhead = |slot: usize| {
            1.0 - median_and_spread(
                figures
                    .iter()
                    .map(|round| {
                        round[slot].connections_per_second / round[0].connections_per_second
                    })
                    .collect(),
            )
            .0
        };
        println!(
            "  new-connection overhead: eBPF {:.1} %, iptables {:.1} %, eBPF with the switch off {:.1} %",
            new_connection_overhead(1) * 100.0,
            new_connection_overhead(2) * 100.0,
            new_connection_overhead(3) * 100.0
        );
        let rr_ns = median_and_spread(run_ns.iter().map(|(rr, _)| *rr).collect());
        let crr_ns = median_and_spread(run_ns.iter().map(|(_, crr)| *crr).collect());
        println!(
            "  eBPF programs' mean run time per packet: request/response {:.0} ns ({:.0}-{:.0}), new connections {:.0} ns ({:.0}-{:.0})",
            rr_ns.0, rr_ns.1, rr_ns.2, crr_ns.0, crr_ns.1, crr_ns.2
        );
    }
}
