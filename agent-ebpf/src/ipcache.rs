//! Peer class lookup (`NP_IPCACHE`).

use agent_common::{
    addr::Addr,
    ipcache::{CLASS_WORLD, lpm_prefix_len},
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::NP_IPCACHE;

/// The peer class of `addr`: the class of its longest matching prefix, or the world.
///
/// Only new connections get here: a BPF-to-BPF call keeps its key off the entry point's stack.
#[inline(never)]
pub fn class_of(addr: &Addr) -> u32 {
    let key = Key::new(lpm_prefix_len(addr.max_prefix_len()), *addr);
    match NP_IPCACHE.get(&key) {
        Some(class) => class.id,
        None => CLASS_WORLD,
    }
}
