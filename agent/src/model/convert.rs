//! Conversion from k8s-openapi objects: the only place API types are read.
//!
//! Each function returns the converted object (or `None` when it cannot be keyed at all) and
//! every rejection found on the way. What a rejection does:
//! - a namespace or pod without name (or a pod without namespace) is skipped;
//! - a pod address that does not parse is dropped (the others stay); a pod that has finished
//!   (phase Succeeded or Failed) keeps no addresses; a container port that is out of range or
//!   of an unknown protocol is dropped, so a named port that needed it resolves to nothing;
//! - in a NetworkPolicy, a broken peer becomes [`Peer::Nothing`] and a broken port entry
//!   [`PortMatch::Nothing`]: they allow nothing, and their list keeps its other entries, so it
//!   never turns into "all peers" or "all ports";
//! - a broken `spec.podSelector` cannot say which pods the policy means: the policy then selects
//!   the pods its valid requirements select (a superset of any reading of the broken one) and
//!   allows nothing, so no pod loses isolation it might have had;
//! - an unknown `policyTypes` value makes the policy cover both directions (rules it does not
//!   list allow nothing).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1 as core,
        networking::v1::{self as net, NetworkPolicy as K8sNetworkPolicy},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{
    Cidr, ContainerPort, IpBlock, Kind, Labels, Namespace, NetworkPolicy, Operator, Peer, Peers,
    Pod, PolicyPort, PortMatch, Ports, Protocol, Rejection, Requirement, Rule, Selector,
};

/// A converted object and the problems found while converting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted<T> {
    /// `None` when the object was rejected as a whole.
    pub object: Option<T>,
    pub rejections: Vec<Rejection>,
}

/// Collects rejections for one object.
struct Problems {
    kind: Kind,
    object: String,
    found: Vec<Rejection>,
}

impl Problems {
    fn new(kind: Kind, object: String) -> Self {
        Self {
            kind,
            object,
            found: Vec::new(),
        }
    }

    fn add(&mut self, reason: String) {
        self.found.push(Rejection {
            kind: self.kind,
            object: self.object.clone(),
            reason,
        });
    }

    fn finish<T>(self, object: Option<T>) -> Converted<T> {
        Converted {
            object,
            rejections: self.found,
        }
    }
}

fn object_name(namespace: Option<&str>, name: Option<&str>) -> String {
    match (namespace, name) {
        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
        (None, Some(name)) => name.to_owned(),
        (Some(namespace), None) => format!("{namespace}/<unnamed>"),
        (None, None) => "<unnamed>".to_owned(),
    }
}

/// Converts a namespace.
pub fn namespace(namespace: &core::Namespace) -> Converted<Namespace> {
    let name = namespace.metadata.name.as_deref();
    let mut problems = Problems::new(Kind::Namespace, object_name(None, name));
    let Some(name) = name.filter(|name| !name.is_empty()) else {
        problems.add("metadata.name is missing".to_owned());
        return problems.finish(None);
    };
    let labels = namespace
        .metadata
        .labels
        .clone()
        .map(Labels::from)
        .unwrap_or_default();
    problems.finish(Some(Namespace::new(name, labels)))
}

