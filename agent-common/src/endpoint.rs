//! `NP_ENDPOINTS`: the local pods this node enforces policy for, keyed by pod address.
//!
//! A pod with several addresses (dual stack) has one entry per address, all with the same
//! endpoint id. Every local pod has an entry, selected by a policy or not (unselected pods have
//! no isolation flags and pass). On a pod interface, an address with no entry is no pod we
//! know: its traffic is dropped (`spoofed` as a source, `no_endpoint` as a destination).

use crate::addr::Addr;

/// Map name (at most 15 bytes: the kernel keeps no more).
pub const MAP_NAME: &str = "NP_ENDPOINTS";

/// Key: the pod's address.
pub type EndpointKey = Addr;

/// The pod is isolated for ingress: traffic to it needs an allow entry.
pub const FLAG_INGRESS_ISOLATED: u32 = 1 << 0;
/// The pod is isolated for egress: traffic from it needs an allow entry.
pub const FLAG_EGRESS_ISOLATED: u32 = 1 << 1;
/// Audit mode: would-be drops are counted and reported, and the packet passes.
pub const FLAG_AUDIT: u32 = 1 << 2;
/// The endpoint's policy could not be written completely: it is written isolated in both
/// directions with the empty set, and drops count as `DropReason::NotProgrammed`.
pub const FLAG_NOT_PROGRAMMED: u32 = 1 << 3;

/// Value: what the programs need to know about a local pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    /// Stable id of the pod on this node (for events and counters); never 0.
    pub id: u32,
    /// Host-side interface of the pod; 0 while it is not known. When set, a packet that claims
    /// this source address on another pod interface is dropped as spoofed.
    pub ifindex: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Policy set for traffic to this pod (see [`crate::policy`]); meaningful when
    /// [`FLAG_INGRESS_ISOLATED`] is set.
    pub ingress_set: u32,
    /// Policy set for traffic from this pod; meaningful when [`FLAG_EGRESS_ISOLATED`] is set.
    pub egress_set: u32,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

impl Endpoint {
    /// Whether a policy selects the endpoint in some direction.
    #[inline(always)]
    pub fn is_isolated(&self) -> bool {
        self.flags & (FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED) != 0
    }

    /// Whether traffic in `direction` ([`crate::policy::DIR_INGRESS`] or
    /// [`crate::policy::DIR_EGRESS`]) needs an allow entry, and which set holds them.
    #[inline(always)]
    pub fn isolation(&self, direction: u8) -> Option<u32> {
        if direction == crate::policy::DIR_INGRESS {
            if self.flags & FLAG_INGRESS_ISOLATED != 0 {
                return Some(self.ingress_set);
            }
        } else if self.flags & FLAG_EGRESS_ISOLATED != 0 {
            return Some(self.egress_set);
        }
        None
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(Endpoint);
