//! The agent as a DaemonSet on a real node (`cargo xtask cluster up`): the seed guide typed as
//! its users type it, upstream's NetworkPolicy e2e, the disable switch through `eni-config`,
//! upgrades without a gap and the uninstall path.
//!
//! These need the running cluster, so they are ignored by a plain `cargo test`; `cargo xtask
//! test` starts the cluster, runs them with `--ignored` and tears it down. By hand:
//! `cargo xtask cluster up`, then
//! `cargo test -p netpol-tests --test real_cluster -- --ignored --test-threads=1`.

use netpol_tests::{
    real_cluster::{Backend, Cleanup, NODE_IP, RealCluster, eventually},
    scenarios::{
        ACCESS_NGINX, ALLOW_PUBLIC_FOR_LABELS, DENY_PUBLIC_NET, access_nginx_with_cidrs,
        busybox_policy,
    },
};

const BUSYBOX: &str = "busybox";
const NGINX: &str = "nginx";
const AGNHOST: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
const HTTP_GET: &str = "GET / HTTP/1.0\\r\\n\\r\\n";

/// Hosts of "the internet" (the cluster's ext namespace).
/// The one address `busybox_policy` allows.
const REGISTRY: &str = netpol_tests::scenarios::REGISTRY;
const OTHER_SITE: &str = "203.0.113.1";
const RESOLVER: &str = "198.51.100.53";
/// Inside the on-premises /24 that `access_nginx_with_cidrs` allows.
const ON_PREM_CLIENT: &str = netpol_tests::scenarios::ON_PREM_CLIENT;
const OTHER_CLIENT: &str = "198.51.100.20";
const SLB_HEALTH_CHECK: &str = "100.64.0.5";
const NODE_PORT: u16 = 30080;

fn cluster() -> RealCluster {
    RealCluster::connect().unwrap_or_else(|error| panic!("{error:#}"))
}

/// One expectation, met within the settle time (the change before it must reach the node)
/// and then confirmed once more.
fn expect(what: &str, want: bool, mut probe: impl FnMut() -> bool, cluster: &RealCluster) {
    let met = eventually(|| probe() == want) && probe() == want;
    assert!(
        met,
        "{what}: expected {}, got {}\nagent log:\n{}",
        if want { "allowed" } else { "denied" },
        if want { "denied" } else { "allowed" },
        cluster.agent_logs()
    );
    eprintln!("ok: {what}: {}", if want { "allowed" } else { "denied" });
}

