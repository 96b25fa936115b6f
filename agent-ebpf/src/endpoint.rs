//! Local endpoint lookup (`NP_ENDPOINTS`), and the traffic of a pod's link that no endpoint
//! address can account for.

use agent_common::{
    addr::{Addr, FAMILY_V6},
    endpoint::{Endpoint, IfSources},
};

use crate::{
    maps::{NP_ENDPOINTS, NP_IF_SOURCES},
    parse::{IPPROTO_ICMPV6, Packet},
};

/// The local pod that owns `addr`, if any. A reference into the map rather than a copy: the
/// stack is 512 bytes.
#[inline(always)]
pub fn lookup_endpoint(addr: &Addr) -> Option<&'static Endpoint> {
    // SAFETY: hash map values stay valid for the program run (RCU); userspace replaces whole
    // elements, so a reader sees the old or the new one.
    unsafe { NP_ENDPOINTS.get(addr) }
}

/// Whether pod interface `ifindex` owns `addr` by `NP_IF_SOURCES`. `false` only means "not
/// known there": the caller then asks `NP_ENDPOINTS`.
#[inline(always)]
pub fn interface_owns(ifindex: u32, addr: &Addr) -> bool {
    match NP_IF_SOURCES.get(IfSources::slot(ifindex)) {
        Some(slot) => ifindex != 0 && slot.ifindex == ifindex && slot.owns(addr),
        None => false,
    }
}

/// ICMPv6 that never leaves the pod's link: neighbour discovery, duplicate address detection
/// and multicast listener reports use link-local (`fe80::/10`), multicast (`ff00::/8`) or the
/// unspecified address, which are no pod's address. `addr` is the side of the packet that is
/// not the pod's (source at the pod's egress, destination at its ingress). The kernel never
/// forwards a link-local source, so this opens nothing beyond the link.
#[inline(always)]
pub fn link_scoped_icmpv6(packet: &Packet, addr: &Addr) -> bool {
    if packet.protocol != IPPROTO_ICMPV6 || addr.family != FAMILY_V6 {
        return false;
    }
    let bytes = &addr.bytes;
    let link_local = bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80;
    let multicast = bytes[0] == 0xff;
    // Spelled out: a loop would be a back-edge, which 4.19 rejects.
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let unspecified = word(0) | word(4) | word(8) | word(12) == 0;
    link_local || multicast || unspecified
}
