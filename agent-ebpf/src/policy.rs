//! Allow-entry lookup (`NP_POLICY`).

use agent_common::{
    ipcache::CLASS_ANY,
    policy::{PREFIX_FULL, PolicyKey},
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::NP_POLICY;

/// What [`lookup_allow`] returns when no entry allows.
pub const NO_RULE: u32 = 0;

/// The rule that allows (set, peer class, direction, protocol, port), or 0 if none does (rule
/// ids start at 1; a plain `u32` keeps the call within the five argument registers).
///
/// Precedence: 1. an entry for the packet's own peer class; 2. an entry for any peer. Within
/// each, the trie picks the longest prefix (exact port, then port range, then all ports of the
/// protocol, then all protocols). Every entry allows, so the order only decides which rule is
/// credited.
///
/// Only new connections get here: a BPF-to-BPF call keeps its keys off the entry point's stack.
#[inline(never)]
pub fn lookup_allow(set: u32, class: u32, direction: u8, protocol: u8, port: u16) -> u32 {
    let key = Key::new(
        PREFIX_FULL,
        PolicyKey::new(set, class, direction, protocol, port),
    );
    if let Some(value) = NP_POLICY.get(&key) {
        return value.rule;
    }
    let key = Key::new(
        PREFIX_FULL,
        PolicyKey::new(set, CLASS_ANY, direction, protocol, port),
    );
    match NP_POLICY.get(&key) {
        Some(value) => value.rule,
        None => NO_RULE,
    }
}
