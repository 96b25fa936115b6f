//! The tc programs through BPF_PROG_TEST_RUN: crafted frames against hand-written map contents,
//! checking the tc verdict and the drop counters.

use std::net::IpAddr;

use agent_common::{
    addr::Addr,
    config::{CONFIG_ENFORCEMENT_OFF, Config},
    endpoint::{Endpoint, FLAG_AUDIT, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
    ipcache::CLASS_WORLD,
    metrics::DropReason,
    policy::{DIR_EGRESS, DIR_INGRESS, PREFIX_ANY_PROTO, PREFIX_FULL, PolicyKey},
};
use aya::programs::{TestRun, TestRunOptions};
use netpol_agent::backend::ebpf::{Datapath, MapSizes, PROG_FROM_POD, PROG_TO_POD};
use netpol_tests::{
    packet::{Fragment, Ipv6Ext, PacketSpec, TCP_SYN, Transport, arp_request},
    require_root,
};

/// `TC_ACT_UNSPEC` as test-run reports it: continue to the next filter.
const PASS: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
const DROP: u32 = 2;

const POD_A: &str = "10.244.1.10";
const POD_A6: &str = "fd00:10:244:1::a";
const POD_UNSELECTED: &str = "10.244.1.11";
const PEER_WEB: &str = "10.244.1.20";
const PEER_WEB6: &str = "fd00:10:244:1::14";
const INTERNET: &str = "198.51.100.7";
const INTERNET_CARVED_OUT: &str = "198.51.100.200";
const ELSEWHERE: &str = "203.0.113.1";

const SET_A_INGRESS: u32 = 7;
const SET_A_EGRESS: u32 = 8;
const CLASS_WEB: u32 = 5;
const CLASS_INTERNET: u32 = 6;
const RULE: u32 = 42;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test addresses are valid")
}

fn addr(text: &str) -> Addr {
    Addr::from(ip(text))
}

/// Pod A: ingress allows TCP/80 from the web class, UDP from the internet /24 (except its
/// upper half), TCP 8000-8003 from anyone; egress allows anything to the internet /24.
fn load_fixture(endpoint_flags: u32) -> Datapath {
    let mut datapath = Datapath::load(MapSizes::default()).expect("the object loads");
    let endpoint = Endpoint {
        id: 1,
        ifindex: 0,
        flags: FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED | endpoint_flags,
        ingress_set: SET_A_INGRESS,
        egress_set: SET_A_EGRESS,
    };
    datapath
        .insert_endpoint(addr(POD_A), endpoint)
        .expect("endpoint");
    datapath
        .insert_endpoint(addr(POD_A6), endpoint)
        .expect("endpoint");
    datapath
        .insert_prefix(addr(PEER_WEB), 32, CLASS_WEB)
        .expect("prefix");
    datapath
        .insert_prefix(addr(PEER_WEB6), 128, CLASS_WEB)
        .expect("prefix");
    datapath
        .insert_prefix(addr("198.51.100.0"), 24, CLASS_INTERNET)
        .expect("prefix");
    datapath
        .insert_prefix(addr("198.51.100.128"), 25, CLASS_WORLD)
        .expect("prefix");
    let entries = [
        (
            PREFIX_FULL,
            PolicyKey::new(SET_A_INGRESS, CLASS_WEB, DIR_INGRESS, 6, 80),
        ),
        (
            80,
            PolicyKey::new(SET_A_INGRESS, CLASS_INTERNET, DIR_INGRESS, 17, 0),
        ),
        // 8000..=8003: one aligned block of four ports.
        (
            PREFIX_FULL - 2,
            PolicyKey::new(SET_A_INGRESS, 0, DIR_INGRESS, 6, 8000),
        ),
        (
            PREFIX_ANY_PROTO,
            PolicyKey::new(SET_A_EGRESS, CLASS_INTERNET, DIR_EGRESS, 0, 0),
        ),
    ];
    for (prefix_len, key) in entries {
        datapath
            .insert_policy(prefix_len, key, RULE)
            .expect("policy");
    }
    datapath
}

fn run(datapath: &mut Datapath, program: &'static str, frame: &[u8]) -> u32 {
    let program = datapath.program(program).expect("program is loaded");
    let mut options = TestRunOptions::default();
    options.data_in = Some(frame);
    program.test_run(options).expect("test run").return_value
}

fn tcp(src: &str, dst: &str, dport: u16) -> PacketSpec {
    PacketSpec::new(
        ip(src),
        ip(dst),
        Transport::Tcp {
            sport: 40000,
            dport,
            flags: TCP_SYN,
        },
    )
}

