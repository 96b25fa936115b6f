//! Fragments (`NP_FRAGS`): a later fragment of an isolated endpoint passes only after the
//! first fragment of its datagram passed (see `agent_common::fragments`).

use agent_common::fragments::{FRAG_TIMEOUT_NS, FragEntry, FragKey};

use crate::{maps::NP_FRAGS, parse::Packet};

#[inline(always)]
fn key_of(packet: &Packet) -> FragKey {
    FragKey {
        src: packet.src,
        dst: packet.dst,
        id: packet.fragment.id,
        protocol: u32::from(packet.protocol),
    }
}

/// Remembers that the first fragment of `packet`'s datagram passed. Fragments are rare: these
/// are BPF-to-BPF calls that keep their keys off the entry point's stack.
#[inline(never)]
pub fn record_first(packet: &Packet, now: u64) {
    // A failed insert only costs the datagram its later fragments (a retransmission).
    let _ = NP_FRAGS.insert(&key_of(packet), &FragEntry { first_seen_ns: now }, 0);
}

/// Forgets the datagram of a first fragment that was dropped: its later fragments must not
/// pass on the record of an earlier datagram that had the same IP id (ids repeat, and a raw
/// socket chooses them).
#[inline(never)]
pub fn forget_first(packet: &Packet) {
    // Nothing recorded is the common case.
    let _ = NP_FRAGS.remove(&key_of(packet));
}

/// Whether a later fragment belongs to a datagram whose first fragment passed.
#[inline(never)]
pub fn first_passed(packet: &Packet, now: u64) -> bool {
    // SAFETY: plain data copied out at once.
    match unsafe { NP_FRAGS.get(&key_of(packet)) } {
        // A first fragment recorded on another CPU after this one read the clock is recent.
        Some(entry) => now.saturating_sub(entry.first_seen_ns) <= FRAG_TIMEOUT_NS,
        None => false,
    }
}
