//! The node debug CLI (`netpol-agent status | endpoints | explain | maps dump | ct list |
//! monitor`) against a real agent on the simulated node, on both backends: names asserted,
//! `explain` held against real probes for every probe of the seed scenarios, drift detected,
//! and the datapath still answering with the agent down.

use std::net::IpAddr;

use netpol_agent::{
    debug::{Explainer, Protocol as ExplainProtocol, Target},
    model::Protocol,
    policy::conformance::{Step, cases},
};
use netpol_tests::{
    agent::Agent,
    conformance::{ConformanceWorld, mismatches},
    objects::{ObjectsDir, STEP_TIMEOUT, start_agent, start_agent_on},
    require_root,
    scenarios::{
        self, DNS_SERVICE, From, NGINX_LB, NGINX_SERVICE, PODS, Probe, Proto, World, play_step,
    },
};

/// Policy is judged after DNAT: a Service address stands for its backend pod here.
fn backend(to: &str) -> &str {
    let pod = |name: &str| {
        PODS.iter()
            .find(|pod| pod.name == name)
            .map(|pod| pod.ip)
            .expect("a pod of the world")
    };
    match to {
        NGINX_SERVICE | NGINX_LB => pod("nginx"),
        DNS_SERVICE => pod("coredns"),
        other => other,
    }
}

fn source(probe: &Probe) -> String {
    match probe.from {
        From::Pod(name) => {
            let pod = PODS
                .iter()
                .find(|pod| pod.name == name)
                .expect("a pod of the world");
            format!("{}/{}", pod.namespace, pod.name)
        }
        From::Outside(address) => address.to_owned(),
    }
}

/// `explain` for a probe, as JSON, and its exit code.
fn explain(agent: &Agent, probe: &Probe) -> (serde_json::Value, i32) {
    let from = source(probe);
    let port = probe.port.to_string();
    let proto = match probe.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let output = agent
        .debug(&[
            "explain",
            "--from",
            &from,
            "--to",
            backend(probe.to),
            "--proto",
            proto,
            "--port",
            &port,
            "-o",
            "json",
        ])
        .expect("explain runs");
    let json = output
        .json()
        .unwrap_or_else(|error| panic!("explain {}: {error:#}", probe.label));
    (json, output.code)
}

#[test]
fn explain_agrees_with_real_probes_through_the_seed_scenarios_on_ebpf() {
    if !require_root("explain_agrees_with_real_probes_through_the_seed_scenarios_on_ebpf") {
        return;
    }
    explain_agrees_with_real_probes(&[]);
}

#[test]
fn explain_agrees_with_real_probes_through_the_seed_scenarios_on_iptables() {
    if !require_root("explain_agrees_with_real_probes_through_the_seed_scenarios_on_iptables") {
        return;
    }
    explain_agrees_with_real_probes(&["--backend", "iptables"]);
}

fn explain_agrees_with_real_probes(flags: &[&str]) {
    let world = World::build();
    let objects = ObjectsDir::new("debug-explain");
    let agent = start_agent(&world, &objects, flags, None);
    let mut checked = 0;
    for scenario in scenarios::scenarios() {
        for step in &scenario.steps {
            let result = play_step(&world, &objects.0, step, STEP_TIMEOUT).expect("the step runs");
            assert!(result.ok(), "{}:\n{}", step.title, result.table());
            for (probe, _, reachable) in &result.rows {
                let (report, code) = explain(&agent, probe);
                assert_eq!(
                    report["allowed"].as_bool(),
                    Some(*reachable),
                    "{} / {}: explain says {report:#}",
                    step.title,
                    probe.label
                );
                assert_eq!(report["drift"], false, "{}: {report:#}", probe.label);
                assert_eq!(code, 0, "{}", probe.label);
                // Both answers are there for every side this node enforces.
                for side in ["egress", "ingress"] {
                    if report[side]["local"] == true {
                        assert_eq!(report[side]["agree"], true, "{}: {report:#}", probe.label);
                        assert!(report[side]["reference"].is_object());
                    }
                }
                checked += 1;
            }
        }
    }
    println!("explain agreed with {checked} real probes ({flags:?})");
}

#[test]
fn explain_agrees_with_real_probes_through_the_conformance_cases_on_ebpf() {
    if !require_root("explain_agrees_with_real_probes_through_the_conformance_cases_on_ebpf") {
        return;
    }
    explain_agrees_through_the_conformance_cases(&[]);
}