fn udp(src: &str, dst: &str, dport: u16) -> PacketSpec {
    PacketSpec::new(
        ip(src),
        ip(dst),
        Transport::Udp {
            sport: 40000,
            dport,
        },
    )
}

#[test]
fn ingress_verdicts_follow_class_protocol_and_port() {
    if !require_root("ingress_verdicts_follow_class_protocol_and_port") {
        return;
    }
    let mut datapath = load_fixture(0);
    let cases = [
        ("web peer, TCP 80", tcp(PEER_WEB, POD_A, 80), PASS),
        ("web peer, TCP 81", tcp(PEER_WEB, POD_A, 81), DROP),
        (
            "web peer, UDP 80 is not TCP",
            udp(PEER_WEB, POD_A, 80),
            DROP,
        ),
        (
            "web peer, SCTP 80 is not TCP",
            PacketSpec::new(
                ip(PEER_WEB),
                ip(POD_A),
                Transport::Sctp {
                    sport: 1,
                    dport: 80,
                },
            ),
            DROP,
        ),
        ("internet, any UDP port", udp(INTERNET, POD_A, 5353), PASS),
        ("internet, TCP not allowed", tcp(INTERNET, POD_A, 80), DROP),
        (
            "carved-out internet half",
            udp(INTERNET_CARVED_OUT, POD_A, 53),
            DROP,
        ),
        ("anyone, range start", tcp(ELSEWHERE, POD_A, 8000), PASS),
        ("anyone, range end", tcp(ELSEWHERE, POD_A, 8003), PASS),
        ("anyone, past the range", tcp(ELSEWHERE, POD_A, 8004), DROP),
        (
            "anyone, before the range",
            tcp(ELSEWHERE, POD_A, 7999),
            DROP,
        ),
        (
            "unselected pod is untouched",
            tcp(ELSEWHERE, POD_UNSELECTED, 9),
            PASS,
        ),
        ("web peer over IPv6", tcp(PEER_WEB6, POD_A6, 80), PASS),
        ("unknown peer over IPv6", tcp("fd00::99", POD_A6, 80), DROP),
    ];
    for (name, spec, expected) in cases {
        assert_eq!(
            run(&mut datapath, PROG_TO_POD, &spec.build()),
            expected,
            "{name}"
        );
    }
    let drops = datapath
        .drops(DropReason::Policy, DIR_INGRESS)
        .expect("counters");
    assert_eq!(drops.packets, 8, "each denied packet is counted once");
}

#[test]
fn egress_verdicts_use_the_destination_class() {
    if !require_root("egress_verdicts_use_the_destination_class") {
        return;
    }
    let mut datapath = load_fixture(0);
    let icmp = PacketSpec::new(
        ip(POD_A),
        ip(INTERNET),
        Transport::Icmp { kind: 8, code: 0 },
    );
    assert_eq!(
        run(&mut datapath, PROG_FROM_POD, &icmp.build()),
        PASS,
        "any protocol: ICMP too"
    );
    assert_eq!(
        run(
            &mut datapath,
            PROG_FROM_POD,
            &tcp(POD_A, INTERNET, 443).build()
        ),
        PASS
    );
    assert_eq!(
        run(
            &mut datapath,
            PROG_FROM_POD,
            &tcp(POD_A, ELSEWHERE, 443).build()
        ),
        DROP
    );
    assert_eq!(
        run(
            &mut datapath,
            PROG_FROM_POD,
            &udp(POD_A, INTERNET_CARVED_OUT, 53).build()
        ),
        DROP,
        "except carve-out"
    );
    assert_eq!(
        run(
            &mut datapath,
            PROG_FROM_POD,
            &tcp(POD_UNSELECTED, ELSEWHERE, 443).build()
        ),
        PASS
    );
    assert_eq!(
        datapath
            .drops(DropReason::Policy, DIR_EGRESS)
            .expect("counters")
            .packets,
        2
    );
}

#[test]
fn non_ip_frames_pass_and_malformed_ones_of_isolated_pods_drop() {
    if !require_root("non_ip_frames_pass_and_malformed_ones_of_isolated_pods_drop") {
        return;
    }
    let mut datapath = load_fixture(0);
    assert_eq!(run(&mut datapath, PROG_TO_POD, &arp_request()), PASS);

    // An IPv4 header with no room for the TCP ports.
    let mut truncated = tcp(PEER_WEB, POD_A, 80).build();
    truncated.truncate(14 + 20);
    assert_eq!(run(&mut datapath, PROG_TO_POD, &truncated), DROP);
    // The same truncation towards a pod we do not enforce for is left alone.
    let mut truncated = tcp(PEER_WEB, POD_UNSELECTED, 80).build();
    truncated.truncate(14 + 20);
    assert_eq!(run(&mut datapath, PROG_TO_POD, &truncated), PASS);
    assert_eq!(
        datapath
            .drops(DropReason::Malformed, DIR_INGRESS)
            .expect("counters")
            .packets,
        1
    );
}

