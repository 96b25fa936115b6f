//! Engine behaviour beyond the upstream cases: hostNetwork pods, ICMP, ranges, named ports per
//! pod, dual stack, fail-closed input, shared addresses, minimal and stable deltas.
//!
//! Each test states its expectations as flows and verdicts, checked on the evaluator and on the
//! lookup over the compiled state (with rule attribution via `check_flows`).

use std::net::IpAddr;

use agent_common::{
    addr::Addr,
    endpoint::{FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
};
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy as K8sNetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
        NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::model::{
    Change, Cidr, ContainerPort, IpBlock, Labels, NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy,
    ObjectRef, Peer, Peers, Pod, PolicyPort, PortMatch, Ports, Protocol, Rule, Selector, Snapshot,
    convert,
};

use super::{
    Direction, Engine, Flow, PathVerdict, compile, evaluate, lookup,
    testkit::{canonical, check_flows},
};

const NODE: &str = "node-1";
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(namespace: &str, name: &str, pairs: &[(&str, &str)], ips: &[&str], node: &str) -> Pod {
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: labels(pairs),
        ips: ips.iter().map(|text| ip(text)).collect(),
        node: Some(node.to_owned()),
        host_network: false,
        ports: Vec::new(),
    }
}

fn with_ports(mut pod: Pod, ports: &[(&str, u16, Protocol)]) -> Pod {
    pod.ports = ports
        .iter()
        .map(|(name, port, protocol)| ContainerPort {
            name: Some((*name).to_owned()),
            port: *port,
            protocol: *protocol,
        })
        .collect();
    pod
}

fn policy(namespace: &str, name: &str, selector: Selector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector: selector,
        ingress: None,
        egress: None,
    }
}

fn rule(peers: Peers, ports: Ports) -> Rule {
    Rule { peers, ports }
}

fn tcp(port: PortMatch) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port,
    }
}

fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: Cidr::parse(cidr).expect("test cidr"),
        except: except
            .iter()
            .map(|text| Cidr::parse(text).expect("test cidr"))
            .collect(),
    })
}

fn pods_labelled(pairs: &[(&str, &str)]) -> Peer {
    Peer::Pods {
        namespaces: None,
        pods: Selector::labels(pairs.iter().copied()),
    }
}

fn snapshot(pods: Vec<Pod>, policies: Vec<NetworkPolicy>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for name in ["x", "y"] {
        snapshot.apply(Change::ApplyNamespace(Namespace::new(name, Labels::new())));
    }
    for pod in pods {
        snapshot.apply(Change::ApplyPod(pod));
    }
    for policy in policies {
        snapshot.apply(Change::ApplyPolicy(policy));
    }
    snapshot
}

/// Checks each (src, dst, protocol, port, allowed) on the evaluator and on the lookup of a
/// node running every non-hostNetwork pod of the snapshot on `NODE`.
fn expect(snapshot: &Snapshot, cases: &[(&str, &str, u8, u16, bool)]) {
    let state = compile(snapshot, NODE);
    assert!(canonical(&state).is_ok(), "{:?}", canonical(&state));
    for (src, dst, protocol, port, allowed) in cases {
        let flow = Flow::new(ip(src), ip(dst), *protocol, *port);
        let verdict = evaluate(snapshot, &flow);
        assert_eq!(
            verdict.allowed, *allowed,
            "evaluator: {flow:?}: {verdict:#?}"
        );
        assert_eq!(
            lookup(&state, &flow).allowed(),
            *allowed,
            "lookup: {flow:?}"
        );
        assert_eq!(check_flows(snapshot, NODE, &state, [flow]), Ok(()));
    }
}

#[test]
fn host_network_pods_are_not_endpoints_and_only_ip_blocks_match_them() {
    let mut host = pod("x", "host", &[("app", "db")], &["192.168.0.10"], NODE);
    host.host_network = true;
    let client = pod("x", "client", &[("app", "web")], &["10.0.0.2"], NODE);
    let mut isolate_all = policy("x", "deny", Selector::everything());
    isolate_all.ingress = Some(vec![]);
    let mut to_db = policy("x", "to-db", Selector::labels([("app", "web")]));
    to_db.egress = Some(vec![
        rule(
            Peers::Only(vec![pods_labelled(&[("app", "db")])]),
            Ports::All,
        ),
        rule(
            Peers::Only(vec![block("192.168.0.0/24", &[])]),
            Ports::Only(vec![tcp(PortMatch::Number(5432))]),
        ),
    ]);
    let snapshot = snapshot(vec![host, client], vec![isolate_all, to_db]);
    let state = compile(&snapshot, NODE);
    assert!(
        !state
            .endpoints
            .contains_key(&Addr::from(ip("192.168.0.10")))
    );
    expect(
        &snapshot,
        &[
            // The ingress deny does not apply to the hostNetwork pod (not an endpoint).
            ("10.0.0.2", "192.168.0.10", TCP, 5432, true),
            // The pod selector app=db does not match it: only the ipBlock port opens.
            ("10.0.0.2", "192.168.0.10", TCP, 80, false),
        ],
    );
}