/// The seed guide's four scenarios, with `kubectl` as the guide has its users type it. The
/// clients are started first and probed with `kubectl exec`, as the guide's users type `wget`
/// at a shell prompt (a pod dialing in its very first second is the first-packet issue's
/// subject). Busybox's `nc` stands in for `wget` (Debian's crashes) and the Service's ClusterIP
/// for the name `nginx` (this cluster has no DNS service).
fn play_seed_guide(backend: Backend) {
    let cluster = cluster();
    cluster
        .deploy_agent(backend)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(|| {
        let cluster = RealCluster::connect().expect("cluster");
        cluster.delete(
            "default",
            &[
                "networkpolicy/access-nginx",
                "networkpolicy/busybox-policy",
                "pod/nginx",
                "pod/busybox",
                "pod/busybox-access",
                "service/nginx",
                "service/nginx-slb",
            ],
        );
        // Namespaces are cluster-wide: waited for, so that the next run can create it again.
        cluster.delete("default", &["namespace/test-np"]);
    });
    let must = |result: anyhow::Result<String>| result.unwrap_or_else(|error| panic!("{error:#}"));

    // Scenario 1: only pods labelled access=true reach nginx.
    must(cluster.run_pod("default", NGINX, NGINX, Some("run=nginx"), &[]));
    must(cluster.kubectl(&["expose", "pod", "nginx", "--port=80"]));
    let nginx = must(cluster.cluster_ip("default", "nginx"));
    must(cluster.run_pod(
        "default",
        "busybox",
        BUSYBOX,
        Some("run=busybox"),
        &["sleep", "3600"],
    ));
    must(cluster.run_pod(
        "default",
        "busybox-access",
        BUSYBOX,
        Some("access=true"),
        &["sleep", "3600"],
    ));
    let to_nginx = |pod: &'static str| {
        let cluster = &cluster;
        let nginx = nginx.clone();
        move || cluster.pod_tcp_probe("default", pod, &nginx, 80, HTTP_GET, "nginx")
    };
    expect(
        "busybox -> nginx (no policy)",
        true,
        to_nginx("busybox"),
        &cluster,
    );
    expect(
        "busybox access=true -> nginx (no policy)",
        true,
        to_nginx("busybox-access"),
        &cluster,
    );
    must(cluster.apply(ACCESS_NGINX).map(|()| String::new()));
    expect(
        "busybox -> nginx (access-nginx)",
        false,
        to_nginx("busybox"),
        &cluster,
    );
    expect(
        "busybox access=true -> nginx (access-nginx)",
        true,
        to_nginx("busybox-access"),
        &cluster,
    );

    // Scenario 2: an external entry (NodePort, externalTrafficPolicy Local: the client's
    // address is kept) open only to the SLB health checks and the on-premises /24.
    must(cluster.apply(&nginx_slb()).map(|()| String::new()));
    let outside = |client: &'static str| {
        let cluster = &cluster;
        move || cluster.outside_http_probe(client, NODE_IP, NODE_PORT)
    };
    expect(
        "on-prem client -> NodePort (labels only)",
        false,
        outside(ON_PREM_CLIENT),
        &cluster,
    );
    must(
        cluster
            .apply(&access_nginx_with_cidrs())
            .map(|()| String::new()),
    );
    expect(
        "on-prem client -> NodePort (ipBlock)",
        true,
        outside(ON_PREM_CLIENT),
        &cluster,
    );
    expect(
        "SLB health check -> NodePort (ipBlock)",
        true,
        outside(SLB_HEALTH_CHECK),
        &cluster,
    );
    expect(
        "other client -> NodePort",
        false,
        outside(OTHER_CLIENT),
        &cluster,
    );
    expect(
        "busybox access=true -> nginx",
        true,
        to_nginx("busybox-access"),
        &cluster,
    );
    expect("busybox -> nginx", false, to_nginx("busybox"), &cluster);

    // Scenario 3: busybox may reach one address, and DNS on UDP 53.
    let _registry = must_server(cluster.outside_server(REGISTRY, 443, "registry"));
    let _other = must_server(cluster.outside_server(OTHER_SITE, 443, "site"));
    let _resolver = cluster
        .outside_resolver(RESOLVER)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let site = |pod: &'static str, namespace: &'static str, ip: &'static str| {
        let cluster = &cluster;
        move || cluster.pod_tcp_probe(namespace, pod, ip, 443, "", "")
    };
    let dns = || cluster.pod_dns_probe("default", "busybox", RESOLVER);
    expect(
        "busybox -> registry (no egress policy)",
        true,
        site("busybox", "default", REGISTRY),
        &cluster,
    );
    expect(
        "busybox -> other site (no egress policy)",
        true,
        site("busybox", "default", OTHER_SITE),
        &cluster,
    );
    expect(
        "busybox -> DNS udp/53 (no egress policy)",
        true,
        dns,
        &cluster,
    );
    must(cluster.apply(&busybox_policy()).map(|()| String::new()));
    expect(
        "busybox -> registry (busybox-policy)",
        true,
        site("busybox", "default", REGISTRY),
        &cluster,
    );
    expect(
        "busybox -> other site (busybox-policy)",
        false,
        site("busybox", "default", OTHER_SITE),
        &cluster,
    );
    expect(
        "busybox -> DNS udp/53 (busybox-policy)",
        true,
        dns,
        &cluster,
    );

    // Scenario 4: test-np cut off from the internet except pods labelled public-network=true.
    must(cluster.kubectl(&["create", "ns", "test-np"]));
    must(cluster.kubectl(&[
        "label",
        "--overwrite",
        "ns",
        "kube-system",
        "ns=kube-system",
    ]));
    must(cluster.run_pod(
        "test-np",
        "busybox-intranet",
        BUSYBOX,
        None,
        &["sleep", "3600"],
    ));
    must(cluster.run_pod(
        "test-np",
        "busybox-internet",
        BUSYBOX,
        Some("public-network=true"),
        &["sleep", "3600"],
    ));
    let intranet_nginx = {
        let cluster = &cluster;
        let nginx = nginx.clone();
        move || cluster.pod_tcp_probe("test-np", "busybox-intranet", &nginx, 80, HTTP_GET, "nginx")
    };
    expect(
        "test-np intranet -> internet (no policy)",
        true,
        site("busybox-intranet", "test-np", REGISTRY),
        &cluster,
    );
    expect(
        "test-np internet -> internet (no policy)",
        true,
        site("busybox-internet", "test-np", REGISTRY),
        &cluster,
    );
    must(cluster.kubectl(&["delete", "-n", "default", "networkpolicy", "access-nginx"]));
    must(cluster.kubectl_stdin(&["apply", "-n", "test-np", "-f", "-"], DENY_PUBLIC_NET));
    expect(
        "test-np intranet -> internet (deny-public-net)",
        false,
        site("busybox-intranet", "test-np", REGISTRY),
        &cluster,
    );
    expect(
        "test-np internet -> internet (deny-public-net)",
        false,
        site("busybox-internet", "test-np", REGISTRY),
        &cluster,
    );
    expect(
        "test-np intranet -> nginx, a private address (deny-public-net)",
        true,
        intranet_nginx.clone(),
        &cluster,
    );
    must(cluster.kubectl_stdin(
        &["apply", "-n", "test-np", "-f", "-"],
        ALLOW_PUBLIC_FOR_LABELS,
    ));
    expect(
        "test-np intranet -> internet (allow-public-network-for-labels)",
        false,
        site("busybox-intranet", "test-np", REGISTRY),
        &cluster,
    );
    expect(
        "test-np internet -> internet (allow-public-network-for-labels)",
        true,
        site("busybox-internet", "test-np", REGISTRY),
        &cluster,
    );
    must(cluster.kubectl(&["delete", "-n", "test-np", "networkpolicy", "--all"]));
    expect(
        "test-np intranet -> internet (policies deleted)",
        true,
        site("busybox-intranet", "test-np", REGISTRY),
        &cluster,
    );
}

