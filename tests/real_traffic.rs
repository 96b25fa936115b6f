//! Real traffic through the tc programs on a simulated node (handbook/test-network.md): pods
//! are network namespaces, the test writes the maps directly, and probes are real TCP and UDP
//! exchanges. Covers allow and deny both ways, replies, a Service ClusterIP DNATed by iptables
//! (the kube-proxy stand-in) to local and remote backends, and node-originated traffic; once
//! with netlink (clsact) attachment and once with tcx where the kernel has it.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use netpol_agent::backend::{
    InterfaceRole,
    ebpf::{AttachMode, BPFFS, ClockChoice, Datapath, LoadOptions, MapSizes, ensure_bpffs},
};
use netpol_tests::{
    netns::plan,
    reference::{ReferenceNode, service_ranges, state},
    require_root,
};

/// A private pin directory under bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        ensure_bpffs(std::path::Path::new(BPFFS)).expect("bpffs");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(PathBuf::from(BPFFS).join(format!("netpol-test-{}-{n}", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the reference state straight into the maps (no backend in between).
fn program_maps(datapath: &mut Datapath) {
    let state = state();
    for (addr, endpoint) in &state.endpoints {
        datapath
            .insert_endpoint(*addr, *endpoint)
            .expect("endpoint");
    }
    for (prefix, class) in &state.ipcache {
        datapath
            .insert_prefix(0, prefix.addr, u32::from(prefix.len), class.id)
            .expect("prefix");
    }
    for (key, value) in &state.policy {
        datapath
            .insert_policy(key.prefix_len, key.key, value.rule)
            .expect("policy");
    }
    for (addr, len) in service_ranges() {
        datapath
            .insert_service_range(addr, u32::from(len))
            .expect("service range");
    }
}

/// `clock`: the netlink run keeps the precise clock, as on kernels before 5.5 (where tcx does
/// not exist either); the tcx run reads the tick counter.
fn real_traffic(mode: AttachMode, clock: ClockChoice) {
    let pins = PinDir::new();
    let reference = ReferenceNode::build();
    let mut datapath = Datapath::load_with(&LoadOptions {
        sizes: MapSizes::default(),
        pin_dir: Some(pins.0.clone()),
        attach_mode: mode,
        clock,
    })
    .expect("load");
    program_maps(&mut datapath);
    let pod_veths: Vec<String> = reference
        .node
        .pods
        .iter()
        .map(|pod| pod.host_veth.clone())
        .collect();
    reference.node.node.run(|| {
        for veth in &pod_veths {
            datapath
                .attach(veth, InterfaceRole::Pod)
                .expect("attach pod veth");
        }
        datapath
            .attach(plan::UPLINK, InterfaceRole::Uplink)
            .expect("attach uplink");
    });
    reference.check_traffic();
}

#[test]
fn policy_holds_for_real_traffic_with_netlink_attachment() {
    if !require_root("policy_holds_for_real_traffic_with_netlink_attachment") {
        return;
    }
    real_traffic(AttachMode::Netlink, ClockChoice::Precise);
}

#[test]
fn policy_holds_for_real_traffic_with_tcx_attachment() {
    if !require_root("policy_holds_for_real_traffic_with_tcx_attachment") {
        return;
    }
    if AttachMode::detect() != AttachMode::Tcx {
        eprintln!("skipping policy_holds_for_real_traffic_with_tcx_attachment: kernel before 6.6");
        return;
    }
    real_traffic(AttachMode::Tcx, ClockChoice::Ticks);
}