#[test]
fn rules_without_ports_allow_icmp_and_rules_with_ports_do_not() {
    let client = pod("x", "client", &[("app", "web")], &["10.0.0.2"], NODE);
    let server = pod("x", "server", &[("app", "db")], &["10.0.0.3"], NODE);
    let mut any = policy("x", "any", Selector::labels([("app", "db")]));
    any.ingress = Some(vec![rule(
        Peers::Only(vec![pods_labelled(&[("app", "web")])]),
        Ports::All,
    )]);
    let mut tcp_only = policy("x", "tcp-only", Selector::labels([("app", "web")]));
    tcp_only.ingress = Some(vec![rule(
        Peers::All,
        Ports::Only(vec![tcp(PortMatch::All)]),
    )]);
    let snapshot = snapshot(vec![client, server], vec![any, tcp_only]);
    expect(
        &snapshot,
        &[
            ("10.0.0.2", "10.0.0.3", ICMP, 0, true),
            ("10.0.0.2", "10.0.0.3", UDP, 53, true),
            ("10.0.0.3", "10.0.0.2", ICMP, 0, false),
            ("10.0.0.3", "10.0.0.2", TCP, 1, true),
            ("10.0.0.3", "10.0.0.2", TCP, 0, true),
        ],
    );
}

#[test]
fn a_port_range_allows_exactly_its_ports_on_its_protocol() {
    let server = pod("x", "server", &[], &["10.0.0.3"], NODE);
    let mut range = policy("x", "range", Selector::everything());
    range.ingress = Some(vec![rule(
        Peers::All,
        Ports::Only(vec![tcp(PortMatch::Range {
            start: 8000,
            end: 8100,
        })]),
    )]);
    let snapshot = snapshot(vec![server], vec![range]);
    let mut cases = Vec::new();
    for (port, allowed) in [
        (7999, false),
        (8000, true),
        (8064, true),
        (8100, true),
        (8101, false),
    ] {
        cases.push(("10.9.9.9", "10.0.0.3", TCP, port, allowed));
        cases.push(("10.9.9.9", "10.0.0.3", UDP, port, false));
    }
    expect(&snapshot, &cases);
}

#[test]
fn egress_named_ports_resolve_on_each_destination_pod() {
    let client = pod("x", "client", &[("app", "web")], &["10.0.0.2"], NODE);
    let a = with_ports(
        pod("y", "a", &[], &["10.0.1.1"], "node-2"),
        &[("http", 8080, Protocol::Tcp)],
    );
    let b = with_ports(
        pod("y", "b", &[], &["10.0.1.2"], "node-2"),
        &[("http", 9090, Protocol::Tcp)],
    );
    let c = with_ports(
        pod("y", "c", &[], &["10.0.1.3"], "node-2"),
        &[("http", 8080, Protocol::Udp)],
    );
    let mut named = policy("x", "named", Selector::labels([("app", "web")]));
    named.egress = Some(vec![rule(
        Peers::All,
        Ports::Only(vec![tcp(PortMatch::Named("http".to_owned()))]),
    )]);
    let snapshot = snapshot(vec![client, a, b, c], vec![named]);
    expect(
        &snapshot,
        &[
            ("10.0.0.2", "10.0.1.1", TCP, 8080, true),
            ("10.0.0.2", "10.0.1.1", TCP, 9090, false),
            ("10.0.0.2", "10.0.1.2", TCP, 9090, true),
            ("10.0.0.2", "10.0.1.2", TCP, 8080, false),
            // Declared for UDP only: a TCP named port does not resolve.
            ("10.0.0.2", "10.0.1.3", TCP, 8080, false),
            // Not a pod: nothing to resolve on.
            ("10.0.0.2", "192.0.2.1", TCP, 8080, false),
        ],
    );
}

