//! Differential suite with real packets: random small clusters are compiled by the engine for
//! one node, enforced through the iptables backend on a simulated node, and every TCP probe
//! between local pods, a remote pod and an internet host must get the reference evaluator's
//! verdict for the sides this node enforces (a remote source's egress is its own node's).
//!
//! Seeds are fixed (reproducible); `NETPOL_DIFF_SEEDS=<n>` runs more.

use std::{net::IpAddr, time::Duration};

use netpol_agent::{
    backend::{
        Backend, PodInterfaces,
        iptables::{IptablesBackend, cleanup},
    },
    model::{
        Change, Cidr, ContainerPort, IpBlock, Labels, Namespace, NetworkPolicy, Peer, Peers, Pod,
        PolicyPort, PortMatch, Ports, Protocol, Rule, Selector, Snapshot,
    },
    policy::{Flow, compile, evaluate},
};
use netpol_tests::{netns::SimulatedNode, require_root};

const NODE: &str = "node-1";
const LOCAL: [&str; 4] = ["10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13"];
const REMOTE_POD: &str = "10.244.2.10";
const INTERNET: &str = "198.51.100.7";
const PORTS: [u16; 2] = [80, 81];

/// xorshift64*: enough randomness for shapes, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).expect("test CIDR")
}

fn pod(namespace: &str, name: &str, label: &str, ip: &str, node: &str) -> Pod {
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(&[("pod", label)]),
        ips: [ip.parse::<IpAddr>().expect("pod address")].into(),
        node: Some(node.to_owned()),
        host_network: false,
        ports: vec![ContainerPort {
            name: Some("serve-80-tcp".to_owned()),
            port: 80,
            protocol: Protocol::Tcp,
        }],
    }
}

fn peer(rng: &mut Rng) -> Peer {
    let name = ["a", "b", "c"][rng.below(3)];
    match rng.below(6) {
        0 => Peer::Pods {
            namespaces: None,
            pods: Selector::labels([("pod", name)]),
        },
        1 => Peer::Pods {
            namespaces: Some(Selector::labels([("ns", ["x", "y"][rng.below(2)])])),
            pods: Selector::everything(),
        },
        2 => Peer::IpBlock(IpBlock {
            cidr: cidr("10.244.1.0/24"),
            except: vec![cidr(["10.244.1.12/32", "10.244.1.8/30"][rng.below(2)])],
        }),
        3 => Peer::IpBlock(IpBlock {
            cidr: cidr("198.51.100.0/24"),
            except: Vec::new(),
        }),
        4 => Peer::IpBlock(IpBlock {
            cidr: cidr("0.0.0.0/0"),
            except: vec![cidr("10.244.0.0/16")],
        }),
        _ => Peer::IpBlock(IpBlock {
            cidr: cidr("10.244.0.0/16"),
            except: vec![cidr("10.244.2.0/24")],
        }),
    }
}

fn ports(rng: &mut Rng) -> Ports {
    let tcp = |port| PolicyPort {
        protocol: Protocol::Tcp,
        port,
    };
    match rng.below(6) {
        0 | 1 => Ports::All,
        2 => Ports::Only(vec![tcp(PortMatch::Number(80))]),
        3 => Ports::Only(vec![tcp(PortMatch::Range { start: 81, end: 90 })]),
        4 => Ports::Only(vec![tcp(PortMatch::Named("serve-80-tcp".to_owned()))]),
        _ => Ports::Only(vec![PolicyPort {
            protocol: Protocol::Udp,
            port: PortMatch::Number(80),
        }]),
    }
}

fn rules(rng: &mut Rng) -> Option<Vec<Rule>> {
    if rng.below(3) == 0 {
        return None;
    }
    Some(
        (0..rng.below(3))
            .map(|_| Rule {
                peers: if rng.below(4) == 0 {
                    Peers::All
                } else {
                    Peers::Only(vec![peer(rng)])
                },
                ports: ports(rng),
            })
            .collect(),
    )
}

