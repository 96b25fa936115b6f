//! `cargo xtask bench idle`: what an agent costs on a node where nothing changes, and how long
//! a policy change takes to hold, with the objects-dir source, on both backends, at 100 and
//! 10,000 policies (root). The agent runs on the simulated node of the seed world; the
//! policies select pods elsewhere in the cluster, except the one the change rounds write.
//!
//! Idle cost: the agent's CPU time (user + system, every thread, from /proc) over a quiet
//! 20 s, as a share of one core. Change to enforced: a policy isolating nginx written, then
//! removed, 20 times; each time from the file's rename to the first probe from busybox that
//! sees the new verdict (probing every few milliseconds). Start to ready: a node of 110 pods,
//! each selected by one of 10,000 policies, from process start to every pod enforced, then
//! again for a restart that finds the pinned state. Figures printed next to the targets of
//! issue 13; recorded in `docs/CONVERGENCE-BENCH.md`; no assertion on time.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use netpol_tests::{
    agent::{Agent, AgentOptions},
    measure::{cpu_ticks, percentile_ms, ticks_per_second},
    netns::SimulatedNode,
    objects::ObjectsDir,
    require_root,
    scenarios::{NODE, World},
};

const QUIET: Duration = Duration::from_secs(20);
const ROUNDS: usize = 20;
/// A denied probe gives up after this: the resolution of a "denied" reading.
const PROBE: Duration = Duration::from_millis(5);

/// `count` policies over pods that are not on this node, 100 to a file.
fn write_policies(objects: &ObjectsDir, count: usize) {
    for file in 0..count.div_ceil(100) {
        let text: String = (file * 100..((file + 1) * 100).min(count))
            .map(|index| {
                format!(
                    "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: svc-{index}\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: svc-{index}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: client-{}\n    ports:\n    - port: 80\n",
                    index % 50
                )
            })
            .collect();
        objects.write(&format!("policies-{file:03}.yaml"), &text);
    }
}

const ISOLATE_NGINX: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: isolate-nginx\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      run: nginx\n  ingress: []\n";

/// Times from writing (or removing) the isolating policy to the probe seeing it.
fn change_rounds(world: &World, objects: &ObjectsDir) -> (Vec<Duration>, Vec<Duration>) {
    let nginx: IpAddr = "10.244.1.10".parse().expect("an address");
    let busybox = &world.node.pods[1].netns;
    // A completed handshake is the verdict (the test server answers its connections only
    // between UDP reads, tens of milliseconds apart).
    let connects = || {
        busybox.run(|| {
            std::net::TcpStream::connect_timeout(&std::net::SocketAddr::new(nginx, 80), PROBE)
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
    let (mut deny, mut allow) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        objects.write("isolate-nginx.yaml", ISOLATE_NGINX);
        deny.push(until(false));
        std::fs::remove_file(objects.0.join("isolate-nginx.yaml")).expect("remove");
        allow.push(until(true));
    }
    (deny, allow)
}

const NODE_PODS: usize = 110;

/// Process start to ready on a node of [`NODE_PODS`] pods, each selected by one of 10,000
/// policies; then the same for a restart that finds the first run's pins.
fn start_to_ready(backend: &str, flags: &[&str]) -> (Duration, Duration) {
    let mut node = SimulatedNode::new("10.244.0.0/16", &[]);
    let objects = ObjectsDir::new("bench-start");
    let mut pods = String::new();
    for index in 0..NODE_PODS {
        let ip = format!("10.244.{}.{}", 2 + index / 200, 2 + index % 200);
        node.add_pod(&ip);
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{index}\n  namespace: default\n  labels:\n    app: svc-{index}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
        ));
    }
    // Only this node's pods: the seed world's cluster file is replaced.
    objects.write(
        "cluster.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n",
    );
    objects.write("node-pods.yaml", &pods);
    write_policies(&objects, 10_000);
    let start = |pin_dir: Option<std::path::PathBuf>| {
        let started = Instant::now();
        let mut agent = Agent::start(
            &node.node,
            AgentOptions {
                node_name: NODE.to_owned(),
                source: vec!["--objects-dir".to_owned(), objects.0.display().to_string()],
                extra: ["--backend", backend, "--service-cidr", "10.96.0.0/16"]
                    .iter()
                    .chain(flags)
                    .map(|arg| (*arg).to_owned())
                    .collect(),
                pin_dir,
            },
        )
        .expect("the agent starts");
        agent
            .wait_ready(&node.node, Duration::from_secs(120))
            .expect("the agent gets ready");
        (agent, started.elapsed())
    };
    let (mut first, cold) = start(None);
    first.cleanup_on_drop = false;
    first.stop();
    let (second, restart) = start(Some(first.pin_dir.clone()));
    drop(second);
    (cold, restart)
}

fn main() {
    if !require_root("cargo xtask bench idle") {
        return;
    }
    println!("Objects-dir source; the seed world's node; targets of issue 13:");
    println!("  idle < 1 % of a core; change to enforced p50 <= 100 ms, p99 <= 300 ms (eBPF),");
    println!("  iptables within 2x of eBPF.");
    for backend in ["ebpf", "iptables"] {
        for policies in [100, 10_000] {
            let world = World::build();
            let objects = ObjectsDir::new("bench-idle");
            write_policies(&objects, policies);
            let started = Instant::now();
            let mut agent = Agent::start(
                &world.node.node,
                AgentOptions {
                    node_name: NODE.to_owned(),
                    source: vec!["--objects-dir".to_owned(), objects.0.display().to_string()],
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
                .wait_ready(&world.node.node, Duration::from_secs(120))
                .expect("the agent gets ready");
            let ready = started.elapsed();
            let pid = agent.pid().expect("the agent runs");
            std::thread::sleep(Duration::from_secs(3));
            let before = cpu_ticks(pid);
            std::thread::sleep(QUIET);
            let used = (cpu_ticks(pid) - before) as f64 / ticks_per_second();
            let (mut deny, mut allow) = change_rounds(&world, &objects);
            println!(
                "{backend:>8}, {policies:>6} policies: idle {:.2} % of a core; change to enforced: deny p50 {:.0} ms p99 {:.0} ms, allow p50 {:.0} ms p99 {:.0} ms; start to ready {:.2} s",
                used * 100.0 / QUIET.as_secs_f64(),
                percentile_ms(&mut deny, 0.5),
                percentile_ms(&mut deny, 0.99),
                percentile_ms(&mut allow, 0.5),
                percentile_ms(&mut allow, 0.99),
                ready.as_secs_f64(),
            );
            agent.stop();
        }
    }
    println!(
        "Start to ready, {NODE_PODS} local pods each selected by one of 10,000 policies (target <= 1 s):"
    );
    // tcx links (the default where the kernel has them) and cls_bpf filters (`--legacy-tc`).
    for (backend, flags) in [
        ("ebpf", &[][..]),
        ("ebpf", &["--legacy-tc"][..]),
        ("iptables", &[][..]),
    ] {
        let (cold, restart) = start_to_ready(backend, flags);
        println!(
            "{backend:>8} {:<13}: start {:.2} s, restart over its own state {:.2} s",
            flags.join(" "),
            cold.as_secs_f64(),
            restart.as_secs_f64()
        );
    }
}
