//! `NP_CT`: the programs' own connection tracking (an LRU hash), so replies of allowed
//! connections pass in both directions. Kernel 4.19 offers tc programs no access to netfilter's
//! conntrack.
//!
//! An entry is keyed by the connection's original direction as one hook saw it. A hook that
//! finds the packet's own tuple is on the original direction and checks that the sides it is
//! responsible for were decided; one that finds the swapped tuple sees a reply, which passes.
//! Hooks on both sides of kube-proxy's DNAT see different tuples for one connection: each keeps
//! its own entry.

use crate::addr::Addr;

/// Map name.
pub const MAP_NAME: &str = "NP_CT";

/// Key: a connection in its original direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtKey {
    pub src: Addr,
    pub dst: Addr,
    /// Source port, or the ICMP echo identifier.
    pub sport: u16,
    /// Destination port, or the ICMP echo identifier.
    pub dport: u16,
    /// IP protocol number (a full word: no padding to fill, see [`Addr`]).
    pub protocol: u32,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 48);

impl CtKey {
    /// Turns the key into the same connection seen from the other end (in place: the eBPF
    /// stack is 512 bytes).
    #[inline(always)]
    pub fn reverse(&mut self) {
        core::mem::swap(&mut self.src, &mut self.dst);
        core::mem::swap(&mut self.sport, &mut self.dport);
    }
}

/// The source endpoint's egress policy allowed the connection at this hook.
pub const CT_EGRESS_ALLOWED: u32 = 1 << 0;
/// The destination endpoint's ingress policy allowed the connection at this hook.
pub const CT_INGRESS_ALLOWED: u32 = 1 << 1;
/// The egress decision was left to the hooks after kube-proxy's DNAT (a Service address).
pub const CT_EGRESS_DEFERRED: u32 = 1 << 2;
/// A packet of the reply direction was seen (TCP: the connection is established).
pub const CT_SEEN_REPLY: u32 = 1 << 3;
/// TCP FIN seen in the original direction.
pub const CT_FIN_ORIGINAL: u32 = 1 << 4;
/// TCP FIN seen in the reply direction.
pub const CT_FIN_REPLY: u32 = 1 << 5;
/// The connection is closing (RST, or FIN both ways): only the close timeout is left.
pub const CT_CLOSING: u32 = 1 << 6;
/// `netpol_from_pod` passed the connection (its later packets take the fast path there).
pub const CT_SEEN_FROM_POD: u32 = 1 << 7;
/// `netpol_to_pod` passed the connection.
pub const CT_SEEN_TO_POD: u32 = 1 << 8;
/// `netpol_to_uplink` passed the connection.
pub const CT_SEEN_TO_UPLINK: u32 = 1 << 9;

/// Value: what is known about the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtEntry {
    /// The last packet's time (CLOCK_MONOTONIC nanoseconds, see [`crate::clock`]). Programs on
    /// other CPUs may store a time later than the one a reader took: readers treat that as age
    /// 0.
    pub last_seen_ns: u64,
    /// `CT_*` bits.
    pub flags: u32,
    /// The rule that allowed the connection (0 when none was needed), for counters.
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 16);

#[cfg(feature = "user")]
crate::impl_pod!(CtKey, CtEntry);