/// Converts a pod.
pub fn pod(pod: &crate::source::SlimPod) -> Converted<Pod> {
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty());
    let name = pod.metadata.name.as_deref().filter(|name| !name.is_empty());
    let mut problems = Problems::new(Kind::Pod, object_name(namespace, name));
    let (Some(namespace), Some(name)) = (namespace, name) else {
        problems.add("metadata.namespace and metadata.name are required".to_owned());
        return problems.finish(None);
    };
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();

    let finished = status
        .and_then(|status| status.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    let mut ips = BTreeSet::new();
    if !finished && let Some(status) = status {
        let listed = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str());
        for (field, text) in status
            .pod_ip
            .as_deref()
            .map(|ip| ("status.podIP", ip))
            .into_iter()
            .chain(listed.map(|ip| ("status.podIPs", ip)))
        {
            match text.parse::<IpAddr>() {
                Ok(ip) => {
                    ips.insert(ip);
                }
                Err(_) => problems.add(format!("{field}: {text:?} is not an IP address")),
            }
        }
    }

    let mut ports = Vec::new();
    if let Some(spec) = spec {
        // Sidecars (init containers that keep running) serve ports too.
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|container| container.restart_policy.as_deref() == Some("Always"));
        for container in spec.containers.iter().chain(sidecars) {
            for (index, port) in container.ports.iter().flatten().enumerate() {
                let field = format!("container {:?} ports[{index}]", container.name);
                let number = u16::try_from(port.container_port).ok().filter(|n| *n != 0);
                let protocol = port
                    .protocol
                    .as_deref()
                    .map_or(Some(Protocol::Tcp), Protocol::from_api);
                match (number, protocol) {
                    (Some(port_number), Some(protocol)) => ports.push(ContainerPort {
                        name: port.name.clone().filter(|name| !name.is_empty()),
                        port: port_number,
                        protocol,
                    }),
                    (None, _) => problems.add(format!(
                        "{field}: containerPort {} is out of range",
                        port.container_port
                    )),
                    (_, None) => problems.add(format!(
                        "{field}: unknown protocol {:?}",
                        port.protocol.as_deref().unwrap_or_default()
                    )),
                }
            }
        }
    }

    // Kept for every pod of the cluster: no spare capacity.
    ports.shrink_to_fit();
    let pod = Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: pod.metadata.labels.clone(),
        ips: ips.into_iter().collect(),
        node: spec.and_then(|spec| spec.node_name.clone()),
        host_network: spec.and_then(|spec| spec.host_network).unwrap_or(false),
        ports,
    };
    problems.finish(Some(pod))
}

/// Converts a NetworkPolicy, applying the API's defaulting.
pub fn network_policy(policy: &K8sNetworkPolicy) -> Converted<NetworkPolicy> {
    let namespace = policy
        .metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty());
    let name = policy
        .metadata
        .name
        .as_deref()
        .filter(|name| !name.is_empty());
    let mut problems = Problems::new(Kind::NetworkPolicy, object_name(namespace, name));
    let (Some(namespace), Some(name)) = (namespace, name) else {
        problems.add("metadata.namespace and metadata.name are required".to_owned());
        return problems.finish(None);
    };
    let default_spec = net::NetworkPolicySpec::default();
    let spec = policy.spec.as_ref().unwrap_or(&default_spec);

    // policyTypes defaulting (pkg/apis/networking/v1/defaults.go): absent or empty means
    // Ingress, plus Egress when the policy has at least one egress rule (`egress: []` does not
    // count).
    let (mut covers_ingress, mut covers_egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            covers_ingress = true;
            covers_egress = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
        }
        Some(types) => {
            for (index, policy_type) in types.iter().enumerate() {
                match policy_type.as_str() {
                    "Ingress" => covers_ingress = true,
                    "Egress" => covers_egress = true,
                    other => {
                        problems.add(format!(
                            "spec.policyTypes[{index}]: unknown type {other:?}; the policy covers \
                             both directions"
                        ));
                        covers_ingress = true;
                        covers_egress = true;
                    }
                }
            }
        }
    }

    let pod_selector = match &spec.pod_selector {
        None => Selector::everything(),
        Some(selector) => match selector_from(selector) {
            Ok(selector) => selector,
            Err(reason) => {
                problems.add(format!(
                    "spec.podSelector: {reason}; the policy selects what its valid requirements \
                     select and allows nothing"
                ));
                let widened = widened_selector(selector);
                let nothing = |covered: bool| covered.then(Vec::new);
                return problems.finish(Some(NetworkPolicy {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    pod_selector: widened,
                    ingress: nothing(covers_ingress),
                    egress: nothing(covers_egress),
                }));
            }
        },
    };

    let ingress = covers_ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, rule)| {
                let field = format!("spec.ingress[{index}]");
                rule_from(
                    &field,
                    "from",
                    rule.from.as_deref(),
                    rule.ports.as_deref(),
                    &mut problems,
                )
            })
            .collect()
    });
    let egress = covers_egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, rule)| {
                let field = format!("spec.egress[{index}]");
                rule_from(
                    &field,
                    "to",
                    rule.to.as_deref(),
                    rule.ports.as_deref(),
                    &mut problems,
                )
            })
            .collect()
    });
    problems.finish(Some(NetworkPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector,
        ingress,
        egress,
    }))
}

