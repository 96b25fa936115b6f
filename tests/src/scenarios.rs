//! The four scenarios of the ACK network policy guide (`shared/seeds/`), played against a real
//! agent on a simulated node with the guide's own policies, and checked by real probes.
//!
//! 1. Label-gated access to nginx (`access-nginx`, `podSelector` on `access=true`).
//! 2. An internet-facing load balancer (externalTrafficPolicy Local): clients by source CIDR,
//!    including the SLB health-check range 100.64.0.0/10.
//! 3. A pod allowed out only to fixed addresses, plus DNS on UDP 53 (`busybox-policy`).
//! 4. A namespace cut off from the internet except pods labelled `public-network=true`
//!    (`deny-public-net`, `allow-public-network-for-labels`).
//!
//! Addresses follow `handbook/test-network.md`: "the internet" and on-premises clients are
//! documentation ranges inside the `ext` namespace; nothing leaves the test namespaces.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::netns::{Netns, Server, SimulatedNode};

pub const NODE: &str = "node-1";
pub const LOCAL_PODS: &str = "10.244.1.0/24";

/// A pod of the world: namespace, name, labels, address, and whether it runs on this node.
pub struct PodDef {
    pub namespace: &'static str,
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub ip: &'static str,
    pub local: bool,
}

pub const PODS: &[PodDef] = &[
    PodDef {
        namespace: "default",
        name: "nginx",
        labels: &[("run", "nginx")],
        ip: "10.244.1.10",
        local: true,
    },
    PodDef {
        namespace: "default",
        name: "busybox",
        labels: &[("run", "busybox")],
        ip: "10.244.1.11",
        local: true,
    },
    PodDef {
        namespace: "default",
        name: "busybox-access",
        labels: &[("access", "true")],
        ip: "10.244.1.12",
        local: true,
    },
    PodDef {
        namespace: "kube-system",
        name: "coredns",
        labels: &[("k8s-app", "kube-dns")],
        ip: "10.244.1.20",
        local: true,
    },
    PodDef {
        namespace: "test-np",
        name: "busybox-intranet",
        labels: &[("run", "busybox-intranet")],
        ip: "10.244.1.30",
        local: true,
    },
    PodDef {
        namespace: "test-np",
        name: "busybox-internet",
        labels: &[("public-network", "true")],
        ip: "10.244.1.31",
        local: true,
    },
    // A pod on another node (in `ext`): a peer only.
    PodDef {
        namespace: "kube-system",
        name: "metrics-server",
        labels: &[("k8s-app", "metrics-server")],
        ip: "10.244.2.10",
        local: false,
    },
];

/// Hosts of "the internet" and on-premises clients, all in `ext`.
pub const REGISTRY: &str = "198.51.100.7";
pub const OTHER_SITE: &str = "203.0.113.1";
pub const ON_PREM_CLIENT: &str = "203.0.113.10";
pub const OTHER_CLIENT: &str = "198.51.100.20";
pub const SLB_HEALTH_CHECK: &str = "100.64.0.5";
/// Services (kube-proxy stand-in: iptables DNAT in the node).
pub const NGINX_SERVICE: &str = "10.96.0.10";
pub const DNS_SERVICE: &str = "10.96.0.53";
/// The load balancer's address, delivered to the node (externalTrafficPolicy Local keeps the
/// client's source address).
pub const NGINX_LB: &str = "192.0.2.100";