fn must_server(result: anyhow::Result<netpol_tests::netns::Server>) -> netpol_tests::netns::Server {
    result.unwrap_or_else(|error| panic!("{error:#}"))
}

/// The guide's internet-facing Service, as a NodePort (this cluster has no cloud load
/// balancer) with the guide's externalTrafficPolicy.
fn nginx_slb() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: nginx-slb
  namespace: default
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector:
    run: nginx
  ports:
  - port: 80
    targetPort: 80
    nodePort: {NODE_PORT}
"#
    )
}

#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn seed_guide_scenarios_with_kubectl_on_ebpf() {
    play_seed_guide(Backend::Ebpf);
}

#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn seed_guide_scenarios_with_kubectl_on_iptables() {
    play_seed_guide(Backend::Iptables);
}

/// Terway's switch, as ACK users flip it: `disable_network_policy` in the real
/// `kube-system/eni-config` ConfigMap turns enforcement off and back on.
#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn disable_switch_through_eni_config() {
    let cluster = cluster();
    cluster
        .deploy_agent(Backend::Ebpf)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(|| {
        let cluster = RealCluster::connect().expect("cluster");
        cluster.delete(
            "default",
            &[
                "pod/switch-server",
                "pod/switch-client",
                "networkpolicy/switch-deny",
            ],
        );
        cluster.delete("kube-system", &["configmap/eni-config"]);
    });
    let must = |result: anyhow::Result<String>| result.unwrap_or_else(|error| panic!("{error:#}"));
    let server = must(cluster.run_pod(
        "default",
        "switch-server",
        AGNHOST,
        Some("app=switch-server"),
        &["netexec", "--http-port=8080"],
    ));
    must(cluster.run_pod(
        "default",
        "switch-client",
        BUSYBOX,
        None,
        &["sleep", "3600"],
    ));
    must(
        cluster
            .apply(
                r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: switch-deny
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: switch-server
  policyTypes: [Ingress]
"#,
            )
            .map(|()| String::new()),
    );
    let probe = || {
        cluster.pod_tcp_probe(
            "default",
            "switch-client",
            &server,
            8080,
            "GET /hostname HTTP/1.0\\r\\n\\r\\n",
            "switch-server",
        )
    };
    expect("client -> denied server", false, probe, &cluster);
    let eni_config = |disable: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: eni-config\n  namespace: kube-system\ndata:\n  disable_network_policy: \"{disable}\"\n"
        )
    };
    must(cluster.apply(&eni_config("true")).map(|()| String::new()));
    expect(
        "client -> server, network policy disabled in eni-config",
        true,
        probe,
        &cluster,
    );
    must(cluster.apply(&eni_config("false")).map(|()| String::new()));
    expect(
        "client -> server, network policy enabled again",
        false,
        probe,
        &cluster,
    );
}

/// Uninstall as the README says: delete the agent's DaemonSet (enforcement stays on purpose),
/// then the cleanup DaemonSet; afterwards no program, pin, chain or set of ours is left.
#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn uninstall_leaves_the_node_clean() {
    let cluster = cluster();
    let must = |result: anyhow::Result<String>| result.unwrap_or_else(|error| panic!("{error:#}"));
    // Both backends leave state on the node: iptables chains and sets from one run, programs
    // and pins from the other.
    cluster
        .deploy_agent(Backend::Iptables)
        .unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .deploy_agent(Backend::Ebpf)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(|| {
        let cluster = RealCluster::connect().expect("cluster");
        let _ = cluster.kubectl(&[
            "delete",
            "--ignore-not-found",
            "-k",
            &netpol_tests::real_cluster::overlay("netpol-cluster-uninstall"),
        ]);
        cluster.delete("default", &["pod/uninstall-probe"]);
    });
    // A pod, so that the agent has programs on its veth.
    must(cluster.run_pod(
        "default",
        "uninstall-probe",
        BUSYBOX,
        None,
        &["sleep", "3600"],
    ));
    let state = netpol_tests::real_cluster::node_state();
    assert!(
        !state.is_clean(),
        "the agent left nothing to clean up, so the test could not fail: {state:?}"
    );

    must(cluster.kubectl(&[
        "delete",
        "-k",
        &netpol_tests::real_cluster::overlay("netpol-cluster"),
    ]));
    // Enforcement outlives the agent on purpose.
    assert!(
        !netpol_tests::real_cluster::node_state().is_clean(),
        "deleting the DaemonSet removed enforcement"
    );
    must(cluster.kubectl(&[
        "apply",
        "-k",
        &netpol_tests::real_cluster::overlay("netpol-cluster-uninstall"),
    ]));
    must(cluster.kubectl(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "ds/netpol-agent-cleanup",
        "--timeout=120s",
    ]));
    let state = netpol_tests::real_cluster::node_state();
    assert!(state.is_clean(), "left after the uninstall: {state:?}");
}

/// Which upstream cases must pass (`tests/e2e/network-policy-cases.txt`).
fn e2e_requirements() -> Vec<(String, String)> {
    let path =
        netpol_tests::real_cluster::workspace_root().join("tests/e2e/network-policy-cases.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (requirement, name) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("{}: no tab in {line:?}", path.display()));
            (requirement.to_owned(), name.to_owned())
        })
        .collect()
}

