//! `cargo xtask bench cni`: what holding a pod's start until it is enforced costs, from the
//! runtime's side: the wall time of the real `netpol-cni` plugin's ADD against the real agent,
//! on a simulated node (root). Each pod's object is known first (as the Pod object exists
//! before its sandbox); then its network namespace, veth and route are made as ptp makes them,
//! and ADD runs with that previous result. Figures in `docs/CNI-BENCH.md`; no assertion on
//! time.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netpol_tests::{
    agent::{Agent, AgentOptions},
    objects::ObjectsDir,
    require_root,
    scenarios::{NODE, World},
};

const PODS: usize = 100;

fn plugin_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NETPOL_CNI_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/deps/cni-<hash>: the plugin is in target/<profile>.
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("netpol-cni"))
        .expect("a target directory")
}

fn pod_object(index: usize) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: bench-{index}\n  namespace: default\n  labels:\n    app: bench\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Pending\n"
    )
}

fn main() {
    if !require_root("cargo xtask bench cni") {
        return;
    }
    let plugin = plugin_binary();
    assert!(
        plugin.exists(),
        "no plugin at {} (set NETPOL_CNI_BIN)",
        plugin.display()
    );
    let mut world = World::build();
    let objects = ObjectsDir::new("bench-cni");
    let socket = objects.0.join("cni.sock");
    let objects_text: String = (0..PODS).map(pod_object).collect();
    objects.write("bench-pods.yaml", &objects_text);
    let mut agent = Agent::start(
        &world.node.node,
        AgentOptions {
            node_name: NODE.to_owned(),
            source: vec!["--objects-dir".to_owned(), objects.0.display().to_string()],
            extra: vec![
                "--service-cidr".to_owned(),
                "10.96.0.0/16".to_owned(),
                "--cni-socket".to_owned(),
                socket.display().to_string(),
                "--pod-interface-prefix".to_owned(),
                "cali".to_owned(),
            ],
            pin_dir: None,
        },
    )
    .expect("the agent starts");
    agent
        .wait_ready(&world.node.node, Duration::from_secs(30))
        .expect("the agent gets ready");

    let mut times = Vec::new();
    for index in 0..PODS {
        let ip = format!("10.244.1.{}", 100 + index);
        let pod = world.node.add_pod(&ip);
        let host = world.node.pods[pod].host_veth.clone();
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "bench",
            "type": "netpol-cni",
            "socket": socket,
            "prevResult": {
                "cniVersion": "0.4.0",
                "interfaces": [{"name": host}, {"name": "eth0", "sandbox": "/var/run/netns/bench"}],
                "ips": [{"version": "4", "interface": 1, "address": format!("{ip}/32")}],
            },
        });
        let started = Instant::now();
        let mut child = Command::new(&plugin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("bench-{index}"))
            .env("CNI_NETNS", "/var/run/netns/bench")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench-{index}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the plugin runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.to_string().as_bytes())
            .expect("configuration");
        let output = child.wait_with_output().expect("the plugin ends");
        let elapsed = started.elapsed();
        assert!(
            output.status.success(),
            "ADD of bench-{index} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            agent.log_text()
        );
        times.push(elapsed);
    }
    times.sort();
    let at = |quantile: f64| times[((times.len() as f64 - 1.0) * quantile).round() as usize];
    println!(
        "CNI ADD to return (plugin process start to exit, the agent programming and attaching \
         the pod in between), {PODS} pods added one after another on a node with {} pods:",
        world.node.pods.len() - PODS
    );
    println!(
        "  p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.9).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    agent.stop();
}
