//! The reference evaluator: NetworkPolicy semantics read straight off the API, over a
//! [`Snapshot`], for one flow. It shares no code with the compiler (selector matching, CIDR
//! containment and named port resolution are written again here, plainly), so that the tests
//! can hold one against the other; it is also what `explain` runs.
//!
//! Rules, as the API defines them:
//! - the pod at an address is the non-hostNetwork pod listing it (if several do, the first by
//!   namespace/name); an address no such pod lists is not a pod (hostNetwork pods are not
//!   endpoints, and selectors never match them);
//! - a pod is isolated in a direction iff a policy of its namespace selects it and covers that
//!   direction; an unisolated direction allows everything;
//! - an isolated direction allows a flow iff some rule of some such policy matches it: a peer
//!   (or no peers: all) matches the other end, and a port entry (or no ports: all) matches the
//!   protocol and destination port;
//! - named ports resolve on the destination pod (ingress: the selected pod; egress: the peer);
//! - a connection needs both the source's egress and the destination's ingress.

use std::net::IpAddr;

use crate::model::{
    Cidr, Labels, NAMESPACE_NAME_LABEL, NetworkPolicy, ObjectRef, Operator, Peer, Peers, Pod,
    PolicyPort, PortMatch, Ports, Selector, Snapshot,
};

use super::{Direction, Flow, RuleRef};

/// The verdict of one direction, at one end of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// The pod at that end (the source for egress, the destination for ingress), if any.
    pub pod: Option<ObjectRef>,
    /// Whether some policy isolates the pod in this direction.
    pub isolated: bool,
    /// The policies that do (select the pod and cover the direction), in order.
    pub isolated_by: Vec<ObjectRef>,
    pub allowed: bool,
    /// Every (policy, rule, peer, port) that allows the flow, in order; empty when not isolated.
    pub because: Vec<RuleRef>,
}

/// The verdict of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Both directions allow it.
    pub allowed: bool,
    /// The rules that allowed it: egress ones, then ingress ones.
    pub because: Vec<RuleRef>,
    /// At the source pod.
    pub egress: Side,
    /// At the destination pod.
    pub ingress: Side,
}

/// Judges `flow` over `snapshot`, cluster-wide (both ends, wherever they run).
pub fn evaluate(snapshot: &Snapshot, flow: &Flow) -> Verdict {
    let source = pod_at(snapshot, flow.src);
    let destination = pod_at(snapshot, flow.dst);
    let egress = judge(
        snapshot,
        source,
        Direction::Egress,
        flow.dst,
        destination,
        destination,
        flow,
    );
    let ingress = judge(
        snapshot,
        destination,
        Direction::Ingress,
        flow.src,
        source,
        destination,
        flow,
    );
    Verdict {
        allowed: egress.allowed && ingress.allowed,
        because: egress
            .because
            .iter()
            .chain(&ingress.because)
            .cloned()
            .collect(),
        egress,
        ingress,
    }
}

fn pod_at(snapshot: &Snapshot, ip: IpAddr) -> Option<&Pod> {
    snapshot
        .pods
        .values()
        .find(|pod| !pod.host_network && pod.ips.contains(&ip))
}

