//! `NP_EVENTS`: a perf event array of drop and audit events (ring buffers need 5.8).

use crate::addr::Addr;

/// Map name.
pub const MAP_NAME: &str = "NP_EVENTS";

/// The event is an audit: the packet was counted and reported, not dropped.
pub const EVENT_AUDIT: u32 = 1 << 0;

/// One dropped (or audited) packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyEvent {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u32,
    /// `DIR_INGRESS` or `DIR_EGRESS` of the endpoint.
    pub direction: u32,
    /// Endpoint id of the local pod the decision was for (0 if none).
    pub endpoint: u32,
    /// A `DropReason` code.
    pub reason: u32,
    /// `EVENT_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 64);

#[cfg(feature = "user")]
crate::impl_pod!(PolicyEvent);
