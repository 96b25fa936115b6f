//! `cargo xtask bench scale`: the agent with the kube source against a real kube-apiserver
//! (with etcd, `handbook/kube-apiserver.md`) holding a synthetic cluster, as root. The cluster:
//! `NETPOL_SCALE_PODS` pods (default 10,000) in 500 namespaces on other nodes, and
//! `NETPOL_SCALE_POLICIES` policies (default 10,000) over them, besides the seed world's pods
//! on this node. Printed: how long loading the API took, the agent's start to ready, its
//! resident memory once in sync (VmRSS, and VmHWM, the peak), its CPU over a quiet 20 s, and
//! the time from a policy isolating nginx created (then deleted) through the API to the first
//! probe from busybox that sees it, 10 rounds each. Figures in `docs/SCALE-BENCH.md`; no
//! assertion on time.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
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
    apiserver::{NodeApiServer, Who, apply_rbac},
    measure::{cpu_ticks, percentile_ms, ticks_per_second},
    require_root,
    scenarios::{NODE, PODS, World},
};
use serde_json::json;

const NAMESPACES: usize = 500;
const ROUNDS: usize = 10;
const QUIET: Duration = Duration::from_secs(20);
/// Requests in flight while loading the API.
const IN_FLIGHT: usize = 32;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A pod elsewhere in the cluster: `10.128.0.0/9` addresses, on one of 50 other nodes.
fn remote_pod(index: usize) -> (String, Pod, serde_json::Value) {
    let namespace = format!("ns-{}", index % NAMESPACES);
    let ip = format!(
        "10.{}.{}.{}",
        128 + (index >> 16),
        (index >> 8) & 255,
        index & 255
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": format!("pod-{index}"),
            "namespace": namespace,
            "labels": {"app": format!("app-{}", index % 1000), "tier": format!("tier-{}", index % 7)},
        },
        "spec": {
            "nodeName": format!("node-{}", 2 + index % 50),
            "containers": [{"name": "main", "image": "busybox",
                "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    }))
    .expect("a pod");
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    (namespace, pod, status)
}

/// A policy over remote pods: one app's pods, reachable from another app's pods in a team's
/// namespaces on two ports, and from an ipBlock with an except.
fn policy(index: usize) -> (String, NetworkPolicy) {
    let namespace = format!("ns-{}", index % NAMESPACES);
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": format!("policy-{index}"), "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", index % 1000)}},
            "ingress": [{
                "from": [
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{}", index % 20)}},
                     "podSelector": {"matchLabels": {"app": format!("app-{}", (index + 1) % 1000)}}},
                    {"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + index % 16),
                                 "except": [format!("172.{}.{}.0/24", 16 + index % 16, index % 256)]}},
                ],
                "ports": [{"port": 80}, {"port": "http"}],
            }],
        },
    }))
    .expect("a policy");
    (namespace, policy)
}

/// The seed world's namespaces and pods (this node's), then the synthetic cluster.
async fn load(admin: Client, pods: usize, policies: usize) {
    let post = PostParams::default();
    let namespaces = Api::<Namespace>::all(admin.clone());
    let mut names: Vec<(String, BTreeMap<String, String>)> = (0..NAMESPACES)
        .map(|index| {
            (
                format!("ns-{index}"),
                BTreeMap::from([("team".to_owned(), format!("t{}", index % 20))]),
            )
        })
        .collect();
    names.push(("test-np".to_owned(), BTreeMap::new()));
    stream::iter(names)
        .for_each_concurrent(IN_FLIGHT, |(name, labels)| {
            let namespaces = namespaces.clone();
            let post = post.clone();
            async move {
                let object: Namespace =
                    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                        .expect("a namespace");
                namespaces.create(&post, &object).await.expect("namespace");
            }
        })
        .await;
    let seed = PODS.iter().map(|pod| {
        let labels: BTreeMap<&str, &str> = pod.labels.iter().copied().collect();
        let node = if pod.local { NODE } else { "node-2" };
        let object: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        }))
        .expect("a pod");
        let status =
            json!({"status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}]}});
        (pod.namespace.to_owned(), object, status)
    });
    let all_pods: Vec<_> = seed.chain((0..pods).map(remote_pod)).collect();
    stream::iter(all_pods)
        .for_each_concurrent(IN_FLIGHT, |(namespace, pod, status)| {
            let api = Api::<Pod>::namespaced(admin.clone(), &namespace);
            let post = post.clone();
            async move {
                let name = pod.metadata.name.clone().unwrap_or_default();
                api.create(&post, &pod).await.expect("pod");
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .expect("pod status");
            }
        })
        .await;
    stream::iter((0..policies).map(policy))
        .for_each_concurrent(IN_FLIGHT, |(namespace, policy)| {
            let api = Api::<NetworkPolicy>::namespaced(admin.clone(), &namespace);
            let post = post.clone();
            async move {
                api.create(&post, &policy).await.expect("policy");
            }
        })
        .await;
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    if !require_root("cargo xtask bench scale") {
        return;
    }
    let pods = setting("NETPOL_SCALE_PODS", 10_000);
    let policies = setting("NETPOL_SCALE_POLICIES", 10_000);
    let world = World::build();
    let server = NodeApiServer::start(&world.node.node);
    let loading = Instant::now();
    server.with_api(Who::Admin, async |admin| {
        apply_rbac(admin.clone()).await;
        load(admin, pods, policies).await;
    });
    println!(
        "kube source, a real API server holding {pods} pods in {NAMESPACES} namespaces and {policies} policies (loaded in {:.0} s)",
        loading.elapsed().as_secs_f64()
    );
    for backend in ["ebpf", "iptables"] {
        measure(&world, &server, backend);
    }
    println!("  targets: memory <= 400 MiB at 100,000 pods; change p50 <= 100 ms, p99 <= 300 ms");
}

