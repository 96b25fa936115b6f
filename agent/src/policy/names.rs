//! [`Names`]: what the numbers of a node's compiled state stand for (endpoint, set, class and
//! rule ids, pod addresses), so that the debug CLI prints pods, policies and selectors rather
//! than map values. The engine produces it ([`Engine::names`](super::Engine::names)); the agent
//! serves it and keeps a copy on disk for when it is down.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

/// The names of one node's compiled state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    pub node: String,
    /// Endpoint id -> its pod (`namespace/name`).
    pub endpoints: BTreeMap<u32, String>,
    /// Policy set id -> who uses it.
    pub sets: BTreeMap<u32, SetName>,
    /// Peer class id -> the relevant peers whose members fall in it (`pods app=db in namespace
    /// shop`, `ipBlock 10.0.0.0/8 except 10.1.0.0/16`, `named port http/TCP`).
    pub classes: BTreeMap<u32, Vec<String>>,
    /// Rule id -> `namespace/policy ingress[0].from[1].ports[0]`.
    pub rules: BTreeMap<u32, String>,
    /// Pod address -> pod, for the local pods and every pod the policies here name as a peer.
    pub addresses: BTreeMap<IpAddr, String>,
    /// Endpoint id -> the policies isolating it, per direction.
    pub isolated_by: BTreeMap<u32, IsolatedBy>,
}

/// The policies (`namespace/name`) that select a pod and cover each direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolatedBy {
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
}

/// The pods whose allow entries a policy set holds, and the policies compiled into it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetName {
    /// Pods whose ingress this set decides.
    pub ingress_of: BTreeSet<String>,
    /// Pods whose egress this set decides.
    pub egress_of: BTreeSet<String>,
    pub policies: BTreeSet<String>,
}

impl Names {
    /// `ns/pod` for an endpoint id, or `endpoint N`.
    pub fn endpoint(&self, id: u32) -> String {
        self.endpoints
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("endpoint {id}"))
    }

    /// The rule's name, or `rule N`.
    pub fn rule(&self, id: u32) -> String {
        self.rules
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("rule {id}"))
    }

    /// The users of a policy set, by its id as the engine or the datapath writes it.
    pub fn set(&self, id: u32) -> Option<&SetName> {
        self.sets.get(&untagged(id))
    }

    /// What a class stands for, in one line (by its id as the engine or the datapath writes
    /// it).
    pub fn class(&self, id: u32) -> String {
        let id = untagged(id);
        match id {
            agent_common::ipcache::CLASS_WORLD => "world (no relevant peer)".to_owned(),
            agent_common::ipcache::CLASS_ANY => "any peer".to_owned(),
            _ => match self.classes.get(&id) {
                Some(peers) if !peers.is_empty() => peers.join("; "),
                _ => format!("class {id}"),
            },
        }
    }

    /// The pod at an address, if it is one the node knows.
    pub fn pod_at(&self, ip: IpAddr) -> Option<&str> {
        self.addresses.get(&ip).map(String::as_str)
    }

    /// The address of `namespace/name`, if known (the first, IPv4 before IPv6).
    pub fn address_of(&self, pod: &str) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|(_, name)| name.as_str() == pod)
            .map(|(ip, _)| *ip)
    }
}

/// An id without the generation bit the eBPF backend tags set and class ids with.
fn untagged(id: u32) -> u32 {
    id & !agent_common::config::GENERATION_BIT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operator, Requirement, Selector};

    #[test]
    fn ids_are_named_with_or_without_the_generation_bit() {
        let mut names = Names::default();
        names
            .classes
            .insert(7, vec!["pods app=db in namespace shop".to_owned()]);
        names.sets.insert(3, SetName::default());
        let tagged = agent_common::config::GENERATION_BIT;
        assert_eq!(names.class(7 | tagged), "pods app=db in namespace shop");
        assert_eq!(
            names.class(agent_common::ipcache::CLASS_WORLD),
            "world (no relevant peer)"
        );
        assert_eq!(names.class(9), "class 9");
        assert!(names.set(3 | tagged).is_some());
        assert_eq!(names.endpoint(4), "endpoint 4");
    }

    #[test]
    fn selectors_print_as_kubectl_takes_them() {
        let mut selector = Selector::labels([("app", "web")]);
        selector.match_expressions = vec![
            Requirement {
                key: "tier".to_owned(),
                operator: Operator::In(["a".to_owned(), "b".to_owned()].into()),
            },
            Requirement {
                key: "debug".to_owned(),
                operator: Operator::DoesNotExist,
            },
        ];
        assert_eq!(selector.to_string(), "app=web,tier in (a,b),!debug");
        assert_eq!(Selector::everything().to_string(), "{}");
    }
}
