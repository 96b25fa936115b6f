//! The decision for one packet, and the single exit that turns it into a tc verdict.
//!
//! Precedence, for a packet between a source and a destination endpoint (either may be absent
//! when it is not a local pod we enforce for):
//! 1. neither endpoint is isolated in any direction: pass, untracked;
//! 2. a later fragment passes only if its datagram's first fragment passed;
//! 3. IPv6 neighbour discovery passes;
//! 4. an ICMP error about a tracked connection passes;
//! 5. a reply of a tracked connection passes (both directions);
//! 6. every side this hook is responsible for (the source's egress, the destination's ingress)
//!    must be allowed by a policy entry, or already have been at this hook for the
//!    connection; Service destinations defer the egress side to the hooks after DNAT, and
//!    traffic the node itself sends is allowed into its pods by origin;
//! 7. the connection is then tracked, so its replies pass.

use agent_common::{
    config::{CONFIG_EVENTS, Config},
    conntrack::{
        CT_CLOSING, CT_EGRESS_ALLOWED, CT_EGRESS_DEFERRED, CT_INGRESS_ALLOWED, CT_SEEN_FROM_POD,
        CT_SEEN_TO_POD, CT_SEEN_TO_UPLINK, CtKey,
    },
    endpoint::{Endpoint, FLAG_AUDIT, FLAG_NOT_PROGRAMMED},
    events::{EVENT_AUDIT, PolicyEvent},
    metrics::DropReason,
    policy::{DIR_EGRESS, DIR_INGRESS},
};
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};

use crate::{
    conntrack::{create, is_new_tcp_connection, lookup_live, now_ns, refresh},
    fragments::{first_passed, forget_first, record_first},
    ipcache::class_of,
    maps::NP_CONFIG,
    metrics::{count_drop, count_rule, send_event},
    parse::{Icmp, Packet, Transport, load_icmp_error_subject, load_transport},
    policy::{NO_RULE, lookup_allow},
    services::is_service,
};

/// The outcome of a decision: pass, or a drop with its reason, the endpoint direction it is
/// counted in and whether the endpoint is in audit mode (count and report, but pass).
///
/// One defined word on every path: with a `Result<(), Drop>`, LLVM may leave the payload
/// register of the `Ok` path holding a stale pointer and shift it while packing, which the
/// verifier rejects ("pointer arithmetic with <<= operator prohibited").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verdict(u32);

impl Verdict {
    pub const PASS: Self = Self(0);

    #[inline(always)]
    pub fn drop(reason: DropReason, direction: u8, audit: bool) -> Self {
        Self(reason as u32 | u32::from(direction) << 8 | u32::from(audit) << 16)
    }

    #[inline(always)]
    fn reason_code(self) -> u32 {
        self.0 & 0xff
    }

    #[inline(always)]
    fn direction(self) -> u8 {
        (self.0 >> 8) as u8
    }

    #[inline(always)]
    fn audit(self) -> bool {
        self.0 & (1 << 16) != 0
    }
}

/// The hook a program runs at, which decides the sides it judges.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress of a pod veth: the source pod's egress, before kube-proxy's DNAT.
    FromPod,
    /// tc egress of a pod veth: the destination pod's ingress, and a local source pod's
    /// egress after DNAT.
    ToPod,
    /// tc egress of an uplink: a local source pod's egress after DNAT.
    ToUplink,
    /// tc egress of a pod veth for a packet the node itself sent: the destination's ingress
    /// is allowed by origin; the connection is still tracked so that its replies pass the
    /// pod's egress.
    FromNode,
}

/// The node-wide configuration. The array always has its element; should the lookup ever
/// fail, the caller drops the packet rather than pass it unjudged.
#[inline(always)]
pub fn load_config() -> Option<&'static Config> {
    NP_CONFIG.get(0)
}

