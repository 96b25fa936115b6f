//! The kernel 4.19 contract as data: helper ids and names, the helpers a tc program may call,
//! map types and flags, the instruction limit and the `__sk_buff` fields of that release.
//!
//! Owns facts only (no ELF, no analysis). Every table says where it comes from; a change of the
//! target kernel is a change of this file.

use std::fmt;

/// `BPF_MAXINSNS`: the most instructions a program may have on 4.19 (the 1M limit for
/// privileged loaders came in 5.2, commit c04c0d2b968a).
pub const MAX_INSNS: usize = 4096;

/// The helper names of 4.19, indexed by `enum bpf_func_id`: helper id N is entry N of
/// `__BPF_FUNC_MAPPER` in v4.19 `include/uapi/linux/bpf.h` (0 is `unspec`, not a helper). 4.19's
/// last helper is `skb_ancestor_cgroup_id` = 83; `sk_lookup_tcp` (84) came in 4.20.
const HELPERS_4_19: [&str; 84] = [
    "unspec",
    "map_lookup_elem",
    "map_update_elem",
    "map_delete_elem",
    "probe_read",
    "ktime_get_ns",
    "trace_printk",
    "get_prandom_u32",
    "get_smp_processor_id",
    "skb_store_bytes",
    "l3_csum_replace",
    "l4_csum_replace",
    "tail_call",
    "clone_redirect",
    "get_current_pid_tgid",
    "get_current_uid_gid",
    "get_current_comm",
    "get_cgroup_classid",
    "skb_vlan_push",
    "skb_vlan_pop",
    "skb_get_tunnel_key",
    "skb_set_tunnel_key",
    "perf_event_read",
    "redirect",
    "get_route_realm",
    "perf_event_output",
    "skb_load_bytes",
    "get_stackid",
    "csum_diff",
    "skb_get_tunnel_opt",
    "skb_set_tunnel_opt",
    "skb_change_proto",
    "skb_change_type",
    "skb_under_cgroup",
    "get_hash_recalc",
    "get_current_task",
    "probe_write_user",
    "current_task_under_cgroup",
    "skb_change_tail",
    "skb_pull_data",
    "csum_update",
    "set_hash_invalid",
    "get_numa_node_id",
    "skb_change_head",
    "xdp_adjust_head",
    "probe_read_str",
    "get_socket_cookie",
    "get_socket_uid",
    "set_hash",
    "setsockopt",
    "skb_adjust_room",
    "redirect_map",
    "sk_redirect_map",
    "sock_map_update",
    "xdp_adjust_meta",
    "perf_event_read_value",
    "perf_prog_read_value",
    "getsockopt",
    "override_return",
    "sock_ops_cb_flags_set",
    "msg_redirect_map",
    "msg_apply_bytes",
    "msg_cork_bytes",
    "msg_pull_data",
    "bind",
    "xdp_adjust_tail",
    "skb_get_xfrm_state",
    "get_stack",
    "skb_load_bytes_relative",
    "fib_lookup",
    "sock_hash_update",
    "msg_redirect_hash",
    "sk_redirect_hash",
    "lwt_push_encap",
    "lwt_seg6_store_bytes",
    "lwt_seg6_adjust_srh",
    "lwt_seg6_action",
    "rc_repeat",
    "rc_keydown",
    "skb_cgroup_id",
    "get_current_cgroup_id",
    "get_local_storage",
    "sk_select_reuseport",
    "skb_ancestor_cgroup_id",
];

/// A few well-known helpers of later kernels, so a violation names them (ids from the upstream
/// `__BPF_FUNC_MAPPER`; the list is for messages only, not exhaustive).
const LATER_HELPERS: &[(i32, &str, &str)] = &[
    (84, "sk_lookup_tcp", "4.20"),
    (85, "sk_lookup_udp", "4.20"),
    (86, "sk_release", "4.20"),
    (87, "map_push_elem", "4.20"),
    (88, "map_pop_elem", "4.20"),
    (89, "map_peek_elem", "4.20"),
    (93, "spin_lock", "5.1"),
    (94, "spin_unlock", "5.1"),
    (95, "sk_fullsock", "5.1"),
    (96, "tcp_sock", "5.1"),
    (97, "skb_ecn_set_ce", "5.1"),
    (107, "sk_storage_get", "5.2"),
    (108, "sk_storage_delete", "5.2"),
    (111, "skb_output", "5.5"),
    (112, "probe_read_user", "5.5"),
    (113, "probe_read_kernel", "5.5"),
    (118, "jiffies64", "5.5"),
    (130, "ringbuf_output", "5.8"),
    (131, "ringbuf_reserve", "5.8"),
    (132, "ringbuf_submit", "5.8"),
    (133, "ringbuf_discard", "5.8"),
    (134, "ringbuf_query", "5.8"),
    (152, "redirect_neigh", "5.10"),
    (155, "redirect_peer", "5.10"),
    (164, "for_each_map_elem", "5.13"),
    (165, "snprintf", "5.13"),
    (181, "loop", "5.17"),
];

