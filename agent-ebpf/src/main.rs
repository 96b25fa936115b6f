//! tc programs of the NetworkPolicy dataplane.
//!
//! Entry points only; the logic lives in one module per concern. Each entry point turns the
//! `Verdict` of its `try_*` function into a tc action at one exit (`verdict::finish`): a drop
//! is counted there.
//!
//! Attach points (direct-action mode):
//! - `netpol_from_pod`: tc ingress of a pod's host-side veth: traffic the pod sends.
//! - `netpol_to_pod`: tc egress of a pod's host-side veth: traffic delivered to the pod.
//! - `netpol_to_uplink`: tc egress of the node's uplinks: pod traffic leaving the node, after
//!   kube-proxy's DNAT, so egress to a Service is judged on its backend.
//!
//! Allowed packets return `TC_ACT_UNSPEC`, so other filters on the device (Terway's) still run.
//! `netpol_floor` only returns: the benchmark's baseline. `netpol_clock` reports the clock to
//! the loader.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod endpoint;
#[cfg(target_arch = "bpf")]
mod fragments;
#[cfg(target_arch = "bpf")]
mod ipcache;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod metrics;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod services;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod programs {
    use agent_common::{
        config::CONFIG_ENFORCEMENT_OFF,
        endpoint::Endpoint,
        metrics::DropReason,
        policy::{DIR_EGRESS, DIR_INGRESS},
    };
    use aya_ebpf::{macros::classifier, programs::TcContext};

    use crate::{
        conntrack::{raw_clock, scaled},
        endpoint::{interface_owns, link_scoped_icmpv6, lookup_endpoint},
        parse::{Packet, parse},
        verdict::{Hook, Verdict, decide, established, finish, load_config},
    };

    /// tc ingress of a pod's host-side veth: the pod's egress, before DNAT.
    #[classifier]
    pub fn netpol_from_pod(ctx: TcContext) -> i32 {
        finish(&ctx, try_from_pod(&ctx))
    }

    /// tc egress of a pod's host-side veth: the pod's ingress, and a local client's egress
    /// after DNAT.
    #[classifier]
    pub fn netpol_to_pod(ctx: TcContext) -> i32 {
        finish(&ctx, try_to_pod(&ctx))
    }

    /// tc egress of an uplink: a local pod's egress after DNAT.
    #[classifier]
    pub fn netpol_to_uplink(ctx: TcContext) -> i32 {
        finish(&ctx, try_to_uplink(&ctx))
    }

    /// tc ingress of a pod interface the agent knows no pod of yet: everything the pod sends
    /// is dropped (IPv6 neighbour discovery aside) until the agent attaches
    /// `netpol_from_pod` in its place. A pod created while the agent is down is isolated, not
    /// open.
    #[classifier]
    pub fn netpol_unknown_from_pod(ctx: TcContext) -> i32 {
        finish(&ctx, try_unknown_pod(&ctx, DIR_EGRESS))
    }

    /// tc egress of a pod interface the agent knows no pod of yet: everything sent to the
    /// pod is dropped, as above.
    #[classifier]
    pub fn netpol_unknown_to_pod(ctx: TcContext) -> i32 {
        finish(&ctx, try_unknown_pod(&ctx, DIR_INGRESS))
    }

    /// Writes the raw clock and the time made of it (`conntrack::scaled`), native-endian, over
    /// the packet's first 16 bytes: the loader runs it once through BPF_PROG_TEST_RUN to
    /// calibrate `NP_CLOCK`, and tests to check it. Never attached.
    #[classifier]
    pub fn netpol_clock(ctx: TcContext) -> i32 {
        let raw = raw_clock();
        let now = scaled(raw);
        if ctx.store(0, &raw, 0).is_err() || ctx.store(8, &now, 0).is_err() {
            return aya_ebpf::bindings::TC_ACT_SHOT;
        }
        aya_ebpf::bindings::TC_ACT_UNSPEC
    }

    /// Returns at once: the floor `cargo xtask bench datapath` measures the others against
    /// (what a test run costs with no work at all). Never attached.
    #[classifier]
    pub fn netpol_floor(_ctx: TcContext) -> i32 {
        aya_ebpf::bindings::TC_ACT_UNSPEC
    }