fn rule_from(
    field: &str,
    peers_field: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    problems: &mut Problems,
) -> Rule {
    let peers = match peers {
        None | Some([]) => Peers::All,
        Some(peers) => Peers::Only(
            peers
                .iter()
                .enumerate()
                .map(|(index, peer)| {
                    peer_from(peer).unwrap_or_else(|reason| {
                        problems.add(format!(
                            "{field}.{peers_field}[{index}]: {reason}; this peer allows nothing"
                        ));
                        Peer::Nothing
                    })
                })
                .collect(),
        ),
    };
    let ports = match ports {
        None | Some([]) => Ports::All,
        Some(ports) => Ports::Only(
            ports
                .iter()
                .enumerate()
                .map(|(index, port)| {
                    port_from(port).unwrap_or_else(|reason| {
                        problems.add(format!(
                            "{field}.ports[{index}]: {reason}; this port entry allows nothing"
                        ));
                        PolicyPort {
                            protocol: Protocol::Tcp,
                            port: PortMatch::Nothing,
                        }
                    })
                })
                .collect(),
        ),
    };
    Rule { peers, ports }
}

fn peer_from(peer: &net::NetworkPolicyPeer) -> Result<Peer, String> {
    let net::NetworkPolicyPeer {
        ip_block,
        namespace_selector,
        pod_selector,
    } = peer;
    match (ip_block, namespace_selector, pod_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("ipBlock cannot be combined with a selector".to_owned())
        }
        (Some(block), None, None) => ip_block_from(block).map(Peer::IpBlock),
        (None, None, None) => Err("the peer is empty".to_owned()),
        (None, namespaces, pods) => {
            let namespaces = namespaces
                .as_ref()
                .map(selector_from)
                .transpose()
                .map_err(|reason| format!("namespaceSelector: {reason}"))?;
            let pods = pods
                .as_ref()
                .map(selector_from)
                .transpose()
                .map_err(|reason| format!("podSelector: {reason}"))?
                .unwrap_or_else(Selector::everything);
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn ip_block_from(block: &net::IPBlock) -> Result<IpBlock, String> {
    let cidr = Cidr::parse(&block.cidr).map_err(|reason| format!("ipBlock.cidr: {reason}"))?;
    let mut except = Vec::new();
    for (index, text) in block.except.iter().flatten().enumerate() {
        let carve =
            Cidr::parse(text).map_err(|reason| format!("ipBlock.except[{index}]: {reason}"))?;
        if !cidr.strictly_contains(&carve) {
            return Err(format!(
                "ipBlock.except[{index}]: {carve} is not a strict subset of cidr {cidr}"
            ));
        }
        except.push(carve);
    }
    Ok(IpBlock { cidr, except })
}

fn port_from(port: &net::NetworkPolicyPort) -> Result<PolicyPort, String> {
    let net::NetworkPolicyPort {
        end_port,
        port,
        protocol,
    } = port;
    let protocol = match protocol.as_deref() {
        None => Protocol::Tcp,
        Some(text) => {
            Protocol::from_api(text).ok_or_else(|| format!("unknown protocol {text:?}"))?
        }
    };
    let in_range = |value: i32, what: &str| {
        u16::try_from(value)
            .ok()
            .filter(|value| *value != 0)
            .ok_or_else(|| format!("{what} {value} is out of range 1-65535"))
    };
    let port = match (port, end_port) {
        (None, None) => PortMatch::All,
        (None, Some(_)) => return Err("endPort needs a port".to_owned()),
        (Some(IntOrString::Int(number)), None) => PortMatch::Number(in_range(*number, "port")?),
        (Some(IntOrString::Int(number)), Some(end)) => {
            let start = in_range(*number, "port")?;
            let end = in_range(*end, "endPort")?;
            if end < start {
                return Err(format!("endPort {end} is below port {start}"));
            }
            PortMatch::Range { start, end }
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err("endPort cannot be used with a named port".to_owned());
        }
        (Some(IntOrString::String(name)), None) => {
            if !is_port_name(name) {
                return Err(format!("{name:?} is not a valid port name"));
            }
            PortMatch::Named(name.clone())
        }
    };
    Ok(PolicyPort { protocol, port })
}

/// IANA_SVC_NAME as the API validates port names: 1-15 lowercase alphanumerics or '-', at least
/// one letter, no '-' at either end and no "--".
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Converts a label selector; an unknown operator or values that do not fit the operator are
/// errors (as `metav1.LabelSelectorAsSelector` treats them).
fn selector_from(selector: &LabelSelector) -> Result<Selector, String> {
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, requirement)| {
            requirement_from(requirement)
                .map_err(|reason| format!("matchExpressions[{index}]: {reason}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Selector {
        match_labels: selector
            .match_labels
            .clone()
            .map(Labels::from)
            .unwrap_or_default(),
        match_expressions,
    })
}

/// The selector without its invalid requirements: it selects at least what any reading of
/// the invalid ones would.
fn widened_selector(selector: &LabelSelector) -> Selector {
    Selector {
        match_labels: selector
            .match_labels
            .clone()
            .map(Labels::from)
            .unwrap_or_default(),
        match_expressions: selector
            .match_expressions
            .iter()
            .flatten()
            .filter_map(|requirement| requirement_from(requirement).ok())
            .collect(),
    }
}

fn requirement_from(
    requirement: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement,
) -> Result<Requirement, String> {
    let values: BTreeSet<String> = requirement.values.iter().flatten().cloned().collect();
    let operator = match requirement.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => {
            return Err(format!("operator {} needs values", requirement.operator));
        }
        "In" => Operator::In(values),
        "NotIn" => Operator::NotIn(values),
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            return Err(format!("operator {} takes no values", requirement.operator));
        }
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => return Err(format!("unknown operator {other:?}")),
    };
    Ok(Requirement {
        key: requirement.key.clone(),
        operator,
    })
}