#[test]
fn explain_agrees_with_real_probes_through_the_conformance_cases_on_iptables() {
    if !require_root("explain_agrees_with_real_probes_through_the_conformance_cases_on_iptables") {
        return;
    }
    explain_agrees_through_the_conformance_cases(&["--backend", "iptables"]);
}

/// Every case of the engine's conformance tables that real packets can play (TCP and UDP over
/// IPv4): after each change the pods probe every ordered pair until they see the expected
/// verdicts, then `explain` (the CLI's own code, with one reading of the datapath per probe
/// step) must give each pair the verdict its packets had, with both answers agreeing.
fn explain_agrees_through_the_conformance_cases(flags: &[&str]) {
    let mut world = ConformanceWorld::build();
    let objects = ObjectsDir::new("debug-conformance");
    objects.write("cluster.yaml", &world.cluster_yaml());
    let agent = start_agent_on(&world.node, &objects, flags, None);
    let target = Target::new(agent.api_socket.clone(), agent.pin_dir.clone());
    let (mut played, mut skipped, mut explained) = (0, 0, 0);
    for case in cases() {
        world.reset(&objects).expect("the cluster is reset");
        for step in &case.steps {
            let Step::Probe(port, protocol, reach) = step else {
                world.write(step, &objects).expect("the change is written");
                continue;
            };
            let explain_protocol = match protocol {
                Protocol::Tcp => ExplainProtocol::Tcp,
                Protocol::Udp => ExplainProtocol::Udp,
                Protocol::Sctp => {
                    skipped += 1;
                    continue;
                }
            };
            let (observed, matched) = world.await_reach(*port, *protocol, reach, STEP_TIMEOUT);
            assert!(
                matched,
                "{}: real packets did not reach the expected verdicts:\n{}agent log:\n{}",
                case.name,
                mismatches(&observed, reach),
                agent.log_text()
            );
            let reports = world.node.node.run(|| {
                let explainer = Explainer::read(&target)?;
                observed
                    .keys()
                    .map(|(from, to)| {
                        explainer.explain(
                            world.address(from),
                            world.address(to),
                            explain_protocol,
                            *port,
                        )
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            });
            let reports = reports.unwrap_or_else(|error| panic!("{}: {error:#}", case.name));
            for (((from, to), allowed), report) in observed.iter().zip(reports) {
                let what = format!("{}: {from} -> {to} {protocol}/{port}", case.name);
                assert_eq!(report.allowed, *allowed, "{what}: explain says {report:#?}");
                assert!(!report.drift, "{what}: {report:#?}");
                for side in [&report.egress, &report.ingress] {
                    if side.local {
                        assert_eq!(side.agree, Some(true), "{what}: {report:#?}");
                    }
                }
                explained += 1;
            }
            played += 1;
        }
    }
    println!(
        "explain agreed with {explained} real probes over {played} probe steps of the conformance cases ({skipped} SCTP steps skipped; {flags:?})"
    );
}

#[test]
fn status_endpoints_and_maps_name_the_pods_and_policies() {
    if !require_root("status_endpoints_and_maps_name_the_pods_and_policies") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("debug-names");
    let agent = start_agent(&world, &objects, &[], None);
    let step = &scenarios::scenarios()[0].steps[1];
    let result = play_step(&world, &objects.0, step, STEP_TIMEOUT).expect("the step runs");
    assert!(result.ok(), "{}", result.table());

    let status = agent.debug(&["status", "-o", "json"]).expect("status runs");
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json().expect("status JSON");
    assert_eq!(status["agent_running"], true);
    assert_eq!(status["ready"], true);
    assert_eq!(status["backend"], "ebpf");
    assert_eq!(status["node"], scenarios::NODE);
    assert!(
        status["endpoints"]["local"].as_u64() >= Some(6),
        "{status:#}"
    );
    assert!(
        status["maps"]
            .as_array()
            .is_some_and(|maps| maps.iter().any(|map| map["name"] == "NP_POLICY")),
        "{status:#}"
    );
    let table = agent.debug(&["status"]).expect("status runs");
    assert!(
        table.stdout.contains("Enforcement:") && table.stdout.contains("on"),
        "{}",
        table.stdout
    );
    println!("$ netpol-agent status\n{}", table.stdout);
    let table = agent.debug(&["endpoints"]).expect("endpoints runs");
    println!("$ netpol-agent endpoints\n{}", table.stdout);
    let table = agent
        .debug(&[
            "explain",
            "--from",
            "default/busybox",
            "--to",
            "default/nginx",
            "--port",
            "80",
        ])
        .expect("explain runs");
    assert!(
        table.stdout.contains("DENIED")
            && table.stdout.contains("isolated by default/access-nginx"),
        "{}",
        table.stdout
    );
    println!(
        "$ netpol-agent explain --from default/busybox --to default/nginx --port 80\n{}",
        table.stdout
    );

    let endpoints = agent
        .debug(&["endpoints", "-o", "json"])
        .expect("endpoints runs");
    let endpoints = endpoints.json().expect("endpoints JSON");
    let nginx = endpoints
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["pod"] == "default/nginx"))
        .unwrap_or_else(|| panic!("nginx listed: {endpoints:#}"));
    assert_eq!(nginx["ingress"]["isolated"], true, "{nginx:#}");
    assert_eq!(
        nginx["ingress"]["policies"][0], "default/access-nginx",
        "{nginx:#}"
    );
    assert_eq!(nginx["egress"]["isolated"], false, "{nginx:#}");
    assert_eq!(nginx["state"], "enforced", "{nginx:#}");
    assert!(nginx["interface"].is_string(), "{nginx:#}");

    let policy = agent.debug(&["maps", "dump", "policy"]).expect("dump runs");
    assert_eq!(policy.code, 0, "{policy:?}");
    println!("$ netpol-agent maps dump policy\n{}", policy.stdout);
    assert!(
        policy.stdout.contains("default/access-nginx ingress[0]")
            && policy.stdout.contains("default/nginx")
            && policy
                .stdout
                .contains("pods access=true in namespace default"),
        "{}",
        policy.stdout
    );
    let numeric = agent
        .debug(&["maps", "dump", "policy", "--numeric"])
        .expect("dump runs");
    assert!(
        !numeric.stdout.contains("access-nginx"),
        "{}",
        numeric.stdout
    );
    let ipcache = agent
        .debug(&["maps", "dump", "ipcache", "-o", "json"])
        .expect("dump runs")
        .json()
        .expect("ipcache JSON");
    assert!(
        ipcache.as_array().is_some_and(|rows| {
            rows.iter().any(|row| {
                row["pod"] == "default/busybox-access" && row["prefix"] == "10.244.1.12/32"
            })
        }),
        "{ipcache:#}"
    );
    // busybox-access reached nginx in the step: its connection is tracked, with the rule.
    let connections = agent
        .debug(&[
            "ct",
            "list",
            "--pod",
            "default/busybox-access",
            "-o",
            "json",
        ])
        .expect("ct list runs");
    let connections = connections.json().expect("ct JSON");
    println!("$ netpol-agent ct list --pod default/busybox-access -o json\n{connections:#}");
    assert!(
        connections
            .as_array()
            .is_some_and(|rows| rows.iter().any(|row| {
                row["destination_pod"] == "default/nginx"
                    && row["rule_name"]
                        .as_str()
                        .is_some_and(|rule| rule.starts_with("default/access-nginx ingress[0]"))
            })),
        "{connections:#}"
    );
    for map in ["endpoints", "services", "conntrack", "config", "counters"] {
        let dump = agent
            .debug(&["maps", "dump", map, "-o", "json"])
            .expect("dump runs");
        assert_eq!(dump.code, 0, "{map}: {dump:?}");
        dump.json()
            .unwrap_or_else(|error| panic!("{map}: {error:#}"));
    }
}

