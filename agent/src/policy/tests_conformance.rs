//! The upstream conformance cases (`conformance.rs`) played against the engine. Policies are
//! written as API objects and converted, as the agent receives them. Every probe checks each
//! ordered pair of distinct pods over IPv4 and IPv6 three ways: the evaluator, the lookup on a
//! node running every pod, and the lookups on three nodes running a third each (egress decided
//! on the source's node, ingress on the destination's). Every change is applied incrementally
//! to all four engines, and each time the delta applied to the previous maps must give the
//! engine's state and, canonically, a fresh compile. Traffic of a pod to itself is not probed
//! (it never crosses the pod's interface).

use crate::model::{Change, ObjectRef, Snapshot, convert};

use super::{
    Engine, Flow, NodeState, compile,
    conformance::{NODES, Step, all_pods, cases, cluster, ip_v4, ip_v6},
    evaluate, lookup,
    testkit::{canonical, check_flows},
};

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
                ns.labels.extend(
                    added
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
                vec![Change::ApplyNamespace(ns)]
            }
            Step::PodLabels(namespace, pod, added) => {
                let key = ObjectRef::new(*namespace, *pod);
                let mut pod = snapshot.pods.get(&key).cloned().expect("pod");
                pod.labels.extend(
                    added
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
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

#[test]
fn every_upstream_case_holds_on_one_node_and_on_three() {
    for case in cases() {
        eprintln!("case {}", case.name);
        run(case.steps);
    }
}
