//! The upstream NetworkPolicy conformance cases (kubernetes `test/e2e/network/netpol/
//! network_policy.go`) as tables: namespaces x, y, z labelled `ns=<name>`, pods a, b, c
//! labelled `pod=<name>` serving TCP, UDP and SCTP on 80 and 81 (container ports
//! `serve-<port>-<proto>`), dual stack.
//!
//! Policies are written as API objects and converted, as the agent receives them. Every probe
//! checks each ordered pair of distinct pods over IPv4 and IPv6 three ways: the evaluator, the
//! lookup on a node running every pod, and the lookups on three nodes running a third each
//! (egress decided on the source's node, ingress on the destination's). Every change is applied
//! incrementally to all four engines, and each time the delta applied to the previous maps must
//! give the engine's state and, canonically, a fresh compile. Traffic of a pod to itself is not
//! probed (it never crosses the pod's interface).

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
    Change, ContainerPort, Labels, NAMESPACE_NAME_LABEL, Namespace, ObjectRef, Pod, Protocol,
    Snapshot, convert,
};

use super::{
    Engine, Flow, NodeState, compile, evaluate, lookup,
    testkit::{canonical, check_flows},
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

fn index_of(name: &str, names: &[&str]) -> u8 {
    names.iter().position(|n| *n == name).map_or(0, |i| i as u8)
}

fn ip_v4(namespace: &str, pod: &str) -> IpAddr {
    IpAddr::from([
        10,
        0,
        index_of(namespace, &NAMESPACES) + 1,
        index_of(pod, &PODS) + 1,
    ])
}

fn ip_v6(namespace: &str, pod: &str) -> IpAddr {
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[13] = index_of(namespace, &NAMESPACES) + 1;
    octets[15] = index_of(pod, &PODS) + 1;
    IpAddr::from(octets)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The upstream cluster; `split` spreads the pods over three nodes, otherwise all run on
/// node-1.
fn cluster(split: bool) -> Snapshot {
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
struct Policy(K8sNetworkPolicy);

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
struct Reach(BTreeMap<(String, String), bool>);

fn all_pods() -> Vec<String> {
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
enum Step {
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

fn probe(port: u16, protocol: Protocol, reach: Reach) -> Step {
    Step::Probe(port, protocol, reach)
}

/// One engine on one node, with the maps a backend would hold after applying every delta.
struct Node {
    name: &'static str,
    engine: Engine,
    applied: NodeState,
}

impl Node {
    fn new(name: &'static str, snapshot: Snapshot) -> Self {
        let (engine, delta) = Engine::with_snapshot(name, snapshot);
        let mut applied = NodeState::default();
        applied.apply(&delta);
        Self {
            name,
            engine,
            applied,
        }
    }

    fn change(&mut self, step: &Step) {
        let snapshot = self.engine.snapshot();
        let changes = match step {
            Step::Apply(policy) => {
                let converted = convert::network_policy(&policy.0);
                assert!(
                    converted.rejections.is_empty(),
                    "{:?}",
                    converted.rejections
                );
                converted
                    .object
                    .map(Change::ApplyPolicy)
                    .into_iter()
                    .collect()
            }
            Step::Delete(namespace, name) => {
                vec![Change::DeletePolicy(ObjectRef::new(*namespace, *name))]
            }
            Step::NamespaceLabels(namespace, added) => {
                let mut ns = snapshot
                    .namespaces
                    .get(*namespace)
                    .cloned()
                    .expect("namespace");
                ns.labels.extend(labels(added));
                vec![Change::ApplyNamespace(ns)]
            }
            Step::PodLabels(namespace, pod, added) => {
                let key = ObjectRef::new(*namespace, *pod);
                let mut pod = snapshot.pods.get(&key).cloned().expect("pod");
                pod.labels.extend(labels(added));
                vec![Change::ApplyPod(pod)]
            }
            Step::Probe(..) => return,
        };
        let delta = self.engine.apply(changes);
        self.applied.apply(&delta);
        assert_eq!(
            &self.applied,
            self.engine.state(),
            "{}: delta applied != state",
            self.name
        );
        let fresh = compile(self.engine.snapshot(), self.name);
        assert_eq!(
            canonical(self.engine.state()),
            canonical(&fresh),
            "{}: incremental != full compile",
            self.name
        );
    }
}

/// Runs a case: changes and probes in order.
fn run(steps: Vec<Step>) {
    let mut single = Node::new(NODES[0], cluster(false));
    let split_cluster = cluster(true);
    let mut split: Vec<Node> = NODES
        .iter()
        .map(|node| Node::new(node, split_cluster.clone()))
        .collect();
    for (number, step) in steps.iter().enumerate() {
        single.change(step);
        for node in &mut split {
            node.change(step);
        }
        let Step::Probe(port, protocol, reach) = step else {
            continue;
        };
        let mut failures = Vec::new();
        for ((from, to), expected) in &reach.0 {
            if from == to {
                continue;
            }
            let (from_ns, from_pod) = from.split_once('/').expect("ns/pod");
            let (to_ns, to_pod) = to.split_once('/').expect("ns/pod");
            for (src, dst) in [
                (ip_v4(from_ns, from_pod), ip_v4(to_ns, to_pod)),
                (ip_v6(from_ns, from_pod), ip_v6(to_ns, to_pod)),
            ] {
                let flow = Flow::new(src, dst, protocol.number(), *port);
                let evaluated = evaluate(single.engine.snapshot(), &flow).allowed;
                let one_node = lookup(single.engine.state(), &flow).allowed();
                let node_of = |pod: &str| {
                    let key = pod.split_once('/').map(|(ns, p)| ObjectRef::new(ns, p));
                    let node = key
                        .and_then(|key| split_cluster.pods.get(&key))
                        .and_then(|pod| pod.node.clone())
                        .unwrap_or_default();
                    split.iter().find(|n| n.name == node).expect("node")
                };
                let three_nodes = lookup(node_of(from).engine.state(), &flow).egress.allowed()
                    && lookup(node_of(to).engine.state(), &flow).ingress.allowed();
                if (evaluated, one_node, three_nodes) != (*expected, *expected, *expected) {
                    failures.push(format!(
                        "{from} -> {to} {protocol}/{port} ({src} -> {dst}): expected {expected}, \
                         evaluator {evaluated}, one node {one_node}, three nodes {three_nodes}"
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "step {number}:\n{}",
            failures.join("\n")
        );
        let flows: Vec<Flow> = all_pods()
            .iter()
            .flat_map(|from| all_pods().into_iter().map(move |to| (from.clone(), to)))
            .filter_map(|(from, to)| {
                let (fns, fpod) = from.split_once('/')?;
                let (tns, tpod) = to.split_once('/')?;
                Some(Flow::new(
                    ip_v4(fns, fpod),
                    ip_v4(tns, tpod),
                    protocol.number(),
                    *port,
                ))
            })
            .collect();
        for node in std::iter::once(&single).chain(&split) {
            let checked = check_flows(
                node.engine.snapshot(),
                node.name,
                node.engine.state(),
                flows.iter().copied(),
            );
            assert_eq!(checked, Ok(()), "step {number} on {}", node.name);
        }
    }
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

#[test]
fn default_deny_ingress_isolates_every_pod_of_the_namespace_for_every_protocol() {
    let deny = policy("x", "deny-ingress", everything()).ingress(vec![]);
    let reach = Reach::all(true).all_ingress("x", false);
    run(vec![
        Step::Apply(deny),
        probe(80, TCP, reach.clone()),
        probe(80, UDP, reach.clone()),
        probe(80, SCTP, reach),
    ]);
}

#[test]
fn default_deny_all_isolates_both_directions() {
    let deny = policy("x", "deny-all", everything())
        .ingress(vec![])
        .egress(vec![]);
    let reach = Reach::all(true)
        .all_ingress("x", false)
        .all_egress("x", false);
    run(vec![
        Step::Apply(deny),
        probe(80, TCP, reach.clone()),
        probe(81, UDP, reach),
    ]);
}

#[test]
fn ingress_from_a_pod_selector_allows_only_those_pods_of_the_policy_namespace() {
    let allow = policy("x", "x-a-from-b", pod_label("a"))
        .ingress(vec![from(vec![pods(pod_label("b"))], vec![])]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("x/b", "x/a", true);
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn allow_all_from_empty_pod_and_namespace_selectors_opens_one_target_under_a_deny() {
    let deny = policy("x", "deny-all", everything()).ingress(vec![]);
    let allow = policy("x", "allow-all-to-a", pod_label("a")).ingress(vec![from(
        vec![pods_in(everything(), everything())],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/b", false)
        .all_ingress("x/c", false);
    run(vec![
        Step::Apply(deny),
        Step::Apply(allow),
        probe(80, TCP, reach),
    ]);
}

#[test]
fn allow_from_all_namespaces_with_an_empty_namespace_selector() {
    let allow = policy("x", "allow-from-another-ns", pod_label("a"))
        .ingress(vec![from(vec![namespaces(everything())], vec![])]);
    run(vec![Step::Apply(allow), probe(80, TCP, Reach::all(true))]);
}

#[test]
fn namespace_selector_allows_only_the_selected_namespace() {
    let allow = policy("x", "allow-client-a-via-ns-selector", everything())
        .ingress(vec![from(vec![namespaces(ns_label("y"))], vec![])]);
    let reach = Reach::all(true).peer("x", "x", false).peer("z", "x", false);
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn pod_selector_with_match_expressions() {
    let allow = policy("x", "x-a-allows-x-b", pod_label("a")).ingress(vec![from(
        vec![pods(expression("pod", "In", &["b"]))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("x/b", "x/a", true);
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn namespace_selector_with_match_expressions() {
    let allow = policy("x", "allow-ns-y-match-selector", pod_label("a")).ingress(vec![from(
        vec![namespaces(expression("ns", "In", &["y"]))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .peer("x", "x/a", false)
        .peer("z", "x/a", false);
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn pod_selector_or_namespace_selector_as_two_peers() {
    let allow = policy("x", "allow-ns-y-z-pod-b", pod_label("a")).ingress(vec![from(
        vec![
            namespaces(expression("ns", "NotIn", &["x"])),
            pods(expression("pod", "In", &["b"])),
        ],
        vec![],
    )]);
    let reach = Reach::all(true).peer("x/c", "x/a", false);
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_an_and() {
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
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
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
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

#[test]
fn any_of_several_pod_selectors() {
    let allow = policy("x", "allow-x-b-and-x-c", pod_label("a")).ingress(vec![from(
        vec![pods(pod_label("b")), pods(pod_label("c"))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("x/b", "x/a", true)
        .peer("x/c", "x/a", true);
    run(vec![Step::Apply(allow), probe(80, TCP, reach)]);
}

fn pod_in_other_namespace_case(protocol: Protocol) {
    let allow = policy("x", "allow-ns-y-pod-a", pod_label("a")).ingress(vec![from(
        vec![pods_in(ns_label("y"), pod_label("a"))],
        vec![],
    )]);
    let reach = Reach::all(true)
        .all_ingress("x/a", false)
        .peer("y/a", "x/a", true);
    run(vec![Step::Apply(allow), probe(80, protocol, reach)]);
}

#[test]
fn a_pod_in_another_namespace_by_pod_and_namespace_selector() {
    pod_in_other_namespace_case(TCP);
}

#[test]
fn a_pod_in_another_namespace_by_pod_and_namespace_selector_over_udp() {
    pod_in_other_namespace_case(UDP);
}

#[test]
fn a_pod_in_another_namespace_by_pod_and_namespace_selector_over_sctp() {
    pod_in_other_namespace_case(SCTP);
}

fn ports_case(protocol: Protocol) {
    let allow = policy("x", "allow-ingress-on-port-81-ns-x", pod_label("a")).ingress(vec![from(
        vec![namespaces(ns_label("y"))],
        vec![port(81, protocol)],
    )]);
    let on_81 = Reach::all(true)
        .peer("x", "x/a", false)
        .peer("z", "x/a", false);
    let other = Reach::all(true).all_ingress("x/a", false);
    let other_protocol = if protocol == TCP { UDP } else { TCP };
    run(vec![
        Step::Apply(allow),
        probe(81, protocol, on_81),
        probe(80, protocol, other.clone()),
        probe(81, other_protocol, other),
    ]);
}

#[test]
fn ports_restrict_an_allow_to_one_port() {
    ports_case(TCP);
}

#[test]
fn ports_restrict_an_allow_to_one_port_over_udp() {
    ports_case(UDP);
}

#[test]
fn ports_restrict_an_allow_to_one_port_over_sctp() {
    ports_case(SCTP);
}

#[test]
fn stacked_policies_with_overlapping_selectors_add_up() {
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
    run(vec![
        Step::Apply(on_81),
        probe(81, TCP, allow_y.clone()),
        probe(80, TCP, deny),
        Step::Apply(on_80),
        probe(80, TCP, allow_y.clone()),
        probe(81, TCP, allow_y),
    ]);
}

#[test]
fn allow_all_ingress_with_one_empty_rule() {
    let allow = policy("x", "allow-all", everything()).ingress(vec![from(vec![], vec![])]);
    run(vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true)),
        probe(81, TCP, Reach::all(true)),
        probe(81, UDP, Reach::all(true)),
    ]);
}

#[test]
fn ingress_on_one_named_port() {
    let allow = policy("x", "allow-all", everything())
        .ingress(vec![from(vec![], vec![named_port("serve-81-tcp")])]);
    run(vec![
        Step::Apply(allow),
        probe(81, TCP, Reach::all(true)),
        probe(80, TCP, Reach::all(true).all_ingress("x", false)),
        probe(81, UDP, Reach::all(true).all_ingress("x", false)),
    ]);
}

#[test]
fn ingress_from_one_namespace_on_one_named_port() {
    let allow =
        policy("x", "allow-client-in-ns-y-on-named-port", everything()).ingress(vec![from(
            vec![namespaces(ns_label("y"))],
            vec![named_port("serve-80-tcp")],
        )]);
    run(vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true).peer("x", "x", false).peer("z", "x", false),
        ),
        probe(81, TCP, Reach::all(true).all_ingress("x", false)),
    ]);
}

#[test]
fn egress_on_one_named_port() {
    let allow = policy("x", "allow-egress", everything())
        .egress(vec![to(vec![], vec![named_port("serve-80-tcp")])]);
    run(vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true)),
        probe(81, TCP, Reach::all(true).all_egress("x", false)),
        probe(80, UDP, Reach::all(true).all_egress("x", false)),
    ]);
}

#[test]
fn an_updated_policy_is_enforced() {
    let allow = policy("x", "allow-all-mutate-to-deny-all", everything())
        .ingress(vec![from(vec![], vec![])]);
    let deny = policy("x", "allow-all-mutate-to-deny-all", everything()).ingress(vec![]);
    run(vec![
        Step::Apply(allow),
        probe(81, TCP, Reach::all(true)),
        Step::Apply(deny),
        probe(81, TCP, Reach::all(true).all_ingress("x", false)),
    ]);
}

#[test]
fn updated_namespace_labels_are_enforced() {
    let allow = policy("x", "allow-client-a-via-ns-selector", pod_label("a")).ingress(vec![from(
        vec![namespaces(selector(&[("ns2", "updated")]))],
        vec![],
    )]);
    run(vec![
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
    ]);
}

#[test]
fn updated_pod_labels_are_enforced() {
    let allow = policy("x", "allow-client-a-via-pod-selector", pod_label("a")).ingress(vec![from(
        vec![pods(selector(&[("pod", "b"), ("pod2", "updated")]))],
        vec![],
    )]);
    run(vec![
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
    ]);
}

#[test]
fn ingress_from_other_namespaces_is_denied() {
    let allow = policy("x", "deny-empty-policy", everything())
        .ingress(vec![from(vec![pods(everything())], vec![])]);
    run(vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true).peer("y", "x", false).peer("z", "x", false),
        ),
    ]);
}

#[test]
fn a_pod_labelled_into_a_deny_policy_becomes_isolated() {
    let deny = policy(
        "x",
        "deny-ingress-via-label-selector",
        selector(&[("target", "isolated")]),
    )
    .ingress(vec![]);
    run(vec![
        Step::Apply(deny),
        probe(80, TCP, Reach::all(true)),
        Step::PodLabels("x", "a", &[("target", "isolated")]),
        probe(80, TCP, Reach::all(true).all_ingress("x/a", false)),
    ]);
}

#[test]
fn egress_deny_from_one_pod() {
    let deny = policy("x", "deny-egress-pod-a", pod_label("a")).egress(vec![]);
    run(vec![
        Step::Apply(deny),
        probe(80, TCP, Reach::all(true).all_egress("x/a", false)),
    ]);
}

#[test]
fn egress_deny_from_a_whole_namespace() {
    let deny = policy("x", "deny-egress-ns-x", everything()).egress(vec![]);
    run(vec![
        Step::Apply(deny),
        probe(80, TCP, Reach::all(true).all_egress("x", false)),
    ]);
}

#[test]
fn ingress_and_egress_together() {
    let both = policy(
        "x",
        "allow-client-a-via-pod-selector-with-egress",
        pod_label("a"),
    )
    .ingress(vec![from(vec![pods(pod_label("b"))], vec![])])
    .egress(vec![to(vec![], vec![port(80, TCP)])]);
    run(vec![
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
    ]);
}

#[test]
fn client_side_egress_deny_wins_over_a_server_allow() {
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
    run(vec![
        Step::Apply(x_a),
        Step::Apply(y_a),
        Step::Apply(y_b),
        probe(80, TCP, reach),
    ]);
}

#[test]
fn egress_to_a_pod_in_another_namespace_by_pod_and_namespace_selector() {
    let allow = policy("x", "allow-to-ns-y-pod-a", pod_label("a")).egress(vec![to(
        vec![pods_in(ns_label("y"), pod_label("a"))],
        vec![port(80, TCP)],
    )]);
    run(vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .peer("x/a", "y/a", true),
        ),
    ]);
}

#[test]
fn any_port_on_one_protocol() {
    let allow = policy("x", "allow-ingress-by-proto", pod_label("a"))
        .ingress(vec![from(vec![], vec![protocol_only(TCP)])]);
    let deny = Reach::all(true).all_ingress("x/a", false);
    run(vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true)),
        probe(81, TCP, Reach::all(true)),
        probe(80, UDP, deny.clone()),
        probe(81, SCTP, deny),
    ]);
}

#[test]
fn ingress_allow_all_takes_precedence() {
    let only_80 = policy("x", "allow-ingress-port-80", pod_label("a"))
        .ingress(vec![from(vec![], vec![port(80, TCP)])]);
    let all = policy("x", "allow-ingress", everything()).ingress(vec![from(vec![], vec![])]);
    run(vec![
        Step::Apply(only_80),
        probe(81, TCP, Reach::all(true).all_ingress("x/a", false)),
        Step::Apply(all),
        probe(81, TCP, Reach::all(true)),
    ]);
}

#[test]
fn egress_allow_all_takes_precedence() {
    let only_80 = policy("x", "allow-egress-port-80", pod_label("a"))
        .egress(vec![to(vec![], vec![port(80, TCP)])]);
    let all = policy("x", "allow-egress", everything()).egress(vec![to(vec![], vec![])]);
    run(vec![
        Step::Apply(only_80),
        probe(81, TCP, Reach::all(true).all_egress("x/a", false)),
        Step::Apply(all),
        probe(81, TCP, Reach::all(true)),
    ]);
}

#[test]
fn deleting_policies_restores_access() {
    let deny = policy("x", "deny-all", everything())
        .ingress(vec![])
        .egress(vec![]);
    run(vec![
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
    ]);
}

#[test]
fn egress_to_a_cidr_block_matches_a_pod_address() {
    let allow = policy("x", "allow-client-a-via-cidr-egress-rule", pod_label("a"))
        .egress(vec![to(host_cidrs("y", "b"), vec![])]);
    run(vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true)
                .all_egress("x/a", false)
                .peer("x/a", "y/b", true),
        ),
    ]);
}

#[test]
fn except_carves_a_pod_out_of_a_cidr_block() {
    let allow = policy(
        "x",
        "deny-client-a-via-except-cidr-egress-rule",
        pod_label("a"),
    )
    .egress(vec![to(cidr_except_pod("x", "b"), vec![])]);
    run(vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true).peer("x/a", "x/b", false)),
    ]);
}

#[test]
fn an_update_that_overlaps_cidr_and_except_replaces_the_policy() {
    let name = "deny-client-a-via-except-cidr-egress-rule";
    let except =
        policy("x", name, pod_label("a")).egress(vec![to(cidr_except_pod("x", "b"), vec![])]);
    let host = policy("x", name, pod_label("a")).egress(vec![to(host_cidrs("x", "b"), vec![])]);
    run(vec![
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
    ]);
}

#[test]
fn ingress_and_egress_are_controlled_independently() {
    let egress = policy("x", "allow-egress-for-target", pod_label("a"))
        .egress(vec![to(vec![pods(pod_label("b"))], vec![])]);
    let deny_ingress =
        policy("x", "deny-ingress-via-label-selector", pod_label("a")).ingress(vec![]);
    run(vec![
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
    ]);
}

fn one_protocol_case(allowed: Protocol) {
    let allow = policy("x", "allow-only-one-protocol-on-81", pod_label("a"))
        .ingress(vec![from(vec![], vec![port(81, allowed)])]);
    let mut steps = vec![Step::Apply(allow), probe(81, allowed, Reach::all(true))];
    for other in Protocol::ALL.into_iter().filter(|p| *p != allowed) {
        steps.push(probe(81, other, Reach::all(true).all_ingress("x/a", false)));
    }
    run(steps);
}

#[test]
fn a_udp_only_allow_does_not_open_tcp_or_sctp() {
    one_protocol_case(UDP);
}

#[test]
fn an_sctp_only_allow_does_not_open_tcp_or_udp() {
    one_protocol_case(SCTP);
}

#[test]
fn a_tcp_only_allow_does_not_open_udp_or_sctp() {
    one_protocol_case(TCP);
}

#[test]
fn the_default_namespace_name_label_selects_a_namespace() {
    let allow = policy(
        "x",
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        pod_label("a"),
    )
    .ingress(vec![from(
        vec![namespaces(selector(&[(NAMESPACE_NAME_LABEL, "y")]))],
        vec![],
    )]);
    run(vec![
        Step::Apply(allow),
        probe(
            80,
            TCP,
            Reach::all(true)
                .peer("x", "x/a", false)
                .peer("z", "x/a", false),
        ),
    ]);
}

#[test]
fn the_default_namespace_name_label_in_match_expressions() {
    let allow = policy("x", "allow-client-a-via-ns-selector", pod_label("a")).egress(vec![to(
        vec![namespaces(expression(
            NAMESPACE_NAME_LABEL,
            "NotIn",
            &["y"],
        ))],
        vec![],
    )]);
    run(vec![
        Step::Apply(allow),
        probe(80, TCP, Reach::all(true).peer("x/a", "y", false)),
    ]);
}
