//! The test API server works the way the API-driven suites need (`handbook/kube-apiserver.md`):
//! the admin sets up a namespace and a pod "on" a node with a status patched in by hand, and the
//! agent's service account may read nothing until its ClusterRole is bound, then exactly what
//! the agent reads and nothing more.
//!
//! The RBAC rules here are the ones the agent needs; `deploy/` must grant the same.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Namespace, Pod, Secret},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams, PostParams, WatchParams},
};
use netpol_tests::apiserver::{AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, ApiServer, Who};
use serde_json::json;

const NAMESPACE: &str = "netpol-smoke";
const POD: &str = "web";
const NODE: &str = "node-a";
const POD_IP: &str = "10.244.1.10";
const ROLE: &str = "netpol-agent";

/// How long RBAC may take to notice a new binding (its informers, usually milliseconds).
const RBAC_PROPAGATION: Duration = Duration::from_secs(10);

#[tokio::test]
async fn should_serve_pods_to_the_agent_only_once_its_role_is_bound() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping apiserver_smoke: the API server suites run as root only (as in CI)");
        return;
    }
    let started = Instant::now();
    let server = ApiServer::start().unwrap_or_else(|error| panic!("{error:#}"));
    let startup = started.elapsed();
    eprintln!("smoke: API server up in {startup:.1?}");

    let admin = client(&server, Who::Admin).await;
    let agent = client(&server, Who::Agent).await;

    let step = Instant::now();
    create_pod_with_status(&admin).await;
    let pod_setup = step.elapsed();
    eprintln!("smoke: namespace, pod and status patch in {pod_setup:.1?}");

    let step = Instant::now();
    for (what, allowed) in agent_reads(&agent).await {
        assert!(!allowed, "the agent could {what} before any binding");
    }
    let forbidden_check = step.elapsed();

    let step = Instant::now();
    bind_agent_role(&admin).await;
    let deadline = Instant::now() + RBAC_PROPAGATION;
    while !can(Api::<Pod>::all(agent.clone())
        .list(&ListParams::default())
        .await)
    {
        assert!(
            Instant::now() < deadline,
            "the agent still cannot list pods {RBAC_PROPAGATION:?} after its binding"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let propagation = step.elapsed();
    eprintln!("smoke: binding effective after {propagation:.1?}");

    for (what, allowed) in agent_reads(&agent).await {
        assert!(
            allowed,
            "the agent cannot {what} although its role is bound"
        );
    }
    let pods = Api::<Pod>::all(agent.clone())
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|error| panic!("agent lists pods: {error}"));
    let seen = pods
        .items
        .iter()
        .find(|pod| pod.metadata.name.as_deref() == Some(POD))
        .unwrap_or_else(|| panic!("the agent's pod list has no {NAMESPACE}/{POD}"));
    assert_eq!(
        seen.status
            .as_ref()
            .and_then(|status| status.pod_ip.as_deref()),
        Some(POD_IP)
    );

    // Least privilege: reading is all the role grants.
    let denied = [
        (
            "create pods",
            can(Api::<Pod>::namespaced(agent.clone(), NAMESPACE)
                .create(&PostParams::default(), &pod(&format!("{POD}-2")))
                .await),
        ),
        (
            "patch pod status",
            can(Api::<Pod>::namespaced(agent.clone(), NAMESPACE)
                .patch_status(
                    POD,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Failed"}})),
                )
                .await),
        ),
        (
            "list secrets",
            can(Api::<Secret>::all(agent.clone())
                .list(&ListParams::default())
                .await),
        ),
    ];
    for (what, allowed) in denied {
        assert!(!allowed, "the agent could {what}: its role grants too much");
    }

    eprintln!(
        "smoke: timings: startup {startup:.1?}, pod setup {pod_setup:.1?}, forbidden checks \
         {forbidden_check:.1?}, binding effective {propagation:.1?}, total {:.1?}",
        started.elapsed()
    );
}

