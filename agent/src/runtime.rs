//! The agent's one reconcile path: source events become engine changes, engine deltas become
//! backend writes, and interface changes become attachments and endpoint interface updates.
//!
//! Nothing is programmed before every watched kind has been listed once (`InitDone`); then the
//! first full state is converged (entries before removals, see [`Backend::converge`]) and the
//! programs are attached. After that, each batch of events is one engine delta.
//!
//! Never fail open. A write that fails (a map full, a kernel error) leaves the node between
//! two states, so the endpoints it concerns are written "not programmed" at once: isolated in
//! both directions with nothing allowed, their drops counted as `not_programmed`. The runtime
//! then converges the whole state again with backoff until it succeeds. The agent is ready
//! only while the node holds the desired state and every selected local pod is enforced
//! (programmed, on a known interface, with the programs attached there).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{addr::Addr, endpoint::Endpoint};
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::{mpsc, oneshot, watch};

use netpol_cni::{Operation, Response};

use crate::{
    backend::{Backend, InterfaceRole, PodInterfaces},
    cni::CniCall,
    debug::report::{EndpointReport, Isolation, Reference, ReferenceSide},
    discovery::{self, NodeInterfaces},
    metrics::{Metrics, NotEnforced, RuleLabels},
    model::{self, Change, ObjectRef, Snapshot, convert},
    policy::{Delta, Direction, Engine, Flow, Names, Side, evaluate},
    source::{
        ClusterObject, ENI_CONFIG_NAME, ENI_CONFIG_NAMESPACE, ObjectId, ObjectKind, SourceEvent,
        disable_network_policy_value, enforcement_enabled, plainly_disables, service_addresses,
    },
};

/// How long the runtime waits for more events before programming a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How often interfaces are re-read even without a netlink notification, and counters read.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// The first retry after a failed write, doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the runtime needs to know about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub node_name: String,
    /// Uplinks by name; `None` means the interfaces holding the default routes.
    pub uplinks: Option<Vec<String>>,
    /// Service ranges given by flags, whose egress is decided after DNAT, in addition to the
    /// addresses of the Service objects.
    pub service_ranges: Vec<(IpAddr, u8)>,
    /// The kinds whose first list must complete before anything is programmed.
    pub kinds: BTreeSet<ObjectKind>,
    /// Name prefixes of pod interfaces: one that no known pod routes through is closed (all
    /// its traffic dropped) until the agent knows its pod. Empty: off.
    pub pod_interface_prefixes: Vec<String>,
    /// How long a kind's watch may fail before the agent stops calling itself ready: what it
    /// enforces may no longer be what the cluster says.
    pub stale_after: Duration,
    /// Where the names of the compiled state are kept for the debug CLI while the agent is
    /// down (rewritten at most every resync when they changed). `None`: not kept.
    pub names_file: Option<std::path::PathBuf>,
}

/// A question of the debug API (`http.rs`), answered from the runtime's state.
#[derive(Debug)]
pub enum Query {
    Endpoints(oneshot::Sender<Vec<EndpointReport>>),
    Names(oneshot::Sender<Names>),
    /// The engine's reference answer for a flow (`None` before the first sync).
    Explain(Flow, oneshot::Sender<Option<Reference>>),
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
    /// Endpoints written "not programmed" since the last failed write (cleared by a converge).
    not_programmed: BTreeSet<Addr>,
    /// The next attempt to converge after a failed write, and the delay after that one.
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// The raw `disable_network_policy` value last seen (outer `None`: not read yet).
    switch_value: Option<Option<String>>,
    /// Run once, when the node first holds the desired state (removing another backend's).
    handover: Option<Box<dyn FnOnce() + Send>>,
    /// Pins of interfaces gone before this agent started have been looked for.
    pins_swept: bool,
    /// Kinds whose watch is failing: since when, and the last error.
    failing_sources: BTreeMap<ObjectKind, (Instant, String)>,
    /// The Service ranges and addresses the backend holds (`None` until written).
    service_ranges: Option<Vec<(Addr, u8)>>,
    /// Requests of the chained CNI plugin (`cni.rs`), when it is installed.
    cni_calls: Option<mpsc::Receiver<CniCall>>,
    /// Sandboxes the CNI plugin announced: the freshest word on which pod holds an address.
    claims: BTreeMap<ObjectRef, Claim>,
    /// Each claimed address's pod.
    claimed: BTreeMap<IpAddr, ObjectRef>,
    /// ADD requests waiting for their pod to be enforced, with their arrival.
    waiting: Vec<(CniCall, Instant)>,
    /// Questions of the debug API.
    queries: Option<mpsc::Receiver<Query>>,
    /// The names changed since `names_file` was last written.
    names_dirty: bool,
    /// When `names_file` was last written.
    names_written: Option<Instant>,
}

/// A pod sandbox as the CNI plugin described it on ADD.
#[derive(Clone, Debug)]
struct Claim {
    uid: Option<String>,
    container_id: String,
    addresses: Vec<IpAddr>,
}

/// How long an ADD may wait for its pod to be enforced; the plugin gives up a little later and
/// fails the ADD, which kubelet retries.
const CNI_ANSWER_WITHIN: Duration = Duration::from_secs(8);

