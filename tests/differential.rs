//! The datapath against the engine, packet by packet: random clusters are compiled for the
//! node and converged into the maps through the eBPF backend, and random crafted packets go
//! through every program with BPF_PROG_TEST_RUN. Each verdict must equal both the engine's
//! `lookup` (the datapath algorithm in Rust) and the reference evaluator, for the sides the
//! node enforces. Truncated headers and fragments are judged by the datapath's documented
//! rules: dropped only for pods it enforces, a later fragment only after its first.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU16, Ordering},
};

use agent_common::{
    addr::Addr,
    endpoint::{FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
};
use aya::programs::{TestRun, TestRunOptions};
use netpol_agent::{
    backend::{
        Backend, PodInterfaces,
        ebpf::{Datapath, EbpfBackend, MapSizes, PROG_FROM_POD, PROG_TO_POD, PROG_TO_UPLINK},
    },
    model::Snapshot,
    policy::{Flow, NodeState, compile, evaluate, lookup},
};
use netpol_tests::{
    clusters::{Cluster, NODE, Rng, cluster, flow},
    packet::{Fragment, PacketSpec, TCP_SYN, Transport},
    require_root,
};

const PASS: u32 = u32::MAX;
const DROP: u32 = 2;
/// Random clusters per run, and flows per cluster.
const CLUSTERS: u64 = 160;
const FLOWS: usize = 120;

/// Source ports (and ICMP identifiers) are never reused within a run, so no packet is taken
/// for a reply of an earlier one.
static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);

fn fresh_port() -> u16 {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    if port >= 60000 {
        NEXT_PORT.store(20000, Ordering::Relaxed);
    }
    port
}

fn packet(flow: &Flow) -> PacketSpec {
    let sport = fresh_port();
    let transport = match flow.protocol {
        6 => Transport::Tcp {
            sport,
            dport: flow.port,
            flags: TCP_SYN,
        },
        17 => Transport::Udp {
            sport,
            dport: flow.port,
        },
        132 => Transport::Sctp {
            sport,
            dport: flow.port,
        },
        1 => Transport::Icmp {
            kind: 8,
            code: 0,
            id: sport,
        },
        58 => Transport::Icmp {
            kind: 128,
            code: 0,
            id: sport,
        },
        other => Transport::Other { protocol: other },
    };
    PacketSpec::new(flow.src, flow.dst, transport)
}

/// Whether the pod at `ip` runs on this node (and so has its sides enforced here).
fn local_pod(snapshot: &Snapshot, reference: Option<&netpol_agent::model::ObjectRef>) -> bool {
    reference
        .and_then(|key| snapshot.pods.get(key))
        .is_some_and(|pod| pod.node.as_deref() == Some(NODE) && !pod.host_network)
}

fn tracked(state: &NodeState, ip: IpAddr) -> bool {
    state
        .endpoints
        .get(&Addr::from(ip))
        .is_some_and(|endpoint| {
            endpoint.flags & (FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED) != 0
        })
}

fn is_endpoint(state: &NodeState, ip: IpAddr) -> bool {
    state.endpoints.contains_key(&Addr::from(ip))
}

struct Run {
    backend: EbpfBackend,
    forwarding: bool,
    packets: u64,
}