/// A policy entry removed behind the agent's back: `explain` reports the drift for the flow
/// it allowed, and exits non-zero. Then the agent is stopped: the maps still answer from the
/// pins, named from the names file, and `status` says the agent is down.
#[test]
fn drift_is_reported_and_the_pins_answer_with_the_agent_down() {
    if !require_root("drift_is_reported_and_the_pins_answer_with_the_agent_down") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("debug-drift");
    let mut agent = start_agent(&world, &objects, &[], None);
    let step = &scenarios::scenarios()[0].steps[1];
    let result = play_step(&world, &objects.0, step, STEP_TIMEOUT).expect("the step runs");
    assert!(result.ok(), "{}", result.table());
    let probe = access_probe(&result);
    let (before, code) = explain(&agent, &probe);
    assert_eq!(
        (before["allowed"].as_bool(), code),
        (Some(true), 0),
        "{before:#}"
    );

    // The entry that allowed it, removed as a buggy writer (or a person) might.
    let rule = before["ingress"]["datapath"]["rule"]
        .as_u64()
        .expect("the allowing rule");
    let removed = remove_policy_entries_of_rule(&agent.pin_dir, rule as u32);
    assert!(removed > 0);
    let (after, code) = explain(&agent, &probe);
    assert_eq!(after["drift"], true, "{after:#}");
    assert_eq!(after["ingress"]["agree"], false, "{after:#}");
    assert_eq!(code, 1);
    let table = agent
        .debug(&[
            "explain",
            "--from",
            &source(&probe),
            "--to",
            backend(probe.to),
            "--port",
            "80",
        ])
        .expect("explain runs");
    assert!(table.stdout.contains("DRIFT"), "{}", table.stdout);

    // The agent keeps the names beside its socket (within a resync of a change), goes away,
    // and its pins stay.
    let names_file = agent.api_socket.with_file_name("names.json");
    let current = || {
        std::fs::read_to_string(&names_file).is_ok_and(|text| text.contains("default/access-nginx"))
    };
    let waited = std::time::Instant::now();
    while !current() && waited.elapsed() < std::time::Duration::from_secs(15) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(current(), "the names file was not written within a resync");
    agent.kill();
    let status = agent.debug(&["status", "-o", "json"]).expect("status runs");
    assert_eq!(status.code, 1, "{status:?}");
    let status = status.json().expect("status JSON");
    assert_eq!(status["agent_running"], false, "{status:#}");
    let endpoints = agent
        .debug(&["maps", "dump", "endpoints"])
        .expect("dump runs");
    assert_eq!(endpoints.code, 0, "{endpoints:?}");
    assert!(
        endpoints.stdout.contains("default/nginx") && endpoints.stdout.contains("may be stale"),
        "{}",
        endpoints.stdout
    );
    let (down, _) = explain(&agent, &probe);
    assert!(down["ingress"]["reference"].is_null(), "{down:#}");
    assert_eq!(down["ingress"]["datapath"]["verdict"], "denied", "{down:#}");
    let ip: IpAddr = backend(probe.to).parse().expect("an address");
    assert_eq!(down["to"], ip.to_string());
}

