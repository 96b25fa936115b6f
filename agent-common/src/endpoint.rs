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

/// `NP_IF_SOURCES`: the addresses each pod interface may send from, in a direct-mapped table
/// indexed by interface index modulo [`IF_SOURCES_SLOTS`]. It answers the anti-spoofing
/// question of established packets on a pod's egress hook without the `NP_ENDPOINTS` lookup
/// (an array lookup is inlined by the verifier; a hash lookup is a call and a hash of the
/// address). A slot names its interface, so it either confirms exactly what `NP_ENDPOINTS`
/// says, or knows nothing (empty, another interface's, two interfaces sharing it): then the
/// program looks the endpoint up as before. Kept in step with `NP_ENDPOINTS` by the agent that
/// loaded the programs; not pinned.
pub const IF_SOURCES_MAP_NAME: &str = "NP_IF_SOURCES";

/// Slots of `NP_IF_SOURCES` (a power of two).
pub const IF_SOURCES_SLOTS: u32 = 4096;

/// Value: an interface and its addresses (zero: none of that family; 0.0.0.0 and `::` are no
/// pod's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IfSources {
    /// The interface this slot describes; 0 for an empty slot.
    pub ifindex: u32,
    /// The IPv4 address's bytes as in [`Addr`] (network order, read as a native word).
    pub v4: u32,
    pub v6: crate::addr::AddrBytes,
}
const _: () = assert!(core::mem::size_of::<IfSources>() == 24);
const _: () = assert!(IF_SOURCES_SLOTS.is_power_of_two());

impl IfSources {
    /// The slot of interface `ifindex`.
    #[inline(always)]
    pub fn slot(ifindex: u32) -> u32 {
        ifindex & (IF_SOURCES_SLOTS - 1)
    }

    /// Whether `addr` is one of the slot's addresses.
    #[inline(always)]
    pub fn owns(&self, addr: &Addr) -> bool {
        // Word by word, spelled out: a loop would be a back-edge, which 4.19 rejects.
        let word = |bytes: &[u8; 16], i: usize| {
            u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
        };
        let (a, s) = (&addr.bytes.0, &self.v6.0);
        match addr.family {
            crate::addr::FAMILY_V4 => self.v4 != 0 && word(a, 0) == self.v4,
            crate::addr::FAMILY_V6 => {
                word(s, 0) | word(s, 4) | word(s, 8) | word(s, 12) != 0
                    && word(a, 0) == word(s, 0)
                    && word(a, 4) == word(s, 4)
                    && word(a, 8) == word(s, 8)
                    && word(a, 12) == word(s, 12)
            }
            _ => false,
        }
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(IfSources);