/// Who sends a probe.
#[derive(Clone, Copy, Debug)]
pub enum From {
    Pod(&'static str),
    /// A host in `ext`, sending from this source address.
    Outside(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One reachability check.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub from: From,
    pub to: &'static str,
    pub port: u16,
    pub proto: Proto,
    /// What the row says in the table.
    pub label: &'static str,
}

/// One step: files to write (or delete, with `None`) in the objects directory, then the
/// expected outcome of each probe.
pub struct Step {
    pub title: &'static str,
    pub files: Vec<(&'static str, Option<String>)>,
    pub expect: Vec<(Probe, bool)>,
}

pub struct Scenario {
    pub title: &'static str,
    pub steps: Vec<Step>,
}

const fn tcp(from: From, to: &'static str, port: u16, label: &'static str) -> Probe {
    Probe {
        from,
        to,
        port,
        proto: Proto::Tcp,
        label,
    }
}

const fn udp(from: From, to: &'static str, port: u16, label: &'static str) -> Probe {
    Probe {
        from,
        to,
        port,
        proto: Proto::Udp,
        label,
    }
}

const BUSYBOX_TO_NGINX: Probe = tcp(
    From::Pod("busybox"),
    NGINX_SERVICE,
    80,
    "busybox -> nginx Service :80",
);
const ACCESS_TO_NGINX: Probe = tcp(
    From::Pod("busybox-access"),
    NGINX_SERVICE,
    80,
    "busybox (access=true) -> nginx Service :80",
);
const CLIENT_TO_LB: Probe = tcp(
    From::Outside(ON_PREM_CLIENT),
    NGINX_LB,
    80,
    "on-prem client -> SLB :80",
);
const HEALTH_TO_LB: Probe = tcp(
    From::Outside(SLB_HEALTH_CHECK),
    NGINX_LB,
    80,
    "SLB health check -> SLB :80",
);
const OTHER_TO_LB: Probe = tcp(
    From::Outside(OTHER_CLIENT),
    NGINX_LB,
    80,
    "other internet client -> SLB :80",
);
const BUSYBOX_TO_REGISTRY: Probe = tcp(
    From::Pod("busybox"),
    REGISTRY,
    443,
    "busybox -> registry :443",
);
const BUSYBOX_TO_OTHER: Probe = tcp(
    From::Pod("busybox"),
    OTHER_SITE,
    443,
    "busybox -> other site :443",
);
const BUSYBOX_DNS: Probe = udp(
    From::Pod("busybox"),
    DNS_SERVICE,
    53,
    "busybox -> kube-dns Service udp/53",
);
const INTRANET_OUT: Probe = tcp(
    From::Pod("busybox-intranet"),
    REGISTRY,
    443,
    "test-np busybox-intranet -> internet :443",
);
const INTRANET_IN: Probe = tcp(
    From::Pod("busybox-intranet"),
    "10.244.2.10",
    80,
    "test-np busybox-intranet -> remote pod :80",
);
const LABELLED_OUT: Probe = tcp(
    From::Pod("busybox-internet"),
    REGISTRY,
    443,
    "test-np busybox-internet (labelled) -> internet :443",
);

/// The four scenarios, in the guide's order; each builds on the policies of the one before.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            title: "Scenario 1: allow only applications with specific labels to access a Service",
            steps: vec![
                Step {
                    title: "no policy: every pod reaches nginx",
                    files: vec![],
                    expect: vec![(BUSYBOX_TO_NGINX, true), (ACCESS_TO_NGINX, true)],
                },
                Step {
                    title: "kubectl apply -f policy.yaml (access-nginx: from pods labelled access=true)",
                    files: vec![("policy.yaml", Some(ACCESS_NGINX.to_owned()))],
                    expect: vec![(BUSYBOX_TO_NGINX, false), (ACCESS_TO_NGINX, true)],
                },
            ],
        },
        Scenario {
            title: "Scenario 2: allow only specific source addresses through an Internet-facing SLB",
            steps: vec![
                Step {
                    title: "the SLB is reachable only by labelled pods so far",
                    files: vec![],
                    expect: vec![
                        (CLIENT_TO_LB, false),
                        (HEALTH_TO_LB, false),
                        (ACCESS_TO_NGINX, true),
                    ],
                },
                Step {
                    title: "access-nginx also allows 100.64.0.0/10 (SLB health checks) and the on-prem /24",
                    files: vec![("policy.yaml", Some(access_nginx_with_cidrs()))],
                    expect: vec![
                        (CLIENT_TO_LB, true),
                        (HEALTH_TO_LB, true),
                        (OTHER_TO_LB, false),
                        (ACCESS_TO_NGINX, true),
                        (BUSYBOX_TO_NGINX, false),
                    ],
                },
            ],
        },
        Scenario {
            title: "Scenario 3: allow a pod to access only specific addresses (and DNS)",
            steps: vec![
                Step {
                    title: "no egress policy: busybox reaches any site",
                    files: vec![],
                    expect: vec![
                        (BUSYBOX_TO_REGISTRY, true),
                        (BUSYBOX_TO_OTHER, true),
                        (BUSYBOX_DNS, true),
                    ],
                },
                Step {
                    title: "kubectl apply -f busybox-policy.yaml (the registry's address, and UDP 53 anywhere)",
                    files: vec![("busybox-policy.yaml", Some(busybox_policy()))],
                    expect: vec![
                        (BUSYBOX_TO_REGISTRY, true),
                        (BUSYBOX_TO_OTHER, false),
                        (BUSYBOX_DNS, true),
                        (BUSYBOX_TO_NGINX, false),
                    ],
                },
            ],
        },
        Scenario {
            title: "Scenario 4: control pod access to the Internet in a namespace",
            steps: vec![
                Step {
                    title: "no policy in test-np: both pods reach the internet",
                    files: vec![],
                    expect: vec![
                        (INTRANET_OUT, true),
                        (LABELLED_OUT, true),
                        (INTRANET_IN, true),
                    ],
                },
                Step {
                    title: "kubectl apply -f default-deny.yaml (deny-public-net: private ranges only)",
                    files: vec![("default-deny.yaml", Some(DENY_PUBLIC_NET.to_owned()))],
                    expect: vec![
                        (INTRANET_OUT, false),
                        (LABELLED_OUT, false),
                        (INTRANET_IN, true),
                    ],
                },
                Step {
                    title: "kubectl apply -f allow-specify-label.yaml (public-network=true may go out)",
                    files: vec![(
                        "allow-specify-label.yaml",
                        Some(ALLOW_PUBLIC_FOR_LABELS.to_owned()),
                    )],
                    expect: vec![
                        (INTRANET_OUT, false),
                        (LABELLED_OUT, true),
                        (INTRANET_IN, true),
                    ],
                },
                Step {
                    title: "every policy deleted: access is restored",
                    files: vec![
                        ("policy.yaml", None),
                        ("busybox-policy.yaml", None),
                        ("default-deny.yaml", None),
                        ("allow-specify-label.yaml", None),
                    ],
                    expect: vec![
                        (BUSYBOX_TO_NGINX, true),
                        (OTHER_TO_LB, true),
                        (BUSYBOX_TO_OTHER, true),
                        (INTRANET_OUT, true),
                    ],
                },
            ],
        },
    ]
}