impl<B: Backend> Runtime<B> {
    pub fn new(config: RuntimeConfig, backend: B, metrics: Arc<Metrics>) -> Self {
        metrics.set_backend(backend.name());
        metrics.set_readiness(Err(
            "waiting for the first list of every watched kind".to_owned()
        ));
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
            not_programmed: BTreeSet::new(),
            retry_at: None,
            retry_delay: RETRY_FIRST,
            switch_value: None,
            handover: None,
            pins_swept: false,
            failing_sources: BTreeMap::new(),
            service_ranges: None,
            cni_calls: None,
            claims: BTreeMap::new(),
            claimed: BTreeMap::new(),
            waiting: Vec::new(),
            queries: None,
            names_dirty: false,
            names_written: None,
        }
    }

    /// Answers the debug API's questions arriving on `queries`.
    pub fn with_queries(mut self, queries: mpsc::Receiver<Query>) -> Self {
        self.queries = Some(queries);
        self
    }

    /// Answers the chained CNI plugin's requests arriving on `calls`.
    pub fn with_cni(mut self, calls: mpsc::Receiver<CniCall>) -> Self {
        self.cni_calls = Some(calls);
        self
    }

    /// Runs `handover` once the node first holds the desired state.
    pub fn with_handover(mut self, handover: Box<dyn FnOnce() + Send>) -> Self {
        self.handover = Some(handover);
        self
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
        let mut cni_calls = self.cni_calls.take();
        let mut queries = self.queries.take();
        loop {
            let retry_at = self.retry_at;
            let retry = async move {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let next_deadline = self
                .waiting
                .iter()
                .map(|(_, arrived)| *arrived + CNI_ANSWER_WITHIN)
                .min();
            let cni_deadline = async move {
                match next_deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let cni_call = async {
                match cni_calls.as_mut() {
                    Some(calls) => calls.recv().await,
                    None => std::future::pending().await,
                }
            };
            let query = async {
                match queries.as_mut() {
                    Some(queries) => queries.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = retry => {
                    self.reconcile();
                    self.answer_cni();
                }
                call = cni_call => {
                    match call {
                        Some(call) => {
                            self.handle_cni(call);
                            // The pod's sandbox and route exist now: program it, attach its
                            // interface, and answer if that made it enforced.
                            // One discovery serves both (a full converge discovers on its own).
                            if self.engine.is_some() {
                                self.interfaces = self.discover();
                            }
                            self.reconcile();
                            self.follow_interfaces();
                            self.answer_cni();
                        }
                        None => cni_calls = None,
                    }
                }
                () = cni_deadline => {
                    self.answer_cni();
                }
                query = query => {
                    match query {
                        Some(query) => self.answer_query(query),
                        None => queries = None,
                    }
                }
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
                    self.answer_cni();
                }
                changed = interfaces_changed.changed() => {
                    if changed.is_ok() {
                        self.reconcile_interfaces();
                        self.answer_cni();
                    }
                }
                _ = resync.tick() => {
                    self.reconcile_interfaces();
                    self.publish_datapath();
                    self.write_names();
                    // Sources go stale with time alone.
                    self.update_readiness();
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
                if id.kind == ObjectKind::Pod {
                    self.drop_claim(&ObjectRef::new(&id.namespace, &id.name), None);
                }
                let objects = &mut self.objects;
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
                let first_list = objects.listed.insert(kind);
                // The first lists insert every object in key order, which leaves the map's
                // nodes about half empty: rebuilt with full nodes once, when the last kind is
                // in (a later relist changes few objects).
                if first_list && self.all_listed() {
                    let current = std::mem::take(&mut self.objects.current);
                    self.objects.current = model::packed(current);
                }
            }
            SourceEvent::Failing { kind, detail } => {
                self.metrics.count_source_problem("watch_error");
                self.failing_sources
                    .entry(kind)
                    .and_modify(|(_, last)| last.clone_from(&detail))
                    .or_insert_with(|| (Instant::now(), detail));
            }
            SourceEvent::Undecodable { id, detail } => {
                tracing::warn!(object = %id, detail, "rejected: the object does not decode; its last good version, if any, stays");
                self.metrics.count_rejection(id.kind.name(), "undecodable");
                // A relist replaces the kind's objects at its end: carry the last good one over.
                if let Some(list) = objects.relisting.get_mut(&id.kind)
                    && let Some(current) = objects.current.get(&id)
                {
                    list.insert(id, current.clone());
                }
            }
            SourceEvent::Recovered(kind) => {
                self.failing_sources.remove(&kind);
                self.update_readiness();
            }
            SourceEvent::Problem { reason, detail } => {
                tracing::debug!(reason, detail, "source problem");
                self.metrics.count_source_problem(reason);
            }
        }
    }

    /// Takes one request of the CNI plugin. ADD records the sandbox's claim on its addresses
    /// (they are this pod's from now on, whatever older Pod objects still list) and waits for
    /// the pod to be enforced; DEL drops the claim of that sandbox; CHECK answers at once.
    fn handle_cni(&mut self, call: CniCall) {
        let request = &call.request;
        let pod = ObjectRef::new(&request.namespace, &request.name);
        match request.operation {
            Operation::Add => {
                self.metrics.count_cni_request("add");
                self.drop_claim(&pod, None);
                for address in &request.addresses {
                    if let Some(previous) = self.claimed.insert(*address, pod.clone())
                        && previous != pod
                    {
                        // The address moved to a new pod: the old owner's claim loses it.
                        if let Some(claim) = self.claims.get_mut(&previous) {
                            claim.addresses.retain(|claimed| claimed != address);
                        }
                    }
                }
                self.claims.insert(
                    pod.clone(),
                    Claim {
                        uid: request.uid.clone(),
                        container_id: request.container_id.clone(),
                        addresses: request.addresses.clone(),
                    },
                );
                self.note_address_holders(&pod, &request.addresses);
                self.waiting.push((call, Instant::now()));
            }
            Operation::Del => {
                self.metrics.count_cni_request("del");
                let container = request.container_id.clone();
                self.drop_claim(&pod, Some(&container));
                let _ = call.reply.send(Response {
                    ok: true,
                    message: String::new(),
                });
            }
            Operation::Check => {
                self.metrics.count_cni_request("check");
                let addresses = request.addresses.clone();
                let response = match self.pod_enforced(&pod, &addresses) {
                    Ok(()) => Response {
                        ok: true,
                        message: String::new(),
                    },
                    Err(reason) => Response {
                        ok: false,
                        message: reason,
                    },
                };
                let _ = call.reply.send(response);
            }
        }
    }

    /// Answers the ADDs whose pod is enforced now, and those past their deadline.
    fn answer_cni(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        for (call, arrived) in std::mem::take(&mut self.waiting) {
            let pod = ObjectRef::new(&call.request.namespace, &call.request.name);
            match self.pod_enforced(&pod, &call.request.addresses) {
                Ok(()) => {
                    tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), "enforced before its first packet");
                    self.metrics
                        .observe_cni_add(now.saturating_duration_since(arrived));
                    let _ = call.reply.send(Response {
                        ok: true,
                        message: String::new(),
                    });
                }
                Err(reason) if now >= arrived + CNI_ANSWER_WITHIN => {
                    tracing::warn!(
                        pod = %format!("{}/{}", pod.namespace, pod.name),
                        reason,
                        "a pod sandbox could not be confirmed enforced in time; its ADD fails and kubelet retries"
                    );
                    self.metrics.count_cni_request("add_timeout");
                    let _ = call.reply.send(Response {
                        ok: false,
                        message: format!("not enforced within {CNI_ANSWER_WITHIN:?}: {reason}"),
                    });
                }
                Err(_) => self.waiting.push((call, arrived)),
            }
        }
    }

    /// Whether `pod` is enforced at every one of `addresses`: its object is known, and each
    /// address is its endpoint, programmed, on an attached interface.
    fn pod_enforced(&self, pod: &ObjectRef, addresses: &[IpAddr]) -> Result<(), String> {
        let id = ObjectId {
            kind: ObjectKind::Pod,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        };
        if !self.objects.current.contains_key(&id) {
            return Err("the Pod object has not reached the agent yet".to_owned());
        }
        let Some(engine) = &self.engine else {
            return Err("the agent has not converged its first state yet".to_owned());
        };
        if !self.in_sync {
            return Err(
                "the node does not hold the desired state (a write failed; retrying)".to_owned(),
            );
        }
        if addresses.is_empty() {
            return Err("the sandbox has no address".to_owned());
        }
        for address in addresses {
            let addr = Addr::from(*address);
            if !engine.state().endpoints.contains_key(&addr) {
                return Err(format!(
                    "{address} is no endpoint of this node (is the pod scheduled here?)"
                ));
            }
            if self.not_programmed.contains(&addr) {
                return Err(format!("{address} is not programmed (a write failed)"));
            }
            let attached = self
                .pod_interfaces
                .get(&addr)
                .is_some_and(|index| self.pod_programs_on(*index));
            if !attached {
                return Err(format!(
                    "no attached host interface routes to {address} yet"
                ));
            }
        }
        Ok(())
    }

    /// Drops `pod`'s claim (only the claim of `container`, when given).
    fn drop_claim(&mut self, pod: &ObjectRef, container: Option<&str>) {
        let Some(claim) = self.claims.get(pod) else {
            return;
        };
        if container.is_some_and(|container| container != claim.container_id) {
            return;
        }
        let addresses = claim.addresses.clone();
        self.claims.remove(pod);
        for address in &addresses {
            if self.claimed.get(address) == Some(pod) {
                self.claimed.remove(address);
            }
        }
        self.note_address_holders(pod, &addresses);
    }

    /// Marks `pod`, and every pod whose object lists one of `addresses`, for conversion again.
    fn note_address_holders(&mut self, pod: &ObjectRef, addresses: &[IpAddr]) {
        let texts: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let holders: Vec<ObjectId> = self
            .objects
            .current
            .iter()
            .filter(|(id, object)| {
                id.kind == ObjectKind::Pod
                    && ((id.namespace == pod.namespace && id.name == pod.name)
                        || matches!(object, ClusterObject::Pod(other) if lists_any(other, &texts)))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in holders {
            self.pending.note(id);
        }
    }

    /// `pod` as its CNI claim has it: the sandbox's addresses, none that another pod's
    /// sandbox claimed since.
    fn with_claims(&self, mut pod: model::Pod, uid: Option<&str>) -> model::Pod {
        let key = pod.key();
        if let Some(claim) = self.claims.get(&key)
            && (claim.uid.is_none() || uid.is_none() || claim.uid.as_deref() == uid)
        {
            pod.ips = claim.addresses.iter().copied().collect();
        }
        pod.ips = pod
            .ips
            .iter()
            .copied()
            .filter(|ip| self.claimed.get(ip).is_none_or(|owner| *owner == key))
            .collect();
        pod
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
            self.apply_service_ranges();
            if let Err(error) = self.backend.apply(&delta, &self.pod_interfaces) {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "applying a delta failed; denying what it concerns and converging the whole state"
                );
                self.metrics.count_programming_error("apply");
                self.in_sync = false;
                self.fail_closed(Some(&delta));
                self.grow_after(&error);
            }
            self.reconcile_attachments();
        }
        self.names_dirty = true;
        // At once after the first sync and after a quiet spell, else at the next resync.
        if self
            .names_written
            .is_none_or(|written| written.elapsed() >= RESYNC_INTERVAL)
        {
            self.write_names();
        }
        if self.in_sync {
            self.metrics.note_programmed();
            if let Some(since) = since {
                self.metrics.observe_latency(since.elapsed());
            }
            self.retry_at = None;
            self.retry_delay = RETRY_FIRST;
            if let Some(handover) = self.handover.take() {
                handover();
            }
        } else {
            tracing::warn!(retry_in = ?self.retry_delay, "the node does not hold the desired state; retrying");
            self.retry_at = Some(Instant::now() + self.retry_delay);
            self.retry_delay = (self.retry_delay * 2).clamp(RETRY_FIRST, RETRY_MAX);
        }
        self.update_readiness();
        self.publish_rules();
        self.publish_datapath();
    }

    /// After a failed write: if a map was full and the backend grew it, converges into the
    /// larger maps at once and attaches the new programs on every interface (until then the
    /// attached ones enforce what the old maps hold, the failed write denied).
    fn grow_after(&mut self, error: &crate::backend::BackendError) {
        match self.backend.grow(error) {
            Ok(true) => {
                self.attached.clear();
                self.retry_delay = Duration::ZERO;
            }
            Ok(false) => {}
            Err(error) => {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "growing a full map failed; the pods it concerns stay denied"
                );
                self.metrics.count_programming_error("grow");
            }
        }
    }

    /// Writes the endpoints a failed write concerns as "not programmed" (isolated both ways,
    /// nothing allowed), so that no selected pod is ever open because of it: those of the
    /// delta's endpoint entries and policy sets, or every selected endpoint when the failure
    /// touched peer classes or was a full converge.
    fn fail_closed(&mut self, delta: Option<&Delta>) {
        let Some(engine) = &self.engine else {
            return;
        };
        let state = engine.state();
        let affected: BTreeMap<Addr, Endpoint> = match delta {
            Some(delta) => delta.endpoints_at_stake(state),
            None => state
                .selected_endpoints()
                .map(|(addr, endpoint)| (*addr, *endpoint))
                .collect(),
        };
        if affected.is_empty() {
            return;
        }
        tracing::warn!(
            endpoints = affected.len(),
            "denying every new connection of the selected pods the failed write concerns until it succeeds"
        );
        let failed = self.backend.fail_closed(&affected, &self.pod_interfaces);
        if let Err(error) = failed {
            // What could not be written is no endpoint to the datapath: dropped as such.
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "writing endpoints as not programmed failed"
            );
            self.metrics.count_programming_error("fail_closed");
        }
        self.not_programmed.extend(affected.into_keys());
    }

    /// Whether the pod programs are attached to the interface with index `index`.
    fn pod_programs_on(&self, index: u32) -> bool {
        self.interfaces
            .as_ref()
            .and_then(|interfaces| interfaces.link_by_index(index))
            .is_some_and(|link| {
                self.attached
                    .contains(&(link.name.clone(), InterfaceRole::Pod))
            })
    }

    /// Ready while the node holds the desired state and every selected local pod is enforced;
    /// the pods that are not are counted by reason.
    fn update_readiness(&self) {
        let mut not_enforced: BTreeMap<NotEnforced, u64> = BTreeMap::new();
        let mut selected = 0;
        if let Some(engine) = &self.engine {
            for (addr, _) in engine.state().selected_endpoints() {
                selected += 1;
                let attached = |index: &u32| self.pod_programs_on(*index);
                let reason = if self.not_programmed.contains(addr) {
                    NotEnforced::NotProgrammed
                } else {
                    match self.pod_interfaces.get(addr) {
                        None => NotEnforced::NoInterface,
                        Some(index) if !attached(index) => NotEnforced::NotAttached,
                        Some(_) => continue,
                    }
                };
                *not_enforced.entry(reason).or_default() += 1;
            }
        }
        let failing: BTreeMap<ObjectKind, (Duration, String)> = self
            .failing_sources
            .iter()
            .map(|(kind, (since, error))| (*kind, (since.elapsed(), error.clone())))
            .collect();
        let stale = self
            .failing_sources
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= self.config.stale_after)
            .map(|(kind, (since, error))| {
                format!(
                    "{} watch failing for {} s ({error})",
                    kind.name(),
                    since.elapsed().as_secs()
                )
            })
            .collect::<Vec<_>>();
        let readiness = if self.engine.is_none() {
            let mut reason = "waiting for the first list of every watched kind".to_owned();
            if !stale.is_empty() {
                reason = format!("{reason}: {}", stale.join("; "));
            }
            Err(reason)
        } else if !stale.is_empty() {
            Err(format!(
                "the cluster view may be stale: {}",
                stale.join("; ")
            ))
        } else if !self.in_sync {
            Err("the node does not hold the desired state (a write failed; retrying)".to_owned())
        } else if !not_enforced.is_empty() {
            let reasons: Vec<String> = not_enforced
                .iter()
                .map(|(reason, count)| format!("{count} {}", reason.name()))
                .collect();
            Err(format!(
                "selected local pods not enforced: {}",
                reasons.join(", ")
            ))
        } else {
            Ok(())
        };
        if readiness.is_ok() != self.metrics.is_ready() {
            match &readiness {
                Ok(()) => tracing::info!("every selected local pod is enforced: ready"),
                Err(reason) => tracing::warn!(reason, "not ready"),
            }
        }
        self.metrics
            .set_endpoints_not_enforced(selected, not_enforced);
        self.metrics.set_sources_failing(failing);
        self.metrics.set_readiness(readiness);
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
        let ranges = self.wanted_service_ranges();
        let state = match &self.engine {
            Some(engine) => engine.state().clone(),
            None => return,
        };
        self.service_ranges = None;
        let result = self
            .backend
            .set_service_ranges(&ranges)
            .and_then(|()| self.backend.converge(&state, &self.pod_interfaces));
        match result {
            Ok(()) => {
                self.note_service_ranges(ranges);
                self.in_sync = true;
                self.not_programmed.clear();
                self.metrics.note_full_sync();
                tracing::info!(
                    endpoints = state.endpoints.len(),
                    prefixes = state.ipcache.len(),
                    entries = state.policy.len(),
                    "converged the full state"
                );
            }
            Err(error) => {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "converging the full state failed; denying the selected pods' new connections until it succeeds"
                );
                self.metrics.count_programming_error("converge");
                self.in_sync = false;
                self.fail_closed(None);
                self.grow_after(&error);
            }
        }
        self.reconcile_attachments();
    }

    /// The flags' Service ranges and every address of the Service objects (as /32 and /128).
    fn wanted_service_ranges(&self) -> Vec<(Addr, u8)> {
        let mut ranges = self.flag_service_ranges();
        for object in self.objects.current.values() {
            if let ClusterObject::Service(service) = object {
                for ip in service_addresses(service) {
                    let len = if ip.is_ipv4() { 32 } else { 128 };
                    ranges.insert((Addr::from(ip), len));
                }
            }
        }
        ranges.into_iter().collect()
    }

    /// The `--service-cidr` ranges.
    fn flag_service_ranges(&self) -> BTreeSet<(Addr, u8)> {
        self.config
            .service_ranges
            .iter()
            .map(|(ip, len)| (Addr::from(*ip), *len))
            .collect()
    }

    /// Writes the Service ranges when they changed; a failure denies the selected pods (their
    /// egress to a Service would be judged on its address) until a converge holds.
    fn apply_service_ranges(&mut self) {
        let ranges = self.wanted_service_ranges();
        if self.service_ranges.as_ref() == Some(&ranges) {
            return;
        }
        match self.backend.set_service_ranges(&ranges) {
            Ok(()) => self.note_service_ranges(ranges),
            Err(error) => {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "writing the Service addresses failed; denying the selected pods' new connections and converging the whole state"
                );
                self.metrics.count_programming_error("service_ranges");
                self.in_sync = false;
                self.fail_closed(None);
                self.grow_after(&error);
            }
        }
    }

    /// Records (and says) which destinations egress is judged after DNAT for.
    fn note_service_ranges(&mut self, ranges: Vec<(Addr, u8)>) {
        let flagged = self.flag_service_ranges();
        let learned = ranges
            .iter()
            .filter(|range| !flagged.contains(range))
            .count();
        let flags: Vec<String> = self
            .config
            .service_ranges
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        tracing::info!(
            ranges = ?flags,
            service_addresses = learned,
            "egress to these Service ranges and Service addresses is judged after kube-proxy's DNAT"
        );
        self.metrics.set_service_ranges(ranges.len() as u64);
        self.service_ranges = Some(ranges);
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
                None => {
                    let object = format!("{}/{}", id.namespace, id.name);
                    self.metrics
                        .clear_rejected(id.kind.name(), object.trim_start_matches('/'));
                    changes.extend(delete_change(id));
                }
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
                let uid = pod.metadata.uid.as_deref();
                (
                    converted
                        .object
                        .map(|pod| Change::ApplyPod(self.with_claims(pod, uid))),
                    converted.rejections,
                )
            }
            ClusterObject::NetworkPolicy(policy) => {
                let converted = convert::network_policy(policy);
                (
                    converted.object.map(Change::ApplyPolicy),
                    converted.rejections,
                )
            }
            ClusterObject::ConfigMap(_) | ClusterObject::Service(_) => return None,
        };
        let id = object.id();
        let (kind, object) = (id.kind.name(), format!("{}/{}", id.namespace, id.name));
        let object = object.trim_start_matches('/');
        if rejections.is_empty() {
            self.metrics.clear_rejected(kind, object);
        }
        for rejection in rejections {
            tracing::warn!(kind = %rejection.kind, object = %rejection.object, reason = %rejection.reason, "rejected");
            self.metrics
                .count_rejection(kind_label(rejection.kind), &rejection.reason);
            self.metrics.note_rejected(kind, object, &rejection.reason);
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
        let value = disable_network_policy_value(eni_config).map(str::to_owned);
        if self.switch_value.as_ref() != Some(&value) {
            tracing::info!(
                value = value.as_deref().unwrap_or("<absent>"),
                enforce,
                "kube-system/eni-config disable_network_policy read"
            );
            if let Some(odd) = value
                .as_deref()
                .filter(|value| !enforce && !plainly_disables(value))
            {
                tracing::warn!(
                    value = odd,
                    "disable_network_policy = {odd:?} turns enforcement OFF: Terway keeps policies on only for an absent key, \"\", \"false\" and \"0\""
                );
                self.metrics.count_switch_off_by_odd_value();
            }
            self.switch_value = Some(value);
        }
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
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "switching enforcement failed"
                );
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
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "reading interfaces failed; keeping the last view"
                );
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
        self.follow_interfaces();
    }

    /// Updates endpoints whose interface index moved, and the attachments, from the interfaces
    /// last discovered.
    fn follow_interfaces(&mut self) {
        if self.engine.is_none() {
            return;
        }
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
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "updating endpoint interfaces failed"
                );
                self.metrics.count_programming_error("apply");
                self.in_sync = false;
                self.fail_closed(Some(&delta));
                self.retry_at
                    .get_or_insert_with(|| Instant::now() + self.retry_delay);
            }
        }
        self.reconcile_attachments();
        self.update_readiness();
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
        // The safety net: a pod interface (by name) no known pod routes through is closed.
        if self.engine.is_some() {
            let unknown: Vec<String> = self
                .interfaces
                .iter()
                .flat_map(|interfaces| interfaces.links())
                .filter(|link| {
                    self.config
                        .pod_interface_prefixes
                        .iter()
                        .any(|prefix| link.name.starts_with(prefix.as_str()))
                        && !wanted.contains(&(link.name.clone(), InterfaceRole::Pod))
                        && !wanted.contains(&(link.name.clone(), InterfaceRole::Uplink))
                })
                .map(|link| link.name.clone())
                .collect();
            for name in unknown {
                wanted.insert((name, InterfaceRole::UnknownPod));
            }
        }
        for (iface, role) in wanted.difference(&self.attached.clone()) {
            match self.backend.attach(iface, *role) {
                Ok(()) => {
                    tracing::info!(iface, ?role, "attached");
                    self.attached.insert((iface.clone(), *role));
                }
                Err(error) => {
                    tracing::warn!(
                        iface,
                        ?role,
                        error = &error as &dyn std::error::Error,
                        "attaching failed; retrying on the next resync"
                    );
                    self.metrics.count_programming_error("attach");
                }
            }
        }
        let mut detached = false;
        for (iface, role) in self
            .attached
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            // A pod interface that changed role: attaching the new one replaced it.
            let other = match role {
                InterfaceRole::Pod => Some(InterfaceRole::UnknownPod),
                InterfaceRole::UnknownPod => Some(InterfaceRole::Pod),
                InterfaceRole::Uplink => None,
            };
            if let Some(other) = other
                && self.attached.contains(&(iface.clone(), other))
            {
                self.attached.remove(&(iface, role));
                continue;
            }
            match self.backend.detach(&iface, role) {
                Ok(()) => {
                    tracing::info!(iface, ?role, "detached");
                    self.attached.remove(&(iface, role));
                    detached = true;
                }
                Err(error) => {
                    tracing::warn!(
                        iface,
                        ?role,
                        error = &error as &dyn std::error::Error,
                        "detaching failed"
                    );
                    self.metrics.count_programming_error("detach");
                }
            }
        }
        // Interfaces that vanished leave pins behind: those of this pass, and at start those
        // of interfaces that went while no agent ran.
        if detached || !self.pins_swept {
            match self.backend.remove_orphans() {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed pins of interfaces that are gone"),
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "removing pins of vanished interfaces failed"
                    );
                    self.metrics.count_programming_error("remove_orphans");
                    return;
                }
            }
            self.pins_swept = true;
        }
    }

    fn answer_query(&self, query: Query) {
        // A caller that went away has its answer dropped: nothing to do about it.
        match query {
            Query::Endpoints(reply) => {
                let _ = reply.send(self.endpoint_reports());
            }
            Query::Names(reply) => {
                let _ = reply.send(self.engine.as_ref().map(Engine::names).unwrap_or_default());
            }
            Query::Explain(flow, reply) => {
                let _ = reply.send(self.reference(&flow));
            }
        }
    }

    /// Every local pod as `netpol-agent endpoints` shows it.
    fn endpoint_reports(&self) -> Vec<EndpointReport> {
        let Some(engine) = &self.engine else {
            return Vec::new();
        };
        let names = |policies: &[ObjectRef]| policies.iter().map(ToString::to_string).collect();
        engine
            .local_endpoints()
            .into_iter()
            .map(|local| {
                let addresses: Vec<IpAddr> = engine
                    .snapshot()
                    .pods
                    .get(&local.pod)
                    .map(|pod| pod.ips.iter().copied().collect())
                    .unwrap_or_default();
                let index = addresses
                    .iter()
                    .find_map(|ip| self.pod_interfaces.get(&Addr::from(*ip)).copied());
                let interface = index.and_then(|index| {
                    self.interfaces
                        .as_ref()
                        .and_then(|interfaces| interfaces.link_by_index(index))
                        .map(|link| link.name.clone())
                });
                let selected = local.ingress.is_some() || local.egress.is_some();
                let state = if !selected {
                    "not_selected"
                } else if addresses
                    .iter()
                    .any(|ip| self.not_programmed.contains(&Addr::from(*ip)))
                {
                    NotEnforced::NotProgrammed.name()
                } else {
                    match index {
                        None => NotEnforced::NoInterface.name(),
                        Some(index) if !self.pod_programs_on(index) => {
                            NotEnforced::NotAttached.name()
                        }
                        Some(_) => "enforced",
                    }
                };
                EndpointReport {
                    pod: local.pod.to_string(),
                    endpoint_id: local.id,
                    addresses,
                    interface,
                    ingress: Isolation {
                        isolated: local.ingress.is_some(),
                        policies: names(&local.ingress_policies),
                        set: local.ingress,
                    },
                    egress: Isolation {
                        isolated: local.egress.is_some(),
                        policies: names(&local.egress_policies),
                        set: local.egress,
                    },
                    state: state.to_owned(),
                }
            })
            .collect()
    }

    /// The engine's reference answer for `flow`, each side marked local or not.
    fn reference(&self, flow: &Flow) -> Option<Reference> {
        let engine = self.engine.as_ref()?;
        let verdict = evaluate(engine.snapshot(), flow);
        let endpoints = &engine.state().endpoints;
        let side = |side: Side, ip: IpAddr| ReferenceSide {
            pod: side.pod.as_ref().map(ToString::to_string),
            local: endpoints.contains_key(&Addr::from(ip)),
            allowed: side.allowed,
            isolated_by: side.isolated_by.iter().map(ToString::to_string).collect(),
            allowed_by: side.because.iter().map(ToString::to_string).collect(),
        };
        Some(Reference {
            egress: side(verdict.egress, flow.src),
            ingress: side(verdict.ingress, flow.dst),
        })
    }

    /// Keeps the names file current for the debug CLI (when it changed since the last write).
    fn write_names(&mut self) {
        let (Some(path), Some(engine)) = (&self.config.names_file, &self.engine) else {
            return;
        };
        if !self.names_dirty {
            return;
        }
        match crate::debug::write_names_file(path, &engine.names()) {
            Ok(()) => {
                self.names_dirty = false;
                self.names_written = Some(Instant::now());
            }
            Err(error) => {
                tracing::warn!(
                    file = %path.display(),
                    error = format!("{error:#}"),
                    "writing the debug CLI's names file failed; retrying on the next resync"
                );
                self.metrics.count_programming_error("names_file");
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
            ObjectKind::Service,
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
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "reading datapath counters failed"
                );
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

/// Whether a Pod object's status lists one of `addresses`.
fn lists_any(pod: &crate::source::SlimPod, addresses: &[String]) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|ip| &ip.ip))
        .any(|ip| addresses.contains(ip))
}

