//! Real traffic through the iptables backend on a simulated node: the cases of
//! `real_traffic.rs` (allow and deny both ways, replies, Services DNATed to local and remote
//! backends, node-originated traffic), with the backend driven in-process inside the node's
//! namespace; and coexistence: foreign rules, chains and sets are untouched byte for byte.

use std::{net::IpAddr, process::Command};

use agent_common::{
    addr::Addr,
    endpoint::{Endpoint, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
    ipcache::PeerClass,
    policy::{DIR_EGRESS, DIR_INGRESS, PREFIX_ANY_PROTO, PREFIX_FULL, PolicyKey, PolicyValue},
};
use netpol_agent::{
    backend::{
        Backend, PodInterfaces,
        iptables::{IptablesBackend, cleanup, tools::Flavour},
    },
    model::ObjectRef,
    policy::{Delta, Direction, IpPrefix, NodeState, PolicyEntryKey, RuleRef},
};
use netpol_tests::{
    netns::{Netns, SimulatedNode},
    require_root,
};

const LOCAL_PODS: &str = "10.244.1.0/24";
const POD_A: &str = "10.244.1.10";
const POD_B: &str = "10.244.1.11";
const POD_C: &str = "10.244.1.12";
const REMOTE_POD: &str = "10.244.2.10";
const INTERNET: &str = "198.51.100.7";
const VIP_A: &str = "10.96.0.10";
const VIP_INTERNET: &str = "10.96.0.11";
const VIP_B: &str = "10.96.0.12";

const CLASS_B: u32 = 5;
const CLASS_INTERNET: u32 = 6;
const SET_A_IN: u32 = 7;
const SET_A_OUT: u32 = 8;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// The state `real_traffic.rs` writes into the maps: pod A isolated both ways; ingress allows
/// TCP/80 and UDP/81 from B only, egress allows anything to the internet /24 only.
fn state() -> NodeState {
    let mut state = NodeState::default();
    state.endpoints.insert(
        Addr::from(ip(POD_A)),
        Endpoint {
            id: 1,
            ifindex: 0,
            flags: FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED,
            ingress_set: SET_A_IN,
            egress_set: SET_A_OUT,
        },
    );
    state.ipcache.insert(
        IpPrefix::host(Addr::from(ip(POD_B))),
        PeerClass { id: CLASS_B },
    );
    state.ipcache.insert(
        IpPrefix::from_ip(ip("198.51.100.0"), 24),
        PeerClass { id: CLASS_INTERNET },
    );
    for (len, key) in [
        (
            PREFIX_FULL,
            PolicyKey::new(SET_A_IN, CLASS_B, DIR_INGRESS, 6, 80),
        ),
        (
            PREFIX_FULL,
            PolicyKey::new(SET_A_IN, CLASS_B, DIR_INGRESS, 17, 81),
        ),
        (
            PREFIX_ANY_PROTO,
            PolicyKey::new(SET_A_OUT, CLASS_INTERNET, DIR_EGRESS, 0, 0),
        ),
    ] {
        state
            .policy
            .insert(PolicyEntryKey::new(key, len), PolicyValue { rule: 1 });
    }
    state.rules.insert(
        1,
        RuleRef {
            policy: ObjectRef {
                namespace: "default".to_owned(),
                name: "a".to_owned(),
            },
            direction: Direction::Ingress,
            rule: 0,
            peer: None,
            port: None,
        },
    );
    state
}

fn service_ranges() -> Vec<(Addr, u8)> {
    vec![(Addr::from(ip("10.96.0.0")), 16)]
}

/// Runs a command in the namespace and returns its stdout (panics on failure).
fn output(netns: &Netns, program: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns.name(), program])
        .args(args)
        .output()
        .expect("command runs");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything in the node's netfilter and ipset that is not ours, without counters and the
