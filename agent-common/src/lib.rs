//! Types shared by both sides of every BPF map.
//!
//! Each module owns one map (or a family of maps): its name, key and value layouts and the
//! constants the programs and userspace agree on. Everything is `#[repr(C)]` with explicit
//! `_pad` fields and a compile-time size check, so the layout the verifier sees is the layout
//! userspace writes. With the `user` feature the types implement `aya::Pod`.
//!
//! A layout change renames the map (`_V2`), so an agent never reads a pinned map of another
//! layout.
#![no_std]

pub mod addr;
pub mod clock;
pub mod config;
pub mod conntrack;
pub mod endpoint;
pub mod events;
pub mod fragments;
pub mod ipcache;
pub mod metrics;
pub mod policy;
pub mod services;

/// Where every map of the agent is pinned (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/netpol";

/// Implements `aya::Pod` for plain-old-data map types (userspace only).
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has no padding that is not a named
            // field (checked by the size assertions beside it) and every bit pattern is valid.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
#[cfg(feature = "user")]
pub(crate) use impl_pod;
