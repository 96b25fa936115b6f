//! `cargo xtask bench datapath`: nanoseconds per packet through BPF_PROG_TEST_RUN (the kernel
//! times `repeat` runs and reports the mean), needs root.
//!
//! - the floor: `netpol_floor`, a program that only returns (what a test run costs);
//! - a new connection's verdict (a denied flow never becomes tracked, so every run is a full
//!   decision: endpoint, connection-tracking misses, peer class, policy lookups, drop count)
//!   with compiled states of 0, 100, 1,000 and 10,000 policies;
//! - an established connection (a tracked flow: the connection-tracking hit), on the
//!   destination pod's ingress hook, and its reply on the pod's egress hook, where the source
//!   is checked against the pod's interface first: by `NP_IF_SOURCES` when the endpoint's
//!   interface is known, else by the endpoint lookup.
//!
//! Each over IPv4 and IPv6, on the synthetic cluster of `benches/synthetic`. Figures only;
//! recorded in `docs/DATAPATH-BENCH.md`.

mod synthetic;

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use aya::programs::{TestRun, TestRunOptions};
use netpol_agent::{
    backend::{
        Backend, PodInterfaces,
        ebpf::{Datapath, EbpfBackend, MapSizes, PROG_FLOOR, PROG_FROM_POD, PROG_TO_POD},
    },
    policy::compile,
};
use synthetic::{NODE, cluster, pod_ips};

const REPEAT: u32 = 1_000_000;
fn tcp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            frame.extend_from_slice(&ip);
        }
        _ => unreachable!("one family per flow"),
    }
    frame.extend_from_slice(&tcp);
    frame
}

/// Mean nanoseconds per run of `program` on `frame` (a forwarded packet).
fn measure(datapath: &mut Datapath, program: &'static str, frame: &[u8]) -> u128 {
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&7u32.to_ne_bytes());
    let program = datapath.program(program).expect("program loaded");
    let options = TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: REPEAT,
        ..TestRunOptions::default()
    };
    let result = program.test_run(options).expect("test run");
    let duration: Duration = result.duration;
    duration.as_nanos()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench datapath: loading programs needs root");
        std::process::exit(2);
    }
    let datapath = Datapath::load(MapSizes::default()).expect("the datapath loads");
    let mut backend = EbpfBackend::new(datapath).expect("backend");
    let target = pod_ips(0);
    let denied_from = pod_ips(2);
    let allowed_from = pod_ips(1);

    println!("datapath: ns per packet through BPF_PROG_TEST_RUN, repeat {REPEAT} (mean per run)");
    println!("{:<44} {:>10} {:>10}", "case", "IPv4", "IPv6");
    let row = |name: &str, v4: u128, v6: u128| println!("{name:<44} {v4:>10} {v6:>10}");
    let pick = |set: &BTreeSet<IpAddr>, v4: bool| {
        *set.iter()
            .find(|ip| ip.is_ipv4() == v4)
            .expect("dual stack")
    };

    let frame = |v4: bool, from: &BTreeSet<IpAddr>, sport: u16| {
        tcp_frame(pick(from, v4), pick(&target, v4), sport, 80, 0x02)
    };
    let floor = [true, false].map(|v4| {
        measure(
            backend.datapath_mut(),
            PROG_FLOOR,
            &frame(v4, &denied_from, 1000),
        )
    });
    row("floor (a program that only returns)", floor[0], floor[1]);

    // Test runs deliver on the loopback device: the measured pod's interface.
    let on_loopback: PodInterfaces = target.iter().map(|ip| ((*ip).into(), 1)).collect();
    let mut established = [0u128; 2];
    let mut replies = [[0u128; 2]; 2];
    for policies in [0usize, 100, 1_000, 10_000] {
        let snapshot = cluster(policies);
        let state = compile(&snapshot, NODE);
        backend.datapath_mut().clear().expect("maps emptied");
        backend.converge(&state, &on_loopback).expect("converged");
        let verdict = [true, false].map(|v4| {
            measure(
                backend.datapath_mut(),
                PROG_TO_POD,
                &frame(v4, &denied_from, 2000),
            )
        });
        row(
            &format!(
                "new connection, {policies} policies ({} entries)",
                state.policy.len()
            ),
            verdict[0],
            verdict[1],
        );
        if policies == 10_000 {
            established = [true, false].map(|v4| {
                measure(
                    backend.datapath_mut(),
                    PROG_TO_POD,
                    &frame(v4, &allowed_from, 3000),
                )
            });
            let reply =
                |v4: bool| tcp_frame(pick(&target, v4), pick(&allowed_from, v4), 80, 3000, 0x10);
            for (i, pods) in [on_loopback.clone(), PodInterfaces::new()]
                .iter()
                .enumerate()
            {
                backend.converge(&state, pods).expect("converged");
                replies[i] = [true, false]
                    .map(|v4| measure(backend.datapath_mut(), PROG_FROM_POD, &reply(v4)));
            }
        }
    }
    row(
        "established (conntrack hit), 10,000 policies",
        established[0],
        established[1],
    );
    row(
        "its reply, pod egress, interface table",
        replies[0][0],
        replies[0][1],
    );
    row(
        "its reply, pod egress, endpoint lookup",
        replies[1][0],
        replies[1][1],
    );
}