// The guide's policies, verbatim but for addresses (documentation ranges in the simulation).

pub const ACCESS_NGINX: &str = r#"kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: access-nginx
  namespace: default
spec:
  podSelector:
    matchLabels:
      run: nginx
  ingress:
  - from:
    - podSelector:
        matchLabels:
          access: "true"
"#;

pub fn access_nginx_with_cidrs() -> String {
    format!(
        r#"{ACCESS_NGINX}    - ipBlock:
        cidr: 100.64.0.0/10
    - ipBlock:
        cidr: {ON_PREM_CLIENT}/24 # the on-premises clients' /24
"#
    )
}

pub fn busybox_policy() -> String {
    format!(
        r#"kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: busybox-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      run: busybox
  egress:
  - to:
    - ipBlock:
        cidr: {REGISTRY}/32
  - to:
    - ipBlock:
        cidr: 0.0.0.0/0
    - namespaceSelector: {{}}
    ports:
    - protocol: UDP
      port: 53
"#
    )
}

pub const DENY_PUBLIC_NET: &str = r#"kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  namespace: test-np
  name: deny-public-net
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 0.0.0.0/0
  egress:
  - to:
    - ipBlock:
        cidr: 192.168.0.0/16
    - ipBlock:
        cidr: 172.16.0.0/12
    - ipBlock:
        cidr: 10.0.0.0/8
"#;

pub const ALLOW_PUBLIC_FOR_LABELS: &str = r#"kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: allow-public-network-for-labels
  namespace: test-np
spec:
  podSelector:
    matchLabels:
      public-network: "true"
  ingress:
  - from:
    - ipBlock:
        cidr: 0.0.0.0/0
  egress:
  - to:
    - ipBlock:
        cidr: 0.0.0.0/0
    - namespaceSelector:
        matchLabels:
          ns: kube-system
"#;

/// The cluster objects of the world (namespaces and pods), as one YAML file.
pub fn cluster_yaml() -> String {
    let mut out = String::new();
    for (namespace, labels) in [
        ("default", ""),
        ("kube-system", "\n  labels:\n    ns: kube-system"),
        ("test-np", ""),
    ] {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}{labels}\n"
        );
    }
    for pod in PODS {
        let labels: String = pod
            .labels
            .iter()
            .map(|(key, value)| format!("\n    {key}: \"{value}\""))
            .collect();
        let node = if pod.local { NODE } else { "node-2" };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:{labels}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
            name = pod.name,
            namespace = pod.namespace,
            ip = pod.ip,
        );
    }
    out
}

/// The simulated node with every pod, Service and outside host of the world, and servers.
pub struct World {
    pub node: SimulatedNode,
    _servers: Vec<Server>,
}