#[test]
fn ingress_named_ports_resolve_on_the_selected_pod_so_endpoints_get_their_own_sets() {
    let a = with_ports(
        pod("x", "a", &[], &["10.0.0.1"], NODE),
        &[("http", 8080, Protocol::Tcp)],
    );
    let b = with_ports(
        pod("x", "b", &[], &["10.0.0.2"], NODE),
        &[("http", 9090, Protocol::Tcp)],
    );
    let mut named = policy("x", "named", Selector::everything());
    named.ingress = Some(vec![rule(
        Peers::All,
        Ports::Only(vec![tcp(PortMatch::Named("http".to_owned()))]),
    )]);
    let snapshot = snapshot(vec![a, b], vec![named]);
    expect(
        &snapshot,
        &[
            ("10.9.9.9", "10.0.0.1", TCP, 8080, true),
            ("10.9.9.9", "10.0.0.1", TCP, 9090, false),
            ("10.9.9.9", "10.0.0.2", TCP, 9090, true),
            ("10.9.9.9", "10.0.0.2", TCP, 8080, false),
        ],
    );
    let state = compile(&snapshot, NODE);
    let set = |addr: &str| state.endpoints[&Addr::from(ip(addr))].ingress_set;
    assert_ne!(set("10.0.0.1"), set("10.0.0.2"));
}

#[test]
fn endpoints_with_identical_allows_share_a_set() {
    let a = pod("x", "a", &[("app", "web")], &["10.0.0.1"], NODE);
    let b = pod("x", "b", &[("app", "web")], &["10.0.0.2"], NODE);
    let mut allow = policy("x", "allow", Selector::labels([("app", "web")]));
    allow.ingress = Some(vec![rule(
        Peers::Only(vec![block("10.1.0.0/16", &[])]),
        Ports::All,
    )]);
    let state = compile(&snapshot(vec![a, b], vec![allow]), NODE);
    let set = |addr: &str| state.endpoints[&Addr::from(ip(addr))].ingress_set;
    assert_eq!(set("10.0.0.1"), set("10.0.0.2"));
    assert_ne!(set("10.0.0.1"), 0);
}

#[test]
fn dual_stack_pods_have_one_endpoint_id_on_both_addresses() {
    let a = pod("x", "a", &[], &["10.0.0.1", "fd00::1"], NODE);
    let mut deny = policy("x", "deny", Selector::everything());
    deny.ingress = Some(vec![]);
    let state = compile(&snapshot(vec![a], vec![deny]), NODE);
    let v4 = state.endpoints[&Addr::from(ip("10.0.0.1"))];
    let v6 = state.endpoints[&Addr::from(ip("fd00::1"))];
    assert_eq!(v4, v6);
    assert_ne!(v4.id, 0);
    assert_eq!(v4.flags, FLAG_INGRESS_ISOLATED);
}

#[test]
fn an_ipv6_block_never_matches_ipv4_and_the_other_way_round() {
    let server = pod("x", "server", &[], &["10.0.0.3", "fd00::3"], NODE);
    let mut v6_only = policy("x", "v6-only", Selector::everything());
    v6_only.ingress = Some(vec![rule(
        Peers::Only(vec![block("::/0", &[])]),
        Ports::All,
    )]);
    let snapshot = snapshot(vec![server], vec![v6_only]);
    expect(
        &snapshot,
        &[
            ("10.9.9.9", "10.0.0.3", TCP, 80, false),
            ("fd00::9", "fd00::3", TCP, 80, true),
        ],
    );
}

#[test]
fn local_pods_no_policy_selects_are_endpoints_without_isolation() {
    let a = pod("x", "a", &[], &["10.0.0.1"], NODE);
    let remote = pod("x", "remote", &[], &["10.0.0.9"], "node-2");
    let mut nothing = Pod {
        ips: Default::default(),
        ..pod("x", "pending", &[], &[], NODE)
    };
    nothing.node = Some(NODE.to_owned());
    let state = compile(&snapshot(vec![a, remote, nothing], vec![]), NODE);
    assert_eq!(state.endpoints.len(), 1);
    let endpoint = state.endpoints[&Addr::from(ip("10.0.0.1"))];
    assert_eq!(
        (endpoint.flags, endpoint.ingress_set, endpoint.egress_set),
        (0, 0, 0)
    );
    assert!(state.policy.is_empty() && state.ipcache.is_empty());
}