/// Upstream's NetworkPolicy e2e, unchanged, with the agent as the DaemonSet on `backend`.
fn upstream_e2e(backend: Backend) {
    use netpol_tests::real_cluster::{CaseOutcome, run_network_policy_e2e};
    let cluster = cluster();
    cluster
        .deploy_agent(backend)
        .unwrap_or_else(|error| panic!("{error:#}"));
    // Parallel as upstream runs it; 8 ginkgo nodes take 7.5 min here, 4 take 11, 12 take 7
    // (NETPOL_E2E_NODES overrides).
    let nodes = std::env::var("NETPOL_E2E_NODES")
        .ok()
        .and_then(|nodes| nodes.parse().ok())
        .unwrap_or(8);
    let cases = run_network_policy_e2e(nodes).unwrap_or_else(|error| panic!("{error:#}"));
    let requirements = e2e_requirements();
    let mut problems = Vec::new();
    let mut report = String::new();
    // Only the focused cases: ginkgo reports every other case of the suite as skipped.
    let cases: Vec<_> = cases
        .into_iter()
        .filter(|(name, _)| name.contains("NetworkPolicy"))
        .collect();
    for (name, outcome) in &cases {
        let requirement = requirements
            .iter()
            .find(|(_, listed)| listed == name.trim())
            .map(|(requirement, _)| requirement.as_str());
        report.push_str(&format!(
            "{outcome:?}\t{}\t{}\n",
            requirement.unwrap_or("unlisted"),
            name.trim()
        ));
        match (requirement, outcome) {
            (_, CaseOutcome::Skipped) => {}
            (Some("pass"), CaseOutcome::Passed) | (Some("known-failing"), _) => {}
            (Some("pass"), CaseOutcome::Failed) => {
                problems.push(format!("failed: {}", name.trim()))
            }
            (Some(other), _) => {
                problems.push(format!("unknown requirement {other:?}: {}", name.trim()))
            }
            (None, _) => problems.push(format!(
                "not in tests/e2e/network-policy-cases.txt ({outcome:?}): {}",
                name.trim()
            )),
        }
    }
    let count = |wanted: CaseOutcome| {
        cases
            .iter()
            .filter(|(_, outcome)| *outcome == wanted)
            .count()
    };
    eprintln!(
        "upstream NetworkPolicy e2e on {}: {} passed, {} failed, {} skipped\n{report}",
        backend.name(),
        count(CaseOutcome::Passed),
        count(CaseOutcome::Failed),
        count(CaseOutcome::Skipped)
    );
    for (requirement, name) in &requirements {
        if requirement == "pass" && !cases.iter().any(|(case, _)| case.trim() == name) {
            problems.push(format!("required but not run: {name}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nagent log:\n{}",
        problems.join("\n"),
        cluster.agent_logs()
    );
}

#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn upstream_network_policy_e2e_on_ebpf() {
    upstream_e2e(Backend::Ebpf);
}

#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn upstream_network_policy_e2e_on_iptables() {
    upstream_e2e(Backend::Iptables);
}

/// The client loop of the upgrade test: a new connection (one HTTP exchange) every 200 ms,
/// one line per attempt (`ok` or `fail`); with `long_lived`, also one connection kept open
/// for the whole test, echoing a line every 200 ms, that writes `ended` if it is ever cut.
fn client_loop(server: &str, long_lived: bool) -> String {
    let long = if long_lived {
        format!(
            "(while :; do echo tick; sleep 0.2; done | nc {server} 9000 > /tmp/echoes; \
             echo ended > /tmp/long-ended) & "
        )
    } else {
        String::new()
    };
    format!(
        "{long}while :; do if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc -w 2 {server} 8080 \
         2>/dev/null | grep -q HTTP; then echo ok; else echo fail; fi; sleep 0.2; done"
    )
}

/// `(ok, fail)` lines a client logged since line `from`.
fn client_results(cluster: &RealCluster, pod: &str, from: usize) -> (usize, usize, usize) {
    let logs = cluster
        .kubectl(&["-n", "default", "logs", pod])
        .unwrap_or_else(|error| panic!("{error:#}"));
    let lines: Vec<&str> = logs.lines().collect();
    let window = &lines[from.min(lines.len())..];
    let ok = window.iter().filter(|line| **line == "ok").count();
    let fail = window.iter().filter(|line| **line == "fail").count();
    (ok, fail, lines.len())
}

fn echoes(cluster: &RealCluster) -> (usize, bool) {
    let count = cluster
        .kubectl(&[
            "-n",
            "default",
            "exec",
            "upgrade-allowed",
            "--",
            "sh",
            "-c",
            "wc -l < /tmp/echoes",
        ])
        .unwrap_or_default();
    let ended = cluster
        .kubectl(&[
            "-n",
            "default",
            "exec",
            "upgrade-allowed",
            "--",
            "cat",
            "/tmp/long-ended",
        ])
        .is_ok();
    (count.trim().parse().unwrap_or(0), ended)
}

/// Enforcement has no gap while the agent is replaced: a rolling update of the DaemonSet to a
/// new image tag (and back), `kubectl delete pod` of the agent, and a kill -9 of its process
/// on the node, each while an allowed long-lived connection and a stream of new allowed and
/// denied connections run: no denied connection gets through, no allowed one is refused or
/// cut.
#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn agent_replacement_without_a_gap() {
    let cluster = cluster();
    cluster
        .deploy_agent(Backend::Ebpf)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(|| {
        let cluster = RealCluster::connect().expect("cluster");
        cluster.delete(
            "default",
            &[
                "pod/upgrade-server",
                "pod/upgrade-allowed",
                "pod/upgrade-denied",
                "networkpolicy/upgrade-server",
            ],
        );
        cluster.delete("default", &["namespace/during-upgrade"]);
        let _ = cluster.set_agent_image("netpol-agent:latest");
    });
    let must = |result: anyhow::Result<String>| result.unwrap_or_else(|error| panic!("{error:#}"));
    // The same image under a second tag: the rollout replaces every pod, as a new version would.
    netpol_tests::real_cluster::tag_image("netpol-agent:latest", "netpol-agent:upgrade")
        .unwrap_or_else(|error| panic!("{error:#}"));
    must(
        cluster
            .apply(
                r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: upgrade-server
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: upgrade-server
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: allowed
"#,
            )
            .map(|()| String::new()),
    );
    let server = must(cluster.run_pod(
        "default",
        "upgrade-server",
        BUSYBOX,
        Some("app=upgrade-server"),
        &[
            "sh",
            "-c",
            "echo up > /tmp/index.html; httpd -p 8080 -h /tmp; exec nc -ll -p 9000 -e cat",
        ],
    ));
    must(cluster.run_pod(
        "default",
        "upgrade-allowed",
        BUSYBOX,
        Some("role=allowed"),
        &["sh", "-c", &client_loop(&server, true)],
    ));
    must(cluster.run_pod(
        "default",
        "upgrade-denied",
        BUSYBOX,
        None,
        &["sh", "-c", &client_loop(&server, false)],
    ));
    // Settled: the allowed client gets answers and the denied one none, before anything moves.
    assert!(
        eventually(|| {
            let (ok, _, _) = client_results(&cluster, "upgrade-allowed", 0);
            let (_, fail, _) = client_results(&cluster, "upgrade-denied", 0);
            ok >= 3 && fail >= 1
        }),
        "the clients never settled\nagent log:\n{}",
        cluster.agent_logs()
    );
    std::thread::sleep(std::time::Duration::from_secs(3));

    // Pods created while the agent is replaced: closed until the new agent enforces them.
    let created_during =
        netpol_tests::real_cluster::CountingServer::start(&cluster, REGISTRY, 8084)
            .unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .apply(&dialers("during-upgrade", 8084, 0))
        .unwrap_or_else(|error| panic!("{error:#}"));

    let disruptions: [(&str, &dyn Fn()); 4] = [
        ("rolling update to a new image tag", &|| {
            must(cluster.kubectl(&[
                "-n",
                "during-upgrade",
                "scale",
                "deploy/dialer",
                "--replicas=3",
            ]));
            cluster
                .set_agent_image("netpol-agent:upgrade")
                .unwrap_or_else(|error| panic!("{error:#}"));
            cluster
                .wait_agent_rollout()
                .unwrap_or_else(|error| panic!("{error:#}"));
        }),
        ("rolling update back", &|| {
            cluster
                .set_agent_image("netpol-agent:latest")
                .unwrap_or_else(|error| panic!("{error:#}"));
            cluster
                .wait_agent_rollout()
                .unwrap_or_else(|error| panic!("{error:#}"));
        }),
        ("kubectl delete pod of the agent", &|| {
            must(cluster.kubectl(&[
                "-n",
                "kube-system",
                "delete",
                "pod",
                "-l",
                "app=netpol-agent",
            ]));
            cluster
                .wait_agent_rollout()
                .unwrap_or_else(|error| panic!("{error:#}"));
            must(cluster.kubectl(&[
                "-n",
                "kube-system",
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                "app=netpol-agent",
                "--timeout=120s",
            ]));
        }),
        ("kill -9 of the agent's process on the node", &|| {
            netpol_tests::real_cluster::kill_agent_process()
                .unwrap_or_else(|error| panic!("{error:#}"));
            std::thread::sleep(std::time::Duration::from_secs(2));
            must(cluster.kubectl(&[
                "-n",
                "kube-system",
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                "app=netpol-agent",
                "--timeout=120s",
            ]));
        }),
    ];
    for (what, disrupt) in disruptions {
        let (_, _, allowed_from) = client_results(&cluster, "upgrade-allowed", 0);
        let (_, _, denied_from) = client_results(&cluster, "upgrade-denied", 0);
        let (echoes_before, _) = echoes(&cluster);
        disrupt();
        // A few more attempts after the new agent is ready.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let (allowed_ok, allowed_refused, _) =
            client_results(&cluster, "upgrade-allowed", allowed_from);
        let (denied_through, denied_blocked, _) =
            client_results(&cluster, "upgrade-denied", denied_from);
        let (echoes_after, cut) = echoes(&cluster);
        eprintln!(
            "{what}: allowed {allowed_ok} ok / {allowed_refused} refused; denied {denied_blocked} blocked / \
             {denied_through} let through; long-lived connection {} echoes, {}",
            echoes_after.saturating_sub(echoes_before),
            if cut { "CUT" } else { "kept" }
        );
        assert_eq!(denied_through, 0, "{what}: denied connections got through");
        assert_eq!(
            allowed_refused, 0,
            "{what}: allowed connections were refused"
        );
        assert!(!cut, "{what}: the long-lived allowed connection was cut");
        assert!(
            allowed_ok > 0 && denied_blocked > 0,
            "{what}: the clients stopped probing"
        );
        assert!(
            echoes_after > echoes_before,
            "{what}: the long-lived connection stalled"
        );
        assert!(
            netpol_tests::real_cluster::chain_has_plugin(),
            "{what}: the CNI plugin left the node's chain"
        );
    }
    dialers_started(&cluster, "during-upgrade");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let leaked = pod_sources(&created_during);
    eprintln!(
        "pods created during the rolling update: connections through a deny-all egress policy: {leaked:?}"
    );
    assert!(
        leaked.is_empty(),
        "pods created during the upgrade got out: {leaked:?}"
    );
}