impl Run {
    fn send(&mut self, program: &'static str, frame: &[u8], forwarded: bool) -> u32 {
        // Only `netpol_to_pod` needs a forwarded packet (`ingress_ifindex`, settable from 5.15);
        // the other programs run without a context everywhere.
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&7u32.to_ne_bytes());
        let program = self
            .backend
            .datapath_mut()
            .program(program)
            .expect("program");
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: forwarded.then_some(&ctx[..]),
            ..TestRunOptions::default()
        };
        self.packets += 1;
        program.test_run(options).expect("test run").return_value
    }

    /// Every program that sees `flow` on this node, with the verdict it must give.
    fn check(&mut self, seed: u64, cluster: &Cluster, state: &NodeState, flow: &Flow) {
        let verdict = evaluate(&cluster.snapshot, flow);
        let computed = lookup(state, flow);
        let egress_here = local_pod(&cluster.snapshot, verdict.egress.pod.as_ref());
        let ingress_here = local_pod(&cluster.snapshot, verdict.ingress.pod.as_ref());
        let egress = !egress_here || verdict.egress.allowed;
        let ingress = !ingress_here || verdict.ingress.allowed;
        assert_eq!(
            computed.egress.allowed(),
            egress,
            "seed {seed}: lookup egress {flow:?}"
        );
        assert_eq!(
            computed.ingress.allowed(),
            ingress,
            "seed {seed}: lookup ingress {flow:?}"
        );
        let expect = |allowed: bool| if allowed { PASS } else { DROP };

        if is_endpoint(state, flow.src) {
            for program in [PROG_FROM_POD, PROG_TO_UPLINK] {
                let got = self.send(program, &packet(flow).build(), false);
                assert_eq!(got, expect(egress), "seed {seed}: {program} {flow:?}");
            }
        }
        if self.forwarding && is_endpoint(state, flow.dst) {
            let got = self.send(PROG_TO_POD, &packet(flow).build(), true);
            assert_eq!(
                got,
                expect(egress && ingress),
                "seed {seed}: {PROG_TO_POD} {flow:?}"
            );
        } else if self.forwarding && is_endpoint(state, flow.src) {
            // A pod interface carries its own pod's traffic only: a destination that is no
            // endpoint there is a pod the agent has not programmed, isolated until it is.
            let got = self.send(PROG_TO_POD, &packet(flow).build(), true);
            assert_eq!(
                got, DROP,
                "seed {seed}: {PROG_TO_POD} to no endpoint {flow:?}"
            );
        }
    }

    /// Truncated transport headers and fragments of `flow`.
    fn check_malformed(&mut self, seed: u64, state: &NodeState, flow: &Flow) {
        if !matches!(flow.protocol, 6 | 17 | 132) || !is_endpoint(state, flow.src) {
            return;
        }
        // Room for the IP header only: the ports cannot be read.
        let mut truncated = packet(flow).build();
        let header = if flow.src.is_ipv4() { 14 + 20 } else { 14 + 40 };
        truncated.truncate(header);
        let expected = if tracked(state, flow.src) { DROP } else { PASS };
        let got = self.send(PROG_FROM_POD, &truncated, false);
        assert_eq!(got, expected, "seed {seed}: truncated {flow:?}");

        // A later fragment alone never passes an enforced pod; after its first fragment it
        // shares that fragment's fate.
        let id = u32::from(fresh_port());
        let mut later = packet(flow);
        later.id = id;
        later.fragment = Some(Fragment {
            offset: 8,
            more: false,
        });
        let got = self.send(PROG_FROM_POD, &later.build(), false);
        assert_eq!(got, expected, "seed {seed}: orphan fragment {flow:?}");
        let mut first = packet(flow);
        first.id = id + 1;
        first.fragment = Some(Fragment {
            offset: 0,
            more: true,
        });
        let first_verdict = self.send(PROG_FROM_POD, &first.build(), false);
        let mut second = first.clone();
        second.fragment = Some(Fragment {
            offset: 8,
            more: false,
        });
        let got = self.send(PROG_FROM_POD, &second.build(), false);
        assert_eq!(
            got, first_verdict,
            "seed {seed}: fragment after its first {flow:?}"
        );
    }
}

#[test]
fn the_datapath_agrees_with_lookup_and_the_evaluator_packet_by_packet() {
    if !require_root("the_datapath_agrees_with_lookup_and_the_evaluator_packet_by_packet") {
        return;
    }
    let datapath = Datapath::load(MapSizes::default()).expect("the object loads");
    let mut run = Run {
        backend: EbpfBackend::new(datapath).expect("backend"),
        forwarding: true,
        packets: 0,
    };
    // Kernels before 5.15 cannot emulate a forwarded packet in a test run.
    let probe = PacketSpec::new(
        "10.0.0.1".parse().expect("valid"),
        "10.0.0.2".parse().expect("valid"),
        Transport::Udp { sport: 1, dport: 1 },
    )
    .build();
    run.forwarding = {
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&7u32.to_ne_bytes());
        let program = run
            .backend
            .datapath_mut()
            .program(PROG_TO_POD)
            .expect("program");
        program
            .test_run(TestRunOptions {
                data_in: Some(&probe),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .is_ok()
    };
    if !run.forwarding {
        eprintln!(
            "this kernel cannot emulate forwarded packets: netpol_to_pod is checked by the other suites only"
        );
    }
    let base_seed = std::env::var("NETPOL_DIFF_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x6e70_0000u64);
    for index in 0..CLUSTERS {
        let seed = base_seed + index;
        let mut rng = Rng::new(seed);
        let cluster = cluster(&mut rng);
        let state = compile(&cluster.snapshot, NODE);
        run.backend.datapath_mut().clear().expect("maps emptied");
        run.backend
            .converge(&state, &PodInterfaces::new())
            .unwrap_or_else(|error| panic!("seed {seed}: converge: {error}"));
        for _ in 0..FLOWS {
            let flow = flow(&mut rng, &cluster);
            run.check(seed, &cluster, &state, &flow);
            if rng.chance(15) {
                run.check_malformed(seed, &state, &flow);
            }
        }
    }
    println!(
        "differential: {} packets through the programs agreed with lookup and the evaluator",
        run.packets
    );
    assert!(run.packets > 10_000, "enough packets were exercised");
}