#[test]
fn an_except_carves_out_of_its_own_peer_and_never_denies_another_allow() {
    let server = pod("x", "server", &[], &["10.0.0.3"], NODE);
    let mut carve = policy("x", "carve", Selector::everything());
    carve.ingress = Some(vec![rule(
        Peers::Only(vec![block("10.1.0.0/16", &["10.1.2.0/24"])]),
        Ports::All,
    )]);
    let only_carve = snapshot(vec![server.clone()], vec![carve.clone()]);
    expect(
        &only_carve,
        &[
            ("10.1.1.1", "10.0.0.3", TCP, 80, true),
            ("10.1.2.1", "10.0.0.3", TCP, 80, false),
        ],
    );
    let mut other = policy("x", "other", Selector::everything());
    other.ingress = Some(vec![rule(
        Peers::Only(vec![block("10.1.2.0/28", &[])]),
        Ports::All,
    )]);
    let both = snapshot(vec![server], vec![carve, other]);
    expect(
        &both,
        &[
            ("10.1.2.1", "10.0.0.3", TCP, 80, true),
            ("10.1.2.100", "10.0.0.3", TCP, 80, false),
        ],
    );
}

#[test]
fn an_address_several_pods_list_belongs_to_the_first_by_name() {
    let first = pod("x", "a", &[("app", "web")], &["10.0.0.5"], "node-2");
    let second = pod("x", "b", &[("app", "db")], &["10.0.0.5"], NODE);
    let mut deny_db = policy("x", "deny-db", Selector::labels([("app", "db")]));
    deny_db.ingress = Some(vec![]);
    let snapshot = snapshot(vec![first, second], vec![deny_db]);
    let state = compile(&snapshot, NODE);
    // x/b is on this node but owns no address: it is not an endpoint.
    assert!(state.endpoints.is_empty());
    expect(&snapshot, &[("10.9.9.9", "10.0.0.5", TCP, 80, true)]);
}

#[test]
fn pods_of_a_namespace_the_cluster_has_not_sent_still_match_its_name_label() {
    let client = pod("w", "client", &[], &["10.0.0.2"], "node-2");
    let server = pod("x", "server", &[], &["10.0.0.3"], NODE);
    let mut from_w = policy("x", "from-w", Selector::everything());
    from_w.ingress = Some(vec![rule(
        Peers::Only(vec![Peer::Pods {
            namespaces: Some(Selector::labels([(NAMESPACE_NAME_LABEL, "w")])),
            pods: Selector::everything(),
        }]),
        Ports::All,
    )]);
    let snapshot = snapshot(vec![client, server], vec![from_w]);
    assert!(!snapshot.namespaces.contains_key("w"));
    expect(&snapshot, &[("10.0.0.2", "10.0.0.3", TCP, 80, true)]);
}

fn api_policy(ingress: Vec<NetworkPolicyIngressRule>, selector: LabelSelector) -> K8sNetworkPolicy {
    K8sNetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some("x".to_owned()),
            name: Some("api".to_owned()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

#[test]
fn a_broken_peer_or_port_allows_nothing_while_the_rest_of_the_rule_works() {
    let server = pod("x", "server", &[], &["10.0.0.3"], NODE);
    let peers = vec![
        NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.1.0.0/16".to_owned(),
                except: None,
            }),
            ..Default::default()
        },
        NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.2.0.0/16".to_owned(),
                except: Some(vec!["10.3.0.0/24".to_owned()]),
            }),
            ..Default::default()
        },
    ];
    let ports = vec![
        NetworkPolicyPort {
            port: Some(IntOrString::Int(80)),
            ..Default::default()
        },
        NetworkPolicyPort {
            port: Some(IntOrString::Int(81)),
            protocol: Some("tcp".to_owned()),
            end_port: None,
        },
    ];
    let converted = convert::network_policy(&api_policy(
        vec![NetworkPolicyIngressRule {
            from: Some(peers),
            ports: Some(ports),
        }],
        LabelSelector::default(),
    ));
    assert_eq!(converted.rejections.len(), 2, "{:#?}", converted.rejections);
    let snapshot = snapshot(vec![server], converted.object.into_iter().collect());
    expect(
        &snapshot,
        &[
            ("10.1.0.1", "10.0.0.3", TCP, 80, true),
            ("10.1.0.1", "10.0.0.3", TCP, 81, false),
            ("10.2.0.1", "10.0.0.3", TCP, 80, false),
            ("10.3.0.1", "10.0.0.3", TCP, 80, false),
        ],
    );
}

