//! `NP_SERVICES`: an LPM trie of Service address ranges (ClusterIP CIDRs).
//!
//! kube-proxy rewrites a Service address to a backend in netfilter, after tc ingress of the
//! client pod's veth. Egress to an address in this trie is therefore not decided there but at
//! the hooks after DNAT: tc egress of the backend pod's veth (local backends) and of the uplinks
//! (remote ones). Every other destination is decided at once, which also covers destinations
//! on the node itself, where no later hook runs.

use crate::addr::Addr;

/// Map name.
pub const MAP_NAME: &str = "NP_SERVICES";

/// Key data (the LPM key wrapper carries the prefix length, family byte included).
pub type ServiceKey = Addr;

/// Value: reserved flags (0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceRange {
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceRange>() == 4);

#[cfg(feature = "user")]
crate::impl_pod!(ServiceRange);