/// The helpers 4.19 offers to `BPF_PROG_TYPE_SCHED_CLS`: v4.19 `net/core/filter.c`,
/// `tc_cls_act_func_proto` (its own cases, with `CONFIG_XFRM` and `CONFIG_SOCK_CGROUP_DATA`
/// assumed on, as in distribution kernels) plus its `default:` fallback `bpf_base_func_proto`
/// (map_lookup/update/delete, get_prandom_u32, get_smp_processor_id, get_numa_node_id,
/// tail_call, ktime_get_ns, and trace_printk for CAP_SYS_ADMIN loaders, which the agent is).
const SCHED_CLS_HELPERS_4_19: &[i32] = &[
    // bpf_base_func_proto
    1,  // map_lookup_elem
    2,  // map_update_elem
    3,  // map_delete_elem
    5,  // ktime_get_ns
    6,  // trace_printk (CAP_SYS_ADMIN only)
    7,  // get_prandom_u32
    8,  // get_smp_processor_id
    12, // tail_call
    42, // get_numa_node_id
    // tc_cls_act_func_proto
    9,  // skb_store_bytes
    10, // l3_csum_replace
    11, // l4_csum_replace
    13, // clone_redirect
    17, // get_cgroup_classid
    18, // skb_vlan_push
    19, // skb_vlan_pop
    20, // skb_get_tunnel_key
    21, // skb_set_tunnel_key
    23, // redirect
    24, // get_route_realm
    25, // perf_event_output
    26, // skb_load_bytes
    28, // csum_diff
    29, // skb_get_tunnel_opt
    30, // skb_set_tunnel_opt
    31, // skb_change_proto
    32, // skb_change_type
    33, // skb_under_cgroup
    34, // get_hash_recalc
    38, // skb_change_tail
    39, // skb_pull_data
    40, // csum_update
    41, // set_hash_invalid
    46, // get_socket_cookie
    47, // get_socket_uid
    48, // set_hash
    50, // skb_adjust_room
    66, // skb_get_xfrm_state (CONFIG_XFRM)
    68, // skb_load_bytes_relative
    69, // fib_lookup
    79, // skb_cgroup_id (CONFIG_SOCK_CGROUP_DATA)
    83, // skb_ancestor_cgroup_id (CONFIG_SOCK_CGROUP_DATA)
];

/// `BPF_FUNC_tail_call`: 4.19 rejects it in a program that has BPF-to-BPF calls
/// (`check_map_func_compatibility`: "tail_calls are not allowed in programs with bpf-to-bpf
/// calls"; lifted for the x86-64 JIT in 5.10, so a 5.10 boot does not catch it).
pub const HELPER_TAIL_CALL: i32 = 12;

/// The program types this check knows, from the section name (as aya-obj reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramType {
    /// `BPF_PROG_TYPE_SCHED_CLS`: sections `classifier`, `classifier/...`, `tc`, `tc/...`.
    SchedCls,
    /// A section this check has no 4.19 helper list for.
    Unknown,
}

impl ProgramType {
    /// The program type of a program in `section`.
    pub fn from_section(section: &str) -> Self {
        let kind = section.split('/').next().unwrap_or(section);
        match kind {
            "classifier" | "tc" => Self::SchedCls,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for ProgramType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SchedCls => "sched_cls",
            Self::Unknown => "unknown",
        })
    }
}

/// What 4.19 says about a helper call from a program of some type.
#[derive(Debug, PartialEq, Eq)]
pub enum HelperVerdict {
    /// The program type may call it.
    Allowed,
    /// The helper exists in 4.19, but not for this program type.
    NotForType,
    /// No such helper in 4.19.
    Unknown,
}

/// Whether a program of type `ty` may call helper `id` on 4.19. For a type without a table
/// (only `SchedCls` has one), only the helper's existence is checked.
pub fn helper_verdict(ty: ProgramType, id: i32) -> HelperVerdict {
    if helper_name_4_19(id).is_none() {
        return HelperVerdict::Unknown;
    }
    match ty {
        ProgramType::SchedCls if SCHED_CLS_HELPERS_4_19.contains(&id) => HelperVerdict::Allowed,
        ProgramType::SchedCls => HelperVerdict::NotForType,
        ProgramType::Unknown => HelperVerdict::Allowed,
    }
}

