//! What the debug commands print with `-o json`: one type per command, shared by the agent
//! (which fills the parts only it knows) and the CLI. Field names are stable; docs/DEBUG.md
//! lists them.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// `netpol-agent status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Whether the agent answered (false: the rest comes from the pins and the index file).
    pub agent_running: bool,
    pub node: String,
    pub pid: Option<u32>,
    pub version: String,
    pub backend: String,
    /// Why the backend was chosen.
    pub backend_reason: String,
    pub kernel: String,
    /// `tcx` or `netlink` (eBPF only).
    pub attach_mode: Option<String>,
    /// Whether policy is enforced (`disable_network_policy` unset or false).
    pub enforcement: bool,
    pub ready: bool,
    pub not_ready_reason: Option<String>,
    /// `api-server` or `objects-dir PATH`.
    pub source: String,
    /// Kinds whose watch is failing (empty: every watch is healthy).
    pub failing_watches: Vec<FailingWatch>,
    pub seconds_since_full_sync: Option<f64>,
    pub seconds_since_change_programmed: Option<f64>,
    pub endpoints: EndpointCounts,
    pub maps: Vec<MapStatus>,
    pub rejected_objects: Vec<Rejection>,
    /// Failed backend operations since start, by operation.
    pub programming_errors: BTreeMap<String, u64>,
    /// Whether the node's CNI chain includes the netpol-cni plugin (`None`: not managed).
    pub cni_chained: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailingWatch {
    pub kind: String,
    pub seconds: u64,
    pub error: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCounts {
    /// Local pods with an endpoint entry.
    pub local: u64,
    /// Of them, selected by some policy and enforced.
    pub enforced: u64,
    /// Selected but not enforced as their policies say, by reason (`no_interface`,
    /// `not_attached`, `not_programmed`).
    pub not_enforced: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

/// An object (or part of one) the agent refused, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: String,
    /// `namespace/name`.
    pub object: String,
    pub reason: String,
}

/// One row of `netpol-agent endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointReport {
    /// `namespace/name`.
    pub pod: String,
    pub endpoint_id: u32,
    pub addresses: Vec<IpAddr>,
    /// Host side of the pod's link.
    pub interface: Option<String>,
    pub ingress: Isolation,
    pub egress: Isolation,
    /// `enforced`, `not_selected` (no policy selects it: open both ways), `no_interface`,
    /// `not_attached` or `not_programmed`.
    pub state: String,
}

/// A direction of an endpoint: isolated or not, by which policies, and its policy set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub isolated: bool,
    /// `namespace/name` of every policy that selects the pod and covers the direction.
    pub policies: Vec<String>,
    pub set: Option<u32>,
}

/// The engine's reference answer for one side of a flow (from the agent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceSide {
    /// The pod at this end, if the address is a pod's.
    pub pod: Option<String>,
    /// Whether the pod is an endpoint of this node (its side is enforced here).
    pub local: bool,
    pub allowed: bool,
    /// The policies that isolate the pod in this direction.
    pub isolated_by: Vec<String>,
    /// The rules that allow the flow (`namespace/policy egress[0].to[1].ports[0]`).
    pub allowed_by: Vec<String>,
}

/// The engine's reference answer for a flow (`GET /v1/explain`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub egress: ReferenceSide,
    pub ingress: ReferenceSide,
}

/// The datapath's answer for one side, as the maps read back from the kernel decide it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathSide {
    /// `not_endpoint` (not enforced on this node), `not_isolated`, `allowed` or `denied`.
    pub verdict: String,
    pub endpoint: Option<String>,
    pub set: Option<u32>,
    pub class: Option<u32>,
    /// What the peer's class stands for.
    pub class_name: Option<String>,
    pub rule: Option<u32>,
    pub rule_name: Option<String>,
}

/// One side of `explain`: the two answers and whether they agree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainSide {
    /// `egress` (at the source) or `ingress` (at the destination).
    pub direction: String,
    pub pod: Option<String>,
    /// Whether this node enforces this side.
    pub local: bool,
    /// `None` when the agent is down (the reference needs its view of the cluster).
    pub reference: Option<ReferenceSide>,
    pub datapath: Option<DatapathSide>,
    /// `Some(false)`: drift between what the engine wants and what the kernel holds.
    pub agree: Option<bool>,
}

/// `netpol-agent explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    pub from: IpAddr,
    pub to: IpAddr,
    pub protocol: String,
    pub port: u16,
    /// The verdict on this node for a new connection (both local sides).
    pub allowed: bool,
    pub egress: ExplainSide,
    pub ingress: ExplainSide,
    /// Some answer disagrees with another: the datapath is not what the engine compiled.
    pub drift: bool,
    /// Notes for the reader: a Service destination, enforcement switched off, stale names.
    pub notes: Vec<String>,
}
