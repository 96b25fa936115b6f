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
//! - [`cli`]: the `netpol-agent` command line.

pub mod backend;
pub mod cli;
pub mod discovery;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod runtime;
pub mod source;

/// An error with every cause in its source chain ("a: b: c"), for log fields: `%error` alone
/// prints the outermost message and loses the errno underneath.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