/// A namespace whose pods may send nothing (default deny egress), and a Deployment of
/// `replicas` busybox pods dialing `REGISTRY:port` in a loop from their first instant.
fn dialers(namespace: &str, port: u16, replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-egress
  namespace: {namespace}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: dialer
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: dialer}}
  template:
    metadata:
      labels: {{app: dialer}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: dial
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: ["sh", "-c", "while :; do nc -w 1 {REGISTRY} {port} </dev/null && sleep 0.2; done"]
"#
    )
}

fn allow_registry(namespace: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-registry
  namespace: {namespace}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: {REGISTRY}/32
    ports:
    - port: {port}
"#
    )
}

/// Waits until every dialer of `namespace` runs.
fn dialers_started(cluster: &RealCluster, namespace: &str) {
    cluster
        .kubectl(&[
            "-n",
            namespace,
            "rollout",
            "status",
            "deploy/dialer",
            "--timeout=300s",
        ])
        .unwrap_or_else(|error| panic!("{error:#}"));
}

/// Sources from the pod range among what a server saw.
fn pod_sources(
    server: &netpol_tests::real_cluster::CountingServer,
) -> Vec<(std::net::IpAddr, u64)> {
    server
        .sources()
        .into_iter()
        .filter(|(ip, _)| ip.to_string().starts_with("10.244."))
        .collect()
}

