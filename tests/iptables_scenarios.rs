//! The agent end to end with `--backend iptables` (and `--backend auto` on an assumed old
//! kernel), from an objects directory on a simulated node with real traffic: the four seed
//! scenarios, the `disable_network_policy` switch, counters, and `cleanup`.

use std::{path::PathBuf, time::Duration};

use netpol_tests::{
    agent::{Agent, AgentOptions},
    require_root,
    scenarios::{ACCESS_NGINX, NODE, World, cluster_yaml, play_step, scenarios, write_atomically},
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary objects directory, removed on drop.
struct ObjectsDir(PathBuf);

impl ObjectsDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("netpol-ipt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("objects dir");
        write_atomically(&path.join("cluster.yaml"), &cluster_yaml()).expect("cluster objects");
        Self(path)
    }

    fn write(&self, name: &str, content: &str) {
        write_atomically(&self.0.join(name), content).expect("write object file");
    }
}

impl Drop for ObjectsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_agent(world: &World, objects: &ObjectsDir, backend: &[&str]) -> Agent {
    let mut extra: Vec<String> = backend.iter().map(|arg| (*arg).to_owned()).collect();
    extra.extend(["--service-cidr".to_owned(), "10.96.0.0/16".to_owned()]);
    let mut agent = Agent::start(
        &world.node.node,
        AgentOptions {
            node_name: NODE.to_owned(),
            source: vec!["--objects-dir".to_owned(), objects.0.display().to_string()],
            extra,
            pin_dir: None,
        },
    )
    .expect("the agent starts");
    agent
        .wait_ready(&world.node.node, READY_TIMEOUT)
        .expect("the agent gets ready");
    agent
}

fn within(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `iptables-save` of the node (whatever flavour), for assertions about what is left.
fn node_rules(world: &World) -> String {
    let mut all = String::new();
    for program in [
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
    ] {
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", world.node.node.name(), program])
            .output()
            .expect("iptables-save runs");
        all.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    all
}

fn play_all(world: &World, objects: &ObjectsDir, agent: &Agent) {
    for scenario in scenarios() {
        for step in &scenario.steps {
            let result = play_step(world, &objects.0, step, STEP_TIMEOUT).expect("step runs");
            assert!(
                result.ok(),
                "{} / {}:\n{}\nagent log:\n{}",
                scenario.title,
                step.title,
                result.table(),
                agent.log_text()
            );
        }
    }
}

#[test]
fn the_four_seed_scenarios_hold_with_the_iptables_backend() {
    if !require_root("the_four_seed_scenarios_hold_with_the_iptables_backend") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("scenarios");
    let agent = start_agent(&world, &objects, &["--backend", "iptables"]);
    play_all(&world, &objects, &agent);
    let metrics = agent.metrics(&world.node.node).expect("metrics");
    assert!(
        metrics.contains("netpol_backend_info{backend=\"iptables\"} 1"),
        "{metrics}"
    );
    drop(agent);
    let left = node_rules(&world);
    assert!(
        !left.contains("NP-"),
        "cleanup removes every chain and jump of ours:\n{left}"
    );
}

#[test]
fn auto_picks_iptables_on_a_kernel_older_than_4_19_and_enforces() {
    if !require_root("auto_picks_iptables_on_a_kernel_older_than_4_19_and_enforces") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("auto");
    objects.write("policy.yaml", ACCESS_NGINX);
    let agent = start_agent(
        &world,
        &objects,
        &["--backend", "auto", "--assume-kernel", "4.14"],
    );
    let metrics = agent.metrics(&world.node.node).expect("metrics");
    assert!(
        metrics.contains("netpol_backend_info{backend=\"iptables\"} 1"),
        "auto picked iptables:\n{metrics}\n{}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("older than 4.19"),
        "the log says why"
    );
    let nginx = "10.244.1.10".parse().expect("address");
    let (busybox, access) = (&world.node.pods[1].netns, &world.node.pods[2].netns);
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)),
        "denied"
    );
    assert!(access.tcp_probe(nginx, 80), "allowed");
    assert!(
        node_rules(&world).contains("NP-FORWARD"),
        "enforced by our chains"
    );
}

#[test]
fn the_switch_and_counters_work_with_the_iptables_backend() {
    if !require_root("the_switch_and_counters_work_with_the_iptables_backend") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("switch");
    objects.write("policy.yaml", ACCESS_NGINX);
    let agent = start_agent(&world, &objects, &["--backend", "iptables"]);
    let nginx = "10.244.1.10".parse().expect("address");
    let (busybox, access) = (&world.node.pods[1].netns, &world.node.pods[2].netns);
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)),
        "enforced"
    );
    assert!(access.tcp_probe(nginx, 80), "allowed");
    let counted = within(STEP_TIMEOUT, || {
        let metrics = agent.metrics(&world.node.node).unwrap_or_default();
        metric(
            &metrics,
            "netpol_denied_packets_total{reason=\"policy\",direction=\"ingress\"",
        ) >= 1.0
    });
    let metrics = agent.metrics(&world.node.node).unwrap_or_default();
    assert!(counted, "policy drops are counted:\n{metrics}");
    let eni_config = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: eni-config\n  namespace: kube-system\ndata:\n  disable_network_policy: \"{value}\"\n"
        )
    };
    objects.write("eni-config.yaml", &eni_config("true"));
    assert!(
        within(STEP_TIMEOUT, || busybox.tcp_probe(nginx, 80)),
        "switched off"
    );
    objects.write("eni-config.yaml", &eni_config("false"));
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)),
        "switched back on"
    );
}