/// The 4.19 name of helper `id` (without the `bpf_` prefix), if 4.19 has it.
fn helper_name_4_19(id: i32) -> Option<&'static str> {
    let index = usize::try_from(id).ok().filter(|&i| i > 0)?;
    HELPERS_4_19.get(index).copied()
}

/// A printable name for helper `id`: `bpf_map_lookup_elem`, `bpf_loop (5.17)`, `helper#200`.
pub fn helper_name(id: i32) -> String {
    if let Some(name) = helper_name_4_19(id) {
        return format!("bpf_{name}");
    }
    match LATER_HELPERS.iter().find(|(later, _, _)| *later == id) {
        Some((_, name, since)) => format!("bpf_{name} ({since})"),
        None => format!("helper#{id}"),
    }
}

/// `enum bpf_map_type` names (upstream numbering; the enum only ever grows at the end).
const MAP_TYPES: &[&str] = &[
    "UNSPEC",
    "HASH",
    "ARRAY",
    "PROG_ARRAY",
    "PERF_EVENT_ARRAY",
    "PERCPU_HASH",
    "PERCPU_ARRAY",
    "STACK_TRACE",
    "CGROUP_ARRAY",
    "LRU_HASH",
    "LRU_PERCPU_HASH",
    "LPM_TRIE",
    "ARRAY_OF_MAPS",
    "HASH_OF_MAPS",
    "DEVMAP",
    "SOCKMAP",
    "CPUMAP",
    "XSKMAP",
    "SOCKHASH",
    "CGROUP_STORAGE",
    "REUSEPORT_SOCKARRAY",
    "PERCPU_CGROUP_STORAGE",
    "QUEUE",
    "STACK",
    "SK_STORAGE",
    "DEVMAP_HASH",
    "STRUCT_OPS",
    "RINGBUF",
    "INODE_STORAGE",
    "TASK_STORAGE",
    "BLOOM_FILTER",
    "USER_RINGBUF",
    "CGRP_STORAGE",
    "ARENA",
];

/// `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY`, the last map type of 4.19
/// (`PERCPU_CGROUP_STORAGE`, `QUEUE` and `STACK` came in 4.20).
const LAST_MAP_TYPE_4_19: u32 = 20;

/// `BPF_MAP_TYPE_LPM_TRIE`, which every kernel refuses to create without `BPF_F_NO_PREALLOC`.
pub const MAP_TYPE_LPM_TRIE: u32 = 11;

/// A printable name for map type `ty`: `HASH`, `RINGBUF`, `type#99`.
pub fn map_type_name(ty: u32) -> String {
    match usize::try_from(ty).ok().and_then(|i| MAP_TYPES.get(i)) {
        Some(name) => (*name).to_owned(),
        None => format!("type#{ty}"),
    }
}

/// Whether 4.19 can create maps of type `ty`.
pub fn map_type_exists(ty: u32) -> bool {
    (1..=LAST_MAP_TYPE_4_19).contains(&ty)
}

/// `BPF_F_NO_PREALLOC`.
pub const MAP_F_NO_PREALLOC: u32 = 1;

/// The `map_flags` bits of 4.19: NO_PREALLOC, NO_COMMON_LRU, NUMA_NODE, RDONLY, WRONLY,
/// STACK_BUILD_ID. `BPF_F_ZERO_SEED` (bit 6) came in 5.0, `BPF_F_RDONLY_PROG` in 5.2.
pub const MAP_FLAGS_4_19: u32 = 0x3f;

/// `sizeof(struct __sk_buff)` in 4.19: the last field is `data_meta` at 140 (`flow_keys` came
/// in 4.20, `tstamp` and `wire_len` in 5.0, `gso_segs` and `sk` in 5.1).
const SK_BUFF_SIZE_4_19: i64 = 144;

