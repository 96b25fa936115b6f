//! Real traffic through the tc programs on a simulated node (handbook/test-network.md): pods
//! are network namespaces, the test writes the maps directly, and probes are real TCP and UDP
//! exchanges. Covers allow and deny both ways, replies, a Service ClusterIP DNATed by iptables
//! (the kube-proxy stand-in) to local and remote backends, and node-originated traffic; once
//! with netlink (clsact) attachment and once with tcx where the kernel has it.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use agent_common::{
    addr::Addr,
    endpoint::{Endpoint, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
    policy::{DIR_EGRESS, DIR_INGRESS, PREFIX_ANY_PROTO, PREFIX_FULL, PolicyKey},
};
use netpol_agent::backend::{
    InterfaceRole,
    ebpf::{AttachMode, BPFFS, Datapath, LoadOptions, MapSizes, ensure_bpffs},
};
use netpol_tests::{
    netns::{SimulatedNode, plan},
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

/// Pod A is isolated both ways: ingress allows TCP/80 and UDP/81 from pod B only; egress
/// allows anything to the internet /24 only. Pods B and C are not selected.
fn program_maps(datapath: &mut Datapath) {
    let endpoint = Endpoint {
        id: 1,
        ifindex: 0,
        flags: FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED,
        ingress_set: SET_A_IN,
        egress_set: SET_A_OUT,
    };
    datapath
        .insert_endpoint(Addr::from(ip(POD_A)), endpoint)
        .expect("endpoint");
    datapath
        .insert_prefix(Addr::from(ip(POD_B)), 32, CLASS_B)
        .expect("prefix");
    datapath
        .insert_prefix(Addr::from(ip("198.51.100.0")), 24, CLASS_INTERNET)
        .expect("prefix");
    datapath
        .insert_service_range(Addr::from(ip("10.96.0.0")), 16)
        .expect("service range");
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
        datapath.insert_policy(len, key, 1).expect("policy");
    }
}

fn real_traffic(mode: AttachMode) {
    let pins = PinDir::new();
    let mut node = SimulatedNode::new(LOCAL_PODS, &[REMOTE_POD, INTERNET]);
    let a = node.add_pod(POD_A);
    let b = node.add_pod(POD_B);
    let c = node.add_pod(POD_C);
    node.add_service(VIP_A, 80, POD_A);
    node.add_service(VIP_INTERNET, 80, INTERNET);
    node.add_service(VIP_B, 80, POD_B);

    let mut datapath = Datapath::load_with(&LoadOptions {
        sizes: MapSizes::default(),
        pin_dir: Some(pins.0.clone()),
        attach_mode: mode,
    })
    .expect("load");
    program_maps(&mut datapath);
    let pod_veths: Vec<String> = node.pods.iter().map(|pod| pod.host_veth.clone()).collect();
    node.node.run(|| {
        for veth in &pod_veths {
            datapath
                .attach(veth, InterfaceRole::Pod)
                .expect("attach pod veth");
        }
        datapath
            .attach(plan::UPLINK, InterfaceRole::Uplink)
            .expect("attach uplink");
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

    // Ingress of A.
    assert!(pod_b.tcp_probe(ip(POD_A), 80), "B may open TCP/80 to A");
    assert!(!pod_c.tcp_probe(ip(POD_A), 80), "C may not");
    assert!(
        pod_b.udp_probe(ip(POD_A), 81),
        "B may send UDP/81 to A, and the answer returns"
    );
    assert!(!pod_b.udp_probe(ip(POD_A), 80), "UDP/80 is not TCP/80");
    assert!(!node.ext.tcp_probe(ip(POD_A), 80), "a remote pod may not");
    // Egress of A: the internet only; replies return although A's ingress does not allow it.
    assert!(
        pod_a.tcp_probe(ip(INTERNET), 80),
        "A may reach the internet"
    );
    assert!(
        !pod_a.tcp_probe(ip(POD_B), 80),
        "A may not open connections to B"
    );
    assert!(!pod_a.tcp_probe(ip(REMOTE_POD), 80), "nor to a remote pod");
    // Services: decided on the backend after DNAT.
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
    // Unselected pods are untouched.
    assert!(pod_c.tcp_probe(ip(POD_B), 80), "C reaches B");
    assert!(pod_b.tcp_probe(ip(INTERNET), 80), "B reaches the internet");
    // The node itself (kubelet probes) is allowed by origin.
    assert!(node.node.tcp_probe(ip(POD_A), 80), "the node reaches A");
}

#[test]
fn policy_holds_for_real_traffic_with_netlink_attachment() {
    if !require_root("policy_holds_for_real_traffic_with_netlink_attachment") {
        return;
    }
    real_traffic(AttachMode::Netlink);
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
    real_traffic(AttachMode::Tcx);
}