/// The `CT_SEEN_*` bit of a hook.
#[inline(always)]
fn seen_bit(hook: Hook) -> u32 {
    match hook {
        Hook::FromPod => CT_SEEN_FROM_POD,
        Hook::ToPod => CT_SEEN_TO_POD,
        // Node traffic is allowed by origin: that must not let a forwarded packet of the same
        // tuple take the fast path. Its connections take the full path (replies still do not).
        Hook::FromNode => 0,
        Hook::ToUplink => CT_SEEN_TO_UPLINK,
    }
}

/// The fast path: a packet of a connection this hook has passed before, or a reply of any
/// tracked connection, passes on a connection-tracking hit alone, without endpoint, class or
/// policy lookups. Policy governs new connections; established ones continue until they end
/// or expire (as in Cilium and Calico). Anything else (no entry, another hook's entry, ICMP
/// errors and neighbour discovery, fragments, unreadable headers) takes the full decision.
///
/// A BPF-to-BPF call, not inlined: its locals then live in a frame that is gone when it
/// returns, so the verifier's states after the call are alike whatever path it took inside
/// and prune; inlined, its paths multiplied with the full decision's past the 1M processed
/// instructions of 5.10 and 6.1.
#[inline(never)]
pub fn established(ctx: &TcContext, config: &Config, packet: &Packet, hook: Hook) -> bool {
    if packet.fragment.later {
        return false;
    }
    let Ok(transport) = load_transport(ctx, packet) else {
        return false;
    };
    if transport.icmp != Icmp::None {
        return false;
    }
    let now = now_ns();
    let mut key = CtKey {
        src: packet.src,
        dst: packet.dst,
        sport: transport.sport,
        dport: transport.dport,
        protocol: u32::from(packet.protocol),
    };
    if let Some(entry) = lookup_live(&key, packet.protocol, now, config) {
        // SAFETY: see `conntrack::lookup_live`.
        let (flags, rule) = unsafe { ((*entry).flags, (*entry).rule) };
        let reopening =
            flags & CT_CLOSING != 0 && is_new_tcp_connection(packet.protocol, transport.tcp_flags);
        if flags & seen_bit(hook) == 0 || reopening {
            return false;
        }
        refresh(entry, packet.protocol, transport.tcp_flags, false, now);
        passed_first_fragment(packet, now);
        count_rule(ctx, rule);
        return true;
    }
    key.reverse();
    if let Some(entry) = lookup_live(&key, packet.protocol, now, config) {
        refresh(entry, packet.protocol, transport.tcp_flags, true, now);
        passed_first_fragment(packet, now);
        // SAFETY: see `conntrack::lookup_live`.
        count_rule(ctx, unsafe { (*entry).rule });
        return true;
    }
    false
}

/// A first fragment passed: its later fragments may follow it (whichever path passed it).
#[inline(always)]
fn passed_first_fragment(packet: &Packet, now: u64) {
    if packet.fragment.first_of_many {
        record_first(packet, now);
    }
}

/// The drop of a new connection by `endpoint`'s side: `policy`, or `not_programmed` while the
/// agent could not write the endpoint's policy. A first fragment takes its datagram's later
/// fragments with it, whatever an earlier datagram with the same IP id left behind.
#[inline(always)]
fn side_drop(packet: &Packet, endpoint: Option<&Endpoint>, direction: u8) -> Verdict {
    if packet.fragment.first_of_many {
        forget_first(packet);
    }
    let reason = match endpoint {
        Some(endpoint) if endpoint.flags & FLAG_NOT_PROGRAMMED != 0 => DropReason::NotProgrammed,
        _ => DropReason::Policy,
    };
    Verdict::drop(reason, direction, audited(endpoint))
}

#[inline(always)]
fn tracked(endpoint: Option<&Endpoint>) -> bool {
    endpoint.is_some_and(Endpoint::is_isolated)
}

#[inline(always)]
fn audited(endpoint: Option<&Endpoint>) -> bool {
    match endpoint {
        Some(endpoint) => endpoint.flags & FLAG_AUDIT != 0,
        None => false,
    }
}

