//! `__sk_buff` accesses of a tc program, checked against the 4.19 layout and access rules.
//!
//! A forward data-flow over the linked program tracks which registers *must* hold the context
//! pointer (r1 at entry; copied by 64-bit moves; lost when overwritten, across helper calls for
//! r0..r5, and into a callee only through the argument registers). Only loads and stores
//! through such a register are judged, so the check has no false positives from registers it
//! cannot follow; accesses through derived pointers are the verifier's business.

use std::collections::VecDeque;

use super::{
    contract,
    link::{Edge, Linked},
};

/// r0..r5: clobbered by calls.
const CALLER_SAVED: u16 = 0b11_1111;
/// r1..r5: the arguments a callee receives.
const ARGUMENTS: u16 = 0b11_1110;

/// The `__sk_buff` accesses 4.19 would reject: instruction index (kernel numbering) and why.
pub fn check(linked: &Linked<'_>) -> Vec<(usize, String)> {
    let state = must_be_context(linked);
    let mut found = Vec::new();
    for at in linked.instructions() {
        let Some(ctx) = state[at] else { continue };
        let insn = linked.insns[at];
        let holds = |reg: u8| reg < 16 && ctx & (1 << reg) != 0;
        let off = i64::from(insn.off);
        let size = insn.mem_size();
        if insn.is_load() && holds(insn.src) {
            if let Some(why) = contract::sk_buff_access_error(off, size, false) {
                found.push((at, format!("read: {why}")));
            }
        } else if insn.is_store_reg() && holds(insn.dst) {
            if let Some(why) = contract::sk_buff_access_error(off, size, true) {
                found.push((at, format!("write: {why}")));
            }
        } else if insn.is_store_imm() && holds(insn.dst) {
            found.push((
                at,
                "BPF_ST store of an immediate into __sk_buff is rejected".to_owned(),
            ));
        } else if insn.is_xadd() && holds(insn.dst) {
            found.push((at, "atomic add into __sk_buff is rejected".to_owned()));
        }
    }
    found
}

/// For each slot: the registers that hold the context pointer on every path to it (a bit per
/// register), or `None` where no path reaches.
fn must_be_context(linked: &Linked<'_>) -> Vec<Option<u16>> {
    let mut state: Vec<Option<u16>> = vec![None; linked.insns.len()];
    if state.is_empty() {
        return state;
    }
    state[0] = Some(1 << 1);
    let mut work = VecDeque::from([0_usize]);
    // Masks only lose bits, so this ends even on (invalid) cyclic code.
    while let Some(at) = work.pop_front() {
        let Some(before) = state[at] else { continue };
        let insn = linked.insns[at];
        let bit = |reg: u8| if reg < 16 { 1_u16 << reg } else { 0 };
        let after = if insn.is_mov64_reg() {
            if before & bit(insn.src) != 0 {
                before | bit(insn.dst)
            } else {
                before & !bit(insn.dst)
            }
        } else if insn.is_ld_abs_ind() {
            before & !CALLER_SAVED
        } else if insn.writes_dst() {
            before & !bit(insn.dst)
        } else {
            before
        };
        for (to, edge) in linked.successors(at).edges {
            let out = match edge {
                Edge::Flow => after,
                Edge::Return => before & !CALLER_SAVED,
                Edge::Enter => before & ARGUMENTS,
            };
            let merged = state[to].map_or(out, |old| old & out);
            if state[to] != Some(merged) {
                state[to] = Some(merged);
                work.push_back(to);
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_ebpf::{insn::asm::*, model::Object, testutil::*};

    fn problems(object: &Object) -> Vec<(usize, String)> {
        check(&Linked::link(object, 0))
    }

    #[test]
    fn reads_of_4_19_fields_through_the_context_pass() {
        // r6 = r1; r2 = skb->data; r3 = skb->data_end; r4 = skb->mark; skb->mark = r4
        let body = vec![
            mov64_reg(6, 1),
            ldx_w(2, 6, 76),
            ldx_w(3, 6, 80),
            ldx_w(4, 1, 8),
            stx_w(6, 4, 8),
            mov64_imm(0, 0),
            exit(),
        ];
        assert_eq!(
            problems(&object_with(vec![program("p", body)], vec![])),
            vec![]
        );
    }

    #[test]
    fn fields_added_after_4_19_are_caught() {
        // skb->tstamp (152, 5.0) and skb->gso_segs (164, 5.1), through a copy in r6.
        let body = vec![
            mov64_reg(6, 1),
            ldx_dw(2, 6, 152),
            ldx_w(3, 6, 164),
            mov64_imm(0, 0),
            exit(),
        ];
        let found = problems(&object_with(vec![program("p", body)], vec![]));
        assert_eq!(
            found.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(found[0].1.contains("beyond the 4.19 struct"), "{found:?}");
    }

    #[test]
    fn writes_tc_may_not_do_and_wide_reads_are_caught() {
        // skb->len = r2 (read-only) and an 8-byte read of skb->data.
        let body = vec![stx_w(1, 2, 0), ldx_dw(2, 1, 76), mov64_imm(0, 0), exit()];
        let found = problems(&object_with(vec![program("p", body)], vec![]));
        assert_eq!(
            found.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn the_context_is_lost_across_helper_calls_and_overwrites() {
        // After a helper call r1 is not the context: a read through it is not judged. r6 was
        // overwritten, so neither is a read through it.
        let body = vec![
            mov64_reg(6, 1),
            call_helper(7),
            ldx_dw(2, 1, 200),
            mov64_imm(6, 0),
            ldx_dw(2, 6, 200),
            mov64_imm(0, 0),
            exit(),
        ];
        assert_eq!(
            problems(&object_with(vec![program("p", body)], vec![])),
            vec![]
        );
    }

    #[test]
    fn the_context_passed_to_a_subprogram_is_followed() {
        let mut object = object_with(vec![program("p", vec![call_local(-1), exit()])], vec![]);
        object.functions[0]
            .relocations
            .insert(0, code_reloc("f", 0, true));
        object
            .functions
            .push(text_function("f", 0, vec![ldx_w(0, 1, 168), exit()]));
        let found = problems(&object);
        assert_eq!(found.iter().map(|(at, _)| *at).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_register_that_is_the_context_on_one_path_only_is_not_judged() {
        // 0: if r2 == 0 goto 2; 1: r1 = 0 (not ctx); 2: r0 = *(u64 *)(r1 + 200); 3: exit
        let body = vec![jeq_imm(2, 0, 1), mov64_imm(1, 0), ldx_dw(0, 1, 200), exit()];
        assert_eq!(
            problems(&object_with(vec![program("p", body)], vec![])),
            vec![]
        );
    }
}
