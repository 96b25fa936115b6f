//! The upstream NetworkPolicy conformance cases (kubernetes `test/e2e/network/netpol/
//! network_policy.go`) as data: namespaces x, y, z labelled `ns=<name>`, pods a, b, c labelled
//! `pod=<name>` serving TCP, UDP and SCTP on 80 and 81 (container ports
//! `serve-<port>-<proto>`), dual stack, and each case as a list of steps (a policy applied or
//! deleted, labels changed, a probe of every ordered pair of pods with the expected verdicts).
//!
//! Two players: the engine's own tests (`tests_conformance.rs`: evaluator and lookups on one
//! node and on three) and the debug CLI's suite (`tests/debug_cli.rs`: real packets on a
//! simulated node, and `explain` held against them).

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy as K8sNetworkPolicy, NetworkPolicyEgressRule,
        NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::model::{
    Change, ContainerPort, Labels, NAMESPACE_NAME_LABEL, Namespace, Pod, Protocol, Snapshot,
    convert,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

fn index_of(name: &str, names: &[&str]) -> u8 {
    names.iter().position(|n| *n == name).map_or(0, |i| i as u8)
}

pub fn ip_v4(namespace: &str, pod: &str) -> IpAddr {
    IpAddr::from([
        10,
        0,
        index_of(namespace, &NAMESPACES) + 1,
        index_of(pod, &PODS) + 1,
    ])
}

pub fn ip_v6(namespace: &str, pod: &str) -> IpAddr {
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[13] = index_of(namespace, &NAMESPACES) + 1;
    octets[15] = index_of(pod, &PODS) + 1;
    IpAddr::from(octets)
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The upstream cluster; `split` spreads the pods over three nodes, otherwise all run on
/// node-1.
pub fn cluster(split: bool) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (ns_index, namespace) in NAMESPACES.iter().enumerate() {
        snapshot.apply(Change::ApplyNamespace(Namespace::new(
            *namespace,
            labels(&[("ns", namespace)]),
        )));
        for (pod_index, pod) in PODS.iter().enumerate() {
            let node = if split {
                NODES[(ns_index + pod_index) % 3]
            } else {
                NODES[0]
            };
            let ports = [80, 81]
                .into_iter()
                .flat_map(|port| Protocol::ALL.map(|protocol| (port, protocol)))
                .map(|(port, protocol)| ContainerPort {
                    name: Some(format!(
                        "serve-{port}-{}",
                        protocol.to_string().to_lowercase()
                    )),
                    port,
                    protocol,
                })
                .collect();
            snapshot.apply(Change::ApplyPod(Pod {
                namespace: (*namespace).to_owned(),
                name: (*pod).to_owned(),
                labels: labels(&[("pod", pod)]),
                ips: [ip_v4(namespace, pod), ip_v6(namespace, pod)].into(),
                node: Some(node.to_owned()),
                host_network: false,
                ports,
            }));
        }
    }
    snapshot
}

// ---- API object builders, named after upstream's helpers. ----

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: convert::labels(pairs.iter().copied()),
        match_expressions: None,
    }
}

fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }]),
    }
}

fn pods(selector: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector),
        ..Default::default()
    }
}

fn namespaces(selector: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(selector),
        ..Default::default()
    }
}

fn pods_in(namespaces: LabelSelector, pods: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(namespaces),
        pod_selector: Some(pods),
        ..Default::default()
    }
}

fn cidr(cidr: String, except: &[String]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr,
            except: (!except.is_empty()).then(|| except.to_vec()),
        }),
        ..Default::default()
    }
}

fn port(number: i32, protocol: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.to_string()),
        end_port: None,
    }
}

fn named_port(name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.to_owned())),
        protocol: None,
        end_port: None,
    }
}

fn protocol_only(protocol: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: None,
        protocol: Some(protocol.to_string()),
        end_port: None,
    }
}

fn from(peers: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: (!peers.is_empty()).then_some(peers),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

fn to(peers: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: (!peers.is_empty()).then_some(peers),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

/// A policy as upstream's `GenNetworkPolicyWithNameAndPodSelector` builds it: setting
/// ingress (egress) rules also lists Ingress (Egress) in policyTypes.
pub struct Policy(pub K8sNetworkPolicy);

fn policy(namespace: &str, name: &str, pod_selector: LabelSelector) -> Policy {
    Policy(K8sNetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            ..Default::default()
        }),
    })
}