/// Decides a packet from `src` to `dst` at `hook`.
#[inline(always)]
pub fn decide(
    ctx: &TcContext,
    config: &Config,
    packet: &Packet,
    src: Option<&Endpoint>,
    dst: Option<&Endpoint>,
    hook: Hook,
) -> Verdict {
    if !tracked(src) && !tracked(dst) {
        return Verdict::PASS;
    }
    let egress_drop = |reason| Verdict::drop(reason, DIR_EGRESS, audited(src));
    let ingress_drop = |reason| Verdict::drop(reason, DIR_INGRESS, audited(dst));
    // Reasons that belong to no side count in the hook's own direction.
    let hook_drop = |reason| {
        if hook == Hook::ToPod || hook == Hook::FromNode {
            ingress_drop(reason)
        } else {
            egress_drop(reason)
        }
    };
    let now = now_ns();
    if packet.fragment.later {
        return if first_passed(packet, now) {
            Verdict::PASS
        } else {
            hook_drop(DropReason::Fragment)
        };
    }
    let transport = match load_transport(ctx, packet) {
        Ok(transport) => transport,
        Err(reason) => return hook_drop(reason),
    };
    if transport.icmp == Icmp::NeighbourDiscovery {
        return Verdict::PASS;
    }
    if transport.icmp == Icmp::Error && icmp_error_is_related(ctx, config, packet, now) {
        return Verdict::PASS;
    }
    let (protocol, transport) = launder(ctx, packet.protocol, &transport);
    // The reply direction first, then the key is turned around to the packet's own direction.
    let mut key = CtKey {
        src: packet.dst,
        dst: packet.src,
        sport: transport.dport,
        dport: transport.sport,
        protocol: u32::from(protocol),
    };
    if let Some(entry) = lookup_live(&key, protocol, now, config) {
        refresh(entry, protocol, transport.tcp_flags, true, now);
        passed_first_fragment(packet, now);
        // SAFETY: see `conntrack::lookup_live`.
        count_rule(ctx, unsafe { (*entry).rule });
        return Verdict::PASS;
    }
    key.reverse();
    let mut existing = lookup_live(&key, protocol, now, config);
    let (mut flags, mut rule) = (0, 0);
    if let Some(entry) = existing {
        // SAFETY: see `conntrack::lookup_live`.
        let (entry_flags, entry_rule) = unsafe { ((*entry).flags, (*entry).rule) };
        if entry_flags & CT_CLOSING != 0 && is_new_tcp_connection(protocol, transport.tcp_flags) {
            existing = None;
        } else {
            (flags, rule) = (entry_flags, entry_rule);
        }
    }

    // This hook passes the connection if it gets to the end: its later packets may then take
    // the fast path here.
    let mut decided = seen_bit(hook);
    if let Some(set) = src.and_then(|endpoint| endpoint.isolation(DIR_EGRESS)) {
        let done = flags & CT_EGRESS_ALLOWED != 0
            || (hook == Hook::FromPod && flags & CT_EGRESS_DEFERRED != 0);
        if !done {
            if hook == Hook::FromPod && is_service(&packet.dst) {
                decided |= CT_EGRESS_DEFERRED;
            } else {
                let class = class_of(&packet.dst, set);
                match lookup_allow(set, class, DIR_EGRESS, protocol, transport.policy_port) {
                    NO_RULE => {
                        let drop = side_drop(packet, src, DIR_EGRESS);
                        if config.flags & CONFIG_EVENTS != 0 {
                            report(ctx, packet, &transport, src, drop);
                        }
                        return drop;
                    }
                    allowed_by => {
                        decided |= CT_EGRESS_ALLOWED;
                        rule = allowed_by;
                    }
                }
            }
        }
    }
    if let Some(set) = dst.and_then(|endpoint| endpoint.isolation(DIR_INGRESS))
        && flags & CT_INGRESS_ALLOWED == 0
        && hook != Hook::FromNode
    {
        let class = class_of(&packet.src, set);
        match lookup_allow(set, class, DIR_INGRESS, protocol, transport.policy_port) {
            NO_RULE => {
                let drop = side_drop(packet, dst, DIR_INGRESS);
                if config.flags & CONFIG_EVENTS != 0 {
                    report(ctx, packet, &transport, dst, drop);
                }
                return drop;
            }
            allowed_by => {
                decided |= CT_INGRESS_ALLOWED;
                rule = allowed_by;
            }
        }
    }

    match existing {
        Some(entry) => {
            // SAFETY: see `conntrack::lookup_live`.
            unsafe {
                (*entry).flags |= decided;
                (*entry).rule = rule;
            }
            refresh(entry, protocol, transport.tcp_flags, false, now);
        }
        None => create(&key, decided, rule, transport.tcp_flags, now),
    }
    passed_first_fragment(packet, now);
    count_rule(ctx, rule);
    Verdict::PASS
}

