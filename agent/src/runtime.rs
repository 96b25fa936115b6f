//! The agent's one reconcile path: source events become engine changes, engine deltas become
//! backend writes, and interface changes become attachments and endpoint interface updates.
//!
//! Nothing is programmed before every watched kind has been listed once (`InitDone`); then the
//! first full state is converged (entries before removals, see [`Backend::converge`]), the
//! programs are attached, and the agent reports ready. After that, each batch of events is one
//! engine delta. Errors are counted and logged; a failed write makes the next pass converge
//! the whole state again (never fail open: what is in the maps stays until replaced).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::addr::Addr;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::{mpsc, watch};

use crate::{
    backend::{Backend, InterfaceRole, PodInterfaces},
    discovery::{self, NodeInterfaces},
    metrics::{Metrics, RuleLabels},
    model::{self, Change, ObjectRef, Snapshot, convert},
    policy::{Delta, Direction, Engine},
    source::{
        ClusterObject, ENI_CONFIG_NAME, ENI_CONFIG_NAMESPACE, ObjectId, ObjectKind, SourceEvent,
        enforcement_enabled,
    },
};

/// How long the runtime waits for more events before programming a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How often interfaces are re-read even without a netlink notification, and counters read.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// What the runtime needs to know about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub node_name: String,
    /// Uplinks by name; `None` means the interfaces holding the default routes.
    pub uplinks: Option<Vec<String>>,
    /// Service (ClusterIP) ranges, whose egress is decided after DNAT.
    pub service_ranges: Vec<(IpAddr, u8)>,
    /// The kinds whose first list must complete before anything is programmed.
    pub kinds: BTreeSet<ObjectKind>,
}

/// The cluster objects as the sources last described them.
#[derive(Default)]
struct Objects {
    current: BTreeMap<ObjectId, ClusterObject>,
    /// Relists in progress: replaced into `current` at their `InitDone`.
    relisting: BTreeMap<ObjectKind, BTreeMap<ObjectId, ClusterObject>>,
    listed: BTreeSet<ObjectKind>,
}

/// A change waiting to be programmed, and when the agent learnt of it.
struct Pending {
    ids: BTreeSet<ObjectId>,
    since: Option<Instant>,
}

/// The runtime state.
pub struct Runtime<B: Backend> {
    config: RuntimeConfig,
    backend: B,
    metrics: Arc<Metrics>,
    objects: Objects,
    pending: Pending,
    engine: Option<Engine>,
    /// Programmed at least once, and in step with the engine (false after a failed write).
    in_sync: bool,
    enforcing: Option<bool>,
    /// The last interface view (`None` until the first full sync).
    interfaces: Option<NodeInterfaces>,
    pod_interfaces: PodInterfaces,
    attached: BTreeSet<(String, InterfaceRole)>,
    warned_missing: BTreeSet<Addr>,
}

