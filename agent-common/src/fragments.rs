//! `NP_FRAGS`: fragmented datagrams whose first fragment was allowed (an LRU hash).
//!
//! Later fragments carry no transport header, so no port rule can judge them. The rule: a later
//! fragment of an isolated endpoint passes only if the first fragment of the same datagram
//! (source, destination, protocol, IP id) passed before it; otherwise it is dropped and counted
//! as `DropReason::Fragment`. Out-of-order arrival of a later fragment first therefore costs a
//! retransmission, never a bypass.

use crate::addr::Addr;

/// Map name.
pub const MAP_NAME: &str = "NP_FRAGS";

/// Key: one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 identification (16 bits) or IPv6 fragment header identification.
    pub id: u32,
    /// IP protocol number (a full word: no padding to fill).
    pub protocol: u32,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 48);

/// Value: when the first fragment passed (CLOCK_MONOTONIC nanoseconds, see [`crate::clock`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragEntry {
    pub first_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragEntry>() == 8);

/// How long later fragments are admitted after the first (the kernel's own reassembly
/// timeout is 30 s).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

#[cfg(feature = "user")]
crate::impl_pod!(FragKey, FragEntry);
