//! What the agent reports on `/metrics` (Prometheus text format) and in `netpol-agent status`
//! (served by `http.rs`).
//!
//! The runtime updates [`Metrics`]; the datapath's counters are read from the backend when
//! scraped, so they are as fresh as the kernel's.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    backend::{Counters, MapUsage},
    debug::report::{EndpointCounts, FailingWatch, MapStatus, Rejection, StatusReport},
    source::ObjectKind,
};

/// Upper bounds (seconds) of the change-to-programmed latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A histogram of [`LATENCY_BUCKETS`].
fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Everything `/metrics` shows that the runtime knows (the datapath's counters come from the
/// backend at scrape time).
#[derive(Debug, Default)]
pub struct Metrics {
    ready: AtomicBool,
    enforcing: AtomicBool,
    inner: Mutex<Inner>,
    events_lost: AtomicU64,
    events_seen: AtomicU64,
    monitor_lost: AtomicU64,
}

#[derive(Clone, Debug)]
struct Inner {
    backend: &'static str,
    objects: BTreeMap<&'static str, u64>,
    rejections: BTreeMap<(&'static str, String), u64>,
    source_problems: BTreeMap<&'static str, u64>,
    endpoints: u64,
    endpoints_without_interface: u64,
    endpoints_not_enforced: BTreeMap<NotEnforced, u64>,
    endpoints_selected: u64,
    sources_failing: BTreeMap<ObjectKind, (Duration, String)>,
    service_ranges: u64,
    dead: Option<String>,
    not_ready_reason: String,
    switch_off_by_odd_value: u64,
    programming_errors: BTreeMap<&'static str, u64>,
    latency: Histogram,
    cni_requests: BTreeMap<&'static str, u64>,
    cni_add: Histogram,
    cni_chained: Option<bool>,
    counters: Counters,
    usage: Vec<MapUsage>,
    rule_names: BTreeMap<u32, RuleLabels>,
    last_full_sync: Option<Instant>,
    last_programmed: Option<Instant>,
    /// The objects refused now, by (kind, object), with the first reason.
    rejected: BTreeMap<(&'static str, String), String>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            backend: "",
            objects: BTreeMap::new(),
            rejections: BTreeMap::new(),
            source_problems: BTreeMap::new(),
            endpoints: 0,
            endpoints_without_interface: 0,
            endpoints_not_enforced: BTreeMap::new(),
            endpoints_selected: 0,
            sources_failing: BTreeMap::new(),
            service_ranges: 0,
            dead: None,
            not_ready_reason: String::new(),
            switch_off_by_odd_value: 0,
            programming_errors: BTreeMap::new(),
            latency: latency_histogram(),
            cni_requests: BTreeMap::new(),
            cni_add: latency_histogram(),
            cni_chained: None,
            counters: Counters::default(),
            usage: Vec::new(),
            rule_names: BTreeMap::new(),
            last_full_sync: None,
            last_programmed: None,
            rejected: BTreeMap::new(),
        }
    }
}

/// At most this many refused objects are listed by `status` (all are counted).
const REJECTED_LISTED: usize = 256;

/// Why a selected local pod is not enforced as its policies say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotEnforced {
    /// No host interface routes to it: nothing judges its ingress at its own interface.
    NoInterface,
    /// Its interface is known but attaching the programs failed (retried every resync).
    NotAttached,
    /// A write it depends on failed: it is denied everything new until the write succeeds.
    NotProgrammed,
}

impl NotEnforced {
    pub const ALL: [Self; 3] = [Self::NoInterface, Self::NotAttached, Self::NotProgrammed];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoInterface => "no_interface",
            Self::NotAttached => "not_attached",
            Self::NotProgrammed => "not_programmed",
        }
    }
}

