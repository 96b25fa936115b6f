//! Backends program the node with the engine's compiled state: the eBPF datapath ([`ebpf`]),
//! later iptables, and an in-memory [`fake`] for runtime tests. They only apply what the engine
//! computed; they never decide policy.

pub mod ebpf;
pub mod fake;
pub mod iptables;

use std::collections::BTreeMap;

use agent_common::{
    addr::Addr,
    endpoint::{Endpoint, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED, FLAG_NOT_PROGRAMMED},
    policy::SET_EMPTY,
};

use crate::policy::{Delta, NodeState};

/// What an interface is to the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InterfaceRole {
    /// The host side of a pod's veth: the pod's egress at its tc ingress, its ingress at its
    /// tc egress.
    Pod,
    /// An uplink: local pods' egress after DNAT, at its tc egress.
    Uplink,
    /// A pod interface (by its name) that no known pod's address routes to yet: all its
    /// traffic is dropped until the agent knows the pod and attaches [`Self::Pod`] instead.
    UnknownPod,
}

/// Host interface index of each local pod address the runtime found an interface for.
pub type PodInterfaces = BTreeMap<Addr, u32>;

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error(transparent)]
    Iptables(#[from] iptables::IptablesError),
    /// A failure the in-memory [`fake`] backend was told to produce.
    #[error("injected write failure")]
    Injected,
}

/// Packet and byte counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// What the datapath counted, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// (drop reason name, direction name) -> dropped (or audited) traffic.
    pub drops: BTreeMap<(&'static str, &'static str), Count>,
    /// Rule id -> allowed traffic credited to it.
    pub rules: BTreeMap<u32, Count>,
}

/// Occupancy of one map against its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// A way of enforcing the compiled state on this node.
pub trait Backend {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Makes the node hold exactly `state` (first sync, restart): everything new is written
    /// before anything stale is removed, so no selected pod is ever less protected than by
    /// either the old or the new state.
    fn converge(&mut self, state: &NodeState, pods: &PodInterfaces) -> Result<(), BackendError>;

    /// Applies an engine delta in its safe order.
    fn apply(&mut self, delta: &Delta, pods: &PodInterfaces) -> Result<(), BackendError>;

    /// Writes `endpoints` "not programmed": isolated in both directions with nothing allowed
    /// (never audit), so that a write that failed half-way opens nothing. The next successful
    /// [`Backend::converge`] writes them as the state says.
    fn fail_closed(
        &mut self,
        endpoints: &BTreeMap<Addr, Endpoint>,
        pods: &PodInterfaces,
    ) -> Result<(), BackendError>;

    /// Sets the Service address ranges whose egress is decided after DNAT.
    fn set_service_ranges(&mut self, ranges: &[(Addr, u8)]) -> Result<(), BackendError>;

    /// After `error`: makes room when a map was full and may grow (a new datapath with a larger
    /// map, which the next converge fills; the programs must then be attached again on every
    /// interface). Returns whether it did.
    fn grow(&mut self, error: &BackendError) -> Result<bool, BackendError> {
        let _ = error;
        Ok(false)
    }

    /// Turns enforcement on or off (the `disable_network_policy` switch).
    fn set_enforcement(&mut self, enforce: bool) -> Result<(), BackendError>;

    /// Puts the programs of `role` on `iface` (replacing ours if present).
    fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError>;

    /// Removes ours from `iface`; others' filters are never touched.
    fn detach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError>;

    /// Forgets what belonged to interfaces that are gone (pinned links); returns how many.
    fn remove_orphans(&mut self) -> Result<usize, BackendError>;

    /// What the datapath counted so far.
    fn counters(&self) -> Result<Counters, BackendError>;

    /// Entries per map against capacity.
    fn usage(&self) -> Result<Vec<MapUsage>, BackendError>;
}

/// `endpoints` as [`Backend::fail_closed`] writes them: each keeps its id, and is isolated
/// both ways with the empty set.
pub fn not_programmed(
    endpoints: &BTreeMap<Addr, Endpoint>,
) -> impl Iterator<Item = (Addr, Endpoint)> + '_ {
    endpoints.iter().map(|(addr, endpoint)| {
        let endpoint = Endpoint {
            flags: FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED | FLAG_NOT_PROGRAMMED,
            ingress_set: SET_EMPTY,
            egress_set: SET_EMPTY,
            ..*endpoint
        };
        (*addr, endpoint)
    })
}