/// One agent on `backend` against the loaded API server: its figures, printed.
fn measure(world: &World, server: &NodeApiServer, backend: &str) {
    let started = Instant::now();
    let mut agent = Agent::start(
        &world.node.node,
        AgentOptions {
            node_name: NODE.to_owned(),
            source: vec![
                "--kubeconfig".to_owned(),
                server.kubeconfig(Who::Agent).display().to_string(),
            ],
            extra: vec![
                "--backend".to_owned(),
                backend.to_owned(),
                "--service-cidr".to_owned(),
                "10.96.0.0/16".to_owned(),
            ],
            pin_dir: None,
        },
    )
    .expect("the agent starts");
    agent
        .wait_ready(&world.node.node, Duration::from_secs(300))
        .unwrap_or_else(|error| panic!("{error:#}\n{}", agent.log_text()));
    let ready = started.elapsed();
    let pid = agent.pid().expect("the agent runs");
    std::thread::sleep(Duration::from_secs(3));
    let (rss, peak) = memory(pid);
    let ticks = ticks_per_second();
    let before = cpu_ticks(pid);
    std::thread::sleep(QUIET);
    let idle = (cpu_ticks(pid) - before) as f64 / ticks * 100.0 / QUIET.as_secs_f64();

    let nginx: IpAddr = "10.244.1.10".parse().expect("an address");
    let busybox = &world.node.pods[1].netns;
    let connects = || {
        busybox.run(|| {
            TcpStream::connect_timeout(&SocketAddr::new(nginx, 80), Duration::from_millis(5))
                .is_ok()
        })
    };
    let until = |allowed: bool| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if connects() == allowed {
                return start.elapsed();
            }
        }
        panic!("the probe never saw allowed={allowed}");
    };
    let isolate: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "isolate-nginx", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"run": "nginx"}}, "policyTypes": ["Ingress"]},
    }))
    .expect("a policy");
    let (mut deny, mut allow) = (Vec::new(), Vec::new());
    // From the API call's return (the object is stored) to the probe seeing the change.
    for _ in 0..ROUNDS {
        server.with_api(Who::Admin, async |admin| {
            Api::<NetworkPolicy>::namespaced(admin, "default")
                .create(&PostParams::default(), &isolate)
                .await
                .expect("create");
        });
        deny.push(until(false));
        server.with_api(Who::Admin, async |admin| {
            Api::<NetworkPolicy>::namespaced(admin, "default")
                .delete("isolate-nginx", &DeleteParams::default())
                .await
                .expect("delete");
        });
        allow.push(until(true));
    }
    println!(
        "  {backend:>8}: start to ready {:.2} s; memory {rss:.0} MiB resident ({peak:.0} MiB peak); idle {idle:.2} % of a core",
        ready.as_secs_f64()
    );
    println!(
        "  {backend:>8}: change to enforced (API call returned -> probe flipped): deny p50 {:.0} ms p99 {:.0} ms, allow p50 {:.0} ms p99 {:.0} ms",
        percentile_ms(&mut deny, 0.5),
        percentile_ms(&mut deny, 0.99),
        percentile_ms(&mut allow, 0.5),
        percentile_ms(&mut allow, 0.99)
    );
    agent.stop();
}
