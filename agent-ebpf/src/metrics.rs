//! Counters (`NP_DROPS`, `NP_RULE_HITS`) and drop events (`NP_EVENTS`).

use agent_common::{events::PolicyEvent, metrics::DropReason};
use aya_ebpf::programs::TcContext;

use crate::maps::{NP_DROPS, NP_EVENTS, NP_RULE_HITS};

/// Counts a drop by its reason code and direction.
#[inline(always)]
pub fn count_drop(ctx: &TcContext, reason_code: u32, direction: u8) {
    let index = u32::from(direction) * DropReason::COUNT + reason_code;
    if let Some(counter) = NP_DROPS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(ctx.len());
        }
    }
}

/// Credits a packet to the rule that allowed its connection (0: none needed).
#[inline(always)]
pub fn count_rule(ctx: &TcContext, rule: u32) {
    if rule == 0 {
        return;
    }
    if let Some(counter) = NP_RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(ctx.len());
        }
    }
}

#[inline(always)]
pub fn send_event(ctx: &TcContext, event: &PolicyEvent) {
    NP_EVENTS.output(ctx, event, 0);
}