impl Policy {
    fn spec(&mut self) -> &mut NetworkPolicySpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    fn add_type(&mut self, policy_type: &str) {
        let types = self.spec().policy_types.get_or_insert_with(Vec::new);
        if !types.iter().any(|t| t == policy_type) {
            types.push(policy_type.to_owned());
        }
    }

    fn ingress(mut self, rules: Vec<NetworkPolicyIngressRule>) -> Self {
        self.spec().ingress = Some(rules);
        self.add_type("Ingress");
        self
    }

    fn egress(mut self, rules: Vec<NetworkPolicyEgressRule>) -> Self {
        self.spec().egress = Some(rules);
        self.add_type("Egress");
        self
    }
}

// ---- Expectations. ----

/// Upstream's `Reachability`: expected verdicts for every ordered pair of pods.
#[derive(Clone)]
pub struct Reach(pub BTreeMap<(String, String), bool>);

pub fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| format!("{ns}/{pod}")))
        .collect()
}

/// Whether pod `pod` ("x/a") is selected by `filter`: "" (all), "x" (namespace) or "x/a".
fn covers(filter: &str, pod: &str) -> bool {
    filter.is_empty() || filter == pod || pod.split('/').next() == Some(filter)
}

impl Reach {
    fn all(allowed: bool) -> Self {
        let pods = all_pods();
        Self(
            pods.iter()
                .flat_map(|from| {
                    pods.iter()
                        .map(move |to| ((from.clone(), to.clone()), allowed))
                })
                .collect(),
        )
    }

    /// Upstream's `ExpectPeer`, with "" / "x" / "x/a" filters.
    fn peer(mut self, from: &str, to: &str, allowed: bool) -> Self {
        for ((f, t), value) in &mut self.0 {
            if covers(from, f) && covers(to, t) {
                *value = allowed;
            }
        }
        self
    }

    fn all_ingress(self, to: &str, allowed: bool) -> Self {
        self.peer("", to, allowed)
    }

    fn all_egress(self, from: &str, allowed: bool) -> Self {
        self.peer(from, "", allowed)
    }
}

#[expect(clippy::large_enum_variant, reason = "a handful of steps per test")]
pub enum Step {
    Apply(Policy),
    Delete(&'static str, &'static str),
    NamespaceLabels(&'static str, &'static [(&'static str, &'static str)]),
    PodLabels(
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    ),
    Probe(u16, Protocol, Reach),
}

pub fn probe(port: u16, protocol: Protocol, reach: Reach) -> Step {
    Step::Probe(port, protocol, reach)
}

fn everything() -> LabelSelector {
    LabelSelector::default()
}

fn pod_label(pod: &str) -> LabelSelector {
    selector(&[("pod", pod)])
}

fn ns_label(namespace: &str) -> LabelSelector {
    selector(&[("ns", namespace)])
}

fn host_cidrs(namespace: &str, pod: &str) -> Vec<NetworkPolicyPeer> {
    vec![
        cidr(format!("{}/32", ip_v4(namespace, pod)), &[]),
        cidr(format!("{}/128", ip_v6(namespace, pod)), &[]),
    ]
}

/// Upstream's except case: a wide CIDR written from the pod's own address (host bits set, as
/// upstream does) that excepts the pod.
fn cidr_except_pod(namespace: &str, pod: &str) -> Vec<NetworkPolicyPeer> {
    vec![
        cidr(
            format!("{}/4", ip_v4(namespace, pod)),
            &[format!("{}/32", ip_v4(namespace, pod))],
        ),
        cidr(
            format!("{}/8", ip_v6(namespace, pod)),
            &[format!("{}/128", ip_v6(namespace, pod))],
        ),
    ]
}

pub fn default_deny_ingress_isolates_every_pod_of_the_namespace_for_every_protocol() -> Vec<Step> {
    let deny = policy("x", "deny-ingress", everything()).ingress(vec![]);
    let reach = Reach::all(true).all_ingress("x", false);
    vec![
        Step::Apply(deny),
        probe(80, TCP, reach.clone()),
        probe(80, UDP, reach.clone()),
        probe(80, SCTP, reach),
    ]
}

pub fn default_deny_all_isolates_both_directions() -> Vec<Step> {
    let deny = policy("x", "deny-all", everything())
        .ingress(vec![])
        .egress(vec![]);
    let reach = Reach::all(true)
        .all_ingress("x", false)
        .all_egress("x", false);
    vec![
        Step::Apply(deny),
        probe(80, TCP, reach.clone()),
        probe(81, UDP, reach),
    ]
}