/// How a rule id is named in metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleLabels {
    pub policy: String,
    pub direction: &'static str,
    pub rule: String,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Ready, or not ready with the reason `/readyz` gives.
    pub fn set_readiness(&self, readiness: Result<(), String>) {
        self.ready.store(readiness.is_ok(), Ordering::Relaxed);
        self.with(|inner| inner.not_ready_reason = readiness.err().unwrap_or_default());
    }

    /// Why `/readyz` fails (empty when ready).
    pub fn not_ready_reason(&self) -> String {
        self.with(|inner| inner.not_ready_reason.clone())
    }

    /// Selected local pods that are not enforced as their policies say, by reason.
    pub fn set_endpoints_not_enforced(&self, selected: u64, counts: BTreeMap<NotEnforced, u64>) {
        self.with(|inner| {
            inner.endpoints_selected = selected;
            inner.endpoints_not_enforced = counts;
        });
    }

    /// Service ranges and addresses whose egress is judged after DNAT.
    pub fn set_service_ranges(&self, count: u64) {
        self.with(|inner| inner.service_ranges = count);
    }

    /// Kinds whose watch is failing, for how long, and the last error.
    pub fn set_sources_failing(&self, failing: BTreeMap<ObjectKind, (Duration, String)>) {
        self.with(|inner| inner.sources_failing = failing);
    }

    /// `disable_network_policy` turned enforcement off with a value other than "true" or "1".
    pub fn count_switch_off_by_odd_value(&self) {
        self.with(|inner| inner.switch_off_by_odd_value += 1);
    }

    /// A core task died: `/healthz` fails from now on (the process is about to exit).
    pub fn set_dead(&self, reason: String) {
        self.with(|inner| inner.dead = Some(reason));
    }

    /// Why `/healthz` fails, if it does.
    pub fn dead_reason(&self) -> Option<String> {
        self.with(|inner| inner.dead.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_enforcing(&self, enforcing: bool) {
        self.enforcing.store(enforcing, Ordering::Relaxed);
    }

    pub fn is_enforcing(&self) -> bool {
        self.enforcing.load(Ordering::Relaxed)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters more than losing metrics: recover the guard.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut inner)
    }

    pub fn set_backend(&self, name: &'static str) {
        self.with(|inner| inner.backend = name);
    }

    pub fn set_objects(&self, kind: &'static str, count: u64) {
        self.with(|inner| {
            inner.objects.insert(kind, count);
        });
    }

    pub fn count_rejection(&self, kind: &'static str, reason: &str) {
        self.with(|inner| {
            *inner
                .rejections
                .entry((kind, reason_class(reason)))
                .or_default() += 1;
        });
    }

    /// An object (or part of one) refused now; listed by `status` until it converts cleanly
    /// or goes.
    pub fn note_rejected(&self, kind: &'static str, object: &str, reason: &str) {
        self.with(|inner| {
            let key = (kind, object.to_owned());
            if inner.rejected.len() < REJECTED_LISTED || inner.rejected.contains_key(&key) {
                inner
                    .rejected
                    .entry(key)
                    .or_insert_with(|| reason.to_owned());
            }
        });
    }

    /// The object converts cleanly now, or is gone.
    pub fn clear_rejected(&self, kind: &'static str, object: &str) {
        self.with(|inner| {
            inner.rejected.remove(&(kind, object.to_owned()));
        });
    }

    /// The node converged the whole state.
    pub fn note_full_sync(&self) {
        self.with(|inner| inner.last_full_sync = Some(Instant::now()));
    }

    /// The node holds the desired state after a change.
    pub fn note_programmed(&self) {
        self.with(|inner| inner.last_programmed = Some(Instant::now()));
    }

    /// The parts of `netpol-agent status` the runtime reports here.
    pub fn fill_status(&self, report: &mut StatusReport) {
        report.ready = self.is_ready();
        report.enforcement = self.is_enforcing();
        self.with(|inner| {
            report.backend = inner.backend.to_owned();
            if !report.ready {
                report.not_ready_reason = Some(inner.not_ready_reason.clone());
            }
            report.failing_watches = inner
                .sources_failing
                .iter()
                .map(|(kind, (failing, error))| FailingWatch {
                    kind: kind.name().to_owned(),
                    seconds: failing.as_secs(),
                    error: error.clone(),
                })
                .collect();
            report.seconds_since_full_sync =
                inner.last_full_sync.map(|at| at.elapsed().as_secs_f64());
            report.seconds_since_change_programmed =
                inner.last_programmed.map(|at| at.elapsed().as_secs_f64());
            let not_enforced: u64 = inner.endpoints_not_enforced.values().sum();
            let selected = inner.endpoints_selected;
            report.endpoints = EndpointCounts {
                local: inner.endpoints,
                enforced: selected.saturating_sub(not_enforced),
                not_enforced: inner
                    .endpoints_not_enforced
                    .iter()
                    .map(|(reason, count)| (reason.name().to_owned(), *count))
                    .collect(),
            };
            report.maps = inner
                .usage
                .iter()
                .map(|usage| MapStatus {
                    name: usage.name.to_owned(),
                    entries: usage.entries,
                    capacity: usage.capacity,
                })
                .collect();
            report.rejected_objects = inner
                .rejected
                .iter()
                .map(|((kind, object), reason)| Rejection {
                    kind: (*kind).to_owned(),
                    object: object.clone(),
                    reason: reason.clone(),
                })
                .collect();
            report.programming_errors = inner
                .programming_errors
                .iter()
                .map(|(what, count)| ((*what).to_owned(), *count))
                .collect();
            report.cni_chained = inner.cni_chained;
        });
    }

    pub fn count_source_problem(&self, reason: &'static str) {
        self.with(|inner| *inner.source_problems.entry(reason).or_default() += 1);
    }

    pub fn count_programming_error(&self, what: &'static str) {
        self.with(|inner| *inner.programming_errors.entry(what).or_default() += 1);
    }

    pub fn set_endpoints(&self, endpoints: u64, without_interface: u64) {
        self.with(|inner| {
            inner.endpoints = endpoints;
            inner.endpoints_without_interface = without_interface;
        });
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.with(|inner| inner.latency.observe(latency.as_secs_f64()));
    }

    /// A request of the CNI plugin (`add`, `del`, `check`, `add_timeout`).
    pub fn count_cni_request(&self, what: &'static str) {
        self.with(|inner| *inner.cni_requests.entry(what).or_default() += 1);
    }

    /// From a CNI ADD reaching the agent to its pod enforced (the pod start it costs).
    pub fn observe_cni_add(&self, latency: Duration) {
        self.with(|inner| inner.cni_add.observe(latency.as_secs_f64()));
    }

    /// Whether the node's CNI chain includes the plugin (`None`: not managed).
    pub fn set_cni_chained(&self, chained: bool) {
        self.with(|inner| inner.cni_chained = Some(chained));
    }

    /// The datapath's counters and map usage, as last read by the runtime.
    pub fn set_datapath(&self, counters: Counters, usage: Vec<MapUsage>) {
        self.with(|inner| {
            inner.counters = counters;
            inner.usage = usage;
        });
    }

    pub fn set_rule_names(&self, names: BTreeMap<u32, RuleLabels>) {
        self.with(|inner| inner.rule_names = names);
    }

    /// Events a slow `monitor` subscriber missed.
    pub fn count_monitor_lost(&self, missed: u64) {
        self.monitor_lost.fetch_add(missed, Ordering::Relaxed);
    }

    pub fn count_events(&self, seen: u64, lost: u64) {
        self.events_seen.fetch_add(seen, Ordering::Relaxed);
        self.events_lost.fetch_add(lost, Ordering::Relaxed);
    }

    /// The exposition of `/metrics` (OpenMetrics text, which Prometheus reads).
    pub fn render(&self) -> String {
        let exposition = Exposition {
            inner: self.with(|inner| inner.clone()),
            ready: self.is_ready(),
            enforcing: self.is_enforcing(),
            events_seen: self.events_seen.load(Ordering::Relaxed),
            events_lost: self.events_lost.load(Ordering::Relaxed),
            monitor_lost: self.monitor_lost.load(Ordering::Relaxed),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(exposition));
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        out
    }
}