impl World {
    pub fn build() -> Self {
        let outside: Vec<&str> = PODS
            .iter()
            .filter(|pod| !pod.local)
            .map(|pod| pod.ip)
            .chain([
                REGISTRY,
                OTHER_SITE,
                ON_PREM_CLIENT,
                OTHER_CLIENT,
                SLB_HEALTH_CHECK,
            ])
            .collect();
        let mut node = SimulatedNode::new(LOCAL_PODS, &outside);
        for pod in PODS.iter().filter(|pod| pod.local) {
            node.add_pod(pod.ip);
        }
        node.add_service(NGINX_SERVICE, 80, pod_ip("nginx"));
        node.add_service(DNS_SERVICE, 53, pod_ip("coredns"));
        // The SLB address is the node's: traffic from outside is DNATed to nginx.
        node.node
            .ip(&["addr", "add", &format!("{NGINX_LB}/32"), "dev", "lo"]);
        node.add_service(NGINX_LB, 80, pod_ip("nginx"));
        let mut servers = Vec::new();
        for (index, pod) in PODS.iter().filter(|pod| pod.local).enumerate() {
            let port = if pod.name == "coredns" { 53 } else { 80 };
            servers.push(node.pods[index].netns.serve(port, "hello"));
        }
        servers.push(node.ext.serve(80, "hello"));
        servers.push(node.ext.serve(443, "hello"));
        Self {
            node,
            _servers: servers,
        }
    }

    fn pod_netns(&self, name: &str) -> &Netns {
        let index = PODS
            .iter()
            .filter(|pod| pod.local)
            .position(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("no local pod {name}"));
        &self.node.pods[index].netns
    }

    /// Sends the probe for real.
    pub fn probe(&self, probe: &Probe) -> bool {
        let to: IpAddr = probe.to.parse().expect("probe address");
        match probe.from {
            From::Pod(name) => {
                let netns = self.pod_netns(name);
                match probe.proto {
                    Proto::Tcp => netns.tcp_probe(to, probe.port),
                    Proto::Udp => netns.udp_probe(to, probe.port),
                }
            }
            From::Outside(source) => {
                let source: IpAddr = source.parse().expect("source address");
                self.node.ext.tcp_probe_from(source, to, probe.port)
            }
        }
    }
}

fn pod_ip(name: &str) -> &'static str {
    PODS.iter()
        .find(|pod| pod.name == name)
        .map(|pod| pod.ip)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// The outcome of one step: each probe with what was expected and what happened, and how
/// long after the files were written the results matched.
pub struct StepResult {
    pub rows: Vec<(Probe, bool, bool)>,
    pub converged_after: Option<Duration>,
}

impl StepResult {
    pub fn ok(&self) -> bool {
        self.rows
            .iter()
            .all(|(_, expected, actual)| expected == actual)
    }

    /// The reachability table.
    pub fn table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(probe, ..)| probe.label.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "  {:width$}  expected  actual", "probe");
        for (probe, expected, actual) in &self.rows {
            let mark = |reachable: bool| if reachable { "allowed" } else { "denied" };
            let flag = if expected == actual {
                ""
            } else {
                "   <-- MISMATCH"
            };
            let _ = writeln!(
                out,
                "  {:width$}  {:8}  {}{flag}",
                probe.label,
                mark(*expected),
                mark(*actual)
            );
        }
        out
    }
}

/// Writes a step's files and probes until the expectations hold or `timeout` passes.
pub fn play_step(
    world: &World,
    objects_dir: &Path,
    step: &Step,
    timeout: Duration,
) -> Result<StepResult> {
    write_step_files(objects_dir, step)?;
    Ok(await_step(world, step, Instant::now(), timeout))
}

/// Writes (or deletes) a step's files in the objects directory.
pub fn write_step_files(objects_dir: &Path, step: &Step) -> Result<()> {
    for (name, content) in &step.files {
        let path: PathBuf = objects_dir.join(name);
        match content {
            Some(content) => write_atomically(&path, content)?,
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("removing {}", path.display()));
                }
            },
        }
    }
    Ok(())
}

/// Probes until a step's expectations hold or `timeout` passes since `written` (when its
/// objects were changed).
pub fn await_step(world: &World, step: &Step, written: Instant, timeout: Duration) -> StepResult {
    loop {
        let rows: Vec<(Probe, bool, bool)> = step
            .expect
            .iter()
            .map(|(probe, expected)| (*probe, *expected, world.probe(probe)))
            .collect();
        let result = StepResult {
            converged_after: None,
            rows,
        };
        if result.ok() {
            return StepResult {
                converged_after: Some(written.elapsed()),
                ..result
            };
        }
        if written.elapsed() > timeout {
            return result;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces a file in one rename, so the agent never reads half of it.
pub fn write_atomically(path: &Path, content: &str) -> Result<()> {
    let temporary = path.with_extension("tmp-write");
    std::fs::write(&temporary, content)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}
