//! The NetworkPolicy agent as a library: the binary, the debug CLI and the tests use it.
//!
//! - [`backend`]: what programs the node (the eBPF datapath; later iptables).

pub mod backend;