fn pod_ips(cluster: &RealCluster, namespace: &str) -> Vec<String> {
    cluster
        .kubectl(&[
            "-n",
            namespace,
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The start-up race: 50 pods created at once in a namespace that denies all egress, each
/// dialing out in a tight loop from its first instant: not one connection gets through. Then
/// an allow rule: every pod connects (the window closes without breaking allowed traffic).
fn first_packet(backend: Backend, port: u16) {
    use netpol_tests::real_cluster::{CountingServer, chain_has_plugin};
    const PODS: u32 = 50;
    let namespace = format!("first-packet-{}", backend.name());
    let cluster = cluster();
    cluster
        .deploy_agent(backend)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        eventually(chain_has_plugin),
        "the agent did not put its CNI plugin into the node's chain"
    );
    let cleanup_namespace = namespace.clone();
    let _cleanup = Cleanup(move || {
        RealCluster::connect()
            .expect("cluster")
            .delete("default", &[&format!("namespace/{cleanup_namespace}")]);
    });
    let server =
        CountingServer::start(&cluster, REGISTRY, port).unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .apply(&dialers(&namespace, port, PODS))
        .unwrap_or_else(|error| panic!("{error:#}"));
    dialers_started(&cluster, &namespace);
    // Every pod has been dialing for a while.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let leaked = pod_sources(&server);
    eprintln!(
        "{PODS} pods started under default-deny egress on {}: {} connections from {} pods got through",
        backend.name(),
        leaked.iter().map(|(_, count)| count).sum::<u64>(),
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "denied connections got through: {leaked:?}"
    );

    cluster
        .apply(&allow_registry(&namespace, port))
        .unwrap_or_else(|error| panic!("{error:#}"));
    let ips = pod_ips(&cluster, &namespace);
    assert_eq!(ips.len(), PODS as usize, "{ips:?}");
    let all_connected = eventually(|| {
        let seen = pod_sources(&server);
        ips.iter()
            .all(|ip| seen.iter().any(|(source, _)| source.to_string() == *ip))
    });
    assert!(
        all_connected,
        "not every allowed pod connected: {} of {PODS}",
        pod_sources(&server).len()
    );
}

#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn pods_are_enforced_from_their_first_packet_on_ebpf() {
    first_packet(Backend::Ebpf, 8081);
}

#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn pods_are_enforced_from_their_first_packet_on_iptables() {
    first_packet(Backend::Iptables, 8082);
}

