//! Endpoint discovery against the kernel, on a simulated node (handbook/test-network.md): each
//! pod's address maps to its `cali…` host veth and `uplink0` is the uplink; the watcher reports
//! an added pod, a deleted veth and changed routes within a bounded time, and the next snapshot
//! shows them. Only the test's own namespaces are read or changed; no packet is sent.

use std::{
    net::IpAddr,
    ops::ControlFlow,
    sync::mpsc,
    time::{Duration, Instant},
};

use netpol_agent::discovery::{self, NodeInterfaces, WatchEvent};
use netpol_tests::{
    netns::{SimulatedNode, plan},
    require_root,
};

const LOCAL_PODS: &str = "10.244.1.0/24";
const REMOTE_POD: &str = "10.244.2.10";
const POD_A: &str = "10.244.1.10";
const POD_B: &str = "10.244.1.11";
const POD_C: &str = "10.244.1.12";
const POD_V6: &str = "fd00:10:244:1::10";

/// The watcher's debounce window in these tests.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long a change may take to show in a snapshot, notification included.
const REPORT_WITHIN: Duration = Duration::from_secs(2);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn snapshot(node: &SimulatedNode) -> NodeInterfaces {
    node.node
        .run(discovery::snapshot)
        .expect("snapshot of the node namespace")
}

fn pod_interface_name(interfaces: &NodeInterfaces, address: &str) -> Option<String> {
    interfaces
        .pod_interface(ip(address))
        .map(|link| link.name.clone())
}

fn uplink_names(interfaces: &NodeInterfaces) -> Vec<String> {
    interfaces
        .uplinks()
        .into_iter()
        .map(|link| link.name.clone())
        .collect()
}

/// Starts a watcher in the node namespace that forwards its events to the returned receiver.
fn watch(node: &SimulatedNode) -> (discovery::Watcher, mpsc::Receiver<WatchEvent>) {
    let (events, received) = mpsc::channel();
    let watcher = node
        .node
        .run(|| {
            discovery::watch(DEBOUNCE, move |event| match events.send(event) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            })
        })
        .expect("watcher in the node namespace");
    (watcher, received)
}

/// Waits until the watcher has been quiet for a while and drops what it reported, so the next
/// reports belong to the next change. Returns when the next change starts.
fn settle(events: &mpsc::Receiver<WatchEvent>) -> Instant {
    let deadline = Instant::now() + REPORT_WITHIN;
    while Instant::now() < deadline {
        match events.recv_timeout(DEBOUNCE * 2) {
            Ok(WatchEvent::Changed) => {}
            Ok(WatchEvent::Failed(error)) => panic!("watcher failed: {error:?}"),
            Err(_) => break,
        }
    }
    Instant::now()
}

/// Waits for change reports, taking a snapshot after each, until `done` holds for one; panics
/// when that takes longer than [`REPORT_WITHIN`] since `start`. Returns how long it took.
fn wait_for(
    node: &SimulatedNode,
    events: &mpsc::Receiver<WatchEvent>,
    start: Instant,
    what: &str,
    done: impl Fn(&NodeInterfaces) -> bool,
) -> Duration {
    let deadline = start + REPORT_WITHIN;
    let mut reports = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(remaining) {
            Ok(WatchEvent::Changed) => reports += 1,
            Ok(WatchEvent::Failed(error)) => {
                panic!("watcher failed while waiting for {what}: {error:?}")
            }
            Err(timeout) => panic!(
                "{what}: not seen within {REPORT_WITHIN:?} ({reports} reports, {timeout}); last \
                 snapshot: {:#?}",
                snapshot(node)
            ),
        }
        if done(&snapshot(node)) {
            let took = start.elapsed();
            eprintln!("{what}: seen {took:?} after the change began, {reports} report(s)");
            return took;
        }
    }
}

#[test]
fn a_snapshot_maps_every_pod_to_its_veth_and_finds_the_uplink() {
    if !require_root("a_snapshot_maps_every_pod_to_its_veth_and_finds_the_uplink") {
        return;
    }
    let mut node = SimulatedNode::new(LOCAL_PODS, &[]);
    node.add_pod(POD_A);
    node.add_pod(POD_B);
    node.add_pod_v6(POD_V6);

    let start = Instant::now();
    let interfaces = snapshot(&node);
    eprintln!("snapshot took {:?}", start.elapsed());

    for pod in &node.pods {
        let link = interfaces
            .pod_interface(pod.ip)
            .unwrap_or_else(|| panic!("no interface for pod {}: {interfaces:#?}", pod.ip));
        assert_eq!(link.name, pod.host_veth, "pod {}", pod.ip);
        assert!(
            link.name.len() == 15
                && link.name.starts_with("cali")
                && link.name[4..].chars().all(|c| c.is_ascii_hexdigit()),
            "Terway's host veth names are cali + 11 hex characters: {}",
            link.name
        );
        assert_eq!(interfaces.link_by_index(link.index), Some(link));
        assert_eq!(interfaces.link_by_name(&pod.host_veth), Some(link));
    }
    assert_eq!(uplink_names(&interfaces), [plan::UPLINK]);
    for elsewhere in [
        REMOTE_POD,
        plan::EXT_UPLINK,
        plan::NODE_UPLINK,
        "127.0.0.1",
        "::1",
    ] {
        assert_eq!(
            pod_interface_name(&interfaces, elsewhere),
            None,
            "{elsewhere} is not behind a pod veth"
        );
    }

    let configured = interfaces.with_uplinks(&[plan::UPLINK.to_owned(), "missing0".to_owned()]);
    assert_eq!(uplink_names(&configured), [plan::UPLINK]);
    assert_eq!(configured.missing_uplinks(), ["missing0"]);
}

