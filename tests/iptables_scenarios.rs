//! The agent end to end with `--backend iptables` (and `--backend auto` on an assumed old
//! kernel), from an objects directory on a simulated node with real traffic: the four seed
//! scenarios, the `disable_network_policy` switch, counters, and `cleanup`.

use netpol_tests::{
    agent::Agent,
    objects::{ObjectsDir, STEP_TIMEOUT, eni_config, metric, play_all, start_agent, within},
    require_root,
    scenarios::{ACCESS_NGINX, World},
};

fn start(world: &World, objects: &ObjectsDir, backend: &[&str]) -> Agent {
    start_agent(world, objects, backend, None)
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

#[test]
fn the_four_seed_scenarios_hold_with_the_iptables_backend() {
    if !require_root("the_four_seed_scenarios_hold_with_the_iptables_backend") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("scenarios");
    let agent = start(&world, &objects, &["--backend", "iptables"]);
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
    let agent = start(
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
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)).is_some(),
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
    let agent = start(&world, &objects, &["--backend", "iptables"]);
    let nginx = "10.244.1.10".parse().expect("address");
    let (busybox, access) = (&world.node.pods[1].netns, &world.node.pods[2].netns);
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)).is_some(),
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
    assert!(counted.is_some(), "policy drops are counted:\n{metrics}");
    objects.write("eni-config.yaml", &eni_config("true"));
    assert!(
        within(STEP_TIMEOUT, || busybox.tcp_probe(nginx, 80)).is_some(),
        "switched off"
    );
    objects.write("eni-config.yaml", &eni_config("false"));
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)).is_some(),
        "switched back on"
    );
}
