//! The engine's upstream conformance cases (`netpol_agent::policy::conformance`) played with
//! real packets on a simulated node: the nine pods x/a .. z/c as network namespaces at their
//! IPv4 addresses, each serving TCP and UDP on 80 and 81, the namespaces and pods written to an
//! objects directory, and each case's steps written as the agent would receive them.
//!
//! What cannot be played here is skipped, not faked: SCTP probes (the test servers speak TCP
//! and UDP) and IPv6 (the simulated pods are single stack).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netpol_agent::{
    model::Protocol,
    policy::conformance::{NAMESPACES, NODES, PODS, Reach, Step, ip_v4},
};

use crate::{
    netns::{Server, SimulatedNode},
    objects::ObjectsDir,
};

/// The node's pod range: every conformance address is in it.
const POD_RANGE: &str = "10.0.0.0/16";
/// A denied TCP connect or UDP exchange gives up after this; allowed ones answer in well under
/// a millisecond here, and a slow one only makes the step probe again.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The simulated node running the nine pods, and their labels as the cluster has them now.
pub struct ConformanceWorld {
    pub node: SimulatedNode,
    /// `x/a` -> index in `node.pods`.
    index: BTreeMap<String, usize>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    _servers: Vec<Server>,
}

/// The verdict of every ordered pair of distinct pods, `(from, to)` as `x/a`.
pub type Observed = BTreeMap<(String, String), bool>;

impl ConformanceWorld {
    pub fn build() -> Self {
        let mut node = SimulatedNode::new(POD_RANGE, &[]);
        let mut index = BTreeMap::new();
        let mut namespace_labels = BTreeMap::new();
        let mut pod_labels = BTreeMap::new();
        let mut servers = Vec::new();
        for namespace in NAMESPACES {
            namespace_labels.insert(
                namespace.to_owned(),
                BTreeMap::from([("ns".to_owned(), namespace.to_owned())]),
            );
            for pod in PODS {
                let at = node.add_pod(&ip_v4(namespace, pod).to_string());
                for port in [80, 81] {
                    servers.push(node.pods[at].netns.serve(port, "hello"));
                }
                let name = format!("{namespace}/{pod}");
                pod_labels.insert(
                    name.clone(),
                    BTreeMap::from([("pod".to_owned(), pod.to_owned())]),
                );
                index.insert(name, at);
            }
        }
        Self {
            node,
            index,
            namespace_labels,
            pod_labels,
            _servers: servers,
        }
    }

