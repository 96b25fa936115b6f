//! The synthetic cluster the datapath and iptables benchmarks share (a module directory, so
//! cargo does not take it for a bench target of its own): 10,000 dual-stack pods in 500
//! namespaces, 110 of them on the measured node, and any number of policies (pod and namespace
//! selectors, ipBlocks with excepts, ports and ranges).

use std::{collections::BTreeSet, net::IpAddr};

use netpol_agent::model::{
    Cidr, IpBlock, Labels, Namespace, NetworkPolicy, Peer, Peers, Pod, PolicyPort, PortMatch,
    Ports, Protocol, Rule, Selector, Snapshot,
};

const NAMESPACES: usize = 500;
const PODS_PER_NAMESPACE: usize = 20;
pub const NODE: &str = "node-local";

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

pub fn pod_ips(k: usize) -> BTreeSet<IpAddr> {
    let v4 = format!("10.{}.{}.{}", 64 + k / 65536, (k / 256) % 256, k % 256);
    let v6 = format!("fd00:10:244::{:x}", k + 1);
    [v4.parse().expect("valid"), v6.parse().expect("valid")].into()
}

/// The first policy: selects the measured pod (`ns-000/pod-0`, local, `app=web`) and allows
/// only `access=granted` on TCP `port` (80 in [`cluster`]; another port is a policy update).
pub fn measured_policy(port: u16) -> NetworkPolicy {
    NetworkPolicy {
        namespace: "ns-000".to_owned(),
        name: "measured".to_owned(),
        pod_selector: Selector::labels([("app", "web")]),
        ingress: Some(vec![Rule {
            peers: Peers::Only(vec![Peer::Pods {
                namespaces: None,
                pods: Selector::labels([("access", "granted")]),
            }]),
            ports: Ports::Only(vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: PortMatch::Number(port),
            }]),
        }]),
        egress: None,
    }
}

/// 10,000 dual-stack pods in 500 namespaces (110 on this node) and `policies` policies; the
/// first selects the measured pod (`ns-000/pod-0`, local) and allows only `access=granted`.
pub fn cluster(policies: usize) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for ns in 0..NAMESPACES {
        let name = format!("ns-{ns:03}");
        let namespace = Namespace::new(
            name.clone(),
            labels(&[("team", format!("team-{}", ns % 25))]),
        );
        snapshot.namespaces.insert(name, namespace);
        for index in 0..PODS_PER_NAMESPACE {
            let k = ns * PODS_PER_NAMESPACE + index;
            let role = ["web", "api", "db", "cache"][k % 4];
            let pod = Pod {
                namespace: format!("ns-{ns:03}"),
                name: format!("pod-{index}"),
                labels: labels(&[
                    ("app", role.to_owned()),
                    ("access", if k == 1 { "granted" } else { "none" }.to_owned()),
                ]),
                ips: pod_ips(k).into_iter().collect(),
                node: Some(
                    if k.is_multiple_of(91) {
                        NODE
                    } else {
                        "elsewhere"
                    }
                    .to_owned(),
                ),
                host_network: false,
                ports: Vec::new(),
            };
            snapshot.pods.insert(pod.key(), pod);
        }
    }
    for index in 0..policies {
        let ns = index % NAMESPACES;
        let policy = if index == 0 {
            measured_policy(80)
        } else {
            let role = ["web", "api", "db", "cache"][index % 4];
            NetworkPolicy {
                namespace: format!("ns-{ns:03}"),
                name: format!("policy-{index}"),
                pod_selector: Selector::labels([("app", role)]),
                ingress: Some(vec![Rule {
                    peers: Peers::Only(vec![
                        Peer::Pods {
                            namespaces: Some(Selector::labels([(
                                "team",
                                format!("team-{}", index % 25),
                            )])),
                            pods: Selector::labels([(
                                "app",
                                ["web", "api", "db", "cache"][(index + 1) % 4],
                            )]),
                        },
                        Peer::IpBlock(IpBlock {
                            cidr: Cidr::parse(&format!("172.{}.0.0/16", 16 + index % 16))
                                .expect("valid"),
                            except: vec![
                                Cidr::parse(&format!(
                                    "172.{}.{}.0/24",
                                    16 + index % 16,
                                    index % 256
                                ))
                                .expect("valid"),
                            ],
                        }),
                    ]),
                    ports: Ports::Only(vec![
                        PolicyPort {
                            protocol: Protocol::Tcp,
                            port: PortMatch::Number(8000 + (index % 100) as u16),
                        },
                        PolicyPort {
                            protocol: Protocol::Tcp,
                            port: PortMatch::Range {
                                start: 9000,
                                end: 9000 + (index % 64) as u16,
                            },
                        },
                    ]),
                }]),
                egress: None,
            }
        };
        snapshot.policies.insert(policy.key(), policy);
    }
    snapshot
}
