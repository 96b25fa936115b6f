//! [`lookup`]: the datapath's decision, computed over a [`NodeState`] exactly as the eBPF
//! programs compute it over the maps, so the datapath can be tested against it packet for
//! packet and the engine against the evaluator.
//!
//! Per direction (ingress: local = destination, peer = source; egress: the reverse):
//! 1. endpoint = `NP_ENDPOINTS[local]`; a miss means not ours: pass;
//! 2. set = the endpoint's set for the direction; not isolated: pass;
//! 3. class = longest match of the peer in `NP_IPCACHE`; a miss is [`CLASS_WORLD`];
//! 4. the longest match of (set, class, direction, protocol, port) in `NP_POLICY`, else of
//!    (set, [`CLASS_ANY`], ...); protocols other than TCP, UDP and SCTP use port 0;
//! 5. a hit allows (crediting its rule), a miss denies.

use agent_common::{
    addr::Addr,
    ipcache::{CLASS_ANY, CLASS_WORLD},
    policy::{PREFIX_FULL, PolicyKey},
};

use super::{Direction, Flow, IpPrefix, NodeState, PolicyEntryKey};

/// The datapath's decision for one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathVerdict {
    /// The local address is not an endpoint of this node: not enforced here.
    NotEndpoint,
    /// The endpoint is not isolated in this direction.
    NotIsolated {
        endpoint: u32,
    },
    Allowed {
        endpoint: u32,
        set: u32,
        class: u32,
        rule: u32,
    },
    Denied {
        endpoint: u32,
        set: u32,
        class: u32,
    },
}

impl PathVerdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Denied { .. })
    }

    /// Whether this node enforces the direction (the local end is one of its endpoints).
    pub fn enforced(&self) -> bool {
        !matches!(self, Self::NotEndpoint)
    }
}

/// The datapath's decisions for a flow on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// At the source, if it is an endpoint of this node.
    pub egress: PathVerdict,
    /// At the destination, if it is an endpoint of this node.
    pub ingress: PathVerdict,
}

impl Lookup {
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

/// What the datapath of the node with `state` decides for `flow`.
pub fn lookup(state: &NodeState, flow: &Flow) -> Lookup {
    let (src, dst) = (Addr::from(flow.src), Addr::from(flow.dst));
    let port = match flow.protocol {
        6 | 17 | 132 => flow.port,
        _ => 0,
    };
    Lookup {
        egress: decide(state, src, dst, Direction::Egress, flow.protocol, port),
        ingress: decide(state, dst, src, Direction::Ingress, flow.protocol, port),
    }
}

fn decide(
    state: &NodeState,
    local: Addr,
    peer: Addr,
    direction: Direction,
    protocol: u8,
    port: u16,
) -> PathVerdict {
    let Some(endpoint) = state.endpoints.get(&local) else {
        return PathVerdict::NotEndpoint;
    };
    let Some(set) = endpoint.isolation(direction.as_u8()) else {
        return PathVerdict::NotIsolated {
            endpoint: endpoint.id,
        };
    };
    let class = ipcache_lookup(state, peer).unwrap_or(CLASS_WORLD);
    let hit = policy_lookup(
        state,
        PolicyKey::new(set, class, direction.as_u8(), protocol, port),
    )
    .or_else(|| {
        policy_lookup(
            state,
            PolicyKey::new(set, CLASS_ANY, direction.as_u8(), protocol, port),
        )
    });
    match hit {
        Some(rule) => PathVerdict::Allowed {
            endpoint: endpoint.id,
            set,
            class,
            rule,
        },
        None => PathVerdict::Denied {
            endpoint: endpoint.id,
            set,
            class,
        },
    }
}

/// The class of the longest prefix holding `addr`.
fn ipcache_lookup(state: &NodeState, addr: Addr) -> Option<u32> {
    let width = u8::try_from(addr.max_prefix_len()).unwrap_or(128);
    (0..=width)
        .rev()
        .find_map(|len| state.ipcache.get(&IpPrefix::new(addr, len)))
        .map(|class| class.id)
}

/// The rule of the longest policy entry matching `key` (looked up with `PREFIX_FULL`).
fn policy_lookup(state: &NodeState, key: PolicyKey) -> Option<u32> {
    (0..=PREFIX_FULL)
        .rev()
        .find_map(|len| state.policy.get(&PolicyEntryKey::new(key, len)))
        .map(|value| value.rule)
}
