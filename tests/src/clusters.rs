//! Random small clusters for the differential suites: namespaces and pods with labels, IPv4
//! and IPv6 addresses, named container ports that differ per pod, and NetworkPolicies with pod
//! and namespace selectors (matchLabels and every matchExpressions operator), ipBlocks whose
//! excepts overlap pod addresses, numeric, named and ranged ports on TCP, UDP and SCTP, and
//! flows chosen to hit the interesting addresses and ports. Seeded, so a failure names the
//! seed that reproduces it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netpol_agent::{
    model::{
        Cidr, ContainerPort, IpBlock, Labels, Namespace, NetworkPolicy, Operator, Peer, Peers, Pod,
        PolicyPort, PortMatch, Ports, Protocol, Requirement, Rule, Selector, Snapshot,
    },
    policy::Flow,
};

/// The node the clusters' local pods run on.
pub const NODE: &str = "node-1";

/// SplitMix64: small, fast and good enough to explore with.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const PORT_NAMES: [&str; 2] = ["web", "metrics"];
const PORTS: [u16; 6] = [80, 81, 443, 8080, 8443, 9000];

fn labels(rng: &mut Rng) -> Labels {
    let mut labels = Labels::new();
    for key in KEYS {
        if rng.chance(70) {
            labels.insert(key.to_owned(), (*rng.pick(&VALUES)).to_owned());
        }
    }
    labels
}

fn selector(rng: &mut Rng) -> Selector {
    let mut selector = Selector::everything();
    if rng.chance(60) {
        selector.match_labels.insert(
            (*rng.pick(&KEYS)).to_owned(),
            (*rng.pick(&VALUES)).to_owned(),
        );
    }
    if rng.chance(35) {
        let values: BTreeSet<String> = (0..1 + rng.below(2))
            .map(|_| (*rng.pick(&VALUES)).to_owned())
            .collect();
        let operator = match rng.below(4) {
            0 => Operator::In(values),
            1 => Operator::NotIn(values),
            2 => Operator::Exists,
            _ => Operator::DoesNotExist,
        };
        selector.match_expressions.push(Requirement {
            key: (*rng.pick(&KEYS)).to_owned(),
            operator,
        });
    }
    selector
}

fn v4(index: usize, local: bool) -> IpAddr {
    let subnet = if local { 1 } else { 2 };
    IpAddr::V4(Ipv4Addr::new(10, 244, subnet, 10 + index as u8))
}

fn v6(index: usize, local: bool) -> IpAddr {
    let subnet = if local { 1 } else { 2 };
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        subnet,
        0,
        0,
        0,
        0x10 + index as u16,
    ))
}

/// A random cluster and the addresses worth probing.
pub struct Cluster {
    pub snapshot: Snapshot,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<u16>,
}

pub fn cluster(rng: &mut Rng) -> Cluster {
    let mut snapshot = Snapshot::default();
    for name in NAMESPACES {
        let namespace = Namespace::new(name, labels(rng));
        snapshot.namespaces.insert(name.to_owned(), namespace);
    }
    let mut addresses = Vec::new();
    let pod_count = 4 + rng.below(5);
    for index in 0..pod_count {
        let local = rng.chance(60);
        let host_network = rng.chance(5);
        let mut ips = BTreeSet::new();
        ips.insert(v4(index, local));
        if rng.chance(40) {
            ips.insert(v6(index, local));
        }
        addresses.extend(ips.iter().copied());
        let mut ports = Vec::new();
        for name in PORT_NAMES {
            if rng.chance(60) {
                ports.push(ContainerPort {
                    name: Some(name.to_owned()),
                    port: *rng.pick(&PORTS),
                    protocol: *rng.pick(&Protocol::ALL),
                });
            }
        }
        let pod = Pod {
            namespace: (*rng.pick(&NAMESPACES)).to_owned(),
            name: format!("pod-{index}"),
            labels: labels(rng),
            ips: ips.into_iter().collect(),
            node: Some(if local { NODE } else { "node-2" }.to_owned()),
            host_network,
            ports,
        };
        snapshot.pods.insert(pod.key(), pod);
    }
    // Outside addresses, some inside the ipBlocks below.
    addresses.extend(
        [
            "198.51.100.7",
            "198.51.100.200",
            "203.0.113.9",
            "10.244.3.1",
            "fd00::99",
            "2001:db8::1",
        ]
        .iter()
        .map(|text| text.parse::<IpAddr>().expect("valid")),
    );
    let mut ports: Vec<u16> = PORTS.to_vec();
    ports.extend([0, 79, 82, 9001, 65535]);
    for index in 0..1 + rng.below(4) {
        let policy = policy(rng, index, &snapshot, &mut ports);
        snapshot.policies.insert(policy.key(), policy);
    }
    Cluster {
        snapshot,
        addresses,
        ports,
    }
}

fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).expect("generator CIDRs are valid")
}

fn ip_block(rng: &mut Rng, snapshot: &Snapshot) -> IpBlock {
    let pod_ips: Vec<IpAddr> = snapshot
        .pods
        .values()
        .flat_map(|pod| pod.ips.iter().copied())
        .collect();
    match rng.below(5) {
        0 => IpBlock {
            cidr: cidr("0.0.0.0/0"),
            except: vec![cidr("198.51.100.128/25")],
        },
        1 => IpBlock {
            cidr: cidr("10.244.0.0/16"),
            except: vec![cidr("10.244.1.0/24")],
        },
        2 => {
            // A pod's own address carved out of its subnet.
            let ip = *rng.pick(&pod_ips);
            let (wide, len) = match ip {
                IpAddr::V4(_) => (Cidr::new(ip, 24), 32),
                IpAddr::V6(_) => (Cidr::new(ip, 64), 128),
            };
            IpBlock {
                cidr: wide.expect("valid"),
                except: vec![Cidr::new(ip, len).expect("valid")],
            }
        }
        3 => IpBlock {
            cidr: cidr("fd00:10:244::/48"),
            except: vec![],
        },
        _ => IpBlock {
            cidr: cidr("198.51.100.0/24"),
            except: vec![],
        },
    }
}

fn peers(rng: &mut Rng, snapshot: &Snapshot) -> Peers {
    if rng.chance(20) {
        return Peers::All;
    }
    let peers = (0..1 + rng.below(2))
        .map(|_| match rng.below(4) {
            0 => Peer::Pods {
                namespaces: None,
                pods: selector(rng),
            },
            1 => Peer::Pods {
                namespaces: Some(selector(rng)),
                pods: Selector::everything(),
            },
            2 => Peer::Pods {
                namespaces: Some(selector(rng)),
                pods: selector(rng),
            },
            _ => Peer::IpBlock(ip_block(rng, snapshot)),
        })
        .collect();
    Peers::Only(peers)
}

fn port_list(rng: &mut Rng, ports: &mut Vec<u16>) -> Ports {
    if rng.chance(30) {
        return Ports::All;
    }
    let list = (0..1 + rng.below(2))
        .map(|_| {
            let protocol = *rng.pick(&Protocol::ALL);
            let port = match rng.below(5) {
                0 => PortMatch::All,
                1 | 2 => PortMatch::Number(*rng.pick(&PORTS)),
                3 => {
                    let start = *rng.pick(&PORTS);
                    let end = start + rng.below(700) as u16;
                    ports.extend([start.saturating_sub(1), end, end.saturating_add(1)]);
                    PortMatch::Range { start, end }
                }
                _ => PortMatch::Named((*rng.pick(&PORT_NAMES)).to_owned()),
            };
            PolicyPort { protocol, port }
        })
        .collect();
    Ports::Only(list)
}

fn rules(rng: &mut Rng, snapshot: &Snapshot, ports: &mut Vec<u16>) -> Vec<Rule> {
    (0..rng.below(3))
        .map(|_| Rule {
            peers: peers(rng, snapshot),
            ports: port_list(rng, ports),
        })
        .collect()
}

fn policy(rng: &mut Rng, index: usize, snapshot: &Snapshot, ports: &mut Vec<u16>) -> NetworkPolicy {
    let (ingress, egress) = match rng.below(3) {
        0 => (Some(rules(rng, snapshot, ports)), None),
        1 => (None, Some(rules(rng, snapshot, ports))),
        _ => (
            Some(rules(rng, snapshot, ports)),
            Some(rules(rng, snapshot, ports)),
        ),
    };
    NetworkPolicy {
        namespace: (*rng.pick(&NAMESPACES)).to_owned(),
        name: format!("policy-{index}"),
        pod_selector: selector(rng),
        ingress,
        egress,
    }
}

/// A random flow between two addresses of one family.
pub fn flow(rng: &mut Rng, cluster: &Cluster) -> Flow {
    loop {
        let src = *rng.pick(&cluster.addresses);
        let dst = *rng.pick(&cluster.addresses);
        if src == dst || src.is_ipv4() != dst.is_ipv4() {
            continue;
        }
        let protocol = match rng.below(7) {
            0 | 1 => 6,
            2 | 3 => 17,
            4 => 132,
            _ if dst.is_ipv4() => 1,
            _ => 58,
        };
        let port = match protocol {
            6 | 17 | 132 => *rng.pick(&cluster.ports),
            _ => 0,
        };
        return Flow::new(src, dst, protocol, port);
    }
}