#[test]
fn later_fragments_never_bypass_a_port_rule() {
    if !require_root("later_fragments_never_bypass_a_port_rule") {
        return;
    }
    let mut datapath = load_fixture(0);
    let mut first = tcp(PEER_WEB, POD_A, 80);
    first.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    assert_eq!(run(&mut datapath, PROG_TO_POD, &first.build()), PASS);
    let mut later = tcp(PEER_WEB, POD_A, 80);
    later.fragment = Some(Fragment {
        offset: 8,
        more: false,
    });
    assert_eq!(run(&mut datapath, PROG_TO_POD, &later.build()), DROP);
    let mut later6 = tcp(PEER_WEB6, POD_A6, 80);
    later6.fragment = Some(Fragment {
        offset: 8,
        more: false,
    });
    assert_eq!(run(&mut datapath, PROG_TO_POD, &later6.build()), DROP);
    assert_eq!(
        datapath
            .drops(DropReason::Fragment, DIR_INGRESS)
            .expect("counters")
            .packets,
        2
    );
}

#[test]
fn ipv6_extension_headers_are_skipped_up_to_four() {
    if !require_root("ipv6_extension_headers_are_skipped_up_to_four") {
        return;
    }
    let mut datapath = load_fixture(0);
    let mut spec = tcp(PEER_WEB6, POD_A6, 80);
    spec.ipv6_ext = vec![
        Ipv6Ext::HopByHop,
        Ipv6Ext::DestinationOptions,
        Ipv6Ext::Routing,
    ];
    assert_eq!(run(&mut datapath, PROG_TO_POD, &spec.build()), PASS);
    spec.fragment = Some(Fragment {
        offset: 0,
        more: true,
    });
    assert_eq!(
        run(&mut datapath, PROG_TO_POD, &spec.build()),
        PASS,
        "four, the last a fragment"
    );
    spec.ipv6_ext.push(Ipv6Ext::DestinationOptions);
    assert_eq!(
        run(&mut datapath, PROG_TO_POD, &spec.build()),
        DROP,
        "five is too many"
    );
}

#[test]
fn audit_mode_counts_but_passes() {
    if !require_root("audit_mode_counts_but_passes") {
        return;
    }
    let mut datapath = load_fixture(FLAG_AUDIT);
    assert_eq!(
        run(
            &mut datapath,
            PROG_TO_POD,
            &tcp(ELSEWHERE, POD_A, 22).build()
        ),
        PASS
    );
    assert_eq!(
        datapath
            .drops(DropReason::Policy, DIR_INGRESS)
            .expect("counters")
            .packets,
        1
    );
}

#[test]
fn the_switch_turns_enforcement_off_and_on() {
    if !require_root("the_switch_turns_enforcement_off_and_on") {
        return;
    }
    let mut datapath = load_fixture(0);
    let denied = tcp(ELSEWHERE, POD_A, 22).build();
    assert_eq!(run(&mut datapath, PROG_TO_POD, &denied), DROP);
    datapath
        .set_config(Config {
            flags: CONFIG_ENFORCEMENT_OFF,
        })
        .expect("config");
    assert_eq!(run(&mut datapath, PROG_TO_POD, &denied), PASS);
    datapath.set_config(Config { flags: 0 }).expect("config");
    assert_eq!(run(&mut datapath, PROG_TO_POD, &denied), DROP);
}

#[test]
fn a_pod_interface_cannot_claim_another_pods_address() {
    if !require_root("a_pod_interface_cannot_claim_another_pods_address") {
        return;
    }
    let mut datapath = load_fixture(0);
    // Test runs deliver on the loopback device (ifindex 1).
    let mut endpoint = Endpoint {
        id: 1,
        ifindex: 1,
        flags: FLAG_EGRESS_ISOLATED,
        ingress_set: 0,
        egress_set: SET_A_EGRESS,
    };
    datapath
        .insert_endpoint(addr(POD_A), endpoint)
        .expect("endpoint");
    let allowed = tcp(POD_A, INTERNET, 443).build();
    assert_eq!(run(&mut datapath, PROG_FROM_POD, &allowed), PASS);
    endpoint.ifindex = 99;
    datapath
        .insert_endpoint(addr(POD_A), endpoint)
        .expect("endpoint");
    assert_eq!(run(&mut datapath, PROG_FROM_POD, &allowed), DROP);
    assert_eq!(
        datapath
            .drops(DropReason::Spoofed, DIR_EGRESS)
            .expect("counters")
            .packets,
        1
    );
}