/// Pods created while the agent is away (its DaemonSet unscheduled from the node) do not
/// start open: their sandboxes wait for the agent (the CNI plugin fails their ADD, kubelet
/// retries). When the agent returns they start, enforced by their policies.
#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn pods_created_while_the_agent_is_down_are_closed_until_it_returns() {
    use netpol_tests::real_cluster::CountingServer;
    const NAMESPACE: &str = "agent-down";
    let cluster = cluster();
    cluster
        .deploy_agent(Backend::Ebpf)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(move || {
        let cluster = RealCluster::connect().expect("cluster");
        let _ = cluster.set_agent_away(false);
        let _ = cluster.wait_agent_rollout();
        cluster.delete("default", &[&format!("namespace/{NAMESPACE}")]);
    });
    let server =
        CountingServer::start(&cluster, REGISTRY, 8083).unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .apply(&dialers(NAMESPACE, 8083, 0))
        .unwrap_or_else(|error| panic!("{error:#}"));
    // The agent leaves the node; what it programmed stays.
    cluster
        .set_agent_away(true)
        .unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .kubectl(&[
            "-n",
            "kube-system",
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app=netpol-agent",
            "--timeout=120s",
        ])
        .unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .kubectl(&["-n", NAMESPACE, "scale", "deploy/dialer", "--replicas=3"])
        .unwrap_or_else(|error| panic!("{error:#}"));
    std::thread::sleep(std::time::Duration::from_secs(15));
    let running = cluster
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ])
        .unwrap_or_default();
    eprintln!(
        "agent away 15 s: running dialers: {:?}; connections from pods: {:?}",
        running.trim(),
        pod_sources(&server)
    );
    assert!(
        pod_sources(&server).is_empty(),
        "a pod started open while the agent was away"
    );
    assert!(
        running.trim().is_empty(),
        "a pod started while no agent could enforce it: {running}"
    );

    // The agent returns: the pods start, and their policy holds.
    cluster
        .set_agent_away(false)
        .unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .wait_agent_rollout()
        .unwrap_or_else(|error| panic!("{error:#}"));
    dialers_started(&cluster, NAMESPACE);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        pod_sources(&server).is_empty(),
        "denied connections got through after the agent returned"
    );
    cluster
        .apply(&allow_registry(NAMESPACE, 8083))
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        eventually(|| pod_sources(&server).len() == 3),
        "the allowed pods did not connect: {:?}",
        pod_sources(&server)
    );
}

/// The pod that holds an address first: no policy selects it, and a finalizer keeps its
/// object (Terminating, `status.podIP` still set) after its sandbox is gone.
const REUSE_OLD_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: old
  namespace: address-reuse
  labels: {app: old}
  finalizers: [netpol.test/hold]
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: idle
    image: busybox
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#;

/// The pod that inherits the address: denied all egress, dialing from its first instant.
fn reuse_new_pod(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: new
  namespace: address-reuse
  labels: {{app: new}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: dial
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "while :; do nc -w 1 {REGISTRY} {port} </dev/null && sleep 0.2; done"]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-egress
  namespace: address-reuse
spec:
  podSelector:
    matchLabels: {{app: new}}
  policyTypes: [Egress]
"#
    )
}

/// An address handed to a new pod while the object of its previous owner still exists
/// (Terminating, held by a finalizer): the agent enforces the new pod, not the old one's
/// stale entry, from the first packet. host-local is made to hand out exactly that address
/// by setting its last reservation just below it.
#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn a_reused_address_is_enforced_as_its_new_pod_from_the_first_packet() {
    use netpol_tests::real_cluster::CountingServer;
    const NAMESPACE: &str = "address-reuse";
    const PORT: u16 = 8084;
    let cluster = cluster();
    cluster
        .deploy_agent(Backend::Ebpf)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(move || {
        let cluster = RealCluster::connect().expect("cluster");
        let _ = cluster.kubectl(&[
            "-n",
            NAMESPACE,
            "patch",
            "pod",
            "old",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        cluster.delete("default", &[&format!("namespace/{NAMESPACE}")]);
    });
    let server =
        CountingServer::start(&cluster, REGISTRY, PORT).unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .kubectl(&["create", "namespace", NAMESPACE])
        .unwrap_or_else(|error| panic!("{error:#}"));
    cluster
        .apply(REUSE_OLD_POD)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let old_ip: std::net::Ipv4Addr = cluster
        .wait_running(NAMESPACE, "old")
        .unwrap_or_else(|error| panic!("{error:#}"))
        .parse()
        .unwrap_or_else(|error| panic!("the old pod's address: {error}"));

    // The old pod goes; its object stays with its address, its sandbox and lease do not.
    cluster
        .kubectl(&["-n", NAMESPACE, "delete", "pod", "old", "--wait=false"])
        .unwrap_or_else(|error| panic!("{error:#}"));
    let ipam = xtask::cluster::dir()
        .join("cni/ipam")
        .join(xtask::cluster::CNI_NETWORK);
    assert!(
        eventually(|| !ipam.join(old_ip.to_string()).exists()),
        "the old pod's address {old_ip} was not released"
    );
    let still_there = cluster
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "pod",
            "old",
            "-o",
            "jsonpath={.metadata.deletionTimestamp} {.status.podIP}",
        ])
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        still_there.trim().ends_with(&format!(" {old_ip}")),
        "the old pod's object should be Terminating with its address: {still_there:?}"
    );
    let below = std::net::Ipv4Addr::from(u32::from(old_ip) - 1);
    std::fs::write(ipam.join("last_reserved_ip.0"), below.to_string())
        .unwrap_or_else(|error| panic!("steering host-local: {error}"));

    cluster
        .apply(&reuse_new_pod(PORT))
        .unwrap_or_else(|error| panic!("{error:#}"));
    let new_ip = cluster
        .wait_running(NAMESPACE, "new")
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(
        new_ip,
        old_ip.to_string(),
        "host-local did not hand the old address to the new pod"
    );
    std::thread::sleep(std::time::Duration::from_secs(5));
    let leaked = pod_sources(&server);
    eprintln!("new pod at the reused address {new_ip}: connections out: {leaked:?}");
    assert!(
        leaked.is_empty(),
        "the new pod at a reused address got out under its deny policy: {leaked:?}"
    );

    // Its own allow rule opens it: the loop did dial all along.
    cluster
        .apply(&allow_registry(NAMESPACE, PORT))
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        eventually(|| pod_sources(&server)
            .iter()
            .any(|(ip, _)| ip.to_string() == new_ip)),
        "the new pod did not connect once allowed"
    );
}