/// A scrape's copy of everything `/metrics` shows; every family is declared here once.
#[derive(Debug)]
struct Exposition {
    inner: Inner,
    ready: bool,
    enforcing: bool,
    events_seen: u64,
    events_lost: u64,
    monitor_lost: u64,
}

type Labels = Vec<(&'static str, LabelValue)>;

/// A label value, escaped as the exposition format wants (the encoder writes values as they
/// are): every label goes through this type.
#[derive(Debug)]
struct LabelValue(String);

impl From<String> for LabelValue {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let inner = &self.inner;
        let e = &mut encoder;
        gauge(
            e,
            "netpol_ready",
            "1 while the node holds the desired state and every selected local pod is enforced.",
            i64::from(self.ready),
        )?;
        gauge(
            e,
            "netpol_enforcement_enabled",
            "0 while disable_network_policy is set.",
            i64::from(self.enforcing),
        )?;
        gauges(
            e,
            "netpol_backend_info",
            "The backend in use.",
            [(
                vec![("backend", LabelValue::from(inner.backend.to_owned()))],
                1,
            )],
        )?;
        gauges(
            e,
            "netpol_objects",
            "Cluster objects known, by kind.",
            inner.objects.iter().map(|(kind, count)| {
                (
                    vec![("kind", LabelValue::from((*kind).to_owned()))],
                    as_gauge(*count),
                )
            }),
        )?;
        counters(
            e,
            "netpol_rejected_objects",
            "Objects or parts rejected, by kind and reason.",
            inner.rejections.iter().map(|((kind, reason), count)| {
                (
                    vec![
                        ("kind", LabelValue::from((*kind).to_owned())),
                        ("reason", LabelValue::from(reason.clone())),
                    ],
                    *count,
                )
            }),
        )?;
        counters(
            e,
            "netpol_source_problems",
            "Unreadable inputs and failed watches, by reason.",
            inner.source_problems.iter().map(|(reason, count)| {
                (
                    vec![("reason", LabelValue::from((*reason).to_owned()))],
                    *count,
                )
            }),
        )?;
        counters(
            e,
            "netpol_programming_errors",
            "Failed backend operations, by operation.",
            inner.programming_errors.iter().map(|(what, count)| {
                (
                    vec![("operation", LabelValue::from((*what).to_owned()))],
                    *count,
                )
            }),
        )?;
        gauges(
            e,
            "netpol_source_failing_seconds",
            "How long the watch of a kind has been failing (kinds whose watch works are absent).",
            inner.sources_failing.iter().map(|(kind, (failing, _))| {
                (
                    vec![("kind", LabelValue::from(kind.name().to_owned()))],
                    as_gauge(failing.as_secs()),
                )
            }),
        )?;
        gauge(
            e,
            "netpol_service_ranges",
            "Service ranges (flags) and Service addresses (learned) whose egress is judged after DNAT.",
            as_gauge(inner.service_ranges),
        )?;
        gauge(
            e,
            "netpol_endpoints",
            "Local pods enforced on this node.",
            as_gauge(inner.endpoints),
        )?;
        gauges(
            e,
            "netpol_endpoints_not_enforced",
            "Selected local pods not enforced as their policies say, by reason (not_programmed pods are denied everything).",
            NotEnforced::ALL.into_iter().map(|reason| {
                (
                    vec![("reason", LabelValue::from(reason.name().to_owned()))],
                    as_gauge(
                        inner
                            .endpoints_not_enforced
                            .get(&reason)
                            .copied()
                            .unwrap_or(0),
                    ),
                )
            }),
        )?;
        counters(
            e,
            "netpol_switch_off_by_odd_value",
            "Times disable_network_policy turned enforcement off with a value other than \"true\" or \"1\".",
            [(Labels::new(), inner.switch_off_by_odd_value)],
        )?;
        gauge(
            e,
            "netpol_endpoints_without_interface",
            "Local pods whose host interface was not found.",
            as_gauge(inner.endpoints_without_interface),
        )?;
        gauges(
            e,
            "netpol_map_entries",
            "Entries per datapath map.",
            inner.usage.iter().map(|usage| {
                (
                    vec![("map", LabelValue::from(usage.name.to_owned()))],
                    as_gauge(usage.entries),
                )
            }),
        )?;
        gauges(
            e,
            "netpol_map_capacity",
            "Capacity per datapath map.",
            inner.usage.iter().map(|usage| {
                (
                    vec![("map", LabelValue::from(usage.name.to_owned()))],
                    as_gauge(usage.capacity),
                )
            }),
        )?;
        counters(
            e,
            "netpol_denied_packets",
            "Packets dropped (or audited), by reason and direction.",
            inner
                .counters
                .drops
                .iter()
                .map(|((reason, direction), count)| {
                    (
                        vec![
                            ("reason", LabelValue::from((*reason).to_owned())),
                            ("direction", LabelValue::from((*direction).to_owned())),
                        ],
                        count.packets,
                    )
                }),
        )?;
        counters(
            e,
            "netpol_allowed_packets",
            "Packets allowed, by policy rule and direction.",
            inner.counters.rules.iter().map(|(rule, count)| {
                let (policy, direction, name) = inner
                    .rule_names
                    .get(rule)
                    .map(|labels| (labels.policy.clone(), labels.direction, labels.rule.clone()))
                    .unwrap_or_default();
                (
                    vec![
                        ("policy", LabelValue::from(policy)),
                        ("direction", LabelValue::from(direction.to_owned())),
                        ("rule", LabelValue::from(name)),
                        ("rule_id", LabelValue::from(rule.to_string())),
                    ],
                    count.packets,
                )
            }),
        )?;
        counters(
            e,
            "netpol_events",
            "Drop and audit events read from the datapath.",
            [(Labels::new(), self.events_seen)],
        )?;
        counters(
            e,
            "netpol_events_lost",
            "Events the datapath could not deliver (buffer full).",
            [(Labels::new(), self.events_lost)],
        )?;
        counters(
            e,
            "netpol_monitor_events_lost",
            "Events `netpol-agent monitor` subscribers missed because they read too slowly.",
            [(Labels::new(), self.monitor_lost)],
        )?;
        inner.latency.encode(e.encode_descriptor(
            "netpol_change_to_programmed_seconds",
            "From an object change reaching the agent to the datapath programmed.",
            None,
            MetricType::Histogram,
        )?)?;
        counters(
            e,
            "netpol_cni_requests",
            "Requests of the chained CNI plugin, by operation (add_timeout: an ADD whose pod was not enforced in time).",
            inner.cni_requests.iter().map(|(what, count)| {
                (
                    vec![("operation", LabelValue::from((*what).to_owned()))],
                    *count,
                )
            }),
        )?;
        inner.cni_add.encode(e.encode_descriptor("netpol_cni_add_to_enforced_seconds", "From a CNI ADD reaching the agent to its pod enforced: what holding a pod's start costs.", None, MetricType::Histogram)?)?;
        if let Some(chained) = inner.cni_chained {
            gauge(
                e,
                "netpol_cni_chained",
                "1 while the node's CNI configuration includes the netpol-cni plugin.",
                i64::from(chained),
            )?;
        }
        Ok(())
    }
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A gauge without labels.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A gauge family, one row per label set.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family (`<name>_total`), one row per label set (an empty set: the bare counter).
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        if labels.is_empty() {
            return ConstCounter::new(value).encode(family);
        }
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A bounded label value for a rejection reason: the text before the first ':' (which names
/// the field), so that one broken policy does not create a new series per value.
fn reason_class(reason: &str) -> String {
    let class = reason.split(':').next().unwrap_or(reason).trim();
    // Field paths carry indexes (`spec.ingress[0]`): drop them to bound the label set.
    let mut bounded = String::with_capacity(class.len());
    let mut in_index = false;
    for c in class.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => bounded.push(c),
            _ => {}
        }
    }
    bounded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_reasons_become_bounded_labels() {
        assert_eq!(
            reason_class("spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\""),
            "spec.ingress.from.ipBlock.cidr"
        );
    }

    #[test]
    fn the_exposition_names_every_family_once() {
        let metrics = Metrics::new();
        metrics.set_backend("fake");
        metrics.count_rejection(
            "networkpolicy",
            "spec.ingress[0].ports[0].port: out of range",
        );
        metrics.observe_latency(Duration::from_millis(30));
        let text = metrics.render();
        assert!(text.contains("netpol_rejected_objects_total{kind=\"networkpolicy\",reason=\"spec.ingress.ports.port\"} 1"), "{text}");
        assert!(
            text.contains("netpol_change_to_programmed_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("netpol_change_to_programmed_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE netpol_objects gauge").count(), 1);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.count_rejection("pod", "a \"quoted\\ \nfield: value");
        let text = metrics.render();
        assert!(
            text.contains(r#"reason="a \"quoted\\ \nfield"} 1"#),
            "{text}"
        );
    }
}