/// save tools' timestamp comments.
fn foreign(netns: &Netns) -> String {
    let mut text = String::new();
    for program in [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
    ] {
        text.push_str(&output(netns, program, &[]));
    }
    text.push_str(&output(netns, "ipset", &["save"]));
    // A table with no rules and only its built-in chains says nothing (creating an empty
    // table is not touching anyone's rules); chain counters are traffic, not configuration.
    let mut kept = String::new();
    let mut section: Vec<String> = Vec::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        if line.contains("NP-") || line.contains(" np-") {
            continue;
        }
        let line = match line.split_once(" [") {
            Some((chain, _)) if line.starts_with(':') => chain.to_owned(),
            _ => line.to_owned(),
        };
        if line.starts_with('*') {
            section.clear();
        }
        section.push(line.clone());
        if line == "COMMIT" {
            let empty = section[1..section.len() - 1]
                .iter()
                .all(|line| line.ends_with(" ACCEPT"));
            if !empty {
                kept.extend(section.iter().map(|line| format!("{line}\n")));
            }
            section.clear();
        } else if !line.starts_with('*') && !line.starts_with(':') && !line.starts_with("-A") {
            kept.push_str(&format!("{line}\n"));
            section.pop();
        }
    }
    kept
}

fn traffic(flavour: Flavour) {
    let mut node = SimulatedNode::new(LOCAL_PODS, &[REMOTE_POD, INTERNET]);
    let a = node.add_pod(POD_A);
    let b = node.add_pod(POD_B);
    let c = node.add_pod(POD_C);
    node.add_service(VIP_A, 80, POD_A);
    node.add_service(VIP_INTERNET, 80, INTERNET);
    node.add_service(VIP_B, 80, POD_B);

    let mut backend = node
        .node
        .run(|| IptablesBackend::with_flavour(flavour))
        .expect("iptables tools");
    node.node.run(|| {
        backend
            .set_service_ranges(&service_ranges())
            .expect("service ranges");
        backend
            .converge(&state(), &PodInterfaces::new())
            .expect("converge");
    });
    let _servers: Vec<_> = [
        node.pods[a].netns.serve(80, "a"),
        node.pods[a].netns.serve(81, "a"),
        node.pods[b].netns.serve(80, "b"),
        node.ext.serve(80, "ext"),
    ]
    .into_iter()
    .collect();
    let (pod_a, pod_b, pod_c) = (
        &node.pods[a].netns,
        &node.pods[b].netns,
        &node.pods[c].netns,
    );

    assert!(pod_b.tcp_probe(ip(POD_A), 80), "B may open TCP/80 to A");
    assert!(!pod_c.tcp_probe(ip(POD_A), 80), "C may not");
    assert!(pod_b.udp_probe(ip(POD_A), 81), "B may send UDP/81 to A");
    assert!(!pod_b.udp_probe(ip(POD_A), 80), "UDP/80 is not TCP/80");
    assert!(!node.ext.tcp_probe(ip(POD_A), 80), "a remote pod may not");
    assert!(
        pod_a.tcp_probe(ip(INTERNET), 80),
        "A may reach the internet"
    );
    assert!(
        !pod_a.tcp_probe(ip(POD_B), 80),
        "A may not open connections to B"
    );
    assert!(!pod_a.tcp_probe(ip(REMOTE_POD), 80), "nor to a remote pod");
    assert!(
        pod_b.tcp_probe(ip(VIP_A), 80),
        "B reaches A through its Service"
    );
    assert!(
        !pod_c.tcp_probe(ip(VIP_A), 80),
        "C does not, through the Service either"
    );
    assert!(
        pod_a.tcp_probe(ip(VIP_INTERNET), 80),
        "A reaches a Service backed by the internet"
    );
    assert!(
        !pod_a.tcp_probe(ip(VIP_B), 80),
        "A does not reach a Service backed by B"
    );
    assert!(pod_c.tcp_probe(ip(POD_B), 80), "C reaches B");
    assert!(pod_b.tcp_probe(ip(INTERNET), 80), "B reaches the internet");
    assert!(node.node.tcp_probe(ip(POD_A), 80), "the node reaches A");

    // An incremental update: C joins B's class; then the switch.
    let delta = Delta {
        ipcache_upserts: [(
            IpPrefix::host(Addr::from(ip(POD_C))),
            PeerClass { id: CLASS_B },
        )]
        .into(),
        ..Delta::default()
    };
    node.node
        .run(|| backend.apply(&delta, &PodInterfaces::new()).expect("apply"));
    assert!(pod_c.tcp_probe(ip(POD_A), 80), "C may now");
    node.node
        .run(|| backend.set_enforcement(false).expect("switch off"));
    assert!(
        pod_a.tcp_probe(ip(POD_B), 80),
        "everything passes while switched off"
    );
    node.node
        .run(|| backend.set_enforcement(true).expect("switch on"));
    assert!(!pod_a.tcp_probe(ip(POD_B), 80), "enforced again");

    let counters = node.node.run(|| backend.counters()).expect("counters");
    assert!(
        counters
            .rules
            .get(&1)
            .is_some_and(|count| count.packets > 0),
        "{counters:?}"
    );
    assert!(
        counters
            .drops
            .get(&("policy", "ingress"))
            .is_some_and(|count| count.packets > 0),
        "{counters:?}"
    );
    node.node.run(|| cleanup().expect("cleanup"));
}