    #[inline(always)]
    fn try_from_pod(ctx: &TcContext) -> Verdict {
        let Some(config) = load_config() else {
            return Verdict::drop(DropReason::NoConfig, DIR_EGRESS, false);
        };
        if config.flags & CONFIG_ENFORCEMENT_OFF != 0 {
            return Verdict::PASS;
        }
        let packet = match parse(ctx) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Verdict::PASS,
            Err(reason) => return Verdict::drop(reason, DIR_EGRESS, false),
        };
        // Everything a pod sends must carry one of its own addresses: a forged source would
        // take another pod's policy, or none, or pass as an allowed outside client. The
        // interface's own table answers that for the fast path; the endpoint, which the
        // decision needs anyway, where it cannot.
        let mut src = None;
        if !interface_owns(ifindex(ctx), &packet.src) {
            src = source_endpoint(ctx, &packet);
            if src.is_none() {
                return refused_source(&packet);
            }
        }
        if established(ctx, config, &packet, Hook::FromPod) {
            return Verdict::PASS;
        }
        if src.is_none() {
            src = source_endpoint(ctx, &packet);
        }
        let Some(src) = src else {
            return refused_source(&packet);
        };
        decide(ctx, config, &packet, Some(src), None, Hook::FromPod)
    }

    #[inline(always)]
    fn try_to_pod(ctx: &TcContext) -> Verdict {
        let Some(config) = load_config() else {
            return Verdict::drop(DropReason::NoConfig, DIR_INGRESS, false);
        };
        if config.flags & CONFIG_ENFORCEMENT_OFF != 0 {
            return Verdict::PASS;
        }
        let packet = match parse(ctx) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Verdict::PASS,
            Err(reason) => return Verdict::drop(reason, DIR_INGRESS, false),
        };
        let origin = if node_originated(ctx) {
            Hook::FromNode
        } else {
            Hook::ToPod
        };
        if established(ctx, config, &packet, origin) {
            return Verdict::PASS;
        }
        // The destination's ingress, and a local source's egress after DNAT (the destination
        // need not be selected for that). A destination that is no known endpoint is a pod the
        // agent has not programmed: isolated until it is.
        let Some(dst) = lookup_endpoint(&packet.dst) else {
            if link_scoped_icmpv6(&packet, &packet.dst) {
                return Verdict::PASS;
            }
            return Verdict::drop(DropReason::NoEndpoint, DIR_INGRESS, false);
        };
        // The node's own packets are allowed by origin: no egress side to judge. One call
        // site, so that the inlined decision is verified once, not once per origin.
        let src = if origin == Hook::FromNode {
            None
        } else {
            lookup_endpoint(&packet.src)
        };
        decide(ctx, config, &packet, src, Some(dst), origin)
    }

    #[inline(always)]
    fn try_unknown_pod(ctx: &TcContext, direction: u8) -> Verdict {
        let Some(config) = load_config() else {
            return Verdict::drop(DropReason::NoConfig, direction, false);
        };
        if config.flags & CONFIG_ENFORCEMENT_OFF != 0 {
            return Verdict::PASS;
        }
        let packet = match parse(ctx) {
            Ok(Some(packet)) => packet,
            // Not IP (ARP): nothing policy judges.
            Ok(None) => return Verdict::PASS,
            Err(reason) => return Verdict::drop(reason, direction, false),
        };
        if link_scoped_icmpv6(&packet, &packet.src) || link_scoped_icmpv6(&packet, &packet.dst) {
            return Verdict::PASS;
        }
        Verdict::drop(DropReason::UnknownPod, direction, false)
    }

    #[inline(always)]
    fn try_to_uplink(ctx: &TcContext) -> Verdict {
        let Some(config) = load_config() else {
            return Verdict::drop(DropReason::NoConfig, DIR_EGRESS, false);
        };
        if config.flags & CONFIG_ENFORCEMENT_OFF != 0 {
            return Verdict::PASS;
        }
        let packet = match parse(ctx) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Verdict::PASS,
            Err(reason) => return Verdict::drop(reason, DIR_EGRESS, false),
        };
        if established(ctx, config, &packet, Hook::ToUplink) {
            return Verdict::PASS;
        }
        let Some(src) = lookup_endpoint(&packet.src) else {
            return Verdict::PASS;
        };
        decide(ctx, config, &packet, Some(src), None, Hook::ToUplink)
    }

    /// The local endpoint that owns the packet's source, if the packet is on that endpoint's
    /// interface (or the endpoint's interface is not known yet).
    #[inline(always)]
    fn source_endpoint(ctx: &TcContext, packet: &Packet) -> Option<&'static Endpoint> {
        let src = lookup_endpoint(&packet.src)?;
        if src.ifindex != 0 && src.ifindex != ifindex(ctx) {
            return None;
        }
        Some(src)
    }

    /// A source no endpoint of the interface accounts for: forged, unless it is link-scoped
    /// ICMPv6.
    #[inline(always)]
    fn refused_source(packet: &Packet) -> Verdict {
        if link_scoped_icmpv6(packet, &packet.src) {
            return Verdict::PASS;
        }
        Verdict::drop(DropReason::Spoofed, DIR_EGRESS, false)
    }

    /// The interface the packet is on.
    #[inline(always)]
    fn ifindex(ctx: &TcContext) -> u32 {
        // SAFETY: `skb` is the context the kernel passed in; the verifier checks the access.
        unsafe { (*ctx.skb.skb).ifindex }
    }

    /// Sent by the node itself (kubelet probes, host processes): allowed by origin, whatever
    /// its source address. Forwarded packets, NodePort traffic SNATed to a node address
    /// included, carry the interface they arrived on (`skb_iif`), local ones none.
    #[inline(always)]
    fn node_originated(ctx: &TcContext) -> bool {
        // SAFETY: as in `ifindex`.
        unsafe { (*ctx.skb.skb).ingress_ifindex == 0 }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable call to this; it exists to satisfy `no_std`.
    loop {}
}

/// Host builds of the workspace get an empty binary; the real object is built for bpf.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
