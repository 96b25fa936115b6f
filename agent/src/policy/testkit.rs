//! Test helpers: the id-free canonical form of a [`NodeState`] (to compare incremental and full
//! compiles), and the check that the datapath lookup agrees with the evaluator.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{
    addr::Addr,
    ipcache::{CLASS_ANY, CLASS_WORLD},
    policy::SET_EMPTY,
};

use crate::model::{Pod, Snapshot};

use super::{Direction, Flow, IpPrefix, NodeState, PathVerdict, RuleRef, Side, evaluate, lookup};

/// A class named by content: the smallest prefix mapping to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ClassName {
    Any,
    World,
    Of(IpPrefix),
}

/// A set named by content: its direction and the smallest endpoint address using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SetName {
    Empty,
    Of(u8, Addr),
}

/// A policy key by names: (set, class, direction, protocol, port, prefix length).
pub(crate) type PolicyName = (SetName, ClassName, u8, u8, u16, u32);

/// A [`NodeState`] with every id replaced by a name derived from content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Canonical {
    /// Address to (smallest address of the same endpoint, flags, ingress set, egress set).
    pub(crate) endpoints: BTreeMap<Addr, (Addr, u32, SetName, SetName)>,
    pub(crate) ipcache: BTreeMap<IpPrefix, ClassName>,
    /// (set, class, direction, protocol, port, prefix length) to rule.
    pub(crate) policy: BTreeMap<PolicyName, RuleRef>,
}

/// Canonicalises `state`, checking the invariants ids must keep: no entry of a set or class
/// nobody uses, every rule id known and used, no two sets with the same entries, every
/// non-empty set used in one direction only.
pub(crate) fn canonical(state: &NodeState) -> Result<Canonical, String> {
    let mut endpoint_names: BTreeMap<u32, Addr> = BTreeMap::new();
    for (addr, endpoint) in &state.endpoints {
        if endpoint.id == 0 {
            return Err(format!("endpoint {addr:?} has id 0"));
        }
        endpoint_names.entry(endpoint.id).or_insert(*addr);
    }
    let mut set_names: BTreeMap<u32, SetName> = BTreeMap::new();
    for (addr, endpoint) in &state.endpoints {
        for direction in Direction::BOTH {
            if let Some(set) = endpoint.isolation(direction.as_u8())
                && set != SET_EMPTY
            {
                let name = SetName::Of(direction.as_u8(), *addr);
                let entry = set_names.entry(set).or_insert(name);
                if let (SetName::Of(dir, _), SetName::Of(other, _)) = (*entry, name)
                    && dir != other
                {
                    return Err(format!("set {set} is used in both directions"));
                }
                if name < *entry {
                    *entry = name;
                }
            }
        }
    }
    let mut class_names: BTreeMap<u32, ClassName> = BTreeMap::new();
    for (prefix, class) in &state.ipcache {
        if class.id == CLASS_ANY {
            return Err(format!("prefix {prefix} maps to CLASS_ANY"));
        }
        if class.id != CLASS_WORLD {
            class_names
                .entry(class.id)
                .or_insert(ClassName::Of(*prefix));
        }
    }
    let class_name = |class: u32| match class {
        CLASS_ANY => Some(ClassName::Any),
        CLASS_WORLD => Some(ClassName::World),
        other => class_names.get(&other).copied(),
    };

    let mut policy = BTreeMap::new();
    let mut used_rules = BTreeSet::new();
    // Per set: (class, direction, protocol, port, prefix length, rule).
    type Entry = (u32, u8, u8, u16, u32, u32);
    let mut contents: BTreeMap<u32, BTreeSet<Entry>> = BTreeMap::new();
    for (key, value) in &state.policy {
        let set = key.key.set_id();
        let set_name = set_names
            .get(&set)
            .copied()
            .ok_or_else(|| format!("policy entry {key:?} of set {set}, which no endpoint uses"))?;
        if let SetName::Of(direction, _) = set_name
            && direction != key.key.direction
        {
            return Err(format!(
                "entry {key:?} has the other direction than its set"
            ));
        }
        let class = class_name(key.key.class_id())
            .ok_or_else(|| format!("policy entry {key:?} of class with no prefix"))?;
        let rule = state
            .rules
            .get(&value.rule)
            .ok_or_else(|| format!("policy entry {key:?} has unknown rule {}", value.rule))?;
        used_rules.insert(value.rule);
        contents.entry(set).or_default().insert((
            key.key.class_id(),
            key.key.direction,
            key.key.protocol,
            key.key.port_number(),
            key.prefix_len,
            value.rule,
        ));
        policy.insert(
            (
                set_name,
                class,
                key.key.direction,
                key.key.protocol,
                key.key.port_number(),
                key.prefix_len,
            ),
            rule.clone(),
        );
    }
    for set in set_names.keys() {
        if !contents.contains_key(set) {
            return Err(format!("set {set} is used but has no entries"));
        }
    }
    let distinct: BTreeSet<_> = contents.values().collect();
    if distinct.len() != contents.len() {
        return Err("two sets have identical entries".to_owned());
    }
    if let Some(unused) = state.rules.keys().find(|rule| !used_rules.contains(rule)) {
        return Err(format!(
            "rule {unused} is in the table but no entry uses it"
        ));
    }

    let set_of = |set: Option<u32>| match set {
        None | Some(SET_EMPTY) => SetName::Empty,
        Some(set) => set_names.get(&set).copied().unwrap_or(SetName::Empty),
    };
    let endpoints = state
        .endpoints
        .iter()
        .map(|(addr, endpoint)| {
            let ingress = set_of(endpoint.isolation(Direction::Ingress.as_u8()));
            let egress = set_of(endpoint.isolation(Direction::Egress.as_u8()));
            let name = endpoint_names.get(&endpoint.id).copied().unwrap_or(*addr);
            (*addr, (name, endpoint.flags, ingress, egress))
        })
        .collect();
    let ipcache = state
        .ipcache
        .iter()
        .map(|(prefix, class)| (*prefix, class_name(class.id).unwrap_or(ClassName::World)))
        .collect();
    Ok(Canonical {
        endpoints,
        ipcache,
        policy,
    })
}