#[test]
fn policy_holds_for_real_traffic_through_iptables_nft() {
    if !require_root("policy_holds_for_real_traffic_through_iptables_nft") {
        return;
    }
    traffic(Flavour::Nft);
}

#[test]
fn policy_holds_for_real_traffic_through_iptables_legacy() {
    if !require_root("policy_holds_for_real_traffic_through_iptables_legacy") {
        return;
    }
    traffic(Flavour::Legacy);
}

#[test]
fn foreign_rules_chains_and_sets_are_untouched_by_start_update_and_cleanup() {
    if !require_root("foreign_rules_chains_and_sets_are_untouched_by_start_update_and_cleanup") {
        return;
    }
    let mut node = SimulatedNode::new(LOCAL_PODS, &[REMOTE_POD, INTERNET]);
    node.add_pod(POD_A);
    node.add_pod(POD_B);
    node.add_service(VIP_A, 80, POD_A);
    let ns = &node.node;
    // Someone else's set, chain and rules, in the tables and chains we hook.
    ns.exec("ipset", &["create", "foreign-set", "hash:net"]);
    ns.exec("ipset", &["add", "foreign-set", "203.0.113.0/24"]);
    ns.exec("iptables", &["-N", "FOREIGN-CHAIN"]);
    ns.exec(
        "iptables",
        &[
            "-A",
            "FOREIGN-CHAIN",
            "-m",
            "set",
            "--match-set",
            "foreign-set",
            "src",
            "-j",
            "RETURN",
        ],
    );
    ns.exec("iptables", &["-A", "FORWARD", "-j", "FOREIGN-CHAIN"]);
    ns.exec(
        "iptables",
        &["-I", "FORWARD", "1", "-s", "192.0.2.99", "-j", "DROP"],
    );
    ns.exec(
        "iptables",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "9",
            "-j",
            "MARK",
            "--set-mark",
            "7",
        ],
    );
    ns.exec(
        "ip6tables",
        &["-A", "FORWARD", "-s", "2001:db8::1", "-j", "DROP"],
    );
    let before = foreign(ns);
    assert!(before.contains("FOREIGN-CHAIN") && before.contains("foreign-set"));

    let mut backend = ns.run(IptablesBackend::detect).expect("iptables tools");
    assert_eq!(
        backend.flavour(),
        Flavour::Nft,
        "the node's rules are in nft"
    );
    ns.run(|| {
        backend
            .set_service_ranges(&service_ranges())
            .expect("ranges");
        backend
            .converge(&state(), &PodInterfaces::new())
            .expect("converge");
    });
    assert_eq!(foreign(ns), before, "after start");
    let delta = Delta {
        ipcache_upserts: [(
            IpPrefix::host(Addr::from(ip(POD_C))),
            PeerClass { id: CLASS_B },
        )]
        .into(),
        ..Delta::default()
    };
    ns.run(|| backend.apply(&delta, &PodInterfaces::new()).expect("apply"));
    ns.run(|| backend.set_enforcement(false).expect("switch"));
    // A second agent converging over the first (a restart).
    let mut restarted = ns.run(IptablesBackend::detect).expect("iptables tools");
    ns.run(|| {
        restarted
            .set_service_ranges(&service_ranges())
            .expect("ranges");
        restarted
            .converge(&state(), &PodInterfaces::new())
            .expect("converge");
    });
    assert_eq!(foreign(ns), before, "after updates and a restart");
    let jumps = output(ns, "iptables-nft-save", &["-t", "filter"]);
    assert_eq!(
        jumps.matches("-A FORWARD -j NP-FORWARD").count(),
        1,
        "one jump, however often we converge:\n{jumps}"
    );
    ns.run(|| cleanup().expect("cleanup"));
    assert_eq!(foreign(ns), before, "after cleanup");
    let all = output(ns, "iptables-nft-save", &[]) + &output(ns, "ipset", &["list", "-n"]);
    assert!(
        !all.contains("NP-") && !all.contains("np-"),
        "nothing of ours is left:\n{all}"
    );
}
