//! Connection tracking over `NP_CT`: lookups that ignore expired entries, the TCP state kept
//! per entry, and entry creation.

use agent_common::{
    config::{Config, defaults},
    conntrack::{CT_CLOSING, CT_FIN_ORIGINAL, CT_FIN_REPLY, CT_SEEN_REPLY, CtEntry, CtKey},
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    maps::{NP_CLOCK, NP_CT},
    parse::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, has_ports, is_tcp},
};

/// The current time for timeouts, in CLOCK_MONOTONIC nanoseconds (see `agent_common::clock`).
#[inline(always)]
pub fn now_ns() -> u64 {
    scaled(raw_clock())
}

/// A reading of `raw_clock` in CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
pub fn scaled(raw: u64) -> u64 {
    match NP_CLOCK.get(0) {
        Some(clock) => clock.to_ns(raw),
        None => raw,
    }
}

/// The clock as the loader left it: `bpf_ktime_get_ns`, or `bpf_jiffies64` in its place.
/// The only place the programs read a clock.
#[inline(always)]
pub fn raw_clock() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The live entry of `key`, or `None` if there is none or it has timed out.
#[inline(always)]
pub fn lookup_live(key: &CtKey, protocol: u8, now: u64, config: &Config) -> Option<*mut CtEntry> {
    let entry = NP_CT.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup and stays valid for this program run;
    // concurrent writers only store whole fields.
    let (last_seen, flags) = unsafe { ((*entry).last_seen_ns, (*entry).flags) };
    let timeout = timeout_ns(protocol, flags, config);
    // Another CPU may have refreshed the entry after this one read the clock: a `last_seen`
    // "after" `now` is live, not an age near 2^64.
    if now.saturating_sub(last_seen) > timeout {
        return None;
    }
    Some(entry)
}

/// Records a packet of the entry's `reply` or original direction: refreshes it and follows
/// the TCP state.
#[inline(always)]
pub fn refresh(entry: *mut CtEntry, protocol: u8, tcp_flags: u8, reply: bool, now: u64) {
    // SAFETY: see `lookup_live`.
    unsafe {
        let mut flags = (*entry).flags;
        if reply {
            flags |= CT_SEEN_REPLY;
        }
        if is_tcp(protocol) {
            flags = tcp_transition(flags, tcp_flags, reply);
        }
        (*entry).flags = flags;
        (*entry).last_seen_ns = now;
    }
}

/// TCP: RST closes at once; a FIN each way closes.
#[inline(always)]
fn tcp_transition(mut flags: u32, tcp_flags: u8, reply: bool) -> u32 {
    if tcp_flags & TCP_RST != 0 {
        return flags | CT_CLOSING;
    }
    if tcp_flags & TCP_FIN != 0 {
        flags |= if reply { CT_FIN_REPLY } else { CT_FIN_ORIGINAL };
    }
    if flags & (CT_FIN_ORIGINAL | CT_FIN_REPLY) == CT_FIN_ORIGINAL | CT_FIN_REPLY {
        flags |= CT_CLOSING;
    }
    flags
}

/// A TCP SYN (without ACK) starts a new connection even over a closing entry (port reuse).
#[inline(always)]
pub fn is_new_tcp_connection(protocol: u8, tcp_flags: u8) -> bool {
    is_tcp(protocol) && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Stores `key` with `flags` (the sides decided so far) and the crediting `rule`. New
/// connections only: not inlined, for the stack.
#[inline(never)]
pub fn create(key: &CtKey, flags: u32, rule: u32, tcp_flags: u8, now: u64) {
    let flags = if key.protocol == u32::from(IPPROTO_TCP) {
        tcp_transition(flags, tcp_flags, false)
    } else {
        flags
    };
    let entry = CtEntry {
        last_seen_ns: now,
        flags,
        rule,
    };
    // A full LRU map evicts its oldest entry; an error here only means a later packet of the
    // connection is judged by policy again, which is safe.
    let _ = NP_CT.insert(key, &entry, 0);
}

#[inline(always)]
fn timeout_ns(protocol: u8, flags: u32, config: &Config) -> u64 {
    let ms = if is_tcp(protocol) {
        if flags & CT_CLOSING != 0 {
            or_default(config.tcp_close_timeout_ms, defaults::TCP_CLOSE_MS)
        } else if flags & CT_SEEN_REPLY != 0 {
            or_default(
                config.tcp_established_timeout_ms,
                defaults::TCP_ESTABLISHED_MS,
            )
        } else {
            or_default(config.tcp_syn_timeout_ms, defaults::TCP_SYN_MS)
        }
    } else if has_ports(protocol) {
        or_default(config.udp_timeout_ms, defaults::UDP_MS)
    } else {
        or_default(config.other_timeout_ms, defaults::OTHER_MS)
    };
    u64::from(ms) * 1_000_000
}

#[inline(always)]
fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}
