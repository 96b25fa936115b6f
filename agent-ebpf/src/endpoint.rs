//! Local endpoint lookup (`NP_ENDPOINTS`).

use agent_common::{addr::Addr, endpoint::Endpoint};

use crate::maps::NP_ENDPOINTS;

/// The local pod that owns `addr`, if any.
#[inline(always)]
pub fn lookup_endpoint(addr: &Addr) -> Option<Endpoint> {
    // SAFETY: the value is plain data copied out at once; userspace may replace it concurrently,
    // which the kernel handles for hash maps (readers see the old or the new element).
    unsafe { NP_ENDPOINTS.get(addr).copied() }
}