/// Whether `pod` is an endpoint of `node` (said again here, not taken from the engine).
pub(crate) fn is_local(pod: &Pod, node: &str) -> bool {
    pod.node.as_deref() == Some(node) && !pod.host_network && !pod.ips.is_empty()
}

/// Checks one direction of the lookup against the evaluator's side.
fn agree(
    snapshot: &Snapshot,
    node: &str,
    state: &NodeState,
    side: &Side,
    path: PathVerdict,
) -> Result<(), String> {
    let local = side
        .pod
        .as_ref()
        .and_then(|pod| snapshot.pods.get(pod))
        .is_some_and(|pod| is_local(pod, node));
    match (local, path) {
        (false, PathVerdict::NotEndpoint) => Ok(()),
        (false, other) => Err(format!(
            "not an endpoint of {node}, but the datapath says {other:?}"
        )),
        (true, PathVerdict::NotEndpoint) => Err("a local pod is not in NP_ENDPOINTS".to_owned()),
        (true, PathVerdict::NotIsolated { .. }) if !side.isolated => Ok(()),
        (true, PathVerdict::NotIsolated { .. }) => Err("isolated pod not isolated".to_owned()),
        (true, _) if !side.isolated => Err(format!("unisolated pod isolated: {path:?}")),
        (true, PathVerdict::Denied { .. }) if !side.allowed => Ok(()),
        (true, PathVerdict::Denied { .. }) => Err(format!(
            "denied, but the evaluator allows by {:?}",
            side.because
        )),
        (true, PathVerdict::Allowed { rule, .. }) => {
            let rule = state.rules.get(&rule).ok_or("allowed by an unknown rule")?;
            if side.because.contains(rule) {
                Ok(())
            } else {
                Err(format!(
                    "allowed by {rule}, which the evaluator does not list: {:?}",
                    side.because
                ))
            }
        }
    }
}

/// Checks that on `node`, for every flow, the lookup over `state` agrees with the evaluator
/// for every direction the node enforces, and credits a rule the evaluator lists.
pub(crate) fn check_flows(
    snapshot: &Snapshot,
    node: &str,
    state: &NodeState,
    flows: impl IntoIterator<Item = Flow>,
) -> Result<(), String> {
    for flow in flows {
        let verdict = evaluate(snapshot, &flow);
        let result = lookup(state, &flow);
        agree(snapshot, node, state, &verdict.egress, result.egress)
            .map_err(|error| format!("egress of {flow:?}: {error}"))?;
        agree(snapshot, node, state, &verdict.ingress, result.ingress)
            .map_err(|error| format!("ingress of {flow:?}: {error}"))?;
    }
    Ok(())
}
