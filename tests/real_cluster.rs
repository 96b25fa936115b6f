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
    scenarios::{ACCESS_NGINX, ALLOW_PUBLIC_FOR_LABELS, DENY_PUBLIC_NET},
};

const BUSYBOX: &str = "busybox";
const NGINX: &str = "nginx";
const AGNHOST: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
const HTTP_GET: &str = "GET / HTTP/1.0\\r\\n\\r\\n";

/// Hosts of "the internet" (the cluster's ext namespace).
const REGISTRY: &str = "198.51.100.7";
const OTHER_SITE: &str = "203.0.113.1";
const RESOLVER: &str = "198.51.100.53";
const ON_PREM_CLIENT: &str = "203.0.113.10";
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
        cluster.delete("test-np", &["namespace/test-np"]);
        let _ = cluster.kubectl(&[
            "delete",
            "namespace",
            "test-np",
            "--ignore-not-found",
            "--wait=false",
        ]);
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

/// The guide's access-nginx with its ipBlocks: the SLB health checks and the on-premises
/// clients' /24.
fn access_nginx_with_cidrs() -> String {
    format!(
        r#"{ACCESS_NGINX}    - ipBlock:
        cidr: 100.64.0.0/10
    - ipBlock:
        cidr: {ON_PREM_CLIENT}/24
"#
    )
}

/// The guide's busybox-policy: one address, and UDP 53 anywhere.
fn busybox_policy() -> String {
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
