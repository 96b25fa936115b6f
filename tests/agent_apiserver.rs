//! The agent end to end through a real kube-apiserver on loopback (`handbook/kube-apiserver.md`):
//! the RBAC of `deploy/base/rbac.yaml` is applied and the agent runs with a token bound by it, the
//! cluster objects and the seed guide's policies are created, changed and deleted through the
//! API, and each step is checked with real probes on the simulated node.
//!
//! The API server runs inside the node's network namespace (the agent reaches it on loopback
//! there); every API call of the test is made from a thread in that namespace too.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use netpol_tests::{
    agent::{Agent, AgentOptions},
    apiserver::{NodeApiServer, Who, apply_rbac, documents},
    require_root,
    scenarios::{NODE, PODS, World, await_step, scenarios},
};
use serde_json::json;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The world's namespaces and pods, with pod status patched in as a kubelet would.
async fn create_cluster(admin: Client) {
    let post = PostParams::default();
    let namespaces = Api::<Namespace>::all(admin.clone());
    let test_np: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "test-np"}})).expect("namespace");
    namespaces
        .create(&post, &test_np)
        .await
        .expect("namespace test-np");
    let label = json!({"metadata": {"labels": {"ns": "kube-system"}}});
    namespaces
        .patch("kube-system", &PatchParams::default(), &Patch::Merge(label))
        .await
        .expect("labelling kube-system");
    for pod in PODS {
        let labels: BTreeMap<&str, &str> = pod.labels.iter().copied().collect();
        let node = if pod.local { NODE } else { "node-2" };
        let object: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        }))
        .expect("pod");
        let pods = Api::<Pod>::namespaced(admin.clone(), pod.namespace);
        pods.create(&post, &object).await.expect("pod");
        let status =
            json!({"status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}]}});
        pods.patch_status(pod.name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("pod status");
    }
}

/// Makes the policies of `files` (step file name -> YAML, or `None` for deleted) the cluster's,
/// remembering which policies each file created.
async fn apply_policies(
    admin: Client,
    files: &[(&'static str, Option<String>)],
    created: &mut BTreeMap<&'static str, Vec<(String, String)>>,
) {
    for (file, content) in files {
        let old = created.remove(file).unwrap_or_default();
        let new: Vec<NetworkPolicy> = content
            .as_deref()
            .map(|text| documents(text, "NetworkPolicy"))
            .unwrap_or_default();
        let mut names = Vec::new();
        for policy in new {
            let namespace = policy
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            let name = policy.metadata.name.clone().expect("policies are named");
            let api = Api::<NetworkPolicy>::namespaced(admin.clone(), &namespace);
            match api.get_opt(&name).await.expect("reading a policy") {
                Some(existing) => {
                    let mut replacement = policy.clone();
                    replacement.metadata.resource_version = existing.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &replacement)
                        .await
                        .expect("replace");
                }
                None => {
                    api.create(&PostParams::default(), &policy)
                        .await
                        .expect("create");
                }
            }
            names.push((namespace, name));
        }
        for (namespace, name) in old {
            if !names.contains(&(namespace.clone(), name.clone())) {
                Api::<NetworkPolicy>::namespaced(admin.clone(), &namespace)
                    .delete(&name, &DeleteParams::default())
                    .await
                    .expect("delete");
            }
        }
        if !names.is_empty() {
            created.insert(file, names);
        }
    }
}

#[test]
fn the_four_seed_scenarios_hold_through_a_real_api_server() {
    if !require_root("the_four_seed_scenarios_hold_through_a_real_api_server") {
        return;
    }
    let world = World::build();
    let server = NodeApiServer::start(&world.node.node);
    server.with_api(Who::Admin, async |admin| {
        apply_rbac(admin.clone()).await;
        create_cluster(admin).await;
    });

    let mut agent = Agent::start(
        &world.node.node,
        AgentOptions {
            node_name: NODE.to_owned(),
            source: vec![
                "--kubeconfig".to_owned(),
                server.kubeconfig(Who::Agent).display().to_string(),
            ],
            extra: vec!["--service-cidr".to_owned(), "10.96.0.0/16".to_owned()],
            pin_dir: None,
        },
    )
    .expect("the agent starts");
    agent
        .wait_ready(&world.node.node, Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("{error:#}\napiserver:\n{}", server.logs()));

    let mut created = BTreeMap::new();
    for scenario in scenarios() {
        for step in &scenario.steps {
            let written = Instant::now();
            server.with_api(Who::Admin, async |admin| {
                apply_policies(admin, &step.files, &mut created).await;
            });
            let result = await_step(&world, step, written, STEP_TIMEOUT);
            assert!(
                result.ok(),
                "{} / {}:\n{}\nagent log:\n{}",
                scenario.title,
                step.title,
                result.table(),
                agent.log_text()
            );
            if let Some(after) = result.converged_after
                && !step.files.is_empty()
            {
                println!(
                    "{}: in effect {} ms after the API call",
                    step.title,
                    after.as_millis()
                );
            }
        }
    }
}
