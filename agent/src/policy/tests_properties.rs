//! Property tests over random small clusters: labels and selectors with every operator,
//! ipBlocks whose excepts overlap pod addresses (and some that are not inside their CIDR),
//! named ports that resolve differently per pod, port ranges (some inverted), both families,
//! hostNetwork pods, pods sharing an address, invalid parts, namespaces the snapshot lacks.
//!
//! 1. For every flow between interesting addresses, the datapath lookup over the compiled
//!    state agrees with the evaluator on every direction the node enforces, and credits a
//!    rule the evaluator lists.
//! 2. For random sequences of changes (single and batched), the deltas applied to the maps
//!    give the engine's state, which equals a full recompile after canonicalisation: ids
//!    depend on history (they are kept stable across changes), so the comparison names
//!    classes by their smallest prefix, sets by their direction and smallest endpoint address,
//!    and rules by what they refer to ([`canonical`]).

use std::{collections::BTreeSet, net::IpAddr};

use proptest::{collection::vec, option, prelude::*, sample::select};

use crate::model::{
    Change, Cidr, ContainerPort, IpBlock, Labels, Namespace, NetworkPolicy, ObjectRef, Operator,
    Peer, Peers, Pod, PolicyPort, PortMatch, Ports, Protocol, Requirement, Rule, Selector,
    Snapshot,
};

use super::{
    Engine, Flow, NodeState, compile,
    testkit::{canonical, check_flows},
};

const NODES: [&str; 2] = ["n1", "n2"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];
const POLICY_NAMES: [&str; 4] = ["np0", "np1", "np2", "np3"];
const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 5] = [53, 80, 81, 82, 8080];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// Pod addresses: a small pool so that ipBlocks, excepts and shared addresses overlap.
fn pod_v4() -> impl Strategy<Value = IpAddr> {
    (0u8..12).prop_map(|host| IpAddr::from([10, 0, 0, host]))
}

fn pod_v6() -> impl Strategy<Value = IpAddr> {
    (0u8..6).prop_map(|host| {
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[15] = host;
        IpAddr::from(octets)
    })
}

/// Addresses that are no pod's (or a hostNetwork pod's) as flow ends.
const OTHER_ADDRESSES: [&str; 6] = [
    "10.0.0.14",
    "10.0.1.1",
    "192.168.0.1",
    "172.16.0.1",
    "fd00::f",
    "2001:db8::1",
];

fn cidrs() -> impl Strategy<Value = Cidr> {
    select(vec![
        "10.0.0.0/28",
        "10.0.0.0/30",
        "10.0.0.4/30",
        "10.0.0.8/29",
        "10.0.0.5/32",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "192.168.0.0/30",
        "fd00::/124",
        "fd00::/126",
        "fd00::3/128",
        "::/0",
    ])
    .prop_map(|text| Cidr::parse(text).expect("test cidr"))
}

fn labels() -> impl Strategy<Value = Labels> {
    vec((select(KEYS.to_vec()), select(VALUES.to_vec())), 1..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

fn values() -> impl Strategy<Value = BTreeSet<String>> {
    vec(select(VALUES.to_vec()), 1..3).prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let operator = prop_oneof![
        values().prop_map(Operator::In),
        values().prop_map(Operator::NotIn),
        Just(Operator::Exists),
        Just(Operator::DoesNotExist),
    ];
    (select(KEYS.to_vec()), operator).prop_map(|(key, operator)| Requirement {
        key: key.to_owned(),
        operator,
    })
}

fn selector() -> impl Strategy<Value = Selector> {
    (
        vec((select(KEYS.to_vec()), select(VALUES.to_vec())), 0..2),
        prop_oneof![2 => Just(Vec::new()), 1 => vec(requirement(), 1..3)],
    )
        .prop_map(|(labels, match_expressions)| Selector {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions,
        })
}

fn namespace_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        3 => selector(),
        1 => select(NAMESPACES.to_vec())
            .prop_map(|ns| Selector::labels([(crate::model::NAMESPACE_NAME_LABEL, ns)])),
    ]
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        4 => (option::of(namespace_selector()), selector())
            .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods }),
        4 => (cidrs(), vec(cidrs(), 0..3))
            .prop_map(|(cidr, except)| Peer::IpBlock(IpBlock { cidr, except })),
        1 => Just(Peer::Nothing),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![3 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    let port = prop_oneof![
        1 => Just(PortMatch::All),
        3 => select(PORTS.to_vec()).prop_map(PortMatch::Number),
        2 => (79u16..84, 79u16..84).prop_map(|(start, end)| PortMatch::Range { start, end }),
        1 => Just(PortMatch::Range { start: 1, end: 65535 }),
        5 => select(PORT_NAMES.to_vec()).prop_map(|name| PortMatch::Named(name.to_owned())),
        1 => Just(PortMatch::Nothing),
    ];
    (protocol(), port).prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rule() -> impl Strategy<Value = Rule> {
    let peers = prop_oneof![1 => Just(Peers::All), 3 => vec(peer(), 0..4).prop_map(Peers::Only)];
    let ports =
        prop_oneof![1 => Just(Ports::All), 2 => vec(policy_port(), 0..4).prop_map(Ports::Only)];
    (peers, ports).prop_map(|(peers, ports)| Rule { peers, ports })
}

fn rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop_oneof![1 => Just(None), 3 => vec(rule(), 0..3).prop_map(Some)]
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        select(NAMESPACES.to_vec()),
        select(POLICY_NAMES.to_vec()),
        selector(),
        rules(),
        rules(),
    )
        .prop_map(
            |(namespace, name, pod_selector, ingress, egress)| NetworkPolicy {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                pod_selector,
                ingress,
                egress,
            },
        )
}

