//! The decision for one packet, and the single exit that turns it into a tc verdict.

use agent_common::{
    config::CONFIG_ENFORCEMENT_OFF, endpoint::FLAG_AUDIT, metrics::DropReason, policy::DIR_EGRESS,
};
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};

use crate::{
    endpoint::lookup_endpoint,
    ipcache::class_of,
    maps::{NP_CONFIG, NP_DROPS},
    parse::{load_dport, parse},
    policy::lookup_allow,
};

/// A packet policy does not allow.
pub struct Drop {
    pub reason: DropReason,
    /// The endpoint is in audit mode: count and report, but let the packet through.
    pub audit: bool,
}

impl From<DropReason> for Drop {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Self {
            reason,
            audit: false,
        }
    }
}

/// Decides a packet seen in `direction` of the local endpoint.
#[inline(always)]
pub fn enforce(ctx: &TcContext, direction: u8) -> Result<(), Drop> {
    if enforcement_off() {
        return Ok(());
    }
    let Some(packet) = parse(ctx)? else {
        // Not IP: outside NetworkPolicy.
        return Ok(());
    };
    let (local, peer) = if direction == DIR_EGRESS {
        (&packet.src, &packet.dst)
    } else {
        (&packet.dst, &packet.src)
    };
    let Some(endpoint) = lookup_endpoint(local) else {
        // Not a local pod we enforce for: unselected pods are untouched.
        return Ok(());
    };
    let audit = endpoint.flags & FLAG_AUDIT != 0;
    let drop = |reason| Drop { reason, audit };
    if direction == DIR_EGRESS && endpoint.ifindex != 0 && endpoint.ifindex != ingress_ifindex(ctx)
    {
        return Err(drop(DropReason::Spoofed));
    }
    let Some(set) = endpoint.isolation(direction) else {
        return Ok(());
    };
    if packet.later_fragment {
        return Err(drop(DropReason::Fragment));
    }
    let dport = load_dport(ctx, &packet).map_err(drop)?;
    match lookup_allow(set, class_of(peer), direction, packet.protocol, dport) {
        Some(_rule) => Ok(()),
        None => Err(drop(DropReason::Policy)),
    }
}

/// The one exit of every program: pass allowed packets on to the next filter, count and drop
/// the rest (audit mode counts and passes).
#[inline(always)]
pub fn finish(ctx: &TcContext, direction: u8, result: Result<(), Drop>) -> i32 {
    match result {
        Ok(()) => TC_ACT_UNSPEC,
        Err(Drop { reason, audit }) => {
            count_drop(ctx, reason, direction);
            if audit { TC_ACT_UNSPEC } else { TC_ACT_SHOT }
        }
    }
}

/// The interface the packet arrived on (`__sk_buff.ifindex`, present in every kernel we support).
#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed in; the verifier checks the field
    // access.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn enforcement_off() -> bool {
    match NP_CONFIG.get(0) {
        Some(config) => config.flags & CONFIG_ENFORCEMENT_OFF != 0,
        None => false,
    }
}

#[inline(always)]
fn count_drop(ctx: &TcContext, reason: DropReason, direction: u8) {
    if let Some(counter) = NP_DROPS.get_ptr_mut(reason.counter_index(direction)) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(ctx.len());
        }
    }
}