#[test]
fn the_watcher_reports_pod_and_route_changes_and_the_next_snapshot_shows_them() {
    if !require_root("the_watcher_reports_pod_and_route_changes_and_the_next_snapshot_shows_them") {
        return;
    }
    let mut node = SimulatedNode::new(LOCAL_PODS, &[]);
    node.add_pod(POD_A);
    node.add_pod(POD_B);
    let (watcher, events) = watch(&node);
    let mut slowest = Duration::ZERO;

    // Changes in other namespaces are not this node's: nothing is reported.
    node.ext
        .ip(&["route", "add", "203.0.113.0/24", "via", plan::NODE_UPLINK]);
    node.pods[0]
        .netns
        .ip(&["route", "add", "198.51.100.0/24", "via", plan::POD_GATEWAY]);
    if let Ok(event) = events.recv_timeout(DEBOUNCE * 4) {
        panic!("changes in other namespaces were reported: {event:?}");
    }

    // A new pod.
    let start = settle(&events);
    let c = node.add_pod(POD_C);
    let veth_c = node.pods[c].host_veth.clone();
    slowest = slowest.max(wait_for(&node, &events, start, "a new pod", |interfaces| {
        pod_interface_name(interfaces, POD_C).as_ref() == Some(&veth_c)
    }));

    // A deleted veth takes its pod's route with it.
    let veth_a = node.pods[0].host_veth.clone();
    let start = settle(&events);
    node.node.ip(&["link", "del", &veth_a]);
    slowest = slowest.max(wait_for(
        &node,
        &events,
        start,
        "a deleted veth",
        |interfaces| {
            interfaces.link_by_name(&veth_a).is_none()
                && pod_interface_name(interfaces, POD_A).is_none()
        },
    ));

    // A pod route moved to another veth, then deleted.
    let veth_b = node.pods[1].host_veth.clone();
    let start = settle(&events);
    node.node
        .ip(&["route", "replace", &format!("{POD_C}/32"), "dev", &veth_b]);
    slowest = slowest.max(wait_for(
        &node,
        &events,
        start,
        "a moved pod route",
        |interfaces| pod_interface_name(interfaces, POD_C).as_ref() == Some(&veth_b),
    ));
    let start = settle(&events);
    node.node.ip(&["route", "del", &format!("{POD_C}/32")]);
    slowest = slowest.max(wait_for(
        &node,
        &events,
        start,
        "a deleted pod route",
        |interfaces| {
            pod_interface_name(interfaces, POD_C).is_none()
                && pod_interface_name(interfaces, POD_B).as_ref() == Some(&veth_b)
        },
    ));

    // A second uplink holding an IPv6 default route.
    let start = settle(&events);
    node.node.ip(&[
        "link", "add", "uplink1", "type", "veth", "peer", "name", "uplink1p",
    ]);
    node.node.ip(&["link", "set", "uplink1p", "up"]);
    node.node.ip(&["link", "set", "uplink1", "up"]);
    node.node
        .ip(&["-6", "route", "add", "default", "dev", "uplink1"]);
    slowest = slowest.max(wait_for(
        &node,
        &events,
        start,
        "an IPv6 default route",
        |interfaces| uplink_names(interfaces) == [plan::UPLINK, "uplink1"],
    ));

    // Pods churning in a burst: a single report can cover several changes.
    let first = node.pods.len();
    let start = settle(&events);
    for n in 0..5 {
        node.add_pod(&format!("10.244.1.{}", 20 + n));
    }
    let burst: Vec<(IpAddr, String)> = node.pods[first..]
        .iter()
        .map(|pod| (pod.ip, pod.host_veth.clone()))
        .collect();
    slowest = slowest.max(wait_for(
        &node,
        &events,
        start,
        "a burst of five pods",
        |interfaces| {
            burst.iter().all(|(address, veth)| {
                interfaces.pod_interface(*address).map(|link| &link.name) == Some(veth)
            })
        },
    ));

    eprintln!("slowest change took {slowest:?}");
    watcher.stop();
    let leftover: Vec<WatchEvent> = events.try_iter().collect();
    assert!(
        leftover
            .iter()
            .all(|event| matches!(event, WatchEvent::Changed)),
        "a stopped watcher reports no failure: {leftover:?}"
    );
    assert_eq!(
        events.recv_timeout(Duration::from_secs(1)).err(),
        Some(mpsc::RecvTimeoutError::Disconnected),
        "the stopped watcher dropped its callback"
    );
}
