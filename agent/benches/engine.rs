//! `cargo xtask bench engine`: the policy engine on a synthetic cluster of 10,000 pods in 500
//! namespaces with 10,000 policies (or larger: [`Size`]), compiled for a node running 110 of
//! the pods.
//!
//! Prints the full compile time, the delta time of one pod label change, one policy update and
//! one namespace label change (each the median of many runs, every run a real change), the
//! entries per map and the process's peak memory. Figures only: nothing here fails on time.
//! Recorded in `docs/ENGINE-BENCH.md`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use netpol_agent::{
    model::{
        Change, Cidr, ContainerPort, IpBlock, Labels, Namespace, NetworkPolicy, ObjectRef,
        Operator, Peer, Peers, Pod, PolicyPort, PortMatch, Ports, Protocol, Requirement, Rule,
        Selector, Snapshot,
    },
    policy::{Delta, Engine},
};

const PODS_PER_NAMESPACE: usize = 20;
/// Every 91st of the first 10,000 pods runs on the measured node: the same 110 pods at any
/// size, so every scenario below changes the same local state.
const LOCAL_EVERY: usize = 91;
const LOCAL_AMONG: usize = 10_000;
const NODE: &str = "node-local";
const COMPILE_RUNS: usize = 5;
/// Even, so each scenario ends on its first version (the cluster as built).
const DELTA_RUNS: usize = 100;

/// The cluster's size: `NETPOL_BENCH_NAMESPACES` (default 500) namespaces of 20 pods and
/// `NETPOL_BENCH_POLICIES_PER_NAMESPACE` (default 20) policies; 5,000 and 5 give the issue's
/// large cluster of 100,000 pods with 25,000 policies (five per namespace, so that every
/// namespace has each of the five shapes and every scenario below has its policy).
struct Size {
    namespaces: usize,
    policies_per_namespace: usize,
}

fn size() -> &'static Size {
    static SIZE: std::sync::OnceLock<Size> = std::sync::OnceLock::new();
    SIZE.get_or_init(|| {
        let setting = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.parse().ok())
                .filter(|value| *value > 0)
                .unwrap_or(default)
        };
        Size {
            namespaces: setting("NETPOL_BENCH_NAMESPACES", 500),
            policies_per_namespace: setting("NETPOL_BENCH_POLICIES_PER_NAMESPACE", 20),
        }
    })
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).expect("benchmark CIDRs are valid")
}

fn namespace_name(index: usize) -> String {
    format!("ns-{index:03}")
}

fn namespace(index: usize, team_shift: usize) -> Namespace {
    let env = ["prod", "staging", "dev"][index % 3];
    Namespace::new(
        namespace_name(index),
        labels(&[
            ("team", format!("team-{}", (index + team_shift) % 25)),
            ("env", env.to_owned()),
            ("tier", format!("tier-{}", index % 4)),
        ]),
    )
}

const ROLES: [&str; 4] = ["web", "api", "db", "cache"];

fn pod(ns: usize, index: usize) -> Pod {
    let k = ns * PODS_PER_NAMESPACE + index;
    let block = u8::try_from(1 + (k >> 16)).expect("fewer than 16 million pods");
    let [hi, lo] = u16::try_from(k & 0xffff).unwrap_or(0).to_be_bytes();
    let mut ports = vec![
        ContainerPort {
            name: Some("http".to_owned()),
            // The same name maps to different numbers on different pods.
            port: if k.is_multiple_of(2) { 8080 } else { 8081 },
            protocol: Protocol::Tcp,
        },
        ContainerPort {
            name: Some("metrics".to_owned()),
            port: 9090,
            protocol: Protocol::Tcp,
        },
    ];
    if index.is_multiple_of(5) {
        ports.push(ContainerPort {
            name: Some("dns".to_owned()),
            port: 53,
            protocol: Protocol::Udp,
        });
    }
    let node = if k < LOCAL_AMONG && k.is_multiple_of(LOCAL_EVERY) {
        NODE.to_owned()
    } else {
        format!("node-{:02}", k % 90)
    };
    Pod {
        namespace: namespace_name(ns),
        name: format!("pod-{index:02}"),
        labels: labels(&[
            ("app", format!("app-{}", index % 5)),
            ("role", ROLES[index % 4].to_owned()),
            ("version", format!("v{}", index % 3)),
        ]),
        ips: [
            IpAddr::V4(Ipv4Addr::new(10, block, hi, lo)),
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                u16::from(block),
                u16::from_be_bytes([hi, lo]),
            )),
        ]
        .into(),
        node: Some(node),
        host_network: false,
        ports,
    }
}