#[test]
fn a_broken_pod_selector_keeps_pods_isolated_without_allowing_anything() {
    let web = pod("x", "web", &[("app", "web")], &["10.0.0.3"], NODE);
    let selector = LabelSelector {
        match_labels: convert::labels([("app", "web")]),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "tier".to_owned(),
            operator: "Around".to_owned(),
            values: None,
        }]),
    };
    let converted = convert::network_policy(&api_policy(
        vec![NetworkPolicyIngressRule::default()],
        selector,
    ));
    assert_eq!(converted.rejections.len(), 1);
    let snapshot = snapshot(vec![web], converted.object.into_iter().collect());
    expect(&snapshot, &[("10.9.9.9", "10.0.0.3", TCP, 80, false)]);
}

#[test]
fn when_several_rules_make_one_key_the_smallest_rule_is_credited() {
    let server = pod("x", "server", &[], &["10.0.0.3"], NODE);
    let mut b = policy("x", "b", Selector::everything());
    b.ingress = Some(vec![rule(
        Peers::All,
        Ports::Only(vec![tcp(PortMatch::Number(80))]),
    )]);
    let mut a = policy("x", "a", Selector::everything());
    a.ingress = Some(vec![
        rule(Peers::All, Ports::Only(vec![tcp(PortMatch::Number(443))])),
        rule(Peers::All, Ports::Only(vec![tcp(PortMatch::Number(80))])),
    ]);
    let snapshot = snapshot(vec![server], vec![b, a]);
    let state = compile(&snapshot, NODE);
    let flow = Flow::new(ip("10.9.9.9"), ip("10.0.0.3"), TCP, 80);
    let PathVerdict::Allowed { rule, .. } = lookup(&state, &flow).ingress else {
        panic!("allowed");
    };
    assert_eq!(
        state.rules[&rule].to_string(),
        "x/a ingress[1].from[*].ports[0]"
    );
    // The evaluator lists every rule that allows it, for explain.
    let listed: Vec<String> = evaluate(&snapshot, &flow)
        .because
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        listed,
        [
            "x/a ingress[1].from[*].ports[0]",
            "x/b ingress[0].from[*].ports[0]"
        ]
    );
}

/// A cluster with two classes of remote pods and one isolated local endpoint.
fn stable_cluster() -> Snapshot {
    let local = pod(
        "x",
        "local",
        &[("app", "db")],
        &["10.0.0.1", "fd00::1"],
        NODE,
    );
    let web1 = pod("y", "web1", &[("app", "web")], &["10.0.1.1"], "node-2");
    let web2 = pod("y", "web2", &[("app", "web")], &["10.0.1.2"], "node-2");
    let other = pod("y", "other", &[("app", "other")], &["10.0.1.3"], "node-2");
    let mut allow = policy("x", "allow-web", Selector::labels([("app", "db")]));
    allow.ingress = Some(vec![rule(
        Peers::Only(vec![Peer::Pods {
            namespaces: Some(Selector::everything()),
            pods: Selector::labels([("app", "web")]),
        }]),
        Ports::Only(vec![tcp(PortMatch::Number(5432))]),
    )]);
    allow.egress = Some(vec![rule(
        Peers::Only(vec![block("10.0.0.0/8", &["10.0.1.3/32"])]),
        Ports::All,
    )]);
    snapshot(vec![local, web1, web2, other], vec![allow])
}

#[test]
fn a_remote_pod_joining_an_existing_class_changes_only_its_own_ipcache_entry() {
    let mut engine = Engine::with_snapshot(NODE, stable_cluster()).0;
    let before = engine.state().clone();
    let mut other = engine.snapshot().pods[&ObjectRef::new("y", "other")].clone();
    other.labels = labels(&[("app", "web")]);
    other.ips = [ip("10.0.1.4")].into();
    let delta = engine.apply([Change::ApplyPod(other)]);
    // Its new address lands in the web pods' class: one ipcache entry, nothing else (its old
    // address keeps the entry of the except that names it).
    assert_eq!(delta.ipcache_upserts.len(), 1, "{delta:#?}");
    assert_eq!(delta.len(), 1, "{delta:#?}");
    let web_class = before.ipcache[&super::IpPrefix::host(Addr::from(ip("10.0.1.1")))];
    assert_eq!(delta.ipcache_upserts.values().next(), Some(&web_class));
}