/// Removes every policy map entry crediting `rule` from the maps pinned in `pin_dir`, as an
/// agent bug or a person with bpftool might; returns how many.
fn remove_policy_entries_of_rule(pin_dir: &std::path::Path, rule: u32) -> usize {
    let mut maps =
        netpol_agent::backend::ebpf::Maps::open_pinned(pin_dir).expect("the pinned maps open");
    let entries: Vec<_> = maps
        .policies()
        .expect("the policy map reads")
        .into_iter()
        .filter(|(_, _, entry_rule)| *entry_rule == rule)
        .collect();
    for (prefix_len, key, _) in &entries {
        maps.remove_policy(*prefix_len, *key)
            .expect("the entry is removed");
    }
    entries.len()
}

/// `monitor` shows a denied connection within a second, named, to two subscribers at once;
/// a third that connects and never reads neither stops them nor the agent, through a flood
/// that overruns it.
#[test]
fn monitor_streams_named_drops_to_every_subscriber_and_a_stuck_one_hurts_nobody() {
    use std::io::{BufRead as _, Write as _};
    if !require_root("monitor_streams_named_drops_to_every_subscriber_and_a_stuck_one_hurts_nobody")
    {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("debug-monitor");
    let agent = start_agent(&world, &objects, &[], None);
    let step = &scenarios::scenarios()[0].steps[1];
    let result = play_step(&world, &objects.0, step, STEP_TIMEOUT).expect("the step runs");
    assert!(result.ok(), "{}", result.table());

    // Never reads a byte of its answer.
    let mut stuck = std::os::unix::net::UnixStream::connect(&agent.api_socket).expect("connects");
    stuck
        .write_all(b"GET /v1/monitor HTTP/1.1\r\nhost: agent\r\n\r\n")
        .expect("asks");
    let subscribe = || {
        agent
            .debug_command(&["monitor", "--drops", "--pod", "default/nginx", "-o", "json"])
            .expect("the command")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("monitor starts")
    };
    let mut subscribers = [subscribe(), subscribe()];
    std::thread::sleep(std::time::Duration::from_millis(500));

    // A flood of denied SYNs from busybox to nginx: more events than the stuck subscriber's
    // socket and backlog hold.
    let busybox: IpAddr = "10.244.1.11".parse().expect("an address");
    let nginx: IpAddr = "10.244.1.10".parse().expect("an address");
    let syns: Vec<Vec<u8>> = (0..20_000)
        .map(|_| netpol_tests::raw::tcp_syn(busybox, nginx, 80))
        .collect();
    netpol_tests::raw::send(&world.node.pods[1].netns, &syns);
    let sent = std::time::Instant::now();
    // Then one real denied connection attempt, the one the subscribers must show.
    assert!(!world.node.pods[1].netns.tcp_probe(nginx, 80));

    for subscriber in &mut subscribers {
        let stdout = subscriber.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines.next().expect("an event").expect("a line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(event["kind"], "drop", "{event:#}");
        assert_eq!(event["pod"], "default/nginx", "{event:#}");
        assert_eq!(event["peer"], "default/busybox", "{event:#}");
        assert_eq!(event["reason"], "policy", "{event:#}");
        assert_eq!(event["direction"], "ingress", "{event:#}");
        assert_eq!(event["isolated_by"][0], "default/access-nginx", "{event:#}");
        // Drain until the flood is through: later events keep coming.
        let mut seen = 1;
        while seen < 2_000 {
            match lines.next() {
                Some(Ok(_)) => seen += 1,
                _ => break,
            }
        }
        assert!(seen >= 2_000, "the subscriber stopped after {seen} events");
        let _ = subscriber.kill();
        let _ = subscriber.wait();
    }
    println!(
        "two subscribers read 2000+ named drop events each within {:?} of the flood",
        sent.elapsed()
    );
    let status = agent.debug(&["status", "-o", "json"]).expect("status runs");
    assert_eq!(
        status.code, 0,
        "the agent answers with a stuck subscriber: {status:?}"
    );
    // The stuck subscriber, reading at last, is told what it missed, and it is counted.
    stuck
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("a timeout");
    let mut backlog = Vec::new();
    let mut chunk = [0u8; 65536];
    while let Ok(read) = std::io::Read::read(&mut stuck, &mut chunk) {
        if read == 0 {
            break;
        }
        backlog.extend_from_slice(&chunk[..read]);
    }
    let backlog = String::from_utf8_lossy(&backlog);
    assert!(
        backlog.contains(r#""kind":"lost""#),
        "the stuck subscriber was not told it missed events ({} bytes read)",
        backlog.len()
    );
    let metrics = agent.metrics(&world.node.node).expect("metrics");
    assert!(
        netpol_tests::objects::metric(&metrics, "netpol_monitor_events_lost_total") > 0.0,
        "{metrics}"
    );
}

/// The iptables backend: its drops in `monitor`, its chains and sets dumped with names, and a
/// set member removed behind the agent's back reported as drift.
#[test]
fn iptables_state_is_named_checked_for_drift_and_read_with_the_agent_down() {
    if !require_root("iptables_state_is_named_checked_for_drift_and_read_with_the_agent_down") {
        return;
    }
    let world = World::build();
    let objects = ObjectsDir::new("debug-iptables");
    let mut agent = start_agent(&world, &objects, &["--backend", "iptables"], None);
    let step = &scenarios::scenarios()[0].steps[1];
    let result = play_step(&world, &objects.0, step, STEP_TIMEOUT).expect("the step runs");
    assert!(result.ok(), "{}", result.table());
    let status = agent.debug(&["status", "-o", "json"]).expect("status runs");
    assert_eq!(status.json().expect("JSON")["backend"], "iptables");
    // monitor reads the drop log of the iptables backend (NFLOG) and names it.
    let mut monitor = agent
        .debug_command(&[
            "monitor",
            "--drops",
            "--pod",
            "default/nginx",
            "--max-events",
            "1",
            "-o",
            "json",
        ])
        .expect("the command")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("monitor starts");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let nginx: IpAddr = "10.244.1.10".parse().expect("an address");
    assert!(
        !world.node.pods[1].netns.tcp_probe(nginx, 80),
        "busybox is denied"
    );
    let waited = std::time::Instant::now();
    while monitor.try_wait().ok().flatten().is_none()
        && waited.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = monitor.kill();
    let output = monitor.wait_with_output().expect("monitor ends");
    let line = String::from_utf8_lossy(&output.stdout);
    let event: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|error| {
        panic!(
            "{error}: {line:?} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(event["pod"], "default/nginx", "{event:#}");
    assert_eq!(event["peer"], "default/busybox", "{event:#}");
    assert_eq!(event["direction"], "ingress", "{event:#}");
    assert_eq!(event["isolated_by"][0], "default/access-nginx", "{event:#}");

    let endpoints = agent
        .debug(&["endpoints", "-o", "json"])
        .expect("endpoints runs")
        .json()
        .expect("endpoints JSON");
    assert!(
        endpoints.as_array().is_some_and(|rows| rows
            .iter()
            .any(|row| row["pod"] == "default/nginx"
                && row["ingress"]["policies"][0] == "default/access-nginx"
                && row["state"] == "enforced")),
        "{endpoints:#}"
    );
    let chains = agent.debug(&["maps", "dump", "chains"]).expect("dump runs");
    assert_eq!(chains.code, 0, "{chains:?}");
    assert!(
        chains
            .stdout
            .contains("default/access-nginx ingress[0].from[0].ports[*]")
            && chains
                .stdout
                .contains("pods access=true in namespace default"),
        "{}",
        chains.stdout
    );
    let sets = agent
        .debug(&["maps", "dump", "ipsets", "-o", "json"])
        .expect("dump runs")
        .json()
        .expect("JSON");
    let member = sets
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|row| row["pod"] == "default/busybox-access")
        })
        .unwrap_or_else(|| panic!("busybox-access is a set member: {sets:#}"))
        .clone();
    // The kernel's connection table, named: busybox-access reached nginx in the step, and
    // the rule that admits that connection is named.
    let connections = agent
        .debug(&[
            "ct",
            "list",
            "--pod",
            "default/busybox-access",
            "-o",
            "json",
        ])
        .expect("ct list runs");
    assert_eq!(connections.code, 0, "{connections:?}");
    let connections = connections.json().expect("ct JSON");
    println!("$ netpol-agent ct list --pod default/busybox-access -o json\n{connections:#}");
    assert!(
        connections
            .as_array()
            .is_some_and(|rows| rows.iter().any(|row| {
                row["source_pod"] == "default/busybox-access"
                    && row["destination_pod"] == "default/nginx"
                    && row["rule_name"]
                        .as_str()
                        .is_some_and(|rule| rule.starts_with("default/access-nginx ingress[0]"))
            })),
        "{connections:#}"
    );
    let probe = access_probe(&result);
    let (before, code) = explain(&agent, &probe);
    assert_eq!(
        (before["drift"].as_bool(), code),
        (Some(false), 0),
        "{before:#}"
    );

    let set = member["set"].as_str().expect("a set name");
    let entry = member["entry"].as_str().expect("an entry");
    let removed = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            world.node.node.name(),
            "ipset",
            "del",
            set,
            entry,
        ])
        .status()
        .expect("ipset runs");
    assert!(removed.success());
    let (after, code) = explain(&agent, &probe);
    assert_eq!(after["drift"], true, "{after:#}");
    assert_eq!(
        after["ingress"]["datapath"]["verdict"], "denied",
        "{after:#}"
    );
    assert_eq!(code, 1);

    // With the agent down, status reads the chains and sets it left behind.
    agent.kill();
    let status = agent.debug(&["status", "-o", "json"]).expect("status runs");
    assert_eq!(status.code, 1, "{status:?}");
    let status = status.json().expect("status JSON");
    assert_eq!(status["agent_running"], false, "{status:#}");
    assert_eq!(
        status["backend"], "iptables (from its chains)",
        "{status:#}"
    );
    assert_eq!(status["enforcement"], true, "{status:#}");
    // The one set member was removed above; the rules are all there.
    let map = |name: &str| {
        status["maps"]
            .as_array()
            .and_then(|maps| maps.iter().find(|map| map["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in {status:#}"))
            .clone()
    };
    assert!(
        map("iptables_rules")["entries"].as_u64() > Some(0),
        "{status:#}"
    );
    assert_eq!(map("ipset_entries")["entries"], 0, "{status:#}");
}

/// The probe of the step in which busybox-access reaches nginx.
fn access_probe(result: &scenarios::StepResult) -> Probe {
    result
        .rows
        .iter()
        .find(|(probe, expected, _)| *expected && matches!(probe.from, From::Pod("busybox-access")))
        .map(|(probe, ..)| *probe)
        .expect("busybox-access reaches nginx")
}