fn delete_change(id: &ObjectId) -> Option<Change> {
    match id.kind {
        ObjectKind::Namespace => Some(Change::DeleteNamespace(id.name.clone())),
        ObjectKind::Pod => Some(Change::DeletePod(ObjectRef::new(&id.namespace, &id.name))),
        ObjectKind::NetworkPolicy => Some(Change::DeletePolicy(ObjectRef::new(
            &id.namespace,
            &id.name,
        ))),
        ObjectKind::ConfigMap | ObjectKind::Service => None,
    }
}

fn kind_label(kind: model::Kind) -> &'static str {
    match kind {
        model::Kind::Namespace => "namespace",
        model::Kind::Pod => "pod",
        model::Kind::NetworkPolicy => "networkpolicy",
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };
    use serde_json::json;

    use super::*;
    use crate::backend::fake::FakeBackend;

    const NODE: &str = "node-1";
    const STALE_AFTER: Duration = Duration::from_millis(300);

    fn runtime() -> Runtime<FakeBackend> {
        let config = RuntimeConfig {
            node_name: NODE.to_owned(),
            uplinks: Some(Vec::new()),
            service_ranges: Vec::new(),
            kinds: BTreeSet::from([
                ObjectKind::Namespace,
                ObjectKind::Pod,
                ObjectKind::NetworkPolicy,
            ]),
            stale_after: STALE_AFTER,
            names_file: None,
            pod_interface_prefixes: Vec::new(),
        };
        Runtime::new(config, FakeBackend::default(), Metrics::new())
    }

    fn namespace() -> ClusterObject {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("namespace");
        ClusterObject::Namespace(Box::new(namespace))
    }

    fn pod(name: &str, ip: &str) -> ClusterObject {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("pod");
        ClusterObject::Pod(Box::new(pod.into()))
    }

    fn deny_all_ingress() -> ClusterObject {
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "deny-all", "namespace": "default"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .expect("policy");
        ClusterObject::NetworkPolicy(Box::new(policy))
    }

    /// Lists every kind once: namespace `default` and `pods`.
    fn initial_events(pods: Vec<ClusterObject>) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        for (kind, objects) in [
            (ObjectKind::Namespace, vec![namespace()]),
            (ObjectKind::Pod, pods),
            (ObjectKind::NetworkPolicy, Vec::new()),
        ] {
            events.push(SourceEvent::Init(kind));
            events.extend(objects.into_iter().map(SourceEvent::Apply));
            events.push(SourceEvent::InitDone(kind));
        }
        events
    }

    #[tokio::test]
    async fn a_failed_write_denies_the_pods_it_concerns_and_is_retried_without_another_event() {
        let mut runtime = runtime();
        for event in initial_events(vec![pod("a", "10.244.1.10"), pod("b", "10.244.1.11")]) {
            runtime.handle(event);
        }
        runtime.reconcile();
        assert!(runtime.in_sync, "the first sync holds");

        // The next write fails (a map full, a kernel error): the policy that isolates both pods
        // must not leave them open while the agent waits for a cluster event that may never come.
        runtime.backend.failures = 1;
        runtime.handle(SourceEvent::Apply(deny_all_ingress()));
        runtime.reconcile();
        let a = Addr::from("10.244.1.10".parse::<IpAddr>().expect("address"));
        assert!(!runtime.in_sync);
        let endpoint = runtime.backend.state.endpoints[&a];
        assert_eq!(
            endpoint.flags & agent_common::endpoint::FLAG_NOT_PROGRAMMED,
            agent_common::endpoint::FLAG_NOT_PROGRAMMED,
            "the pods the failed write concerns are denied"
        );
        assert!(
            !runtime.metrics.is_ready(),
            "not ready while a write failed"
        );

        // Nothing else happens in the cluster: the retry alone converges the node.
        let (_events_tx, events) = mpsc::channel(1);
        let (_interfaces_tx, interfaces) = watch::channel(());
        let (shutdown_tx, shutdown) = watch::channel(false);
        let running = tokio::spawn(runtime.run(events, interfaces, shutdown));
        tokio::time::sleep(Duration::from_secs(2)).await;
        shutdown_tx.send_replace(true);
        let runtime = running.await.expect("the runtime stops");
        assert!(runtime.in_sync, "a retry converged the node");
        assert!(
            runtime.backend.state.endpoints.values().all(|endpoint| {
                endpoint.flags & agent_common::endpoint::FLAG_NOT_PROGRAMMED == 0
            }),
            "no endpoint is left not programmed"
        );
        let engine = runtime.engine.as_ref().expect("engine");
        assert_eq!(
            &runtime.backend.state,
            engine.state(),
            "the node holds the desired state"
        );
    }

    #[tokio::test]
    async fn readiness_follows_the_truth_after_a_failed_first_converge() {
        let mut runtime = runtime();
        runtime.backend.failures = 1;
        for event in initial_events(vec![pod("a", "10.244.1.10")]) {
            runtime.handle(event);
        }
        runtime.reconcile();
        assert!(!runtime.metrics.is_ready(), "the first converge failed");
        runtime.reconcile();
        assert!(runtime.in_sync);
        assert!(
            runtime.metrics.is_ready(),
            "ready once a later converge succeeds: {}",
            runtime.metrics.not_ready_reason()
        );
    }

    #[test]
    fn a_watch_failing_beyond_the_bound_makes_the_agent_not_ready_until_it_recovers() {
        let mut runtime = runtime();
        for event in initial_events(vec![pod("a", "10.244.1.10")]) {
            runtime.handle(event);
        }
        runtime.reconcile();
        assert!(runtime.metrics.is_ready());

        runtime.handle(SourceEvent::Failing {
            kind: ObjectKind::Pod,
            detail: "pods is forbidden".to_owned(),
        });
        runtime.update_readiness();
        assert!(
            runtime.metrics.is_ready(),
            "a failure shorter than the bound is a blip"
        );
        std::thread::sleep(STALE_AFTER);
        runtime.update_readiness();
        assert!(!runtime.metrics.is_ready(), "stale beyond the bound");
        let reason = runtime.metrics.not_ready_reason();
        assert!(
            reason.contains("pod watch failing") && reason.contains("pods is forbidden"),
            "{reason}"
        );
        assert!(
            runtime
                .metrics
                .render()
                .contains("netpol_source_failing_seconds{kind=\"pod\"}"),
            "the failing kind is exported"
        );

        runtime.handle(SourceEvent::Recovered(ObjectKind::Pod));
        assert!(
            runtime.metrics.is_ready(),
            "{}",
            runtime.metrics.not_ready_reason()
        );
    }

    #[test]
    fn an_undecodable_object_keeps_its_last_good_version_through_a_relist() {
        let mut runtime = runtime();
        for event in initial_events(vec![pod("a", "10.244.1.10")]) {
            runtime.handle(event);
        }
        runtime.handle(SourceEvent::Apply(deny_all_ingress()));
        runtime.reconcile();
        let policy = deny_all_ingress().id();
        for event in [
            SourceEvent::Init(ObjectKind::NetworkPolicy),
            SourceEvent::Undecodable {
                id: policy.clone(),
                detail: "invalid value".to_owned(),
            },
            SourceEvent::InitDone(ObjectKind::NetworkPolicy),
        ] {
            runtime.handle(event);
        }
        runtime.reconcile();
        assert!(
            runtime.objects.current.contains_key(&policy),
            "the deny-all stays"
        );
        assert!(runtime.metrics.render().contains(
            "netpol_rejected_objects_total{kind=\"networkpolicy\",reason=\"undecodable\"} 1"
        ));
    }

    #[test]
    fn service_addresses_are_learned_from_service_objects_and_follow_them() {
        let mut runtime = runtime();
        for event in initial_events(vec![pod("a", "10.244.1.10")]) {
            runtime.handle(event);
        }
        runtime.reconcile();
        assert!(
            runtime.backend.service_ranges.is_empty(),
            "no flags, no Services"
        );

        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIPs": ["192.168.5.10", "fd00:96::10"], "externalIPs": ["198.51.100.9"]},
        }))
        .expect("service");
        let service = ClusterObject::Service(Box::new(service));
        let id = service.id();
        runtime.handle(SourceEvent::Apply(service));
        runtime.reconcile();
        let ranges: Vec<String> = runtime
            .backend
            .service_ranges
            .iter()
            .map(|(addr, len)| format!("{}/{len}", addr.to_ip().expect("an address")))
            .collect();
        assert_eq!(
            ranges,
            ["192.168.5.10/32", "198.51.100.9/32", "fd00:96::10/128"]
        );
        runtime.handle(SourceEvent::Delete(id));
        runtime.reconcile();
        assert!(
            runtime.backend.service_ranges.is_empty(),
            "gone with the Service"
        );
    }

    fn cni_add(name: &str, ip: &str) -> (CniCall, tokio::sync::oneshot::Receiver<Response>) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = CniCall {
            request: netpol_cni::Request {
                operation: Operation::Add,
                namespace: "default".to_owned(),
                name: name.to_owned(),
                uid: None,
                container_id: format!("sandbox-of-{name}"),
                addresses: vec![ip.parse().expect("ip")],
                host_interface: None,
            },
            reply,
        };
        (call, answer)
    }

    fn pod_without_address(name: &str) -> ClusterObject {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
            "status": {"phase": "Pending"},
        }))
        .expect("pod");
        ClusterObject::Pod(Box::new(pod.into()))
    }

    fn owner_of(runtime: &Runtime<FakeBackend>, ip: &str) -> Option<String> {
        let ip: IpAddr = ip.parse().expect("ip");
        runtime.engine().and_then(|engine| {
            engine
                .snapshot()
                .pods
                .values()
                .find(|pod| pod.ips.contains(&ip))
                .map(|pod| pod.name.clone())
        })
    }

    /// The CNI plugin's ADD comes before status.podIP: the pod is programmed at the sandbox's
    /// address at once. An address still listed by an older pod's object (terminating, or the
    /// API not caught up) is the new pod's from its ADD on.
    #[test]
    fn a_cni_add_programs_the_pod_before_its_status_and_takes_a_reused_address() {
        let mut runtime = runtime();
        for event in initial_events(vec![pod("old", "10.244.1.10"), pod_without_address("new")]) {
            runtime.handle(event);
        }
        runtime.reconcile();
        assert_eq!(owner_of(&runtime, "10.244.1.10").as_deref(), Some("old"));

        let (call, mut answer) = cni_add("new", "10.244.1.10");
        runtime.handle_cni(call);
        runtime.reconcile();
        assert_eq!(
            owner_of(&runtime, "10.244.1.10").as_deref(),
            Some("new"),
            "the sandbox's claim wins over the old object's status"
        );
        let addr = Addr::from("10.244.1.10".parse::<IpAddr>().expect("ip"));
        assert!(
            runtime
                .engine()
                .expect("engine")
                .state()
                .endpoints
                .contains_key(&addr)
        );
        // No host interface routes to it in this test: the ADD waits, and is refused at its
        // deadline rather than let the pod start unenforced.
        runtime.answer_cni();
        assert!(
            answer.try_recv().is_err(),
            "not answered while not enforced"
        );
        if let Some((_, arrived)) = runtime.waiting.first_mut() {
            *arrived -= CNI_ANSWER_WITHIN;
        }
        runtime.answer_cni();
        let response = answer.try_recv().expect("answered at the deadline");
        assert!(!response.ok);
        assert!(
            response.message.contains("no attached host interface"),
            "{}",
            response.message
        );

        // DEL of that sandbox gives the address back to what the objects say.
        let (reply, _) = tokio::sync::oneshot::channel();
        runtime.handle_cni(CniCall {
            request: netpol_cni::Request {
                operation: Operation::Del,
                namespace: "default".to_owned(),
                name: "new".to_owned(),
                uid: None,
                container_id: "sandbox-of-new".to_owned(),
                addresses: Vec::new(),
                host_interface: None,
            },
            reply,
        });
        runtime.reconcile();
        assert_eq!(owner_of(&runtime, "10.244.1.10").as_deref(), Some("old"));
    }
}