async fn client(server: &ApiServer, who: Who) -> Client {
    server
        .client(who)
        .await
        .unwrap_or_else(|error| panic!("a client as {who:?}: {error:#}"))
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "web"}},
        "spec": {
            // Nothing schedules or runs pods here: the node is named by hand.
            "nodeName": NODE,
            "containers": [{"name": "web", "image": "registry.invalid/web:1"}],
        },
    }))
    .unwrap_or_else(|error| panic!("the test pod {name}: {error}"))
}

/// The admin creates the namespace and a pod on `NODE`, patches its status (no kubelet does)
/// and checks that it reads back.
async fn create_pod_with_status(admin: &Client) {
    let namespace: Namespace = object(json!({"metadata": {"name": NAMESPACE}}));
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|error| panic!("creating namespace {NAMESPACE}: {error}"));

    let pods = Api::<Pod>::namespaced(admin.clone(), NAMESPACE);
    pods.create(&PostParams::default(), &pod(POD))
        .await
        .unwrap_or_else(|error| panic!("creating pod {NAMESPACE}/{POD}: {error}"));
    let status = json!({"status": {
        "phase": "Running",
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
    }});
    pods.patch_status(POD, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|error| panic!("patching the status of {NAMESPACE}/{POD}: {error}"));

    let read = pods
        .get(POD)
        .await
        .unwrap_or_else(|error| panic!("reading {NAMESPACE}/{POD}: {error}"));
    let spec = read.spec.as_ref().expect("a pod read back has a spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    let status = read.status.as_ref().expect("the status was patched in");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some(POD_IP));
    let ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .collect();
    assert_eq!(ips, [POD_IP]);
}

/// The agent's ClusterRole (read pods, namespaces, network policies and config maps) and its
/// binding to the agent's service account.
async fn bind_agent_role(admin: &Client) {
    let role: ClusterRole = object(json!({
        "metadata": {"name": ROLE},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
        ],
    }));
    let binding: ClusterRoleBinding = object(json!({
        "metadata": {"name": ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE},
        "subjects": [{
            "kind": "ServiceAccount",
            "name": AGENT_SERVICE_ACCOUNT,
            "namespace": AGENT_NAMESPACE,
        }],
    }));
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|error| panic!("creating ClusterRole {ROLE}: {error}"));
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|error| panic!("creating ClusterRoleBinding {ROLE}: {error}"));
}

/// Everything the agent reads, each with whether the agent may: list and watch across all
/// namespaces, and get one pod.
async fn agent_reads(agent: &Client) -> Vec<(&'static str, bool)> {
    vec![
        ("list pods", lists::<Pod>(agent).await),
        ("watch pods", watches::<Pod>(agent).await),
        (
            "get a pod",
            can(Api::<Pod>::namespaced(agent.clone(), NAMESPACE)
                .get(POD)
                .await),
        ),
        ("list namespaces", lists::<Namespace>(agent).await),
        ("watch namespaces", watches::<Namespace>(agent).await),
        ("list network policies", lists::<NetworkPolicy>(agent).await),
        (
            "watch network policies",
            watches::<NetworkPolicy>(agent).await,
        ),
        ("list config maps", lists::<ConfigMap>(agent).await),
        ("watch config maps", watches::<ConfigMap>(agent).await),
    ]
}

async fn lists<K>(client: &Client) -> bool
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    can(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await)
}

/// A watch is refused (or not) with the response headers, before any event.
async fn watches<K>(client: &Client) -> bool
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    can(Api::<K>::all(client.clone())
        .watch(&WatchParams::default().timeout(1), "0")
        .await)
}

/// `true` if allowed, `false` if forbidden (403); anything else fails the test.
fn can<T>(result: kube::Result<T>) -> bool {
    match result {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 403 => false,
        Err(error) => panic!("expected success or 403 Forbidden, got {error}"),
    }
}

fn object<T: DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|error| panic!("a test object: {error}"))
}
