//! The agent end to end, from an objects directory, on a simulated node with real traffic:
//! the seed scenarios, policy-change latency, restart without a gap, the
//! `disable_network_policy` switch, and bad input.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use netpol_tests::{
    agent::Agent,
    netns::Stream,
    objects::{ObjectsDir, STEP_TIMEOUT, eni_config, metric, play_all, start_agent, within},
    require_root,
    scenarios::{ACCESS_NGINX, World},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn start(world: &World, objects: &ObjectsDir, pin_dir: Option<PathBuf>) -> Agent {
    start_agent(world, objects, &[], pin_dir)
}

#[test]
fn the_four_seed_scenarios_hold_through_an_objects_dir() {
    if !require_root("the_four_seed_scenarios_hold_through_an_objects_dir") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("scenarios");
    let agent = start(&world, &objects, None);
    play_all(&world, &objects, &agent);
}

#[test]
fn policy_changes_take_effect_within_seconds() {
    if !require_root("policy_changes_take_effect_within_seconds") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("latency");
    let agent = start(&world, &objects, None);
    let busybox = &world.node.pods[1].netns;
    let nginx = ip("10.244.1.10");
    let quick = Duration::from_millis(200);
    assert!(
        busybox.tcp_probe_within(nginx, 80, quick),
        "open before any policy"
    );

    // Deny: the first probe that fails marks the change.
    objects.write("policy.yaml", ACCESS_NGINX);
    let deny = within(STEP_TIMEOUT, || !busybox.tcp_probe_within(nginx, 80, quick))
        .expect("the policy denies busybox");
    // Allow again by deleting the policy.
    std::fs::remove_file(objects.0.join("policy.yaml")).expect("delete policy");
    let allow = within(STEP_TIMEOUT, || busybox.tcp_probe_within(nginx, 80, quick))
        .expect("deleting the policy restores access");
    let metrics = agent.metrics(&world.node.node).expect("metrics");
    let programmed = metric(&metrics, "netpol_change_to_programmed_seconds_sum")
        / metric(&metrics, "netpol_change_to_programmed_seconds_count").max(1.0);
    println!(
        "policy change -> probe flips: create {} ms, delete {} ms (object file written to probe result; \
         the directory is read every 250 ms); the agent's own change-to-programmed mean: {:.1} ms",
        deny.as_millis(),
        allow.as_millis(),
        programmed * 1000.0
    );
}

#[test]
fn a_restart_keeps_enforcing_and_protects_pods_added_meanwhile() {
    if !require_root("a_restart_keeps_enforcing_and_protects_pods_added_meanwhile") {
        return;
    }
    let mut world = World::build();
    let objects = ObjectsDir::new("restart");
    objects.write("policy.yaml", ACCESS_NGINX);
    let mut agent = start(&world, &objects, None);
    let pin_dir = agent.pin_dir.clone();
    let nginx = ip("10.244.1.10");
    let (busybox, access) = (1, 2);
    assert!(
        within(STEP_TIMEOUT, || !world.node.pods[busybox]
            .netns
            .tcp_probe(nginx, 80))
        .is_some(),
        "busybox is denied before the restart"
    );
    let _echo = world.node.pods[0].netns.serve_echo(8080);
    // nginx's policy allows pods labelled access=true on every port.
    let stream = Stream::open(&world.node.pods[access].netns, nginx, 8080);

    // kill -9: no cleanup, programs and pinned maps stay.
    agent.cleanup_on_drop = false;
    agent.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !world.node.pods[busybox].netns.tcp_probe(nginx, 80),
        "the denied flow stays denied while the agent is down"
    );

    // A pod selected by the policy appears while the agent is down.
    let late = world.node.add_pod("10.244.1.13");
    let _late_server = world.node.pods[late].netns.serve(80, "late");
    let late_pod = "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx-2\n  namespace: default\n  labels:\n    run: nginx\nspec:\n  nodeName: node-1\n  containers:\n  - name: main\n    image: nginx\nstatus:\n  phase: Running\n  podIP: 10.244.1.13\n  podIPs:\n  - ip: 10.244.1.13\n";
    objects.write("late.yaml", late_pod);
    assert!(
        world.node.pods[busybox]
            .netns
            .tcp_probe(ip("10.244.1.13"), 80),
        "nothing protects the new pod while the agent is down"
    );

    let restarted = std::time::Instant::now();
    let mut agent = start(&world, &objects, Some(pin_dir));
    within(STEP_TIMEOUT, || {
        !world.node.pods[busybox].netns.tcp_probe_within(
            ip("10.244.1.13"),
            80,
            Duration::from_millis(300),
        )
    })
    .expect("the new pod is protected after the restart");
    let protected = restarted.elapsed();
    let (ok, failed) = stream.finish();
    println!(
        "restart: the pod added while the agent was down is protected {} ms after the agent was started again; \
         the allowed stream exchanged {ok} times through kill -9 and restart, {failed} failed",
        protected.as_millis()
    );
    assert_eq!(
        failed, 0,
        "the allowed stream never stalled through kill -9 and restart"
    );
    assert!(ok > 10, "the stream ran throughout");
    assert!(
        !world.node.pods[busybox].netns.tcp_probe(nginx, 80),
        "still denied after the restart"
    );
    agent.cleanup_on_drop = true;
}

