//! The drop and audit events as a stream for `netpol-agent monitor`.
//!
//! The perf buffers have one reader, the agent's event thread; it hands every event to the
//! [`EventHub`], which keeps the last [`HISTORY`] for `--since` and broadcasts to subscribers
//! over a bounded channel. Publishing never blocks: a subscriber that falls behind loses the
//! oldest events (counted, and told how many), and neither the event thread nor the datapath
//! ever waits for it.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::{
    events::{EVENT_AUDIT, PolicyEvent},
    metrics::DropReason,
    policy::DIR_INGRESS,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{backend::ebpf::EventSink, metrics::Metrics, policy::Names};

/// Events kept for `--since`.
pub const HISTORY: usize = 4096;
/// Events a subscriber may fall behind by before it loses the oldest.
const BACKLOG: usize = 4096;

/// An event as the datapath reported it, with when the agent read it.
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    pub at: SystemTime,
    pub event: PolicyEvent,
}

/// Fans the events out to `monitor` subscribers.
pub struct EventHub {
    sender: broadcast::Sender<RawEvent>,
    history: Mutex<VecDeque<RawEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }
}

impl EventHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Never blocks: with no subscriber the event only goes to the history.
    pub fn publish(&self, event: RawEvent) {
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event);
        drop(history);
        let _ = self.sender.send(event);
    }

    /// A new subscription, and the kept events of the last `since` (none without it).
    pub fn subscribe(
        &self,
        since: Option<Duration>,
    ) -> (Vec<RawEvent>, broadcast::Receiver<RawEvent>) {
        let history = self
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Subscribed under the lock: no event falls between the history and the stream.
        let receiver = self.sender.subscribe();
        let past = match since {
            Some(since) => {
                let from = SystemTime::now() - since;
                history
                    .iter()
                    .filter(|event| event.at >= from)
                    .copied()
                    .collect()
            }
            None => Vec::new(),
        };
        (past, receiver)
    }
}

/// What the event thread feeds: the metrics' counts and the hub's stream.
pub struct EventFanout {
    pub metrics: Arc<Metrics>,
    pub hub: Arc<EventHub>,
}

impl EventSink for EventFanout {
    fn count(&self, seen: u64, lost: u64) {
        self.metrics.count_events(seen, lost);
    }

    fn event(&self, event: &PolicyEvent) {
        self.hub.publish(RawEvent {
            at: SystemTime::now(),
            event: *event,
        });
    }
}

/// One line of `netpol-agent monitor -o json` (and of the agent's `/v1/monitor` stream).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// Seconds since the epoch, with milliseconds.
    pub time: String,
    /// `drop` or `audit` (would have dropped), or `lost` for events this subscriber missed
    /// (`count` of them).
    pub kind: String,
    pub count: u64,
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    pub protocol: u32,
    /// `ingress` (to the pod) or `egress` (from the pod).
    pub direction: String,
    pub reason: String,
    pub endpoint_id: u32,
    /// The local pod the decision was for.
    pub pod: Option<String>,
    /// The pod at the other end, if the node knows it.
    pub peer: Option<String>,
    /// For policy drops: the policies that isolate the pod in this direction.
    pub isolated_by: Vec<String>,
}

impl MonitorEvent {
    /// `raw`, named with `names`.
    pub fn named(raw: &RawEvent, names: &Names) -> Self {
        let event = &raw.event;
        let time = raw
            .at
            .duration_since(UNIX_EPOCH)
            .map(|since| format!("{}.{:03}", since.as_secs(), since.subsec_millis()))
            .unwrap_or_default();
        let ingress = event.direction == u32::from(DIR_INGRESS);
        let (src, dst) = (event.src.to_ip(), event.dst.to_ip());
        let (local, peer) = if ingress { (dst, src) } else { (src, dst) };
        let pod = names
            .endpoints
            .get(&event.endpoint)
            .cloned()
            .or_else(|| local.and_then(|ip| names.pod_at(ip)).map(str::to_owned));
        // The iptables backend's events carry no endpoint id: found by the pod.
        let endpoint = match event.endpoint {
            0 => names
                .endpoints
                .iter()
                .find(|(_, name)| Some(*name) == pod.as_ref())
                .map_or(0, |(id, _)| *id),
            id => id,
        };
        let reason = DropReason::ALL
            .iter()
            .find(|reason| **reason as u32 == event.reason)
            .map_or("unknown", |reason| reason.name());
        let isolated_by = if reason == DropReason::Policy.name() {
            names
                .isolated_by
                .get(&endpoint)
                .map(|isolation| {
                    if ingress {
                        isolation.ingress.clone()
                    } else {
                        isolation.egress.clone()
                    }
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Self {
            time,
            kind: if event.flags & EVENT_AUDIT != 0 {
                "audit"
            } else {
                "drop"
            }
            .to_owned(),
            count: 1,
            src,
            sport: event.sport,
            dst,
            dport: event.dport,
            protocol: event.protocol,
            direction: if ingress { "ingress" } else { "egress" }.to_owned(),
            reason: reason.to_owned(),
            endpoint_id: endpoint,
            pod,
            peer: peer.and_then(|ip| names.pod_at(ip)).map(str::to_owned),
            isolated_by,
        }
    }

    /// The notice that a subscriber missed `count` events.
    pub fn lost(count: u64) -> Self {
        Self {
            kind: "lost".to_owned(),
            count,
            ..Self::default()
        }
    }
}
