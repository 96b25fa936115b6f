//! The NetworkPolicy agent as a library: the binary, the debug CLI and the tests use it.
//!
//! - [`model`]: our compact Pod, Namespace and NetworkPolicy types, converted from k8s-openapi.
//! - [`policy`]: the pure engine: cluster state to the node's compiled maps, deltas, the
//!   datapath's lookup and the reference evaluator.
//! - [`backend`]: what programs the node (the eBPF datapath; later iptables).
//! - [`source`]: cluster objects from the API server or a directory of YAML files.
//! - [`discovery`]: local pods' host interfaces and the uplinks, over netlink.
//! - [`runtime`]: the reconcile path from source events to backend writes.
//! - [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`cni`]: the chained CNI plugin's socket and its entry in the node's CNI configuration.
//! - [`cli`]: the `netpol-agent` command line.

pub mod backend;
pub mod cli;
pub mod cni;
pub mod debug;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod policy;
pub mod runtime;
pub mod source;