/// The verdict at `subject` for `direction`; `peer_ip`/`peer_pod` is the other end and
/// `destination` the pod named ports resolve on.
fn judge(
    snapshot: &Snapshot,
    subject: Option<&Pod>,
    direction: Direction,
    peer_ip: IpAddr,
    peer_pod: Option<&Pod>,
    destination: Option<&Pod>,
    flow: &Flow,
) -> Side {
    let Some(subject) = subject else {
        return Side {
            pod: None,
            isolated: false,
            isolated_by: Vec::new(),
            allowed: true,
            because: Vec::new(),
        };
    };
    let mut isolated_by = Vec::new();
    let mut because = Vec::new();
    for policy in snapshot.policies.values() {
        if policy.namespace != subject.namespace
            || !selector_matches(&policy.pod_selector, &|key| {
                subject.labels.get(key).cloned()
            })
        {
            continue;
        }
        let rules = match direction {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        let Some(rules) = rules else {
            continue;
        };
        isolated_by.push(ObjectRef::new(&policy.namespace, &policy.name));
        for (rule_index, rule) in rules.iter().enumerate() {
            let peers: Vec<Option<u32>> = match &rule.peers {
                Peers::All => vec![None],
                Peers::Only(peers) => (0u32..)
                    .zip(peers)
                    .filter(|(_, peer)| peer_matches(snapshot, policy, peer, peer_ip, peer_pod))
                    .map(|(index, _)| Some(index))
                    .collect(),
            };
            let ports: Vec<Option<u32>> = match &rule.ports {
                Ports::All => vec![None],
                Ports::Only(ports) => (0u32..)
                    .zip(ports)
                    .filter(|(_, port)| port_matches(port, flow, destination))
                    .map(|(index, _)| Some(index))
                    .collect(),
            };
            for peer in &peers {
                for port in &ports {
                    because.push(RuleRef {
                        policy: ObjectRef::new(&policy.namespace, &policy.name),
                        direction,
                        rule: rule_index as u32,
                        peer: *peer,
                        port: *port,
                    });
                }
            }
        }
    }
    Side {
        pod: Some(ObjectRef::new(&subject.namespace, &subject.name)),
        isolated: !isolated_by.is_empty(),
        allowed: isolated_by.is_empty() || !because.is_empty(),
        isolated_by,
        because,
    }
}

fn peer_matches(
    snapshot: &Snapshot,
    policy: &NetworkPolicy,
    peer: &Peer,
    ip: IpAddr,
    pod: Option<&Pod>,
) -> bool {
    match peer {
        Peer::Nothing => false,
        Peer::IpBlock(block) => {
            in_cidr(&block.cidr, ip) && !block.except.iter().any(|carve| in_cidr(carve, ip))
        }
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = pod else {
                return false;
            };
            let namespace_ok = match namespaces {
                None => pod.namespace == policy.namespace,
                Some(selector) => {
                    let labels: Option<&Labels> =
                        snapshot.namespaces.get(&pod.namespace).map(|ns| &ns.labels);
                    selector_matches(selector, &|key| {
                        if key == NAMESPACE_NAME_LABEL {
                            Some(pod.namespace.clone())
                        } else {
                            labels.and_then(|labels| labels.get(key).cloned())
                        }
                    })
                }
            };
            namespace_ok && selector_matches(pods, &|key| pod.labels.get(key).cloned())
        }
    }
}

/// A selector as apimachinery evaluates it: matchLabels are `In` requirements with one value,
/// and every requirement must hold.
fn selector_matches(selector: &Selector, label: &dyn Fn(&str) -> Option<String>) -> bool {
    for (key, value) in &selector.match_labels {
        if label(key).as_deref() != Some(value.as_str()) {
            return false;
        }
    }
    for requirement in &selector.match_expressions {
        let value = label(&requirement.key);
        let holds = match (&requirement.operator, value) {
            (Operator::In(values), Some(value)) => values.contains(&value),
            (Operator::In(_), None) => false,
            (Operator::NotIn(values), Some(value)) => !values.contains(&value),
            (Operator::NotIn(_), None) => true,
            (Operator::Exists, value) => value.is_some(),
            (Operator::DoesNotExist, value) => value.is_none(),
        };
        if !holds {
            return false;
        }
    }
    true
}

/// Whether `ip` is in `cidr`, by comparing the leading bits as integers.
fn in_cidr(cidr: &Cidr, ip: IpAddr) -> bool {
    let shift_equal = |a: u128, b: u128, width: u32| {
        let len = u32::from(cidr.len());
        len == 0 || (a ^ b) >> (width - len) == 0
    };
    match (cidr.addr(), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            shift_equal(u128::from(u32::from(net)), u128::from(u32::from(ip)), 32)
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => shift_equal(u128::from(net), u128::from(ip), 128),
        _ => false,
    }
}

fn port_matches(port: &PolicyPort, flow: &Flow, destination: Option<&Pod>) -> bool {
    if port.protocol.number() != flow.protocol {
        return false;
    }
    match &port.port {
        PortMatch::All => true,
        PortMatch::Number(number) => *number == flow.port,
        PortMatch::Range { start, end } => *start <= flow.port && flow.port <= *end,
        PortMatch::Named(name) => destination.is_some_and(|pod| {
            pod.ports.iter().any(|declared| {
                declared.name.as_deref() == Some(name.as_str())
                    && declared.protocol == port.protocol
                    && declared.port == flow.port
            })
        }),
        PortMatch::Nothing => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_containment_compares_leading_bits_of_one_family() {
        let cidr = Cidr::parse("10.1.0.0/16").expect("valid");
        assert!(in_cidr(&cidr, "10.1.200.3".parse().expect("ip")));
        assert!(!in_cidr(&cidr, "10.2.0.1".parse().expect("ip")));
        assert!(!in_cidr(&cidr, "::a01:1".parse().expect("ip")));
        let everything = Cidr::parse("0.0.0.0/0").expect("valid");
        assert!(in_cidr(&everything, "192.0.2.1".parse().expect("ip")));
        let host = Cidr::parse("fd00::1/128").expect("valid");
        assert!(in_cidr(&host, "fd00::1".parse().expect("ip")));
        assert!(!in_cidr(&host, "fd00::2".parse().expect("ip")));
    }
}
