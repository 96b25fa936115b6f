//! Local endpoint lookup (`NP_ENDPOINTS`).

use agent_common::{addr::Addr, endpoint::Endpoint};

use crate::maps::NP_ENDPOINTS;

/// The local pod that owns `addr`, if any. A reference into the map rather than a copy: the
/// stack is 512 bytes.
#[inline(always)]
pub fn lookup_endpoint(addr: &Addr) -> Option<&'static Endpoint> {
    // SAFETY: hash map values stay valid for the program run (RCU); userspace replaces whole
    // elements, so a reader sees the old or the new one.
    unsafe { NP_ENDPOINTS.get(addr) }
}