#[test]
fn an_unrelated_change_keeps_every_id_and_writes_nothing() {
    let mut engine = Engine::with_snapshot(NODE, stable_cluster()).0;
    let before = engine.state().clone();
    let unrelated = pod(
        "y",
        "unrelated",
        &[("app", "none")],
        &["192.0.2.7"],
        "node-2",
    );
    let mut unrelated_policy = policy("y", "unrelated", Selector::labels([("app", "none")]));
    unrelated_policy.ingress = Some(vec![]);
    let delta = engine.apply([
        Change::ApplyPod(unrelated),
        Change::ApplyPolicy(unrelated_policy),
    ]);
    assert!(delta.is_empty(), "{delta:#?}");
    assert_eq!(engine.state(), &before);
}

#[test]
fn deleting_every_policy_removes_every_entry_and_isolation() {
    let mut engine = Engine::with_snapshot(NODE, stable_cluster()).0;
    assert!(!engine.state().policy.is_empty());
    let endpoint = engine.state().endpoints[&Addr::from(ip("10.0.0.1"))];
    assert_eq!(endpoint.flags, FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED);
    let delta = engine.apply([Change::DeletePolicy(ObjectRef::new("x", "allow-web"))]);
    let state = engine.state();
    assert!(state.policy.is_empty() && state.ipcache.is_empty() && state.rules.is_empty());
    let endpoint = state.endpoints[&Addr::from(ip("10.0.0.1"))];
    assert_eq!(
        (endpoint.flags, endpoint.ingress_set, endpoint.egress_set),
        (0, 0, 0)
    );
    assert_eq!(
        delta.endpoint_upserts.len(),
        2,
        "both addresses of the endpoint"
    );
}

#[test]
fn lookup_uses_port_zero_for_protocols_without_ports() {
    let server = pod("x", "server", &[], &["10.0.0.3"], NODE);
    let mut any = policy("x", "any", Selector::everything());
    any.ingress = Some(vec![rule(Peers::All, Ports::All)]);
    let state = compile(&snapshot(vec![server], vec![any]), NODE);
    for port in [0, 8, 65535] {
        let flow = Flow::new(ip("10.9.9.9"), ip("10.0.0.3"), ICMP, port);
        assert!(matches!(
            lookup(&state, &flow).ingress,
            PathVerdict::Allowed { .. }
        ));
    }
    let flow = Flow::new(ip("10.9.9.9"), ip("10.0.0.3"), ICMP, 0);
    assert_eq!(evaluate(&snapshot(vec![], vec![]), &flow).egress.pod, None);
    assert_eq!(Direction::Ingress.to_string(), "ingress");
}

#[test]
fn the_engine_names_endpoints_sets_classes_and_rules() {
    let mut allow = policy("x", "allow-client", Selector::labels([("app", "server")]));
    allow.ingress = Some(vec![rule(
        Peers::Only(vec![pods_labelled(&[("app", "client")])]),
        Ports::All,
    )]);
    let snapshot = snapshot(
        vec![
            pod("x", "server", &[("app", "server")], &["10.0.0.1"], NODE),
            pod(
                "x",
                "client",
                &[("app", "client")],
                &["10.0.0.2"],
                "other-node",
            ),
        ],
        vec![allow],
    );
    let (engine, _) = Engine::with_snapshot(NODE, snapshot);
    let names = engine.names();
    assert_eq!(names.endpoints.values().collect::<Vec<_>>(), ["x/server"]);
    let users = names
        .sets
        .values()
        .find(|users| users.ingress_of.contains("x/server"))
        .expect("the server's ingress set is named");
    assert_eq!(
        users.policies.iter().collect::<Vec<_>>(),
        ["x/allow-client"]
    );
    assert_eq!(
        names.rules.values().collect::<Vec<_>>(),
        ["x/allow-client ingress[0].from[0].ports[*]"]
    );
    assert!(
        names
            .classes
            .values()
            .flatten()
            .any(|peer| peer == "pods app=client in namespace x"),
        "{names:?}"
    );
    // The remote client is named as a peer, the server as a local pod.
    assert_eq!(names.pod_at(ip("10.0.0.2")), Some("x/client"));
    assert_eq!(names.address_of("x/server"), Some(ip("10.0.0.1")));
}
