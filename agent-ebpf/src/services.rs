//! Service address ranges (`NP_SERVICES`): destinations whose egress is decided after DNAT.

use agent_common::{addr::Addr, ipcache::lpm_prefix_len};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::NP_SERVICES;

/// Whether `addr` is in a Service range. Not inlined, for the stack (new connections only).
#[inline(never)]
pub fn is_service(addr: &Addr) -> bool {
    let key = Key::new(lpm_prefix_len(addr.max_prefix_len()), *addr);
    NP_SERVICES.get(&key).is_some()
}
