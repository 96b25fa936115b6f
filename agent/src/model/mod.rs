//! The engine's own compact cluster model: namespaces, pods and NetworkPolicies reduced to what
//! policy semantics need, converted once from k8s-openapi at the edge ([`convert`]).
//!
//! The model is plain data with no behaviour beyond construction: matching selectors, ipBlocks
//! and ports is done separately (and deliberately twice) by the compiler (`policy::compile`) and
//! by the reference evaluator (`policy::evaluate`), so that one can check the other.
//!
//! Invalid input never becomes a wider rule. Conversion reports every problem as a
//! [`Rejection`] and keeps what is valid; a broken peer becomes [`Peer::Nothing`] and a broken
//! port entry [`PortMatch::Nothing`] (both match nothing, never "all", even when they were the
//! only entry of their list), so the pods a policy selects stay isolated as if the broken part
//! allowed nothing. See `docs/ARCHITECTURE.md`, policy engine section, "Fail closed".

mod addresses;
pub mod cidr;
pub mod convert;
mod labels;
mod snapshot;

use std::{collections::BTreeSet, fmt};

pub use addresses::Addresses;
pub use cidr::{Cidr, CidrError};
pub use labels::Labels;
pub use snapshot::{Change, Snapshot};

/// `collection` rebuilt from its own sorted run: a `BTreeMap` or `BTreeSet` filled by inserts
/// in key order keeps its nodes about half empty, one built in bulk has them full.
pub(crate) fn packed<C: IntoIterator + FromIterator<C::Item>>(collection: C) -> C {
    collection.into_iter().collect()
}

/// The label every namespace carries with its own name (Kubernetes 1.21+ sets it and keeps it
/// immutable). The model adds it whenever a namespace is built, so selectors on it work even if
/// a source omits it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespaced object's name: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always holds [`NAMESPACE_NAME_LABEL`] = `name` when built with [`Namespace::new`].
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with `labels` plus the [`NAMESPACE_NAME_LABEL`] label.
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        Self { name, labels }
    }
}

/// A transport protocol a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Every protocol, in a fixed order.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The protocol of an API string (`TCP`, `UDP`, `SCTP`: exact case, as the API defines).
    pub fn from_api(text: &str) -> Option<Self> {
        match text {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The protocol of an IP protocol number, if it is one NetworkPolicy ports can name.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// A port a container of a pod declares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Addresses (both families for dual stack). Empty while the pod has none, and for pods that
    /// have finished (their addresses may already belong to another pod).
    pub ips: Addresses,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    /// A hostNetwork pod uses its node's addresses: it is never an endpoint, and pod and
    /// namespace selectors never match it as a peer (its address is the node's; only ipBlock
    /// peers can cover it).
    pub host_network: bool,
    /// Container ports, for named ports.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

/// A NetworkPolicy after defaulting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// Selects pods of `namespace`; the empty selector selects all of them.
    pub pod_selector: Selector,
    /// `None`: the policy does not cover ingress (Ingress is not in its effective policyTypes).
    /// `Some(rules)`: selected pods are isolated for ingress and `rules` allow traffic (an empty
    /// list allows nothing).
    pub ingress: Option<Vec<Rule>>,
    /// As `ingress`, for egress.
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

/// One ingress or egress rule: traffic from/to `peers` on `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub peers: Peers,
    pub ports: Ports,
}

/// The `from`/`to` list of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peers {
    /// `from`/`to` missing or empty: every peer (any address).
    All,
    /// The listed peers (indices are the API's). An empty list matches nothing.
    Only(Vec<Peer>),
}

/// One entry of a `from`/`to` list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods matching `pods` in namespaces matching `namespaces`; `namespaces: None` means the
    /// policy's own namespace (a podSelector alone). A namespaceSelector alone has
    /// `pods` = [`Selector::everything`].
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// Addresses in `cidr` and in none of `except` (pod addresses included).
    IpBlock(IpBlock),
    /// An invalid peer: matches nothing (fail closed).
    Nothing,
}

/// An ipBlock peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: Cidr,
    /// Carve-outs of this peer only. Conversion guarantees each is a strict subset of `cidr`.
    pub except: Vec<Cidr>,
}

/// The `ports` list of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ports {
    /// `ports` missing or empty: every protocol and port (ICMP too).
    All,
    /// The listed ports (indices are the API's). An empty list matches nothing.
    Only(Vec<PolicyPort>),
}

/// One entry of a `ports` list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// Which destination ports of [`PolicyPort::protocol`] an entry allows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Only a protocol was given: every port of it.
    All,
    Number(u16),
    /// `port`..=`endPort`; empty when `start > end`.
    Range {
        start: u16,
        end: u16,
    },
    /// A container port name, resolved per destination pod (ingress: the selected pod; egress:
    /// each peer pod). Resolves only against container ports of the same protocol.
    Named(String),
    /// An invalid port entry: matches nothing (fail closed).
    Nothing,
}

/// A label selector: `match_labels` AND every requirement.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// The empty selector (`{}`): matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector with only `matchLabels`.
    pub fn labels<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            match_labels: labels
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }
}

/// As `kubectl get -l` takes it: `app=web,tier in (a,b),!debug`; the empty selector is `{}`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        for requirement in &self.match_expressions {
            let key = &requirement.key;
            let list =
                |values: &BTreeSet<String>| values.iter().cloned().collect::<Vec<_>>().join(",");
            terms.push(match &requirement.operator {
                Operator::In(values) => format!("{key} in ({})", list(values)),
                Operator::NotIn(values) => format!("{key} notin ({})", list(values)),
                Operator::Exists => key.clone(),
                Operator::DoesNotExist => format!("!{key}"),
            });
        }
        if terms.is_empty() {
            f.write_str("{}")
        } else {
            f.write_str(&terms.join(","))
        }
    }
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

/// A selector operator with its values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The label exists and its value is one of these.
    In(BTreeSet<String>),
    /// The label is missing or its value is none of these.
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// The kind of an object a [`Rejection`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::NetworkPolicy => "networkpolicy",
        })
    }
}

/// An object, or a part of one, that was rejected: callers log and count it. What the rejection
/// means for traffic is documented where it is produced (always fail closed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {reason}")]
pub struct Rejection {
    pub kind: Kind,
    /// `namespace/name` (or the name of a namespace).
    pub object: String,
    /// What is wrong, naming the field (`spec.ingress[0].from[1].ipBlock.except[0]: ...`).
    pub reason: String,
}