pub fn ingress_from_a_pod_selector_allows_only_those_pods_of_the_policy_namespace() -> Vec<Step> {
    let allow = policy("x", "x-a-from-b", pod_label("a"))
        .ingress(vec![from(vec![pods(pod_label("b"))], vec![])]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("x/b", "x/a", true);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn allow_all_from_empty_pod_and_namespace_selectors_opens_one_target_under_a_deny() -> Vec<Step>
{
    let deny = policy("x", "deny-all", everything()).ingress(vec![]);
    let allow = policy("x", "allow-all-to-a", pod_label("a")).ingress(vec![from(
        vec![pods_in(everything(), everything())],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/b", false)
        .all_ingress("x/c", false);
    vec![Step::Apply(deny), Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn allow_from_all_namespaces_with_an_empty_namespace_selector() -> Vec<Step> {
    let allow = policy("x", "allow-from-another-ns", pod_label("a"))
        .ingress(vec![from(vec![namespaces(everything())], vec![])]);
    vec![Step::Apply(allow), probe(80, TCP, Reach::all(true))]
}

pub fn namespace_selector_allows_only_the_selected_namespace() -> Vec<Step> {
    let allow = policy("x", "allow-client-a-via-ns-selector", everything())
        .ingress(vec![from(vec![namespaces(ns_label("y"))], vec![])]);
    let reach = Reach::all(true).peer("x", "x", false).peer("z", "x", false);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn pod_selector_with_match_expressions() -> Vec<Step> {
    let allow = policy("x", "x-a-allows-x-b", pod_label("a")).ingress(vec![from(
        vec![pods(expression("pod", "In", &["b"]))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("x/b", "x/a", true);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn namespace_selector_with_match_expressions() -> Vec<Step> {
    let allow = policy("x", "allow-ns-y-match-selector", pod_label("a")).ingress(vec![from(
        vec![namespaces(expression("ns", "In", &["y"]))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .peer("x", "x/a", false)
        .peer("z", "x/a", false);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn pod_selector_or_namespace_selector_as_two_peers() -> Vec<Step> {
    let allow = policy("x", "allow-ns-y-z-pod-b", pod_label("a")).ingress(vec![from(
        vec![
            namespaces(expression("ns", "NotIn", &["x"])),
            pods(expression("pod", "In", &["b"])),
        ],
        vec![],
    )]);
    let reach = Reach::all(true).peer("x/c", "x/a", false);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn pod_and_namespace_selector_in_one_peer_is_an_and() -> Vec<Step> {
    let allow = policy("x", "allow-ns-y-z-pod-b", pod_label("a")).ingress(vec![from(
        vec![pods_in(
            expression("ns", "NotIn", &["x"]),
            expression("pod", "In", &["b"]),
        )],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("y/b", "x/a", true)
        .peer("z/b", "x/a", true);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn multiple_pod_selectors_and_namespace_selectors() -> Vec<Step> {
    let allow = policy("x", "allow-ns-y-z-pod-b-c", pod_label("a")).ingress(vec![from(
        vec![pods_in(
            expression("ns", "NotIn", &["x"]),
            expression("pod", "In", &["b", "c"]),
        )],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("y/b", "x/a", true)
        .peer("y/c", "x/a", true)
        .peer("z/b", "x/a", true)
        .peer("z/c", "x/a", true);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

pub fn any_of_several_pod_selectors() -> Vec<Step> {
    let allow = policy("x", "allow-x-b-and-x-c", pod_label("a")).ingress(vec![from(
        vec![pods(pod_label("b")), pods(pod_label("c"))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("x/b", "x/a", true)
        .peer("x/c", "x/a", true);
    vec![Step::Apply(allow), probe(80, TCP, reach)]
}

fn pod_in_other_namespace_case(protocol: Protocol) -> Vec<Step> {
    let allow = policy("x", "allow-ns-y-pod-a", pod_label("a")).ingress(vec![from(
        vec![pods_in(ns_label("y"), pod_label("a"))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("y/a", "x/a", true);
    vec![Step::Apply(allow), probe(80, protocol, reach)]
}

pub fn a_pod_in_another_namespace_by_pod_and_namespace_selector() -> Vec<Step> {
    pod_in_other_namespace_case(TCP)
}

pub fn a_pod_in_another_namespace_by_pod_and_namespace_selector_over_udp() -> Vec<Step> {
    pod_in_other_namespace_case(UDP)
}

pub fn a_pod_in_another_namespace_by_pod_and_namespace_selector_over_sctp() -> Vec<Step> {
    pod_in_other_namespace_case(SCTP)
}

fn ports_case(protocol: Protocol) -> Vec<Step> {
    let allow = policy("x", "allow-ingress-on-port-81-ns-x", pod_label("a")).ingress(vec![from(
        vec![namespaces(ns_label("y"))],
        vec![port(81, protocol)],
    )]);
    let on_81 = Reach::all(true)
        .peer("x", "x/a", false)
        .peer("z", "x/a", false);
    let other = Reach::all(true).all_ingress("x/a", false);
    let other_protocol = if protocol == TCP { UDP } else { TCP };
    vec![
        Step::Apply(allow),
        probe(81, protocol, on_81),
        probe(80, protocol, other.clone()),
        probe(81, other_protocol, other),
    ]
}

pub fn ports_restrict_an_allow_to_one_port() -> Vec<Step> {
    ports_case(TCP)
}

pub fn ports_restrict_an_allow_to_one_port_over_udp() -> Vec<Step> {
    ports_case(UDP)
}

pub fn ports_restrict_an_allow_to_one_port_over_sctp() -> Vec<Step> {
    ports_case(SCTP)
}

pub fn stacked_policies_with_overlapping_selectors_add_up() -> Vec<Step> {
    let on_81 = policy("x", "allow-ingress-on-port-81-ns-x", pod_label("a")).ingress(vec![from(
        vec![namespaces(ns_label("y"))],
        vec![port(81, TCP)],
    )]);
    let on_80 = policy("x", "allow-ingress-on-port-80-ns-x", pod_label("a")).ingress(vec![from(
        vec![namespaces(ns_label("y"))],
        vec![port(80, TCP)],
    )]);
    let allow_y = Reach::all(true)
        .peer("x", "x/a", false)
        .peer("z", "x/a", false);
    let deny = Reach::all(true).all_ingress("x/a", false);
    vec![
        Step::Apply(on_81),
        probe(81, TCP, allow_y.clone()),
        probe(80, TCP, deny),
        Step::Apply(on_80),
        probe(80, TCP, allow_y.clone()),
        probe(81, TCP, allow_y),
    ]
}

pub fn allow_all_ingress_with_one_empty_rule() -> Vec<Step> {
    let allow = policy("x", "allow-all", everything()).ingress(vec![from(vec![], vec![])]);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true)),
        probe(81, TCP, Reach::all(true)),
        probe(81, UDP, Reach::all(true)),
    ]
}

pub fn ingress_on_one_named_port() -> Vec<Step> {
    let allow = policy("x", "allow-all", everything())
        .ingress(vec![from(vec![], vec![named_port("serve-81-tcp")])]);
    vec![
        Step::Apply(allow),
        probe(81, TCP, Reach::all(true)),
        probe(80, TCP, Reach::all(true).all_ingress("x", false)),
        probe(81, UDP, Reach::all(true).all_ingress("x", false)),
    ]
}

pub fn ingress_from_one_namespace_on_one_named_port() -> Vec<Step> {
    let allow =
        policy("x", "allow-client-in-ns-y-on-named-port", everything()).ingress(vec![from(
            vec![namespaces(ns_label("y"))],
            vec![named_port("serve-80-tcp")],
        )]);
    vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true).peer("x", "x", false).peer("z", "x", false),
        ),
        probe(81, TCP, Reach::all(true).all_ingress("x", false)),
    ]
}

pub fn egress_on_one_named_port() -> Vec<Step> {
    let allow = policy("x", "allow-egress", everything())
        .egress(vec![to(vec![], vec![named_port("serve-80-tcp")])]);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true)),
        probe(81, TCP, Reach::all(true).all_egress("x", false)),
        probe(80, UDP, Reach::all(true).all_egress("x", false)),
    ]
}

pub fn an_updated_policy_is_enforced() -> Vec<Step> {
    let allow = policy("x", "allow-all-mutate-to-deny-all", everything())
        .ingress(vec![from(vec![], vec![])]);
    let deny = policy("x", "allow-all-mutate-to-deny-all", everything()).ingress(vec![]);
    vec![
        Step::Apply(allow),
        probe(81, TCP, Reach::all(true)),
        Step::Apply(deny),
        probe(81, TCP, Reach::all(true).all_ingress("x", false)),
    ]
}

pub fn updated_namespace_labels_are_enforced() -> Vec<Step> {
    let allow = policy("x", "allow-client-a-via-ns-selector", pod_label("a")).ingress(vec![from(
        vec![namespaces(selector(&[("ns2", "updated")]))],
        vec![],
    )]);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true).all_ingress("x/a", false)),
        Step::NamespaceLabels("y", &[("ns2", "updated")]),
        probe(
            80,
            TCP,
            Reach::all(true)
                .peer("x", "x/a", false)
                .peer("z", "x/a", false),
        ),
    ]
}

pub fn updated_pod_labels_are_enforced() -> Vec<Step> {
    let allow = policy("x", "allow-client-a-via-pod-selector", pod_label("a")).ingress(vec![from(
        vec![pods(selector(&[("pod", "b"), ("pod2", "updated")]))],
        vec![],
    )]);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true).all_ingress("x/a", false)),
        Step::PodLabels("x", "b", &[("pod2", "updated")]),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_ingress("x/a", false)
                .peer("x/b", "x/a", true),
        ),
    ]
}

pub fn ingress_from_other_namespaces_is_denied() -> Vec<Step> {
    let allow = policy("x", "deny-empty-policy", everything())
        .ingress(vec![from(vec![pods(everything())], vec![])]);
    vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true).peer("y", "x", false).peer("z", "x", false),
        ),
    ]
}

pub fn a_pod_labelled_into_a_deny_policy_becomes_isolated() -> Vec<Step> {
    let deny = policy(
        "x",
        "deny-ingress-via-label-selector",
        selector(&[("target", "isolated")]),
    )
    .ingress(vec![]);
    vec![
        Step::Apply(deny),
        probe(80, TCP, Reach::all(true)),
        Step::PodLabels("x", "a", &[("target", "isolated")]),
        probe(80, TCP, Reach::all(true).all_ingress("x/a", false)),
    ]
}

pub fn egress_deny_from_one_pod() -> Vec<Step> {
    let deny = policy("x", "deny-egress-pod-a", pod_label("a")).egress(vec![]);
    vec![
        Step::Apply(deny),
        probe(80, TCP, Reach::all(true).all_egress("x/a", false)),
    ]
}

pub fn egress_deny_from_a_whole_namespace() -> Vec<Step> {
    let deny = policy("x", "deny-egress-ns-x", everything()).egress(vec![]);
    vec![
        Step::Apply(deny),
        probe(80, TCP, Reach::all(true).all_egress("x", false)),
    ]
}

pub fn ingress_and_egress_together() -> Vec<Step> {
    let both = policy(
        "x",
        "allow-client-a-via-pod-selector-with-egress",
        pod_label("a"),
    )
    .ingress(vec![from(vec![pods(pod_label("b"))], vec![])])
    .egress(vec![to(vec![], vec![port(80, TCP)])]);
    vec![
        Step::Apply(both),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_ingress("x/a", false)
                .peer("x/b", "x/a", true),
        ),
        probe(
            81,
            TCP,
            Reach::all(true)
                .all_ingress("x/a", false)
                .all_egress("x/a", false)
                .peer("x/b", "x/a", true),
        ),
    ]
}

pub fn client_side_egress_deny_wins_over_a_server_allow() -> Vec<Step> {
    let x_a = policy("x", "allow-to-ns-y-pod-a", pod_label("a")).egress(vec![to(
        vec![pods_in(ns_label("y"), pod_label("a"))],
        vec![port(80, TCP)],
    )]);
    let y_a = policy("y", "allow-from-xa-to-ya", pod_label("a")).ingress(vec![from(
        vec![pods_in(ns_label("x"), pod_label("a"))],
        vec![port(80, TCP)],
    )]);
    let y_b = policy("y", "allow-from-xa-to-yb", pod_label("b")).ingress(vec![from(
        vec![pods_in(ns_label("x"), pod_label("a"))],
        vec![port(80, TCP)],
    )]);
    let reach = Reach::all(true)
        .all_egress("x/a", false)
        .all_ingress("y/a", false)
        .all_ingress("y/b", false)
        .peer("x/a", "y/a", true);
    vec![
        Step::Apply(x_a),
        Step::Apply(y_a),
        Step::Apply(y_b),
        probe(80, TCP, reach),
    ]
}

pub fn egress_to_a_pod_in_another_namespace_by_pod_and_namespace_selector() -> Vec<Step> {
    let allow = policy("x", "allow-to-ns-y-pod-a", pod_label("a")).egress(vec![to(
        vec![pods_in(ns_label("y"), pod_label("a"))],
        vec![port(80, TCP)],
    )]);
    vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .peer("x/a", "y/a", true),
        ),
    ]
}

pub fn any_port_on_one_protocol() -> Vec<Step> {
    let allow = policy("x", "allow-ingress-by-proto", pod_label("a"))
        .ingress(vec![from(vec![], vec![protocol_only(TCP)])]);
    let deny = Reach::all(true).all_ingress("x/a", false);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true)),
        probe(81, TCP, Reach::all(true)),
        probe(80, UDP, deny.clone()),
        probe(81, SCTP, deny),
    ]
}

pub fn ingress_allow_all_takes_precedence() -> Vec<Step> {
    let only_80 = policy("x", "allow-ingress-port-80", pod_label("a"))
        .ingress(vec![from(vec![], vec![port(80, TCP)])]);
    let all = policy("x", "allow-ingress", everything()).ingress(vec![from(vec![], vec![])]);
    vec![
        Step::Apply(only_80),
        probe(81, TCP, Reach::all(true).all_ingress("x/a", false)),
        Step::Apply(all),
        probe(81, TCP, Reach::all(true)),
    ]
}

pub fn egress_allow_all_takes_precedence() -> Vec<Step> {
    let only_80 = policy("x", "allow-egress-port-80", pod_label("a"))
        .egress(vec![to(vec![], vec![port(80, TCP)])]);
    let all = policy("x", "allow-egress", everything()).egress(vec![to(vec![], vec![])]);
    vec![
        Step::Apply(only_80),
        probe(81, TCP, Reach::all(true).all_egress("x/a", false)),
        Step::Apply(all),
        probe(81, TCP, Reach::all(true)),
    ]
}

pub fn deleting_policies_restores_access() -> Vec<Step> {
    let deny = policy("x", "deny-all", everything())
        .ingress(vec![])
        .egress(vec![]);
    vec![
        Step::Apply(deny),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_ingress("x", false)
                .all_egress("x", false),
        ),
        Step::Delete("x", "deny-all"),
        probe(80, TCP, Reach::all(true)),
    ]
}

pub fn egress_to_a_cidr_block_matches_a_pod_address() -> Vec<Step> {
    let allow = policy("x", "allow-client-a-via-cidr-egress-rule", pod_label("a"))
        .egress(vec![to(host_cidrs("y", "b"), vec![])]);
    vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .peer("x/a", "y/b", true),
        ),
    ]
}

pub fn except_carves_a_pod_out_of_a_cidr_block() -> Vec<Step> {
    let allow = policy(
        "x",
        "deny-client-a-via-except-cidr-egress-rule",
        pod_label("a"),
    )
    .egress(vec![to(cidr_except_pod("x", "b"), vec![])]);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true).peer("x/a", "x/b", false)),
    ]
}

pub fn an_update_that_overlaps_cidr_and_except_replaces_the_policy() -> Vec<Step> {
    let name = "deny-client-a-via-except-cidr-egress-rule";
    let except =
        policy("x", name, pod_label("a")).egress(vec![to(cidr_except_pod("x", "b"), vec![])]);
    let host = policy("x", name, pod_label("a")).egress(vec![to(host_cidrs("x", "b"), vec![])]);
    vec![
        Step::Apply(except),
        probe(80, TCP, Reach::all(true).peer("x/a", "x/b", false)),
        Step::Apply(host),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .peer("x/a", "x/b", true),
        ),
    ]
}

pub fn ingress_and_egress_are_controlled_independently() -> Vec<Step> {
    let egress = policy("x", "allow-egress-for-target", pod_label("a"))
        .egress(vec![to(vec![pods(pod_label("b"))], vec![])]);
    let deny_ingress =
        policy("x", "deny-ingress-via-label-selector", pod_label("a")).ingress(vec![]);
    vec![
        Step::Apply(egress),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .peer("x/a", "x/b", true),
        ),
        Step::Apply(deny_ingress),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .all_ingress("x/a", false)
                .peer("x/a", "x/b", true),
        ),
    ]
}

fn one_protocol_case(allowed: Protocol) -> Vec<Step> {
    let allow = policy("x", "allow-only-one-protocol-on-81", pod_label("a"))
        .ingress(vec![from(vec![], vec![port(81, allowed)])]);
    let mut steps = vec![Step::Apply(allow), probe(81, allowed, Reach::all(true))];
    for other in Protocol::ALL.into_iter().filter(|p| *p != allowed) {
        steps.push(probe(81, other, Reach::all(true).all_ingress("x/a", false)));
    }
    steps
}

pub fn a_udp_only_allow_does_not_open_tcp_or_sctp() -> Vec<Step> {
    one_protocol_case(UDP)
}

pub fn an_sctp_only_allow_does_not_open_tcp_or_udp() -> Vec<Step> {
    one_protocol_case(SCTP)
}

pub fn a_tcp_only_allow_does_not_open_udp_or_sctp() -> Vec<Step> {
    one_protocol_case(TCP)
}

pub fn the_default_namespace_name_label_selects_a_namespace() -> Vec<Step> {
    let allow = policy(
        "x",
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        pod_label("a"),
    )
    .ingress(vec![from(
        vec![namespaces(selector(&[(NAMESPACE_NAME_LABEL, "y")]))],
        vec![],
    )]);
    vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true)
                .peer("x", "x/a", false)
                .peer("z", "x/a", false),
        ),
    ]
}

