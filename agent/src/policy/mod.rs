//! The policy engine: NetworkPolicy semantics compiled into one node's datapath state.
//!
//! A pure library (no I/O, no clock, no kernel): the backends, the debug CLI and every test
//! use it. The policy engine section of `docs/ARCHITECTURE.md` explains the compiled state and
//! why it is correct.
//!
//! - [`Engine`] keeps a [`Snapshot`](crate::model::Snapshot) and the node's compiled
//!   [`NodeState`] (the exact content of `NP_ENDPOINTS`, `NP_IPCACHE` and `NP_POLICY`, plus the
//!   rule table); [`Engine::apply`] takes object changes and returns the minimal [`Delta`] of
//!   map entries, in the order a backend must apply them ([`Delta::ops`]).
//! - [`compile`]: the state of a snapshot from scratch.
//! - [`lookup`]: the datapath's algorithm over a [`NodeState`], step for step.
//! - [`evaluate`]: the reference evaluator, written from the API semantics and sharing no code
//!   with the compiler; the oracle of the tests and the engine of `explain`.
//!
//! Compiler modules: [`selector`](self) matching, ports, prefixes, peers, classes, sets, rules
//! and the journal that turns changes into deltas.

mod classes;
pub mod conformance;
mod delta;
mod engine;
mod evaluate;
mod interner;
mod lookup;
mod names;
mod peers;
mod ports;
mod rules;
mod selector;
mod sets;
mod state;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests_conformance;
#[cfg(test)]
mod tests_engine;
#[cfg(test)]
mod tests_properties;

use std::net::IpAddr;

pub use delta::{Delta, Op};
pub use engine::{Engine, EngineStats, LocalEndpoint, compile};
pub use evaluate::{Side, Verdict, evaluate};
pub use lookup::{Lookup, PathVerdict, lookup};
pub use names::{IsolatedBy, Names, SetName};
pub use rules::{Direction, RuleRef};
pub use state::{IpPrefix, NodeState, PolicyEntryKey};

/// A connection attempt as policy sees it: after DNAT, so `dst` is the backend, not a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// Destination port; ignored for protocols without ports.
    pub port: u16,
}

impl Flow {
    pub fn new(src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Self {
        Self {
            src,
            dst,
            protocol,
            port,
        }
    }
}