/// Why a `__sk_buff` access from a tc program would be rejected by 4.19, or `None` when it is
/// accepted. Mirrors v4.19 `tc_cls_act_is_valid_access` and `bpf_skb_is_valid_access`
/// (net/core/filter.c); `size` is 1, 2, 4 or 8 bytes.
pub fn sk_buff_access_error(off: i64, size: i64, write: bool) -> Option<String> {
    const CB: std::ops::Range<i64> = 48..68;
    const REMOTE_IP4: i64 = 92;
    const LOCAL_IP4: i64 = 96;
    const IP6: std::ops::Range<i64> = 100..132;
    const DATA: i64 = 76;
    const DATA_END: i64 = 80;
    const DATA_META: i64 = 140;
    const SK_FIELDS: std::ops::Range<i64> = 88..140; // family ..= local_port
    const WRITABLE: [i64; 4] = [
        8,  /* mark */
        32, /* priority */
        44, /* tc_index */
        72, /* tc_classid */
    ];

    if !(0..SK_BUFF_SIZE_4_19).contains(&off) {
        return Some(format!(
            "__sk_buff offset {off} is beyond the 4.19 struct (144 bytes; later fields need 4.20+)"
        ));
    }
    if off % size != 0 {
        return Some(format!(
            "misaligned {size}-byte __sk_buff access at offset {off}"
        ));
    }
    let field = off - off % 4;
    if write && !CB.contains(&field) && !WRITABLE.contains(&field) {
        return Some(format!(
            "tc programs cannot write __sk_buff offset {off} on 4.19"
        ));
    }
    if SK_FIELDS.contains(&field) {
        return Some(format!(
            "tc programs cannot access __sk_buff offset {off} (family..local_port) on 4.19"
        ));
    }
    if CB.contains(&field) {
        return (off + size > CB.end)
            .then(|| format!("__sk_buff cb access at {off} of {size} bytes overruns cb[4]"));
    }
    let full_only =
        [REMOTE_IP4, LOCAL_IP4, DATA, DATA_END, DATA_META].contains(&field) || IP6.contains(&field);
    if full_only || write {
        return (size != 4)
            .then(|| format!("__sk_buff offset {off} takes only 4-byte accesses, not {size}"));
    }
    (size > 4).then(|| format!("__sk_buff offset {off} is a u32: {size}-byte read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_ids_follow_the_4_19_enum() {
        assert_eq!(helper_name(1), "bpf_map_lookup_elem");
        assert_eq!(helper_name(26), "bpf_skb_load_bytes");
        assert_eq!(helper_name(83), "bpf_skb_ancestor_cgroup_id");
        assert_eq!(helper_name(84), "bpf_sk_lookup_tcp (4.20)");
        assert_eq!(helper_name(130), "bpf_ringbuf_output (5.8)");
        assert_eq!(helper_name(1000), "helper#1000");
        for id in [0, -1, 84, 181] {
            assert_eq!(
                helper_verdict(ProgramType::SchedCls, id),
                HelperVerdict::Unknown,
                "{id}"
            );
        }
        for &id in SCHED_CLS_HELPERS_4_19 {
            assert!(helper_name_4_19(id).is_some(), "{id} is not a 4.19 helper");
        }
        // Without a list for the type, existence is all that is checked.
        assert_eq!(
            helper_verdict(ProgramType::Unknown, 14),
            HelperVerdict::Allowed
        );
        assert_eq!(
            helper_verdict(ProgramType::Unknown, 84),
            HelperVerdict::Unknown
        );
    }

    #[test]
    fn tc_sections_are_sched_cls() {
        for section in ["classifier", "classifier/ingress", "tc", "tc/egress"] {
            assert_eq!(
                ProgramType::from_section(section),
                ProgramType::SchedCls,
                "{section}"
            );
        }
        for section in ["xdp", "tcx/ingress", "kprobe/tc"] {
            assert_eq!(
                ProgramType::from_section(section),
                ProgramType::Unknown,
                "{section}"
            );
        }
    }

    #[test]
    fn map_types_stop_at_reuseport_sockarray() {
        assert!(map_type_exists(1) && map_type_exists(11) && map_type_exists(20));
        assert!(!map_type_exists(0) && !map_type_exists(21) && !map_type_exists(27));
        assert_eq!(map_type_name(27), "RINGBUF");
        assert_eq!(map_type_name(99), "type#99");
    }

    #[test]
    fn sk_buff_accesses_follow_the_4_19_rules() {
        let ok = |off, size, write| sk_buff_access_error(off, size, write).is_none();
        assert!(ok(0, 4, false), "len");
        assert!(ok(0, 2, false), "narrow read of len");
        assert!(!ok(0, 4, true), "len is read-only");
        assert!(ok(8, 4, true), "mark is writable");
        assert!(!ok(8, 2, true), "narrow writes are not");
        assert!(
            ok(48, 8, false) && ok(56, 8, true) && !ok(60, 8, true),
            "cb takes aligned 8-byte accesses"
        );
        assert!(!ok(64, 8, false), "but not past cb[4]");
        assert!(
            ok(76, 4, false) && !ok(76, 2, false),
            "data is all or nothing"
        );
        assert!(ok(140, 4, false), "data_meta is the last 4.19 field");
        assert!(!ok(88, 4, false), "family is not for tc");
        assert!(
            !ok(144, 8, false) && !ok(152, 8, false),
            "flow_keys, tstamp are later"
        );
        assert!(!ok(2, 4, false), "misaligned");
        assert!(!ok(4, 8, false), "a u32 read as u64");
    }
}
