//! The reference case of the real-traffic suites, the same for every backend: a node with pods
//! A, B and C, a remote pod and an internet host in `ext`, three Services, and a compiled state
//! in which pod A is isolated both ways (ingress allows TCP/80 and UDP/81 from B only; egress
//! allows anything to the internet /24 only). [`ReferenceNode::check_traffic`] probes what that
//! must mean for real traffic.

use std::net::IpAddr;

use agent_common::{
    addr::Addr,
    endpoint::{Endpoint, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
    ipcache::PeerClass,
    policy::{DIR_EGRESS, DIR_INGRESS, PREFIX_ANY_PROTO, PREFIX_FULL, PolicyKey, PolicyValue},
};
use netpol_agent::{
    model::ObjectRef,
    policy::{Direction, IpPrefix, NodeState, PolicyEntryKey, RuleRef},
};

use crate::netns::{Netns, Server, SimulatedNode};

pub const LOCAL_PODS: &str = "10.244.1.0/24";
pub const POD_A: &str = "10.244.1.10";
pub const POD_B: &str = "10.244.1.11";
pub const POD_C: &str = "10.244.1.12";
pub const REMOTE_POD: &str = "10.244.2.10";
pub const INTERNET: &str = "198.51.100.7";
pub const VIP_A: &str = "10.96.0.10";
pub const VIP_INTERNET: &str = "10.96.0.11";
pub const VIP_B: &str = "10.96.0.12";
/// The Service range holding the three VIPs.
pub const SERVICE_RANGE: (&str, u8) = ("10.96.0.0", 16);

pub const CLASS_B: u32 = 5;
pub const CLASS_INTERNET: u32 = 6;
pub const SET_A_IN: u32 = 7;
pub const SET_A_OUT: u32 = 8;
/// The only rule id of the state.
pub const RULE: u32 = 1;

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// The compiled state of the reference case.
pub fn state() -> NodeState {
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
    // Every local pod has an endpoint, selected or not: on a pod interface, an address
    // without one is a forged source or a pod not programmed yet, and is dropped.
    for (id, pod) in [(2, POD_B), (3, POD_C)] {
        state.endpoints.insert(
            Addr::from(ip(pod)),
            Endpoint {
                id,
                ..Endpoint::default()
            },
        );
    }
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
            .insert(PolicyEntryKey::new(key, len), PolicyValue { rule: RULE });
    }
    state.rules.insert(
        RULE,
        RuleRef {
            policy: ObjectRef::new("default", "a"),
            direction: Direction::Ingress,
            rule: 0,
            peer: None,
            port: None,
        },
    );
    state
}

/// The Service range as backends take it.
pub fn service_ranges() -> Vec<(Addr, u8)> {
    vec![(Addr::from(ip(SERVICE_RANGE.0)), SERVICE_RANGE.1)]
}

/// The simulated node of the reference case, with its servers running.
pub struct ReferenceNode {
    pub node: SimulatedNode,
    _servers: Vec<Server>,
}

impl ReferenceNode {
    pub fn build() -> Self {
        let mut node = SimulatedNode::new(LOCAL_PODS, &[REMOTE_POD, INTERNET]);
        let a = node.add_pod(POD_A);
        let b = node.add_pod(POD_B);
        node.add_pod(POD_C);
        node.add_service(VIP_A, 80, POD_A);
        node.add_service(VIP_INTERNET, 80, INTERNET);
        node.add_service(VIP_B, 80, POD_B);
        let servers = vec![
            node.pods[a].netns.serve(80, "a"),
            node.pods[a].netns.serve(81, "a"),
            node.pods[b].netns.serve(80, "b"),
            node.ext.serve(80, "ext"),
        ];
        Self {
            node,
            _servers: servers,
        }
    }

    /// Pod A, B or C (0, 1, 2).
    pub fn pod(&self, index: usize) -> &Netns {
        &self.node.pods[index].netns
    }

    /// What the reference state must mean for real traffic, whichever backend enforces it.
    pub fn check_traffic(&self) {
        let (pod_a, pod_b, pod_c) = (self.pod(0), self.pod(1), self.pod(2));
        // Ingress of A.
        assert!(pod_b.tcp_probe(ip(POD_A), 80), "B may open TCP/80 to A");
        assert!(!pod_c.tcp_probe(ip(POD_A), 80), "C may not");
        assert!(
            pod_b.udp_probe(ip(POD_A), 81),
            "B may send UDP/81 to A, and the answer returns"
        );
        assert!(!pod_b.udp_probe(ip(POD_A), 80), "UDP/80 is not TCP/80");
        assert!(
            !self.node.ext.tcp_probe(ip(POD_A), 80),
            "a remote pod may not"
        );
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
        assert!(
            self.node.node.tcp_probe(ip(POD_A), 80),
            "the node reaches A"
        );
    }
}