fn container_port() -> impl Strategy<Value = ContainerPort> {
    (
        option::weighted(0.8, select(PORT_NAMES.to_vec())),
        select(PORTS.to_vec()),
        protocol(),
    )
        .prop_map(|(name, port, protocol)| ContainerPort {
            name: name.map(str::to_owned),
            port,
            protocol,
        })
}

fn pod() -> impl Strategy<Value = Pod> {
    (
        select(NAMESPACES.to_vec()),
        select(POD_NAMES.to_vec()),
        labels(),
        option::of(pod_v4()),
        option::of(pod_v6()),
        prop_oneof![3 => Just(Some(NODES[0])), 1 => Just(Some(NODES[1])), 1 => Just(None)],
        prop::bool::weighted(0.1),
        vec(container_port(), 1..4),
    )
        .prop_map(
            |(namespace, name, labels, v4, v6, node, host_network, ports)| {
                let ips = if host_network {
                    [ip("192.168.0.1")].into()
                } else {
                    v4.into_iter().chain(v6).collect()
                };
                Pod {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    labels,
                    ips,
                    node: node.map(str::to_owned),
                    host_network,
                    ports,
                }
            },
        )
}

fn namespace() -> impl Strategy<Value = Namespace> {
    (select(NAMESPACES.to_vec()), labels()).prop_map(|(name, labels)| Namespace::new(name, labels))
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        vec(namespace(), 0..4),
        vec(pod(), 1..9),
        vec(policy(), 0..6),
    )
        .prop_map(|(namespaces, pods, policies)| {
            let mut snapshot = Snapshot::default();
            for change in namespaces
                .into_iter()
                .map(Change::ApplyNamespace)
                .chain(pods.into_iter().map(Change::ApplyPod))
                .chain(policies.into_iter().map(Change::ApplyPolicy))
            {
                snapshot.apply(change);
            }
            snapshot
        })
}

fn change() -> impl Strategy<Value = Change> {
    let pod_key = (select(NAMESPACES.to_vec()), select(POD_NAMES.to_vec()))
        .prop_map(|(ns, name)| ObjectRef::new(ns, name));
    let policy_key = (select(NAMESPACES.to_vec()), select(POLICY_NAMES.to_vec()))
        .prop_map(|(ns, name)| ObjectRef::new(ns, name));
    prop_oneof![
        4 => pod().prop_map(Change::ApplyPod),
        2 => pod_key.prop_map(Change::DeletePod),
        2 => namespace().prop_map(Change::ApplyNamespace),
        1 => select(NAMESPACES.to_vec()).prop_map(|ns| Change::DeleteNamespace(ns.to_owned())),
        4 => policy().prop_map(Change::ApplyPolicy),
        2 => policy_key.prop_map(Change::DeletePolicy),
    ]
}

/// Flows between every pair of interesting addresses, over TCP, UDP, SCTP and ICMP.
fn flows(snapshot: &Snapshot, ports: &[u16]) -> Vec<Flow> {
    let mut addresses: BTreeSet<IpAddr> = snapshot
        .pods
        .values()
        .flat_map(|pod| pod.ips.iter().copied())
        .collect();
    addresses.extend(OTHER_ADDRESSES.iter().map(|text| ip(text)));
    let mut flows = Vec::new();
    let pod_addresses: BTreeSet<IpAddr> = snapshot
        .pods
        .values()
        .filter(|pod| !pod.host_network)
        .flat_map(|pod| pod.ips.iter().copied())
        .collect();
    for src in &addresses {
        for dst in &addresses {
            // Flows between two addresses that are no pod's are nobody's business.
            let concerns_a_pod = pod_addresses.contains(src) || pod_addresses.contains(dst);
            if src == dst || src.is_ipv4() != dst.is_ipv4() || !concerns_a_pod {
                continue;
            }
            for protocol in [6u8, 17, 132] {
                for port in ports {
                    flows.push(Flow::new(*src, *dst, protocol, *port));
                }
            }
            flows.push(Flow::new(*src, *dst, 1, 0));
        }
    }
    flows
}

/// 128 cases unless `PROPTEST_CASES` says otherwise (for long local runs).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 128;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_datapath_lookup_agrees_with_the_evaluator(snapshot in snapshot()) {
        let flows = flows(&snapshot, &PORTS);
        for node in NODES {
            let state = compile(&snapshot, node);
            prop_assert!(canonical(&state).is_ok(), "{:?}", canonical(&state).err());
            let checked = check_flows(&snapshot, node, &state, flows.iter().copied());
            prop_assert_eq!(checked, Ok(()), "on {}", node);
        }
    }

    #[test]
    fn applying_incremental_deltas_gives_the_state_of_a_full_recompile(
        start in snapshot(),
        batches in vec(vec(change(), 1..4), 1..6),
    ) {
        for node in NODES {
            let (mut engine, delta) = Engine::with_snapshot(node, start.clone());
            let mut applied = NodeState::default();
            applied.apply(&delta);
            for batch in &batches {
                let delta = engine.apply(batch.iter().cloned());
                applied.apply(&delta);
                prop_assert_eq!(&applied, engine.state(), "delta applied != state on {}", node);
                let fresh = compile(engine.snapshot(), node);
                let (incremental, full) = (canonical(engine.state()), canonical(&fresh));
                prop_assert!(incremental.is_ok(), "{:?}", incremental);
                prop_assert_eq!(
                    incremental, full, "incremental != full on {} after {:?}", node, batch
                );
            }
            let flows = flows(engine.snapshot(), &[80, 81]);
            let checked = check_flows(engine.snapshot(), node, engine.state(), flows);
            prop_assert_eq!(checked, Ok(()), "on {}", node);
        }
    }
}
