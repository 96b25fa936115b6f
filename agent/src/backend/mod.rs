//! Backends program the node with the compiled state.

pub mod ebpf;