pub fn the_default_namespace_name_label_in_match_expressions() -> Vec<Step> {
    let allow = policy("x", "allow-client-a-via-ns-selector", pod_label("a")).egress(vec![to(
        vec![namespaces(expression(
            NAMESPACE_NAME_LABEL,
            "NotIn",
            &["y"],
        ))],
        vec![],
    )]);
    vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true).peer("x/a", "y", false)),
    ]
}

/// One upstream case: its name and its steps.
pub struct Case {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

/// Every case, in the order of upstream's file.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "default_deny_ingress_isolates_every_pod_of_the_namespace_for_every_protocol",
            steps: default_deny_ingress_isolates_every_pod_of_the_namespace_for_every_protocol(),
        },
        Case {
            name: "default_deny_all_isolates_both_directions",
            steps: default_deny_all_isolates_both_directions(),
        },
        Case {
            name: "ingress_from_a_pod_selector_allows_only_those_pods_of_the_policy_namespace",
            steps: ingress_from_a_pod_selector_allows_only_those_pods_of_the_policy_namespace(),
        },
        Case {
            name: "allow_all_from_empty_pod_and_namespace_selectors_opens_one_target_under_a_deny",
            steps: allow_all_from_empty_pod_and_namespace_selectors_opens_one_target_under_a_deny(),
        },
        Case {
            name: "allow_from_all_namespaces_with_an_empty_namespace_selector",
            steps: allow_from_all_namespaces_with_an_empty_namespace_selector(),
        },
        Case {
            name: "namespace_selector_allows_only_the_selected_namespace",
            steps: namespace_selector_allows_only_the_selected_namespace(),
        },
        Case {
            name: "pod_selector_with_match_expressions",
            steps: pod_selector_with_match_expressions(),
        },
        Case {
            name: "namespace_selector_with_match_expressions",
            steps: namespace_selector_with_match_expressions(),
        },
        Case {
            name: "pod_selector_or_namespace_selector_as_two_peers",
            steps: pod_selector_or_namespace_selector_as_two_peers(),
        },
        Case {
            name: "pod_and_namespace_selector_in_one_peer_is_an_and",
            steps: pod_and_namespace_selector_in_one_peer_is_an_and(),
        },
        Case {
            name: "multiple_pod_selectors_and_namespace_selectors",
            steps: multiple_pod_selectors_and_namespace_selectors(),
        },
        Case {
            name: "any_of_several_pod_selectors",
            steps: any_of_several_pod_selectors(),
        },
        Case {
            name: "a_pod_in_another_namespace_by_pod_and_namespace_selector",
            steps: a_pod_in_another_namespace_by_pod_and_namespace_selector(),
        },
        Case {
            name: "a_pod_in_another_namespace_by_pod_and_namespace_selector_over_udp",
            steps: a_pod_in_another_namespace_by_pod_and_namespace_selector_over_udp(),
        },
        Case {
            name: "a_pod_in_another_namespace_by_pod_and_namespace_selector_over_sctp",
            steps: a_pod_in_another_namespace_by_pod_and_namespace_selector_over_sctp(),
        },
        Case {
            name: "ports_restrict_an_allow_to_one_port",
            steps: ports_restrict_an_allow_to_one_port(),
        },
        Case {
            name: "ports_restrict_an_allow_to_one_port_over_udp",
            steps: ports_restrict_an_allow_to_one_port_over_udp(),
        },
        Case {
            name: "ports_restrict_an_allow_to_one_port_over_sctp",
            steps: ports_restrict_an_allow_to_one_port_over_sctp(),
        },
        Case {
            name: "stacked_policies_with_overlapping_selectors_add_up",
            steps: stacked_policies_with_overlapping_selectors_add_up(),
        },
        Case {
            name: "allow_all_ingress_with_one_empty_rule",
            steps: allow_all_ingress_with_one_empty_rule(),
        },
        Case {
            name: "ingress_on_one_named_port",
            steps: ingress_on_one_named_port(),
        },
        Case {
            name: "ingress_from_one_namespace_on_one_named_port",
            steps: ingress_from_one_namespace_on_one_named_port(),
        },
        Case {
            name: "egress_on_one_named_port",
            steps: egress_on_one_named_port(),
        },
        Case {
            name: "an_updated_policy_is_enforced",
            steps: an_updated_policy_is_enforced(),
        },
        Case {
            name: "updated_namespace_labels_are_enforced",
            steps: updated_namespace_labels_are_enforced(),
        },
        Case {
            name: "updated_pod_labels_are_enforced",
            steps: updated_pod_labels_are_enforced(),
        },
        Case {
            name: "ingress_from_other_namespaces_is_denied",
            steps: ingress_from_other_namespaces_is_denied(),
        },
        Case {
            name: "a_pod_labelled_into_a_deny_policy_becomes_isolated",
            steps: a_pod_labelled_into_a_deny_policy_becomes_isolated(),
        },
        Case {
            name: "egress_deny_from_one_pod",
            steps: egress_deny_from_one_pod(),
        },
        Case {
            name: "egress_deny_from_a_whole_namespace",
            steps: egress_deny_from_a_whole_namespace(),
        },
        Case {
            name: "ingress_and_egress_together",
            steps: ingress_and_egress_together(),
        },
        Case {
            name: "client_side_egress_deny_wins_over_a_server_allow",
            steps: client_side_egress_deny_wins_over_a_server_allow(),
        },
        Case {
            name: "egress_to_a_pod_in_another_namespace_by_pod_and_namespace_selector",
            steps: egress_to_a_pod_in_another_namespace_by_pod_and_namespace_selector(),
        },
        Case {
            name: "any_port_on_one_protocol",
            steps: any_port_on_one_protocol(),
        },
        Case {
            name: "ingress_allow_all_takes_precedence",
            steps: ingress_allow_all_takes_precedence(),
        },
        Case {
            name: "egress_allow_all_takes_precedence",
            steps: egress_allow_all_takes_precedence(),
        },
        Case {
            name: "deleting_policies_restores_access",
            steps: deleting_policies_restores_access(),
        },
        Case {
            name: "egress_to_a_cidr_block_matches_a_pod_address",
            steps: egress_to_a_cidr_block_matches_a_pod_address(),
        },
        Case {
            name: "except_carves_a_pod_out_of_a_cidr_block",
            steps: except_carves_a_pod_out_of_a_cidr_block(),
        },
        Case {
            name: "an_update_that_overlaps_cidr_and_except_replaces_the_policy",
            steps: an_update_that_overlaps_cidr_and_except_replaces_the_policy(),
        },
        Case {
            name: "ingress_and_egress_are_controlled_independently",
            steps: ingress_and_egress_are_controlled_independently(),
        },
        Case {
            name: "a_udp_only_allow_does_not_open_tcp_or_sctp",
            steps: a_udp_only_allow_does_not_open_tcp_or_sctp(),
        },
        Case {
            name: "an_sctp_only_allow_does_not_open_tcp_or_udp",
            steps: an_sctp_only_allow_does_not_open_tcp_or_udp(),
        },
        Case {
            name: "a_tcp_only_allow_does_not_open_udp_or_sctp",
            steps: a_tcp_only_allow_does_not_open_udp_or_sctp(),
        },
        Case {
            name: "the_default_namespace_name_label_selects_a_namespace",
            steps: the_default_namespace_name_label_selects_a_namespace(),
        },
        Case {
            name: "the_default_namespace_name_label_in_match_expressions",
            steps: the_default_namespace_name_label_in_match_expressions(),
        },
    ]
}