/// A random cluster: four local pods in namespaces x and y, a remote pod, 1 to 3 policies.
fn cluster(seed: u64) -> Snapshot {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut snapshot = Snapshot::default();
    for name in ["x", "y"] {
        snapshot.apply(Change::ApplyNamespace(Namespace::new(
            name,
            labels(&[("ns", name)]),
        )));
    }
    for (index, ip) in LOCAL.iter().enumerate() {
        let namespace = if index < 2 { "x" } else { "y" };
        let label = ["a", "b", "c"][rng.below(3)];
        snapshot.apply(Change::ApplyPod(pod(
            namespace,
            &format!("p{index}"),
            label,
            ip,
            NODE,
        )));
    }
    snapshot.apply(Change::ApplyPod(pod(
        "y", "remote", "c", REMOTE_POD, "node-2",
    )));
    for index in 0..1 + rng.below(3) {
        let pod_selector = match rng.below(3) {
            0 => Selector::everything(),
            _ => Selector::labels([("pod", ["a", "b", "c"][rng.below(3)])]),
        };
        let (mut ingress, mut egress) = (rules(&mut rng), rules(&mut rng));
        if ingress.is_none() && egress.is_none() {
            ingress = Some(Vec::new());
            if rng.below(2) == 0 {
                egress = Some(Vec::new());
            }
        }
        snapshot.apply(Change::ApplyPolicy(NetworkPolicy {
            namespace: ["x", "y"][rng.below(2)].to_owned(),
            name: format!("np{index}"),
            pod_selector,
            ingress,
            egress,
        }));
    }
    snapshot
}

/// What this node must decide: the sides whose pod runs here.
fn expected(snapshot: &Snapshot, src: IpAddr, dst: IpAddr, port: u16) -> bool {
    let verdict = evaluate(snapshot, &Flow::new(src, dst, 6, port));
    let local = |ip: IpAddr| LOCAL.iter().any(|local| local.parse::<IpAddr>() == Ok(ip));
    (verdict.egress.allowed || !local(src)) && (verdict.ingress.allowed || !local(dst))
}

#[test]
fn random_compiled_states_give_the_evaluators_verdicts_on_real_packets() {
    if !require_root("random_compiled_states_give_the_evaluators_verdicts_on_real_packets") {
        return;
    }
    let seeds: u64 = std::env::var("NETPOL_DIFF_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let mut node = SimulatedNode::new("10.244.1.0/24", &[REMOTE_POD, INTERNET]);
    for ip in LOCAL {
        node.add_pod(ip);
    }
    let mut servers = Vec::new();
    for pod in &node.pods {
        for port in PORTS {
            servers.push(pod.netns.serve(port, "hello"));
        }
    }
    for port in PORTS {
        servers.push(node.ext.serve(port, "hello"));
    }
    let mut backend = node
        .node
        .run(IptablesBackend::detect)
        .expect("iptables tools");
    let ip = |text: &str| text.parse::<IpAddr>().expect("address");
    let (mut probes, mut allowed) = (0, 0);
    let mut mismatches = Vec::new();
    for seed in 0..seeds {
        let snapshot = cluster(seed);
        let state = compile(&snapshot, NODE);
        node.node.run(|| {
            backend
                .set_service_ranges(&[])
                .and_then(|()| backend.converge(&state, &PodInterfaces::new()))
                .expect("converge")
        });
        // Every probe is a new connection (a new source port), so connections tracked under
        // the previous state do not answer for this one.
        for (index, src) in LOCAL.iter().enumerate() {
            for dst in LOCAL.iter().chain(&[REMOTE_POD, INTERNET]) {
                if src == dst {
                    continue;
                }
                for port in PORTS {
                    let want = expected(&snapshot, ip(src), ip(dst), port);
                    let got = node.pods[index].netns.tcp_probe_within(
                        ip(dst),
                        port,
                        Duration::from_millis(500),
                    );
                    probes += 1;
                    allowed += usize::from(want);
                    if want != got {
                        mismatches.push(format!(
                            "seed {seed}: {src} -> {dst}:{port} want {want} got {got}"
                        ));
                    }
                }
            }
        }
        for src in [REMOTE_POD, INTERNET] {
            for dst in LOCAL {
                for port in PORTS {
                    let want = expected(&snapshot, ip(src), ip(dst), port);
                    let got = node.ext.tcp_probe_from(ip(src), ip(dst), port);
                    probes += 1;
                    allowed += usize::from(want);
                    if want != got {
                        mismatches.push(format!(
                            "seed {seed}: {src} -> {dst}:{port} want {want} got {got}"
                        ));
                    }
                }
            }
        }
        if !mismatches.is_empty() {
            eprintln!("seed {seed} cluster: {snapshot:#?}\nstate: {state:#?}");
            break;
        }
    }
    node.node.run(|| cleanup().expect("cleanup"));
    println!("{probes} probes ({allowed} expected allowed) over {seeds} random states");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