/// The debug CLI as an operator reaches it, `kubectl exec` into the agent's pod: `status`
/// shows the CNI chain and readiness, `explain` names the policy that denies a client and the
/// rule that allows another (agreeing with real connections), and `monitor` shows the drop.
#[test]
#[ignore = "needs the real cluster (cargo xtask cluster up); cargo xtask test runs it"]
fn the_debug_cli_explains_a_denial_through_kubectl_exec() {
    const NAMESPACE: &str = "debug-cli";
    let cluster = cluster();
    cluster
        .deploy_agent(Backend::Ebpf)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let _cleanup = Cleanup(move || {
        RealCluster::connect()
            .expect("cluster")
            .delete("default", &[&format!("namespace/{NAMESPACE}")]);
    });
    cluster
        .apply(&format!(
            r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-clients
  namespace: {NAMESPACE}
spec:
  podSelector:
    matchLabels: {{app: web}}
  ingress:
  - from:
    - podSelector:
        matchLabels: {{role: client}}
    ports:
    - port: 80
"#
        ))
        .unwrap_or_else(|error| panic!("{error:#}"));
    let idle = ["sleep", "3600"];
    cluster
        .run_pod(NAMESPACE, "web", NGINX, Some("app=web"), &[])
        .unwrap_or_else(|error| panic!("{error:#}"));
    for (name, labels) in [("client", "role=client"), ("stranger", "role=other")] {
        cluster
            .run_pod(NAMESPACE, name, BUSYBOX, Some(labels), &idle)
            .unwrap_or_else(|error| panic!("{error:#}"));
    }
    let web = cluster
        .wait_running(NAMESPACE, "web")
        .unwrap_or_else(|error| panic!("{error:#}"));
    let netpol = |args: &[&str]| -> String {
        let mut command = vec![
            "-n",
            "kube-system",
            "exec",
            "ds/netpol-agent",
            "--",
            "netpol-agent",
        ];
        command.extend_from_slice(args);
        cluster
            .kubectl(&command)
            .unwrap_or_else(|error| panic!("netpol-agent {args:?}: {error:#}"))
    };

    let status: serde_json::Value =
        serde_json::from_str(&netpol(&["status", "-o", "json"])).expect("status JSON");
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(status["backend"], "ebpf", "{status:#}");
    assert_eq!(status["cni_chained"], true, "{status:#}");
    eprintln!("$ netpol-agent status\n{}", netpol(&["status"]));

    // The CLI's verdicts, and real connections to compare them with.
    for (client, allowed) in [("client", true), ("stranger", false)] {
        let from = format!("{NAMESPACE}/{client}");
        let to = format!("{NAMESPACE}/web");
        let report: serde_json::Value = serde_json::from_str(&netpol(&[
            "explain", "--from", &from, "--to", &to, "--port", "80", "-o", "json",
        ]))
        .expect("explain JSON");
        assert_eq!(report["allowed"], allowed, "{report:#}");
        assert_eq!(report["drift"], false, "{report:#}");
        assert_eq!(
            report["ingress"]["reference"]["isolated_by"][0],
            format!("{NAMESPACE}/web-from-clients"),
            "{report:#}"
        );
        let connected = cluster.pod_tcp_probe(NAMESPACE, client, &web, 80, HTTP_GET, "HTTP");
        assert_eq!(connected, allowed, "a real connection from {client}");
        eprintln!(
            "$ netpol-agent explain --from {from} --to {to} --port 80\n{}",
            netpol(&["explain", "--from", &from, "--to", &to, "--port", "80"])
        );
    }

    // monitor, started before the denied attempt, shows it named.
    let kubectl = xtask::cluster::kubectl();
    let monitor = std::process::Command::new(&kubectl)
        .args([
            "-n",
            "kube-system",
            "exec",
            "ds/netpol-agent",
            "--",
            "netpol-agent",
        ])
        .args([
            "monitor",
            "--drops",
            "--pod",
            &format!("{NAMESPACE}/web"),
            "--max-events",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl exec starts");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!cluster.pod_tcp_probe(NAMESPACE, "stranger", &web, 80, HTTP_GET, "HTTP"));
    let output = monitor
        .wait_with_output()
        .expect("monitor ends after one event");
    let line = String::from_utf8_lossy(&output.stdout);
    eprintln!("$ netpol-agent monitor --drops --pod {NAMESPACE}/web\n{line}");
    assert!(
        line.contains("DROP ingress")
            && line.contains(&format!("{NAMESPACE}/stranger"))
            && line.contains(&format!("isolated by {NAMESPACE}/web-from-clients")),
        "{line}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
