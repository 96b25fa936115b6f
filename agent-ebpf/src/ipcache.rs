//! Peer class lookup (`NP_IPCACHE`, `NP_IPCACHE1`: one trie per id generation).

use agent_common::{
    addr::Addr,
    ipcache::{CLASS_WORLD, generation_index, lpm_prefix_len},
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{NP_IPCACHE, NP_IPCACHE1};

/// The peer class of `addr` for an endpoint whose policy set is `set`: the class of its
/// longest matching prefix in the trie of the set's generation, or the world.
///
/// Only new connections get here: a BPF-to-BPF call keeps its key off the entry point's stack.
#[inline(never)]
pub fn class_of(addr: &Addr, set: u32) -> u32 {
    let key = Key::new(lpm_prefix_len(addr.max_prefix_len()), *addr);
    let class = if generation_index(set) == 0 {
        NP_IPCACHE.get(&key)
    } else {
        NP_IPCACHE1.get(&key)
    };
    match class {
        Some(class) => class.id,
        None => CLASS_WORLD,
    }
}