/// The protocol and transport fields as values the verifier cannot know: each way through the
/// parse leaves them as constants of its own (a protocol, an ICMP kind, zero ports), and
/// every such state would walk the rest of the decision separately. Written to the skb's
/// control buffer (scratch space for tc programs) and read back, they are plain unknowns, so
/// the states meet and are pruned.
#[inline(always)]
fn launder(ctx: &TcContext, protocol: u8, transport: &Transport) -> (u8, Transport) {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context the kernel passed in; `cb` is writable by tc programs.
    let (ports, rest) = unsafe {
        core::ptr::write_volatile(
            &mut (*skb).cb[0],
            (u32::from(transport.sport) << 16) | u32::from(transport.dport),
        );
        core::ptr::write_volatile(
            &mut (*skb).cb[1],
            (u32::from(transport.policy_port) << 16)
                | (u32::from(transport.tcp_flags) << 8)
                | u32::from(protocol),
        );
        (
            core::ptr::read_volatile(&(*skb).cb[0]),
            core::ptr::read_volatile(&(*skb).cb[1]),
        )
    };
    (
        rest as u8,
        Transport {
            sport: (ports >> 16) as u16,
            dport: ports as u16,
            policy_port: (rest >> 16) as u16,
            tcp_flags: (rest >> 8) as u8,
            icmp: Icmp::None,
        },
    )
}

/// Whether an ICMP error quotes a packet of a tracked connection (either direction).
///
/// A BPF-to-BPF call rather than inlined: the quoted headers then live in a frame of their
/// own, which keeps the entry point's frame within the 512-byte stack.
#[inline(never)]
fn icmp_error_is_related(ctx: &TcContext, config: &Config, packet: &Packet, now: u64) -> bool {
    match load_icmp_error_subject(ctx, packet) {
        Ok(mut subject) => {
            if lookup_live(&subject, subject.protocol as u8, now, config).is_some() {
                return true;
            }
            subject.reverse();
            lookup_live(&subject, subject.protocol as u8, now, config).is_some()
        }
        // Too short to tell: judged like any other ICMP packet.
        Err(_) => false,
    }
}

/// Sends a drop (or audit) event. Not inlined, for the stack (see
/// `icmp_error_is_related`).
#[inline(never)]
fn report(
    ctx: &TcContext,
    packet: &Packet,
    transport: &Transport,
    endpoint: Option<&Endpoint>,
    drop: Verdict,
) {
    let event = PolicyEvent {
        src: packet.src,
        dst: packet.dst,
        sport: transport.sport,
        dport: transport.dport,
        protocol: u32::from(packet.protocol),
        direction: u32::from(drop.direction()),
        endpoint: match endpoint {
            Some(endpoint) => endpoint.id,
            None => 0,
        },
        reason: drop.reason_code(),
        flags: if drop.audit() { EVENT_AUDIT } else { 0 },
    };
    send_event(ctx, &event);
}

/// The one exit of every program: pass allowed packets on to the next filter, count and drop
/// the rest (audit mode counts and passes).
#[inline(always)]
pub fn finish(ctx: &TcContext, verdict: Verdict) -> i32 {
    if verdict == Verdict::PASS {
        return TC_ACT_UNSPEC;
    }
    count_drop(ctx, verdict.reason_code(), verdict.direction());
    if verdict.audit() {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}