    /// The namespaces and pods as one YAML file, with their current labels and the named
    /// container ports upstream's pods have (`serve-80-tcp`, ...).
    pub fn cluster_yaml(&self) -> String {
        let labels = |labels: &BTreeMap<String, String>, indent: &str| -> String {
            labels
                .iter()
                .map(|(key, value)| format!("\n{indent}{key}: \"{value}\""))
                .collect()
        };
        let mut out = String::new();
        for (namespace, namespace_labels) in &self.namespace_labels {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:{}\n",
                labels(namespace_labels, "    ")
            );
        }
        let ports: String = [80, 81]
            .into_iter()
            .flat_map(|port| ["TCP", "UDP", "SCTP"].map(|protocol| (port, protocol)))
            .map(|(port, protocol)| {
                format!(
                    "\n    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {protocol}",
                    protocol.to_lowercase()
                )
            })
            .collect();
        for (name, pod_labels) in &self.pod_labels {
            let (namespace, pod) = name.split_once('/').unwrap_or_default();
            let ip = ip_v4(namespace, pod);
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {namespace}\n  labels:{}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: agnhost\n    ports:{ports}\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
                labels(pod_labels, "    "),
                node = NODES[0],
            );
        }
        out
    }

    /// Writes a change step into `objects` as the cluster would show it; a probe step is the
    /// caller's to play.
    pub fn write(&mut self, step: &Step, objects: &ObjectsDir) -> Result<()> {
        match step {
            Step::Apply(policy) => {
                let meta = &policy.0.metadata;
                let yaml = serde_yaml::to_string(&policy.0).context("encoding a policy")?;
                objects.write(
                    &policy_file(meta.namespace.as_deref(), meta.name.as_deref()),
                    &yaml,
                );
            }
            Step::Delete(namespace, name) => {
                let path = objects.0.join(policy_file(Some(namespace), Some(name)));
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
            Step::NamespaceLabels(namespace, added) => {
                let labels = self
                    .namespace_labels
                    .entry((*namespace).to_owned())
                    .or_default();
                labels.extend(
                    added
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
                objects.write("cluster.yaml", &self.cluster_yaml());
            }
            Step::PodLabels(namespace, pod, added) => {
                let labels = self
                    .pod_labels
                    .entry(format!("{namespace}/{pod}"))
                    .or_default();
                labels.extend(
                    added
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
                );
                objects.write("cluster.yaml", &self.cluster_yaml());
            }
            Step::Probe(..) => {}
        }
        Ok(())
    }

    /// Back to the cluster every case starts from: no policies, the labels as built.
    pub fn reset(&mut self, objects: &ObjectsDir) -> Result<()> {
        for entry in std::fs::read_dir(&objects.0).context("listing the objects")? {
            let path = entry.context("listing the objects")?.path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("");
            if name.starts_with("policy-") {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        for (namespace, labels) in &mut self.namespace_labels {
            *labels = BTreeMap::from([("ns".to_owned(), namespace.clone())]);
        }
        for (name, labels) in &mut self.pod_labels {
            let pod = name.split_once('/').map(|(_, pod)| pod).unwrap_or_default();
            *labels = BTreeMap::from([("pod".to_owned(), pod.to_owned())]);
        }
        objects.write("cluster.yaml", &self.cluster_yaml());
        Ok(())
    }

    /// Real probes of every ordered pair of distinct pods, all at once, over IPv4.
    pub fn probe_all(&self, port: u16, protocol: Protocol) -> Observed {
        std::thread::scope(|scope| {
            let probes: Vec<_> = self
                .pairs()
                .map(|(from, to)| {
                    let netns = &self.node.pods[self.index[&from]].netns;
                    let dst = self.address(&to);
                    let probe = scope.spawn(move || match protocol {
                        Protocol::Udp => netns.udp_probe_within(dst, port, PROBE_TIMEOUT),
                        _ => netns.tcp_probe_within(dst, port, PROBE_TIMEOUT),
                    });
                    ((from, to), probe)
                })
                .collect();
            probes
                .into_iter()
                .map(|(pair, probe)| (pair, probe.join().unwrap_or(false)))
                .collect()
        })
    }

    /// Probes until what the pods see is `reach` or `timeout` passes; returns the last
    /// observation and whether it matched.
    pub fn await_reach(
        &self,
        port: u16,
        protocol: Protocol,
        reach: &Reach,
        timeout: Duration,
    ) -> (Observed, bool) {
        let start = Instant::now();
        loop {
            let observed = self.probe_all(port, protocol);
            let matched = observed
                .iter()
                .all(|(pair, allowed)| reach.0.get(pair) == Some(allowed));
            if matched || start.elapsed() > timeout {
                return (observed, matched);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn address(&self, pod: &str) -> IpAddr {
        let (namespace, name) = pod.split_once('/').unwrap_or_default();
        ip_v4(namespace, name)
    }

    fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.index.keys().flat_map(move |from| {
            self.index
                .keys()
                .filter(move |to| *to != from)
                .map(move |to| (from.clone(), to.clone()))
        })
    }
}

fn policy_file(namespace: Option<&str>, name: Option<&str>) -> String {
    format!(
        "policy-{}-{}.yaml",
        namespace.unwrap_or_default(),
        name.unwrap_or_default()
    )
}

/// Every pair whose observed verdict is not the expected one, one per line.
pub fn mismatches(observed: &Observed, reach: &Reach) -> String {
    let mut out = String::new();
    for ((from, to), allowed) in observed {
        let expected = reach.0.get(&(from.clone(), to.clone()));
        if expected != Some(allowed) {
            let _ = writeln!(
                out,
                "  {from} -> {to}: expected {expected:?}, saw {allowed}"
            );
        }
    }
    out
}