/// Labels of API objects, for tests and tools that build API objects.
pub fn labels<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, ContainerPort as K8sContainerPort, PodIP, PodSpec, PodStatus},
        apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta},
    };

    use super::*;

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        }
    }

    fn policy(spec: net::NetworkPolicySpec) -> K8sNetworkPolicy {
        K8sNetworkPolicy {
            metadata: meta("x", "p"),
            spec: Some(spec),
        }
    }

    fn ingress_rule(
        from: Option<Vec<net::NetworkPolicyPeer>>,
        ports: Option<Vec<net::NetworkPolicyPort>>,
    ) -> net::NetworkPolicyIngressRule {
        net::NetworkPolicyIngressRule { from, ports }
    }

    fn converted(spec: net::NetworkPolicySpec) -> (NetworkPolicy, Vec<Rejection>) {
        let converted = network_policy(&policy(spec));
        (
            converted.object.expect("keyed policy"),
            converted.rejections,
        )
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_only_when_egress_rules_exist() {
        let (p, _) = converted(net::NetworkPolicySpec::default());
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));

        let (p, _) = converted(net::NetworkPolicySpec {
            egress: Some(vec![]),
            ..Default::default()
        });
        assert_eq!(p.egress, None, "egress: [] does not add Egress");

        let (p, _) = converted(net::NetworkPolicySpec {
            egress: Some(vec![net::NetworkPolicyEgressRule::default()]),
            ..Default::default()
        });
        assert!(p.ingress.is_some() && p.egress.as_ref().is_some_and(|r| r.len() == 1));

        let (p, _) = converted(net::NetworkPolicySpec {
            policy_types: Some(vec!["Egress".to_owned()]),
            ingress: Some(vec![ingress_rule(None, None)]),
            ..Default::default()
        });
        assert_eq!(
            (p.ingress, p.egress),
            (None, Some(vec![])),
            "Egress only never touches ingress"
        );
    }

    #[test]
    fn an_unknown_policy_type_covers_both_directions_and_is_reported() {
        let (p, rejections) = converted(net::NetworkPolicySpec {
            policy_types: Some(vec!["Sideways".to_owned()]),
            ..Default::default()
        });
        assert_eq!((p.ingress, p.egress), (Some(vec![]), Some(vec![])));
        assert_eq!(rejections.len(), 1);
    }

    #[test]
    fn empty_and_missing_peers_and_ports_mean_all() {
        let (p, _) = converted(net::NetworkPolicySpec {
            ingress: Some(vec![
                ingress_rule(None, None),
                ingress_rule(Some(vec![]), Some(vec![])),
            ]),
            ..Default::default()
        });
        let all = Rule {
            peers: Peers::All,
            ports: Ports::All,
        };
        assert_eq!(p.ingress, Some(vec![all.clone(), all]));
    }

    #[test]
    fn broken_peers_and_ports_allow_nothing_without_widening_their_list() {
        let bad_peers = vec![
            net::NetworkPolicyPeer {
                ip_block: Some(net::IPBlock {
                    cidr: "10.0.0.0/8".to_owned(),
                    except: Some(vec!["11.0.0.0/16".to_owned()]),
                }),
                ..Default::default()
            },
            net::NetworkPolicyPeer {
                ip_block: Some(net::IPBlock {
                    cidr: "10.0.0.0".to_owned(),
                    except: None,
                }),
                ..Default::default()
            },
            net::NetworkPolicyPeer::default(),
            net::NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "a".to_owned(),
                        operator: "Near".to_owned(),
                        values: None,
                    }]),
                    match_labels: None,
                }),
                ..Default::default()
            },
        ];
        let bad_ports = vec![
            net::NetworkPolicyPort {
                protocol: Some("ICMP".to_owned()),
                port: None,
                end_port: None,
            },
            net::NetworkPolicyPort {
                protocol: None,
                port: Some(IntOrString::Int(70000)),
                end_port: None,
            },
            net::NetworkPolicyPort {
                protocol: None,
                port: Some(IntOrString::Int(90)),
                end_port: Some(80),
            },
            net::NetworkPolicyPort {
                protocol: None,
                port: Some(IntOrString::String("http".to_owned())),
                end_port: Some(80),
            },
            net::NetworkPolicyPort {
                protocol: None,
                port: None,
                end_port: Some(80),
            },
        ];
        let (p, rejections) = converted(net::NetworkPolicySpec {
            ingress: Some(vec![ingress_rule(Some(bad_peers), Some(bad_ports))]),
            ..Default::default()
        });
        let rule = &p.ingress.expect("ingress")[0];
        assert_eq!(rule.peers, Peers::Only(vec![Peer::Nothing; 4]));
        let Ports::Only(ports) = &rule.ports else {
            panic!("ports stayed a list");
        };
        assert_eq!(ports.len(), 5);
        assert!(ports.iter().all(|port| port.port == PortMatch::Nothing));
        assert_eq!(rejections.len(), 9, "{rejections:#?}");
        assert!(
            rejections[0]
                .reason
                .starts_with("spec.ingress[0].from[0]: ipBlock.except[0]")
        );
    }

    #[test]
    fn a_broken_pod_selector_keeps_isolation_and_allows_nothing() {
        let (p, rejections) = converted(net::NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: labels([("app", "web")]),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".to_owned(),
                    operator: "In".to_owned(),
                    values: Some(vec![]),
                }]),
            }),
            ingress: Some(vec![ingress_rule(None, None)]),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ..Default::default()
        });
        assert_eq!(p.pod_selector, Selector::labels([("app", "web")]));
        assert_eq!((p.ingress, p.egress), (Some(vec![]), Some(vec![])));
        assert_eq!(rejections.len(), 1);
    }

    #[test]
    fn ports_convert_numbers_ranges_names_and_protocols() {
        let port = |protocol: Option<&str>, port: Option<IntOrString>, end_port: Option<i32>| {
            port_from(&net::NetworkPolicyPort {
                protocol: protocol.map(str::to_owned),
                port,
                end_port,
            })
        };
        assert_eq!(
            port(None, Some(IntOrString::Int(80)), None),
            Ok(PolicyPort {
                protocol: Protocol::Tcp,
                port: PortMatch::Number(80)
            })
        );
        assert_eq!(
            port(Some("UDP"), Some(IntOrString::Int(80)), Some(90)),
            Ok(PolicyPort {
                protocol: Protocol::Udp,
                port: PortMatch::Range { start: 80, end: 90 }
            })
        );
        assert_eq!(
            port(Some("SCTP"), None, None),
            Ok(PolicyPort {
                protocol: Protocol::Sctp,
                port: PortMatch::All
            })
        );
        assert_eq!(
            port(
                None,
                Some(IntOrString::String("serve-80-tcp".to_owned())),
                None
            ),
            Ok(PolicyPort {
                protocol: Protocol::Tcp,
                port: PortMatch::Named("serve-80-tcp".to_owned())
            })
        );
        assert!(
            port(Some("tcp"), None, None).is_err(),
            "protocols are case-sensitive"
        );
        assert!(port(None, Some(IntOrString::Int(0)), None).is_err());
        assert!(port(None, Some(IntOrString::String("80".to_owned())), None).is_err());
    }

    #[test]
    fn pods_keep_valid_addresses_and_ports_and_drop_finished_addresses() {
        let container = Container {
            name: "c".to_owned(),
            ports: Some(vec![
                K8sContainerPort {
                    container_port: 80,
                    name: Some("http".to_owned()),
                    ..Default::default()
                },
                K8sContainerPort {
                    container_port: 53,
                    protocol: Some("UDP".to_owned()),
                    ..Default::default()
                },
                K8sContainerPort {
                    container_port: 0,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mut api_pod = core::Pod {
            metadata: meta("x", "a"),
            spec: Some(PodSpec {
                containers: vec![container],
                node_name: Some("node-1".to_owned()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.1".to_owned()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "10.0.0.1".to_owned(),
                    },
                    PodIP {
                        ip: "fd00::1".to_owned(),
                    },
                    PodIP {
                        ip: "bogus".to_owned(),
                    },
                ]),
                ..Default::default()
            }),
        };
        let converted = pod(&api_pod.clone().into());
        let p = converted.object.expect("pod");
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.ports.len(), 2);
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(converted.rejections.len(), 2);

        if let Some(status) = api_pod.status.as_mut() {
            status.phase = Some("Succeeded".to_owned());
        }
        assert!(
            pod(&api_pod.clone().into())
                .object
                .expect("pod")
                .ips
                .is_empty()
        );
    }

    #[test]
    fn namespaces_always_carry_their_name_label() {
        let converted = namespace(&core::Namespace {
            metadata: ObjectMeta {
                name: Some("y".to_owned()),
                ..Default::default()
            },
            ..Default::default()
        });
        let ns = converted.object.expect("namespace");
        assert_eq!(
            ns.labels
                .get(super::super::NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("y")
        );
    }
}