fn requirement(key: &str, operator: Operator) -> Requirement {
    Requirement {
        key: key.to_owned(),
        operator,
    }
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn tcp(port: PortMatch) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port,
    }
}

/// Policy `index` of namespace `ns`: five shapes, rotating; `variant` shifts its port, team,
/// except or partner range (for updates).
fn policy(ns: usize, index: usize, variant: usize) -> NetworkPolicy {
    let port = 80 + u16::try_from(variant).unwrap_or(0);
    let selected = Selector::labels([("app", format!("app-{}", index % 5))]);
    let (ingress, egress) = match index % 5 {
        // Same-namespace pods by role, one port.
        0 => (
            Some(vec![Rule {
                peers: Peers::Only(vec![Peer::Pods {
                    namespaces: None,
                    pods: Selector::labels([("role", "web")]),
                }]),
                ports: Ports::Only(vec![tcp(PortMatch::Number(port))]),
            }]),
            None,
        ),
        // Pods of a role in the namespaces of a team, on a named port.
        1 => (
            Some(vec![Rule {
                peers: Peers::Only(vec![Peer::Pods {
                    namespaces: Some(Selector::labels([(
                        "team",
                        format!("team-{}", (ns + index + variant) % 25),
                    )])),
                    pods: Selector::labels([("role", "api")]),
                }]),
                ports: Ports::Only(vec![tcp(PortMatch::Named("http".to_owned()))]),
            }]),
            None,
        ),
        // Egress to the cluster range minus one /24, a port range and DNS.
        2 => (
            None,
            Some(vec![Rule {
                peers: Peers::Only(vec![Peer::IpBlock(IpBlock {
                    cidr: cidr("10.0.0.0/8"),
                    except: vec![cidr(&format!("10.1.{}.0/24", (ns + variant) % 40))],
                })]),
                ports: Ports::Only(vec![
                    tcp(PortMatch::Range {
                        start: 8000,
                        end: 8100,
                    }),
                    PolicyPort {
                        protocol: Protocol::Udp,
                        port: PortMatch::Number(53),
                    },
                ]),
            }]),
        ),
        // Egress to prod/staging namespaces on a named port (resolved per destination pod),
        // and to the world outside the cluster on 443.
        3 => (
            None,
            Some(vec![
                Rule {
                    peers: Peers::Only(vec![Peer::Pods {
                        namespaces: Some(Selector {
                            match_labels: Labels::new(),
                            match_expressions: vec![requirement(
                                "env",
                                Operator::In(set(&["prod", "staging"])),
                            )],
                        }),
                        pods: Selector::everything(),
                    }]),
                    ports: Ports::Only(vec![tcp(PortMatch::Named("http".to_owned()))]),
                },
                Rule {
                    peers: Peers::Only(vec![Peer::IpBlock(IpBlock {
                        cidr: cidr("0.0.0.0/0"),
                        except: vec![cidr("10.0.0.0/8")],
                    })]),
                    ports: Ports::Only(vec![tcp(PortMatch::Number(443))]),
                },
            ]),
        ),
        // Ingress from a partner range and from non-db pods of tiered namespaces.
        _ => (
            Some(vec![Rule {
                peers: Peers::Only(vec![
                    Peer::IpBlock(IpBlock {
                        cidr: cidr(&format!("172.16.{}.0/24", (ns + variant) % 200)),
                        except: vec![cidr(&format!("172.16.{}.128/25", (ns + variant) % 200))],
                    }),
                    Peer::Pods {
                        namespaces: Some(Selector {
                            match_labels: Labels::new(),
                            match_expressions: vec![requirement("tier", Operator::Exists)],
                        }),
                        pods: Selector {
                            match_labels: Labels::new(),
                            match_expressions: vec![requirement(
                                "role",
                                Operator::NotIn(set(&["db"])),
                            )],
                        },
                    },
                ]),
                ports: Ports::Only(vec![tcp(PortMatch::Number(5432))]),
            }]),
            None,
        ),
    };
    NetworkPolicy {
        namespace: namespace_name(ns),
        name: format!("np-{index:02}"),
        pod_selector: selected,
        ingress,
        egress,
    }
}