impl<B: Backend> Runtime<B> {
    pub fn new(config: RuntimeConfig, backend: B, metrics: Arc<Metrics>) -> Self {
        metrics.set_backend(backend.name());
        Self {
            config,
            backend,
            metrics,
            objects: Objects::default(),
            pending: Pending {
                ids: BTreeSet::new(),
                since: None,
            },
            engine: None,
            in_sync: false,
            enforcing: None,
            interfaces: None,
            pod_interfaces: PodInterfaces::new(),
            attached: BTreeSet::new(),
            warned_missing: BTreeSet::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    /// Runs until `events` closes or `shutdown` flips to true. `interfaces_changed` ticks on
    /// netlink link/route notifications.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        mut interfaces_changed: watch::Receiver<()>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event);
                    // Take what else is queued, and what arrives within the batch window.
                    let deadline = tokio::time::sleep(BATCH_WINDOW);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            more = events.recv() => match more {
                                Some(event) => self.handle(event),
                                None => break,
                            },
                            () = &mut deadline => break,
                        }
                    }
                    self.reconcile();
                }
                changed = interfaces_changed.changed() => {
                    if changed.is_ok() {
                        self.reconcile_interfaces();
                    }
                }
                _ = resync.tick() => {
                    self.reconcile_interfaces();
                    self.publish_datapath();
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self
    }

    /// Takes one source event into the object view.
    pub fn handle(&mut self, event: SourceEvent) {
        let objects = &mut self.objects;
        match event {
            SourceEvent::Init(kind) => {
                objects.relisting.insert(kind, BTreeMap::new());
            }
            SourceEvent::Apply(object) => {
                let id = object.id();
                if let Some(list) = objects.relisting.get_mut(&id.kind) {
                    list.insert(id, object);
                } else if objects.current.get(&id) != Some(&object) {
                    objects.current.insert(id.clone(), object);
                    self.pending.note(id);
                }
            }
            SourceEvent::Delete(id) => {
                if let Some(list) = objects.relisting.get_mut(&id.kind) {
                    list.remove(&id);
                } else if objects.current.remove(&id).is_some() {
                    self.pending.note(id);
                }
            }
            SourceEvent::InitDone(kind) => {
                let Some(list) = objects.relisting.remove(&kind) else {
                    return;
                };
                let stale: Vec<ObjectId> = objects
                    .current
                    .keys()
                    .filter(|id| id.kind == kind && !list.contains_key(id))
                    .cloned()
                    .collect();
                for id in stale {
                    objects.current.remove(&id);
                    self.pending.note(id);
                }
                for (id, object) in list {
                    if objects.current.get(&id) != Some(&object) {
                        objects.current.insert(id.clone(), object);
                        self.pending.note(id);
                    }
                }
                objects.listed.insert(kind);
            }
            SourceEvent::Problem { reason, detail } => {
                tracing::debug!(reason, detail, "source problem");
                self.metrics.count_source_problem(reason);
            }
        }
    }

    fn all_listed(&self) -> bool {
        self.config
            .kinds
            .iter()
            .all(|kind| self.objects.listed.contains(kind))
    }

    /// Programs what changed since the last pass (everything, the first time).
    pub fn reconcile(&mut self) {
        if !self.all_listed() {
            return;
        }
        let since = self.pending.since.take();
        let ids = std::mem::take(&mut self.pending.ids);
        self.update_object_metrics();
        self.apply_switch();

        let first = self.engine.is_none();
        if first || !self.in_sync {
            self.full_sync();
        } else {
            let changes = self.changes_for(&ids);
            let delta = match self.engine.as_mut() {
                Some(engine) => engine.apply(changes),
                None => Delta::default(),
            };
            self.refresh_pod_interfaces();
            if let Err(error) = self.backend.apply(&delta, &self.pod_interfaces) {
                tracing::error!(%error, "applying a delta failed; converging the whole state next");
                self.metrics.count_programming_error("apply");
                self.in_sync = false;
            }
            self.reconcile_attachments();
        }
        if self.in_sync {
            if let Some(since) = since {
                self.metrics.observe_latency(since.elapsed());
            }
            if first {
                self.metrics.set_ready();
                tracing::info!("first full sync programmed: ready");
            }
        }
        self.publish_rules();
        self.publish_datapath();
    }

    /// Converts every known object and converges the backend to the engine's full state.
    fn full_sync(&mut self) {
        let mut snapshot = Snapshot::default();
        for object in self.objects.current.values() {
            if let Some(change) = self.convert(object) {
                snapshot.apply(change);
            }
        }
        let (engine, _) = Engine::with_snapshot(self.config.node_name.clone(), snapshot);
        self.engine = Some(engine);
        self.interfaces = self.discover();
        self.refresh_pod_interfaces();
        let ranges: Vec<(Addr, u8)> = self
            .config
            .service_ranges
            .iter()
            .map(|(ip, len)| (Addr::from(*ip), *len))
            .collect();
        let state = match &self.engine {
            Some(engine) => engine.state().clone(),
            None => return,
        };
        let result = self
            .backend
            .set_service_ranges(&ranges)
            .and_then(|()| self.backend.converge(&state, &self.pod_interfaces));
        match result {
            Ok(()) => {
                self.in_sync = true;
                tracing::info!(
                    endpoints = state.endpoints.len(),
                    prefixes = state.ipcache.len(),
                    entries = state.policy.len(),
                    "converged the full state"
                );
            }
            Err(error) => {
                tracing::error!(%error, "converging the full state failed; retrying on the next event or resync");
                self.metrics.count_programming_error("converge");
                self.in_sync = false;
            }
        }
        self.reconcile_attachments();
    }

    /// The engine change an object's current state amounts to (`None` when it is not ours).
    fn changes_for(&self, ids: &BTreeSet<ObjectId>) -> Vec<Change> {
        let mut changes = Vec::new();
        for id in ids {
            match self.objects.current.get(id) {
                Some(object) => {
                    if let Some(change) = self.convert(object) {
                        changes.push(change);
                    } else if let Some(delete) = delete_change(id) {
                        // Rejected as a whole: it is gone for the engine.
                        changes.push(delete);
                    }
                }
                None => changes.extend(delete_change(id)),
            }
        }
        changes
    }

    /// Converts an API object to an engine change, counting what is rejected.
    fn convert(&self, object: &ClusterObject) -> Option<Change> {
        let (change, rejections) = match object {
            ClusterObject::Namespace(namespace) => {
                let converted = convert::namespace(namespace);
                (
                    converted.object.map(Change::ApplyNamespace),
                    converted.rejections,
                )
            }
            ClusterObject::Pod(pod) => {
                let converted = convert::pod(pod);
                (converted.object.map(Change::ApplyPod), converted.rejections)
            }
            ClusterObject::NetworkPolicy(policy) => {
                let converted = convert::network_policy(policy);
                (
                    converted.object.map(Change::ApplyPolicy),
                    converted.rejections,
                )
            }
            ClusterObject::ConfigMap(_) => return None,
        };
        for rejection in rejections {
            tracing::warn!(kind = %rejection.kind, object = %rejection.object, reason = %rejection.reason, "rejected");
            self.metrics
                .count_rejection(kind_label(rejection.kind), &rejection.reason);
        }
        change
    }

    /// Applies the `disable_network_policy` switch when it changed.
    fn apply_switch(&mut self) {
        let id = ObjectId {
            kind: ObjectKind::ConfigMap,
            namespace: ENI_CONFIG_NAMESPACE.to_owned(),
            name: ENI_CONFIG_NAME.to_owned(),
        };
        let eni_config: Option<&ConfigMap> = match self.objects.current.get(&id) {
            Some(ClusterObject::ConfigMap(config)) => Some(config.as_ref()),
            _ => None,
        };
        let enforce = enforcement_enabled(eni_config);
        if self.enforcing == Some(enforce) {
            return;
        }
        match self.backend.set_enforcement(enforce) {
            Ok(()) => {
                tracing::info!(
                    enforce,
                    "network policy enforcement {}",
                    if enforce {
                        "on"
                    } else {
                        "off (disable_network_policy)"
                    }
                );
                self.enforcing = Some(enforce);
                self.metrics.set_enforcing(enforce);
            }
            Err(error) => {
                tracing::error!(%error, "switching enforcement failed");
                self.metrics.count_programming_error("switch");
            }
        }
    }

    fn discover(&self) -> Option<NodeInterfaces> {
        match discovery::snapshot() {
            Ok(interfaces) => Some(match &self.config.uplinks {
                Some(names) => interfaces.with_uplinks(names),
                None => interfaces,
            }),
            Err(error) => {
                tracing::warn!(%error, "reading interfaces failed; keeping the last view");
                self.metrics.count_programming_error("discover");
                self.interfaces.clone()
            }
        }
    }

    /// Local pods' addresses to their host interface index.
    fn refresh_pod_interfaces(&mut self) {
        let Some(engine) = &self.engine else {
            return;
        };
        let mut pods = PodInterfaces::new();
        let mut missing = 0;
        for addr in engine.state().endpoints.keys() {
            let Some(ip) = addr.to_ip() else {
                continue;
            };
            match self
                .interfaces
                .as_ref()
                .and_then(|interfaces| interfaces.pod_interface(ip))
            {
                Some(link) => {
                    pods.insert(*addr, link.index);
                    self.warned_missing.remove(addr);
                }
                None => {
                    missing += 1;
                    if self.warned_missing.insert(*addr) {
                        tracing::warn!(pod_ip = %ip, "no host interface routes to this local pod; it is enforced by address only until one appears");
                        self.metrics
                            .count_programming_error("pod_interface_missing");
                    }
                }
            }
        }
        let endpoints = engine.state().endpoints.len() as u64;
        self.metrics.set_endpoints(endpoints, missing);
        self.pod_interfaces = pods;
    }

    /// Interfaces changed: update endpoints whose interface index moved, and attachments.
    pub fn reconcile_interfaces(&mut self) {
        if self.engine.is_none() {
            return;
        }
        self.interfaces = self.discover();
        let before = self.pod_interfaces.clone();
        self.refresh_pod_interfaces();
        if before != self.pod_interfaces
            && let Some(engine) = &self.engine
        {
            let moved: BTreeMap<Addr, agent_common::endpoint::Endpoint> = engine
                .state()
                .endpoints
                .iter()
                .filter(|(addr, _)| before.get(addr) != self.pod_interfaces.get(addr))
                .map(|(addr, endpoint)| (*addr, *endpoint))
                .collect();
            let delta = Delta {
                endpoint_upserts: moved,
                ..Delta::default()
            };
            if let Err(error) = self.backend.apply(&delta, &self.pod_interfaces) {
                tracing::error!(%error, "updating endpoint interfaces failed");
                self.metrics.count_programming_error("apply");
                self.in_sync = false;
            }
        }
        self.reconcile_attachments();
    }

    /// Attaches to every local pod interface and uplink, detaches from the rest of ours.
    fn reconcile_attachments(&mut self) {
        let mut wanted: BTreeSet<(String, InterfaceRole)> = BTreeSet::new();
        if let Some(engine) = &self.engine {
            for pod in engine.snapshot().pods.values() {
                if pod.node.as_deref() != Some(self.config.node_name.as_str()) || pod.host_network {
                    continue;
                }
                for ip in &pod.ips {
                    let link = self
                        .interfaces
                        .as_ref()
                        .and_then(|interfaces| interfaces.pod_interface(*ip));
                    if let Some(link) = link {
                        wanted.insert((link.name.clone(), InterfaceRole::Pod));
                    }
                }
            }
        }
        for link in self
            .interfaces
            .iter()
            .flat_map(|interfaces| interfaces.uplinks())
        {
            wanted.insert((link.name.clone(), InterfaceRole::Uplink));
        }
        for (iface, role) in wanted.difference(&self.attached.clone()) {
            match self.backend.attach(iface, *role) {
                Ok(()) => {
                    tracing::info!(iface, ?role, "attached");
                    self.attached.insert((iface.clone(), *role));
                }
                Err(error) => {
                    tracing::warn!(iface, ?role, %error, "attaching failed; retrying on the next resync");
                    self.metrics.count_programming_error("attach");
                }
            }
        }
        for (iface, role) in self
            .attached
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            match self.backend.detach(&iface, role) {
                Ok(()) => {
                    tracing::info!(iface, ?role, "detached");
                    self.attached.remove(&(iface, role));
                }
                Err(error) => {
                    tracing::warn!(iface, ?role, %error, "detaching failed");
                    self.metrics.count_programming_error("detach");
                }
            }
        }
    }

    fn update_object_metrics(&self) {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for id in self.objects.current.keys() {
            *counts.entry(id.kind.name()).or_default() += 1;
        }
        for kind in [
            ObjectKind::Namespace,
            ObjectKind::Pod,
            ObjectKind::NetworkPolicy,
            ObjectKind::ConfigMap,
        ] {
            self.metrics
                .set_objects(kind.name(), counts.get(kind.name()).copied().unwrap_or(0));
        }
    }

    fn publish_rules(&self) {
        let Some(engine) = &self.engine else {
            return;
        };
        let names = engine
            .state()
            .rules
            .iter()
            .map(|(id, rule)| {
                let labels = RuleLabels {
                    policy: rule.policy.to_string(),
                    direction: match rule.direction {
                        Direction::Ingress => "ingress",
                        Direction::Egress => "egress",
                    },
                    rule: rule.to_string(),
                };
                (*id, labels)
            })
            .collect();
        self.metrics.set_rule_names(names);
    }

    fn publish_datapath(&self) {
        match (self.backend.counters(), self.backend.usage()) {
            (Ok(counters), Ok(usage)) => self.metrics.set_datapath(counters, usage),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "reading datapath counters failed");
            }
        }
    }
}

impl Pending {
    fn note(&mut self, id: ObjectId) {
        self.ids.insert(id);
        self.since.get_or_insert_with(Instant::now);
    }
}

fn delete_change(id: &ObjectId) -> Option<Change> {
    match id.kind {
        ObjectKind::Namespace => Some(Change::DeleteNamespace(id.name.clone())),
        ObjectKind::Pod => Some(Change::DeletePod(ObjectRef::new(&id.namespace, &id.name))),
        ObjectKind::NetworkPolicy => Some(Change::DeletePolicy(ObjectRef::new(
            &id.namespace,
            &id.name,
        ))),
        ObjectKind::ConfigMap => None,
    }
}

fn kind_label(kind: model::Kind) -> &'static str {
    match kind {
        model::Kind::Namespace => "namespace",
        model::Kind::Pod => "pod",
        model::Kind::NetworkPolicy => "networkpolicy",
    }
}