#[test]
fn the_disable_network_policy_switch_removes_and_restores_enforcement() {
    if !require_root("the_disable_network_policy_switch_removes_and_restores_enforcement") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("switch");
    objects.write("policy.yaml", ACCESS_NGINX);
    let agent = start(&world, &objects, None);
    let busybox = &world.node.pods[1].netns;
    let nginx = ip("10.244.1.10");
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)).is_some(),
        "enforced"
    );
    objects.write("eni-config.yaml", &eni_config("true"));
    assert!(
        within(STEP_TIMEOUT, || busybox.tcp_probe(nginx, 80)).is_some(),
        "switched off"
    );
    let metrics = agent.metrics(&world.node.node).expect("metrics");
    assert_eq!(
        metric(&metrics, "netpol_enforcement_enabled"),
        0.0,
        "{metrics}"
    );
    objects.write("eni-config.yaml", &eni_config("false"));
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)).is_some(),
        "switched back on"
    );
    let metrics = agent.metrics(&world.node.node).expect("metrics");
    assert_eq!(
        metric(&metrics, "netpol_enforcement_enabled"),
        1.0,
        "{metrics}"
    );
}

#[test]
fn bad_input_is_reported_and_disturbs_nothing_else() {
    if !require_root("bad_input_is_reported_and_disturbs_nothing_else") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("bad-input");
    objects.write("policy.yaml", ACCESS_NGINX);
    let agent = start(&world, &objects, None);
    let (busybox, access) = (&world.node.pods[1].netns, &world.node.pods[2].netns);
    let nginx = ip("10.244.1.10");
    assert!(
        within(STEP_TIMEOUT, || !busybox.tcp_probe(nginx, 80)).is_some(),
        "enforced"
    );

    objects.write(
        "broken.yaml",
        "kind: NetworkPolicy\nmetadata: {name: x, namespace: default\n",
    );
    let bad_cidr = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata:\n  name: bad-cidr\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      access: \"true\"\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/33\n";
    objects.write("bad-cidr.yaml", bad_cidr);
    let ghost = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ghost\n  namespace: default\n  labels:\n    run: nginx\nspec:\n  nodeName: node-1\n  containers:\n  - name: main\n    image: nginx\nstatus:\n  phase: Running\n  podIP: 10.244.1.99\n  podIPs:\n  - ip: 10.244.1.99\n";
    objects.write("ghost.yaml", ghost);

    let reported = within(STEP_TIMEOUT, || {
        let metrics = agent.metrics(&world.node.node).unwrap_or_default();
        metric(
            &metrics,
            "netpol_source_problems_total{reason=\"rejected_document\"}",
        ) >= 1.0
            && metric(
                &metrics,
                "netpol_rejected_objects_total{kind=\"networkpolicy\"",
            ) >= 1.0
            && metric(&metrics, "netpol_endpoints_without_interface") >= 1.0
    });
    let metrics = agent.metrics(&world.node.node).unwrap_or_default();
    assert!(reported.is_some(), "every problem is counted:\n{metrics}");
    let log = agent.log_text();
    assert!(
        log.contains("broken.yaml"),
        "the unparsable file is named in the log"
    );
    assert!(
        log.contains("default/bad-cidr"),
        "the rejected policy is named in the log"
    );
    assert!(
        log.contains("10.244.1.99"),
        "the pod without interface is named in the log"
    );
    assert!(!busybox.tcp_probe(nginx, 80), "enforcement is undisturbed");
    assert!(
        access.tcp_probe(nginx, 80),
        "allowed traffic is undisturbed"
    );
}

/// The safety net on the simulated node (no CNI plugin here): a pod interface whose pod the
/// agent does not know is closed both ways (`unknown_pod`); once the pod's object is in the
/// directory, its traffic follows its policies (none select it here: open).
#[test]
fn a_pod_the_agent_does_not_know_is_closed_until_its_object_arrives() {
    if !require_root("a_pod_the_agent_does_not_know_is_closed_until_its_object_arrives") {
        return;
    }
    let mut world = World::build();
    let objects = ObjectsDir::new("unknown-pod");
    let agent = netpol_tests::objects::start_agent(
        &world,
        &objects,
        &["--pod-interface-prefix", "cali"],
        None,
    );
    let nginx = ip("10.244.1.10");
    let stranger = world.node.add_pod("10.244.1.14");
    let _server = world.node.pods[stranger].netns.serve(80, "stranger");
    within(STEP_TIMEOUT, || {
        !world.node.pods[stranger].netns.tcp_probe(nginx, 80)
    })
    .expect("an unknown pod sends nothing");
    assert!(
        !world.node.pods[1].netns.tcp_probe(ip("10.244.1.14"), 80),
        "nothing reaches an unknown pod"
    );
    // Datapath counters reach /metrics with the next resync (5 s).
    within(Duration::from_secs(12), || {
        agent.metrics(&world.node.node).is_ok_and(|metrics| {
            metric(
                &metrics,
                "netpol_denied_packets_total{reason=\"unknown_pod\"",
            ) > 0.0
        })
    })
    .expect("counted as unknown_pod");

    let pod = "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: stranger\n  namespace: default\n  labels:\n    app: stranger\nspec:\n  nodeName: node-1\n  containers:\n  - name: main\n    image: busybox\nstatus:\n  phase: Running\n  podIP: 10.244.1.14\n  podIPs:\n  - ip: 10.244.1.14\n";
    objects.write("stranger.yaml", pod);
    within(STEP_TIMEOUT, || {
        world.node.pods[stranger].netns.tcp_probe(nginx, 80)
    })
    .expect("known, and selected by no policy: open");
    assert!(world.node.pods[1].netns.tcp_probe(ip("10.244.1.14"), 80));
}