fn synthetic() -> Snapshot {
    let mut snapshot = Snapshot::default();
    for ns in 0..size().namespaces {
        snapshot.apply(Change::ApplyNamespace(namespace(ns, 0)));
        for index in 0..PODS_PER_NAMESPACE {
            snapshot.apply(Change::ApplyPod(pod(ns, index)));
        }
        for index in 0..size().policies_per_namespace {
            snapshot.apply(Change::ApplyPolicy(policy(ns, index, 0)));
        }
    }
    snapshot
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Times `DELTA_RUNS` changes, alternating between two versions so every run changes
/// something; returns the median and the largest delta.
fn time_changes(engine: &mut Engine, versions: [Change; 2]) -> (Duration, usize) {
    let mut samples = Vec::with_capacity(DELTA_RUNS);
    let mut largest = 0;
    for run in 0..DELTA_RUNS {
        let change = versions[(run + 1) % 2].clone();
        let start = Instant::now();
        let delta: Delta = engine.apply([change]);
        samples.push(start.elapsed());
        largest = largest.max(delta.len());
    }
    (median(samples), largest)
}

fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn millis(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

fn main() {
    let snapshot = synthetic();
    let local = snapshot
        .pods
        .values()
        .filter(|pod| pod.node.as_deref() == Some(NODE))
        .count();

    // `NETPOL_BENCH_ONLY=<n>`: run only delta scenario n, after a single compile (profiling).
    let only: Option<usize> = std::env::var("NETPOL_BENCH_ONLY")
        .ok()
        .and_then(|n| n.parse().ok());
    let compile_runs = if only.is_some() { 1 } else { COMPILE_RUNS };
    let mut compile_times = Vec::with_capacity(compile_runs);
    let mut engine = None;
    for _ in 0..compile_runs {
        let input = snapshot.clone();
        drop(engine.take());
        let start = Instant::now();
        let (compiled, _delta) = Engine::with_snapshot(NODE, input);
        compile_times.push(start.elapsed());
        engine = Some(compiled);
    }
    let compile = median(compile_times);
    let mut engine = engine.expect("compiled at least once");
    let stats = engine.stats();
    let state = engine.state();
    let (endpoints, ipcache, policy_entries, rules) = (
        state.endpoints.len(),
        state.ipcache.len(),
        state.policy.len(),
        state.rules.len(),
    );

    // Each scenario alternates between two versions of one object. Local pods are those
    // with index k = 91 m (k = namespace * 20 + pod): ns-000/pod-00 (app-0), ns-004/pod-11
    // (app-1), ns-009/pod-02 (app-2), ...; policies np-<i> select app-<i mod 5>.
    let pod_at = |ns: usize, index: usize| {
        snapshot
            .pods
            .get(&ObjectRef::new(
                namespace_name(ns),
                format!("pod-{index:02}"),
            ))
            .cloned()
            .expect("pod exists")
    };
    let relabel = |mut pod: Pod, key: &str, value: &str| {
        pod.labels.insert(key.to_owned(), value.to_owned());
        pod
    };
    let scenarios: Vec<(&str, [Change; 2])> = vec![
        (
            "delta: pod label change (remote pod leaves a selected role)",
            [
                Change::ApplyPod(pod_at(0, 4)),
                Change::ApplyPod(relabel(pod_at(0, 4), "role", "cache")),
            ],
        ),
        (
            "delta: pod label change (local pod changes app)",
            [
                Change::ApplyPod(pod_at(0, 0)),
                Change::ApplyPod(relabel(pod_at(0, 0), "app", "app-1")),
            ],
        ),
        (
            "delta: policy update (port)",
            [
                Change::ApplyPolicy(policy(0, 0, 0)),
                Change::ApplyPolicy(policy(0, 0, 1)),
            ],
        ),
        (
            "delta: policy update (namespace selector of a peer)",
            [
                Change::ApplyPolicy(policy(4, 1, 0)),
                Change::ApplyPolicy(policy(4, 1, 1)),
            ],
        ),
        (
            "delta: policy update (ipBlock except)",
            [
                Change::ApplyPolicy(policy(9, 2, 0)),
                Change::ApplyPolicy(policy(9, 2, 1)),
            ],
        ),
        (
            "delta: namespace label change (team)",
            [
                Change::ApplyNamespace(namespace(7, 0)),
                Change::ApplyNamespace(namespace(7, 1)),
            ],
        ),
        (
            "delta: namespace label change (tier removed)",
            [Change::ApplyNamespace(namespace(8, 0)), {
                let mut ns = namespace(8, 0);
                ns.labels.remove("tier");
                Change::ApplyNamespace(ns)
            }],
        ),
    ];
    let mut results = Vec::new();
    for (index, (name, versions)) in scenarios.into_iter().enumerate() {
        if only.is_some_and(|only| only != index) {
            continue;
        }
        let (time, changed) = time_changes(&mut engine, versions);
        results.push((name, time, changed));
    }
    let peak = peak_memory_kib();

    println!("policy engine benchmark (agent/benches/engine.rs)");
    println!(
        "machine: {} ({} logical CPUs)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "cluster: {} namespaces, {} pods, {} policies; node {NODE} runs {local} pods",
        snapshot.namespaces.len(),
        snapshot.pods.len(),
        snapshot.policies.len()
    );
    println!();
    println!("| measurement | median | target | met | map entries changed |");
    println!("| --- | --- | --- | --- | --- |");
    let row = |name: &str, time: Duration, target: Duration, changed: Option<usize>| {
        println!(
            "| {name} | {} | <= {} | {} | {} |",
            millis(time),
            millis(target),
            if time <= target { "yes" } else { "no" },
            changed.map_or_else(|| "-".to_owned(), |n| n.to_string())
        );
    };
    // Issue 13's targets: 1 s at 10,000 pods, 2 s at the large cluster's 100,000.
    let large = snapshot.pods.len() > 10_000;
    let compile_target = Duration::from_secs(if large { 2 } else { 1 });
    row("full compile", compile, compile_target, None);
    for (name, time, changed) in &results {
        row(name, *time, Duration::from_millis(5), Some(*changed));
    }
    println!();
    println!("| map | entries |");
    println!("| --- | --- |");
    println!("| NP_ENDPOINTS | {endpoints} |");
    println!("| NP_IPCACHE | {ipcache} |");
    println!("| NP_POLICY | {policy_entries} |");
    println!("| rule table | {rules} |");
    println!();
    println!(
        "engine: {} local endpoints, {} relevant policies, {} peers, {} classes, {} sets",
        stats.local_endpoints, stats.relevant_policies, stats.peers, stats.classes, stats.sets
    );
    match peak {
        // The large cluster's memory target is the agent's, measured by `bench scale`: this
        // process holds several copies of the cluster.
        Some(kib) if large => println!(
            "peak memory (VmHWM, whole process): {:.1} MiB",
            kib as f64 / 1024.0
        ),
        Some(kib) => {
            let mib = kib as f64 / 1024.0;
            let met = if mib <= 256.0 { "yes" } else { "no" };
            println!("peak memory (VmHWM, whole process): {mib:.1} MiB (target <= 256 MiB: {met})");
        }
        None => println!("peak memory: /proc/self/status has no VmHWM"),
    }
}
