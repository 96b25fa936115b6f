//! tc programs of the NetworkPolicy dataplane.
//!
//! Entry points only; the logic lives in one module per concern. Each entry point turns the
//! `Result` of its `try_*` function into a tc verdict at one exit: an error is a counted drop.
//!
//! Attach points (direct-action mode):
//! - `netpol_from_pod`: tc ingress of a pod's host-side veth, i.e. traffic the pod sends
//!   (its egress).
//! - `netpol_to_pod`: tc egress of a pod's host-side veth, i.e. traffic delivered to the pod
//!   (its ingress).
//!
//! Allowed packets return `TC_ACT_UNSPEC`, so other filters on the device (Terway's) still run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod endpoint;
#[cfg(target_arch = "bpf")]
mod ipcache;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
mod programs {
    use agent_common::policy::{DIR_EGRESS, DIR_INGRESS};
    use aya_ebpf::{macros::classifier, programs::TcContext};

    use crate::verdict::{enforce, finish};

    /// tc ingress of a pod's host-side veth: the pod's egress.
    #[classifier]
    pub fn netpol_from_pod(ctx: TcContext) -> i32 {
        finish(&ctx, DIR_EGRESS, enforce(&ctx, DIR_EGRESS))
    }

    /// tc egress of a pod's host-side veth: the pod's ingress.
    #[classifier]
    pub fn netpol_to_pod(ctx: TcContext) -> i32 {
        finish(&ctx, DIR_INGRESS, enforce(&ctx, DIR_INGRESS))
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
