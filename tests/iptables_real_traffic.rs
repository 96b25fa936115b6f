//! Real traffic through the iptables backend on a simulated node: the cases of
//! `real_traffic.rs` (allow and deny both ways, replies, Services DNATed to local and remote
//! backends, node-originated traffic), with the backend driven in-process inside the node's
//! namespace; and coexistence: foreign rules, chains and sets are untouched byte for byte.

use std::process::Command;

use agent_common::{addr::Addr, ipcache::PeerClass};
use netpol_agent::{
    backend::{
        Backend, PodInterfaces,
        iptables::{IptablesBackend, cleanup, tools::Flavour},
    },
    policy::{Delta, IpPrefix},
};
use netpol_tests::{
    netns::{Netns, SimulatedNode},
    reference::{
        CLASS_B, INTERNET, LOCAL_PODS, POD_A, POD_B, POD_C, REMOTE_POD, RULE, ReferenceNode, VIP_A,
        ip, service_ranges, state,
    },
    require_root,
};

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
    let reference = ReferenceNode::build();
    let node = &reference.node;
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
    reference.check_traffic();
    let (pod_a, pod_c) = (reference.pod(0), reference.pod(2));

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
            .get(&RULE)
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
