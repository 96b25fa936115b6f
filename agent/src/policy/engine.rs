//! [`Engine`]: the incremental compiler. It keeps the cluster [`Snapshot`], every index the
//! compiled state is derived from, and the [`NodeState`]; a batch of changes marks what it
//! invalidates and [`Engine::apply`] recomputes only that, in dependency order:
//!
//! 1. object changes update the input indexes eagerly: address owners, pod membership of
//!    existing peers (a pod change checks that pod against every relevant pod peer; a namespace
//!    change only the peers whose namespace selector flips), and which policies select each
//!    local endpoint;
//! 2. changed policies are recompiled: their selection of local endpoints and, if they select
//!    any, their peers (interned; a new peer scans the snapshot for its members once);
//! 3. dirty prefixes (pod addresses whose owner, membership or named ports changed; prefixes
//!    under an ipBlock that appeared or went) get their signature and class again;
//! 4. endpoint directions whose policies, or whose peers' classes, changed get their set again;
//! 5. endpoint entries of changed endpoints and addresses are rewritten.
//!
//! Every write goes through the journal, so the returned [`Delta`] is exactly the difference.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use agent_common::{
    addr::Addr,
    endpoint::{Endpoint, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
    ipcache::{CLASS_FIRST_DYNAMIC, PeerClass},
};

use crate::model::{
    Change, Namespace, NetworkPolicy, ObjectRef, Peers, Pod, PortMatch, Ports, Snapshot, packed,
};

use super::{
    Delta, Direction, IpPrefix, NodeState,
    classes::{ClassMove, ClassTable, Dep, PodPart, Sig, Touched},
    delta::Journal,
    names::{IsolatedBy, Names},
    peers::{NamedPort, PeerDef, PeerId, PeerTable, User},
    rules::RuleTable,
    selector::matches,
    sets::{self, CompiledPolicy, CompiledRule, SetMove, SetTable, SetWrites, Target},
};

/// A local pod as [`Engine::local_endpoints`] describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub pod: ObjectRef,
    pub id: u32,
    /// Policy set of each direction; `None`: not isolated.
    pub ingress: Option<u32>,
    pub egress: Option<u32>,
    /// Policies selecting the pod that cover each direction.
    pub ingress_policies: Vec<ObjectRef>,
    pub egress_policies: Vec<ObjectRef>,
}

/// A local endpoint: a pod of this node that is not hostNetwork and owns an address.
#[derive(Debug)]
struct Local {
    id: u32,
    /// Policies selecting it.
    selecting: BTreeSet<ObjectRef>,
    /// `None`: not isolated; `Some(set)`.
    ingress: Option<u32>,
    egress: Option<u32>,
}

impl Local {
    fn set(&mut self, direction: Direction) -> &mut Option<u32> {
        match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    fn value(&self) -> Endpoint {
        let mut flags = 0;
        if self.ingress.is_some() {
            flags |= FLAG_INGRESS_ISOLATED;
        }
        if self.egress.is_some() {
            flags |= FLAG_EGRESS_ISOLATED;
        }
        Endpoint {
            id: self.id,
            ifindex: 0,
            flags,
            ingress_set: self.ingress.unwrap_or_default(),
            egress_set: self.egress.unwrap_or_default(),
        }
    }
}

/// What a relevant policy holds references to.
#[derive(Debug, Default)]
struct Held {
    peers: Vec<(PeerId, Direction)>,
    named: Vec<NamedPort>,
}

/// The ipBlock peers a policy's old version alone holds, with its references to each. While
/// the new version compiles, an ipBlock no peer has yet takes one of them over in place
/// ([`Engine::acquire_peer`]): an except or CIDR edited in a policy then moves only the
/// addresses under what changed, not every address under the CIDR.
#[derive(Debug, Default)]
struct Retiring {
    blocks: BTreeMap<PeerId, BTreeMap<User, u32>>,
}

impl Retiring {
    fn new(key: &ObjectRef, old: &Held, peers: &PeerTable) -> Self {
        let mut blocks: BTreeMap<PeerId, BTreeMap<User, u32>> = BTreeMap::new();
        for (id, direction) in &old.peers {
            *blocks
                .entry(*id)
                .or_default()
                .entry((key.clone(), *direction))
                .or_default() += 1;
        }
        blocks.retain(|id, held| peers.is_block_held_only_by(*id, held));
        Self { blocks }
    }

    /// A peer still held by the old version alone, preferring one with the CIDR of `def`.
    fn take(&mut self, def: &PeerDef, peers: &PeerTable) -> Option<PeerId> {
        // The new version may since have acquired some of them as they are.
        self.blocks
            .retain(|id, held| peers.is_block_held_only_by(*id, held));
        let cidr_of = |def: &PeerDef| match def {
            PeerDef::IpBlock { cidr, .. } => Some(*cidr),
            PeerDef::Pods { .. } => None,
        };
        let id = self
            .blocks
            .keys()
            .copied()
            .find(|id| {
                peers
                    .get(*id)
                    .is_some_and(|state| cidr_of(&state.def) == cidr_of(def))
            })
            .or_else(|| self.blocks.keys().next().copied())?;
        self.blocks.remove(&id);
        Some(id)
    }
}

/// What the next settle must recompute.
#[derive(Debug, Default)]
struct Dirty {
    /// Policies to recompile, with whether their spec changed (else only their selection).
    policies: BTreeMap<ObjectRef, bool>,
    /// Addresses whose host prefix and endpoint entry must be recomputed.
    hosts: BTreeSet<Addr>,
    /// Pods whose signature part must be recomputed.
    parts: BTreeSet<ObjectRef>,
    /// Other trie prefixes whose class must be recomputed.
    prefixes: BTreeSet<IpPrefix>,
    /// Endpoint directions whose set must be recomputed: wholly (`None`) or only the entries
    /// of some classes.
    endpoints: BTreeMap<(ObjectRef, Direction), Option<BTreeSet<u32>>>,
    /// Local pods whose endpoint entries must be rewritten.
    locals: BTreeSet<ObjectRef>,
    /// Local endpoints that went away, whose sets are still to be released.
    departed: Vec<Local>,
}

/// Sizes of the engine's tables, for logs and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub local_endpoints: usize,
    pub relevant_policies: usize,
    pub peers: usize,
    pub classes: usize,
    pub sets: usize,
    pub rules: usize,
}

/// The incremental compiler of one node's state.
#[derive(Debug)]
pub struct Engine {
    node: String,
    snapshot: Snapshot,

    pods_by_ns: BTreeMap<String, BTreeSet<String>>,
    policies_by_ns: BTreeMap<String, BTreeSet<String>>,
    /// Non-hostNetwork pods listing each address; the first is its owner. (Hash maps here
    /// and below are only looked up, never iterated: output order cannot depend on them.)
    claims: HashMap<Addr, Claimants>,
    /// Non-hostNetwork pods declaring each named port.
    named_pods: BTreeMap<NamedPort, BTreeSet<ObjectRef>>,

    locals: BTreeMap<ObjectRef, Local>,
    locals_by_ns: BTreeMap<String, BTreeSet<String>>,
    endpoint_ids: BTreeSet<u32>,
    next_endpoint: u32,

    /// Policy to the local endpoints it selects (only non-empty).
    selected: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Relevant policies (selecting a local endpoint), compiled.
    compiled: BTreeMap<ObjectRef, CompiledPolicy>,
    held: BTreeMap<ObjectRef, Held>,
    peers: PeerTable,
    /// Relevant egress named ports and the policies using them.
    named_users: BTreeMap<NamedPort, BTreeMap<ObjectRef, u32>>,
    /// ipBlock CIDRs and excepts in the trie, with the number of peers using each.
    trie_refs: HashMap<IpPrefix, u32>,
    /// The signature part of every pod that has one.
    pod_parts: HashMap<ObjectRef, Arc<PodPart>>,
    no_part: Arc<PodPart>,

    classes: ClassTable,
    sets: SetTable,
    rules: RuleTable,

    state: NodeState,
    journal: Journal,
    dirty: Dirty,
}

/// The pods listing one address, in order: the first owns it. Nearly always one pod, so a
/// sorted vector rather than a `BTreeSet`, whose first node has room for eleven (over 500
/// bytes per pod address of the cluster).
#[derive(Debug, Default)]
struct Claimants(Vec<ObjectRef>);

impl Claimants {
    fn insert(&mut self, key: &ObjectRef) {
        if let Err(at) = self.0.binary_search(key) {
            self.0.reserve_exact(1);
            self.0.insert(at, key.clone());
        }
    }

    fn remove(&mut self, key: &ObjectRef) {
        if let Ok(at) = self.0.binary_search(key) {
            self.0.remove(at);
        }
    }

    fn first(&self) -> Option<&ObjectRef> {
        self.0.first()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, ObjectRef> {
        self.0.iter()
    }
}

/// The state of `snapshot` for `node`, compiled from scratch.
pub fn compile(snapshot: &Snapshot, node: &str) -> NodeState {
    let (engine, _) = Engine::with_snapshot(node, snapshot.clone());
    engine.state
}

impl Engine {
    /// An engine with an empty cluster.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            snapshot: Snapshot::default(),
            pods_by_ns: BTreeMap::new(),
            policies_by_ns: BTreeMap::new(),
            claims: HashMap::new(),
            named_pods: BTreeMap::new(),
            locals: BTreeMap::new(),
            locals_by_ns: BTreeMap::new(),
            endpoint_ids: BTreeSet::new(),
            next_endpoint: 1,
            selected: BTreeMap::new(),
            compiled: BTreeMap::new(),
            held: BTreeMap::new(),
            peers: PeerTable::default(),
            named_users: BTreeMap::new(),
            trie_refs: HashMap::new(),
            pod_parts: HashMap::new(),
            no_part: Arc::default(),
            classes: ClassTable::default(),
            sets: SetTable::default(),
            rules: RuleTable::default(),
            state: NodeState::default(),
            journal: Journal::default(),
            dirty: Dirty::default(),
        }
    }

    /// An engine holding `snapshot`, and the delta from empty maps to its state (the full
    /// compile).
    pub fn with_snapshot(node: impl Into<String>, snapshot: Snapshot) -> (Self, Delta) {
        let mut engine = Self::new(node);
        let namespaces: Vec<String> = snapshot.namespaces.keys().cloned().collect();
        let pods: Vec<ObjectRef> = snapshot.pods.keys().cloned().collect();
        let policies: Vec<ObjectRef> = snapshot.policies.keys().cloned().collect();
        engine.snapshot = snapshot.packed();
        for name in namespaces {
            engine.namespace_changed(&name, None);
        }
        for key in policies {
            engine.policy_changed(&key);
        }
        for key in pods {
            engine.pod_changed(&key, None);
        }
        // Filled in key order, as the snapshot: every pod of the cluster is in these.
        for names in engine.pods_by_ns.values_mut() {
            *names = packed(std::mem::take(names));
        }
        for pods in engine.named_pods.values_mut() {
            *pods = packed(std::mem::take(pods));
        }
        let delta = engine.settle();
        (engine, delta)
    }

    /// Applies a batch of changes; returns what changed in the maps.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Delta {
        for change in changes {
            match change {
                Change::ApplyNamespace(namespace) => {
                    let name = namespace.name.clone();
                    let old = self.snapshot.namespaces.insert(name.clone(), namespace);
                    self.namespace_changed(&name, old);
                }
                Change::DeleteNamespace(name) => {
                    if let Some(old) = self.snapshot.namespaces.remove(&name) {
                        self.namespace_changed(&name, Some(old));
                    }
                }
                Change::ApplyPod(pod) => {
                    let key = pod.key();
                    let old = self.snapshot.pods.insert(key.clone(), pod);
                    self.pod_changed(&key, old);
                }
                Change::DeletePod(key) => {
                    if let Some(old) = self.snapshot.pods.remove(&key) {
                        self.pod_changed(&key, Some(old));
                    }
                }
                Change::ApplyPolicy(policy) => {
                    let key = policy.key();
                    let old = self.snapshot.policies.insert(key.clone(), policy);
                    let changed = old.as_ref() != self.snapshot.policies.get(&key);
                    if changed {
                        self.policy_changed(&key);
                    }
                }
                Change::DeletePolicy(key) => {
                    if self.snapshot.policies.remove(&key).is_some() {
                        self.policy_changed(&key);
                    }
                }
            }
        }
        self.settle()
    }

    /// The compiled state.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The cluster as the engine knows it.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pod of endpoint `id`.
    pub fn endpoint_pod(&self, id: u32) -> Option<&ObjectRef> {
        self.locals
            .iter()
            .find(|(_, local)| local.id == id)
            .map(|(key, _)| key)
    }

    /// Every local pod (non-hostNetwork, of this node, with an address): its endpoint id, its
    /// policy set per direction (`None`: not isolated) and the policies isolating it.
    pub fn local_endpoints(&self) -> Vec<LocalEndpoint> {
        self.locals
            .iter()
            .map(|(pod, local)| {
                let covering = |ingress: bool| -> Vec<ObjectRef> {
                    local
                        .selecting
                        .iter()
                        .filter(|key| {
                            self.snapshot.policies.get(*key).is_some_and(|policy| {
                                if ingress {
                                    policy.ingress.is_some()
                                } else {
                                    policy.egress.is_some()
                                }
                            })
                        })
                        .cloned()
                        .collect()
                };
                LocalEndpoint {
                    pod: pod.clone(),
                    id: local.id,
                    ingress: local.ingress,
                    egress: local.egress,
                    ingress_policies: covering(true),
                    egress_policies: covering(false),
                }
            })
            .collect()
    }

    /// What the ids of the compiled state stand for (built on demand: the debug API's and the
    /// on-disk index's).
    pub fn names(&self) -> Names {
        let mut names = Names {
            node: self.node.clone(),
            ..Names::default()
        };
        for local in self.local_endpoints() {
            let pod_name = local.pod.to_string();
            names.endpoints.insert(local.id, pod_name.clone());
            let policies = |keys: &[ObjectRef]| keys.iter().map(ToString::to_string).collect();
            names.isolated_by.insert(
                local.id,
                IsolatedBy {
                    ingress: policies(&local.ingress_policies),
                    egress: policies(&local.egress_policies),
                },
            );
            for (set, policies, ingress) in [
                (local.ingress, &local.ingress_policies, true),
                (local.egress, &local.egress_policies, false),
            ] {
                let Some(set) = set else { continue };
                let entry = names.sets.entry(set).or_default();
                let pods = if ingress {
                    &mut entry.ingress_of
                } else {
                    &mut entry.egress_of
                };
                pods.insert(pod_name.clone());
                entry
                    .policies
                    .extend(policies.iter().map(ToString::to_string));
            }
            if let Some(pod) = self.snapshot.pods.get(&local.pod) {
                for ip in &pod.ips {
                    names.addresses.insert(*ip, pod_name.clone());
                }
            }
        }
        for (peer, state) in self.peers.iter() {
            let Some(classes) = self.classes.of_peer(peer) else {
                continue;
            };
            let text = state.def.to_string();
            for class in classes {
                names.classes.entry(*class).or_default().push(text.clone());
            }
            for pod in &state.members {
                if let Some(pod) = self.snapshot.pods.get(pod) {
                    for ip in &pod.ips {
                        names.addresses.insert(*ip, pod.key().to_string());
                    }
                }
            }
        }
        for port in self.named_users.keys() {
            for class in self
                .classes
                .of_named(port)
                .into_iter()
                .flat_map(BTreeMap::keys)
            {
                names
                    .classes
                    .entry(*class)
                    .or_default()
                    .push(format!("named port {}/{}", port.name, port.protocol));
            }
        }
        names.rules = self
            .state
            .rules
            .iter()
            .map(|(id, rule)| (*id, rule.to_string()))
            .collect();
        names
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            local_endpoints: self.locals.len(),
            relevant_policies: self.compiled.len(),
            peers: self.peers.len(),
            classes: self.classes.len(),
            sets: self.sets.len(),
            rules: self.rules.len(),
        }
    }

    // ---- Object changes: input indexes, eagerly. ----

    fn namespace_changed(&mut self, name: &str, old: Option<Namespace>) {
        let new = self.snapshot.namespaces.get(name).cloned();
        let new = new.as_ref();
        if old.as_ref().map(|ns| &ns.labels) == new.map(|ns| &ns.labels) {
            return;
        }
        let flipped: Vec<(PeerId, PeerDef)> = self
            .peers
            .pod_peers()
            .filter(|(_, def)| {
                def.covers_namespace(name, old.as_ref()) != def.covers_namespace(name, new)
            })
            .map(|(id, def)| (id, def.clone()))
            .collect();
        if flipped.is_empty() {
            return;
        }
        let pods: Vec<ObjectRef> = self
            .pods_by_ns
            .get(name)
            .into_iter()
            .flatten()
            .map(|pod| ObjectRef::new(name, pod))
            .collect();
        for key in pods {
            let Some(pod) = self.snapshot.pods.get(&key) else {
                continue;
            };
            let mut changed = false;
            for (id, def) in &flipped {
                changed |= self.peers.set_member(*id, &key, def.matches_pod(pod, new));
            }
            if changed {
                self.mark_pod_hosts(&key);
            }
        }
    }

    fn policy_changed(&mut self, key: &ObjectRef) {
        let names = self
            .policies_by_ns
            .entry(key.namespace.clone())
            .or_default();
        if self.snapshot.policies.contains_key(key) {
            names.insert(key.name.clone());
        } else {
            names.remove(&key.name);
            if names.is_empty() {
                self.policies_by_ns.remove(&key.namespace);
            }
        }
        self.dirty.policies.insert(key.clone(), true);
    }

    fn pod_changed(&mut self, key: &ObjectRef, old: Option<Pod>) {
        let new = self.snapshot.pods.get(key).cloned();
        fn peer_view(pod: &Option<Pod>) -> Option<&Pod> {
            pod.as_ref().filter(|pod| !pod.host_network)
        }
        let (old_peer, new_peer) = (peer_view(&old), peer_view(&new));

        // Address owners.
        let old_ips: BTreeSet<Addr> = old_peer
            .iter()
            .flat_map(|p| p.ips.iter())
            .map(|ip| Addr::from(*ip))
            .collect();
        let new_ips: BTreeSet<Addr> = new_peer
            .iter()
            .flat_map(|p| p.ips.iter())
            .map(|ip| Addr::from(*ip))
            .collect();
        for addr in old_ips.difference(&new_ips) {
            if let Some(owners) = self.claims.get_mut(addr) {
                owners.remove(key);
                if owners.is_empty() {
                    self.claims.remove(addr);
                }
            }
            self.dirty.hosts.insert(*addr);
        }
        for addr in new_ips.difference(&old_ips) {
            self.claims.entry(*addr).or_default().insert(key);
            self.dirty.hosts.insert(*addr);
        }

        // Pods by namespace, for peer scans.
        match (old_peer.is_some(), new_peer.is_some()) {
            (false, true) => {
                self.pods_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
            }
            (true, false) => {
                if let Some(names) = self.pods_by_ns.get_mut(&key.namespace) {
                    names.remove(&key.name);
                    if names.is_empty() {
                        self.pods_by_ns.remove(&key.namespace);
                    }
                }
            }
            _ => {}
        }

        // Named ports.
        let named = |pod: Option<&Pod>| -> BTreeSet<NamedPort> {
            pod.into_iter()
                .flat_map(|pod| pod.ports.iter())
                .filter_map(|port| {
                    port.name.as_ref().map(|name| NamedPort {
                        name: name.clone(),
                        protocol: port.protocol,
                    })
                })
                .collect()
        };
        let (old_named, new_named) = (named(old_peer), named(new_peer));
        for port in old_named.difference(&new_named) {
            if let Some(pods) = self.named_pods.get_mut(port) {
                pods.remove(key);
                if pods.is_empty() {
                    self.named_pods.remove(port);
                }
            }
        }
        for port in new_named.difference(&old_named) {
            self.named_pods
                .entry(port.clone())
                .or_default()
                .insert(key.clone());
        }
        if old_peer.map(|p| &p.ports) != new_peer.map(|p| &p.ports) {
            self.dirty.parts.insert(key.clone());
            self.dirty.hosts.extend(new_ips.iter().copied());
        }

        // Membership of existing peers.
        if old_peer.map(|p| &p.labels) != new_peer.map(|p| &p.labels) {
            self.refresh_membership(key, new_peer, &new_ips);
        }

        // Local endpoints: this pod, and every other pod whose ownership of an address may
        // have changed with it.
        let labels_changed = old.as_ref().map(|p| &p.labels) != new.as_ref().map(|p| &p.labels);
        self.refresh_local(key, labels_changed);
        let others: BTreeSet<ObjectRef> = old_ips
            .symmetric_difference(&new_ips)
            .filter_map(|addr| self.claims.get(addr))
            .flat_map(Claimants::iter)
            .filter(|other| *other != key)
            .cloned()
            .collect();
        for other in others {
            self.refresh_local(&other, false);
        }
        // Endpoint entries of every address the pod had or has.
        for pod in [old.as_ref(), new.as_ref()].into_iter().flatten() {
            self.dirty
                .hosts
                .extend(pod.ips.iter().map(|ip| Addr::from(*ip)));
        }
    }

    /// Makes `key` a local endpoint or not: a pod of this node, not hostNetwork, that owns at
    /// least one of its addresses (an address several pods list is the first one's).
    fn refresh_local(&mut self, key: &ObjectRef, labels_changed: bool) {
        let is_local = self.snapshot.pods.get(key).is_some_and(|pod| {
            pod.node.as_deref() == Some(self.node.as_str())
                && !pod.host_network
                && pod.ips.iter().any(|ip| {
                    self.claims
                        .get(&Addr::from(*ip))
                        .and_then(|owners| owners.first())
                        == Some(key)
                })
        });
        let was_local = self.locals.contains_key(key);
        if is_local {
            if !was_local {
                let id = self.allocate_endpoint_id();
                self.locals.insert(
                    key.clone(),
                    Local {
                        id,
                        selecting: BTreeSet::new(),
                        ingress: None,
                        egress: None,
                    },
                );
                self.locals_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
            }
            if !was_local || labels_changed {
                self.reselect_local(key);
            }
            for direction in Direction::BOTH {
                self.dirty.endpoints.insert((key.clone(), direction), None);
            }
            self.dirty.locals.insert(key.clone());
        } else if let Some(local) = self.locals.remove(key) {
            if let Some(names) = self.locals_by_ns.get_mut(&key.namespace) {
                names.remove(&key.name);
                if names.is_empty() {
                    self.locals_by_ns.remove(&key.namespace);
                }
            }
            for policy in &local.selecting {
                self.unselect(policy, key);
            }
            self.dirty.departed.push(local);
        }
    }

    fn allocate_endpoint_id(&mut self) -> u32 {
        loop {
            let candidate = self.next_endpoint.max(1);
            self.next_endpoint = candidate.wrapping_add(1);
            if self.endpoint_ids.insert(candidate) {
                return candidate;
            }
        }
    }

    /// Checks pod `key` against every relevant pod peer.
    fn refresh_membership(&mut self, key: &ObjectRef, pod: Option<&Pod>, addrs: &BTreeSet<Addr>) {
        let namespace = self.snapshot.namespaces.get(&key.namespace);
        let verdicts: Vec<(PeerId, bool)> = self
            .peers
            .pod_peers()
            .map(|(id, def)| (id, pod.is_some_and(|pod| def.matches_pod(pod, namespace))))
            .collect();
        let mut changed = false;
        for (id, member) in verdicts {
            changed |= self.peers.set_member(id, key, member);
        }
        if changed {
            self.dirty.parts.insert(key.clone());
            self.dirty.hosts.extend(addrs.iter().copied());
        }
    }

    /// Recomputes which policies select local endpoint `key`.
    fn reselect_local(&mut self, key: &ObjectRef) {
        let Some(pod) = self.snapshot.pods.get(key) else {
            return;
        };
        let now: BTreeSet<ObjectRef> = self
            .policies_by_ns
            .get(&key.namespace)
            .into_iter()
            .flatten()
            .map(|name| ObjectRef::new(&key.namespace, name))
            .filter(|policy| {
                self.snapshot
                    .policies
                    .get(policy)
                    .is_some_and(|policy| matches(&policy.pod_selector, &pod.labels))
            })
            .collect();
        let Some(local) = self.locals.get_mut(key) else {
            return;
        };
        let before = std::mem::replace(&mut local.selecting, now.clone());
        for policy in before.difference(&now) {
            self.unselect(policy, key);
        }
        for policy in now.difference(&before) {
            let selected = self.selected.entry(policy.clone()).or_default();
            if selected.is_empty() {
                self.dirty.policies.entry(policy.clone()).or_insert(false);
            }
            selected.insert(key.clone());
        }
    }

    /// `policy` no longer selects local endpoint `key`.
    fn unselect(&mut self, policy: &ObjectRef, key: &ObjectRef) {
        if let Some(selected) = self.selected.get_mut(policy) {
            selected.remove(key);
            if selected.is_empty() {
                self.selected.remove(policy);
                self.dirty.policies.entry(policy.clone()).or_insert(false);
            }
        }
    }

    /// Marks the signature part of pod `key` and its addresses.
    fn mark_pod_hosts(&mut self, key: &ObjectRef) {
        self.dirty.parts.insert(key.clone());
        if let Some(pod) = self.snapshot.pods.get(key) {
            self.dirty
                .hosts
                .extend(pod.ips.iter().map(|ip| Addr::from(*ip)));
        }
    }

    /// Marks `cidr` and every trie prefix inside it.
    fn mark_subtree(&mut self, cidr: &IpPrefix) {
        self.dirty.prefixes.insert(*cidr);
        let (first, last) = cidr.subtree_bounds();
        for prefix in self
            .state
            .ipcache
            .range(first..=last)
            .map(|(prefix, _)| prefix)
        {
            if cidr.contains(prefix) {
                self.dirty.prefixes.insert(*prefix);
            }
        }
    }

    // ---- Settle: derived state, in dependency order. ----

    fn settle(&mut self) -> Delta {
        for (key, spec_changed) in std::mem::take(&mut self.dirty.policies) {
            self.refresh_policy(&key, spec_changed);
        }
        self.refresh_classes();
        self.refresh_sets();
        self.refresh_endpoint_entries();
        self.rules.sweep();
        self.journal.take(&self.state)
    }

    /// Recomputes a policy's selection of local endpoints and, if it is relevant, its
    /// compiled rules and the peers they hold.
    fn refresh_policy(&mut self, key: &ObjectRef, spec_changed: bool) {
        let policy = self.snapshot.policies.get(key).cloned();
        let now: BTreeSet<ObjectRef> = match &policy {
            None => BTreeSet::new(),
            Some(policy) => self
                .locals_by_ns
                .get(&key.namespace)
                .into_iter()
                .flatten()
                .map(|name| ObjectRef::new(&key.namespace, name))
                .filter(|local| {
                    self.snapshot
                        .pods
                        .get(local)
                        .is_some_and(|pod| matches(&policy.pod_selector, &pod.labels))
                })
                .collect(),
        };
        let before = self.selected.remove(key).unwrap_or_default();
        for local in before.symmetric_difference(&now) {
            if let Some(state) = self.locals.get_mut(local) {
                if now.contains(local) {
                    state.selecting.insert(key.clone());
                } else {
                    state.selecting.remove(key);
                }
            }
        }
        let touched: Vec<&ObjectRef> = if spec_changed {
            before.union(&now).collect()
        } else {
            before.symmetric_difference(&now).collect()
        };
        for local in touched {
            for direction in Direction::BOTH {
                self.dirty
                    .endpoints
                    .insert((local.clone(), direction), None);
            }
        }
        let relevant = !now.is_empty();
        if relevant {
            self.selected.insert(key.clone(), now);
        }
        if !spec_changed && relevant == self.compiled.contains_key(key) {
            return;
        }

        // Acquire the new references before releasing the old ones, so peers both versions
        // use are kept, not rebuilt.
        let old_held = self.held.remove(key).unwrap_or_default();
        self.compiled.remove(key);
        if let (true, Some(policy)) = (relevant, &policy) {
            let mut retiring = Retiring::new(key, &old_held, &self.peers);
            let (compiled, held) = self.compile_policy(key, policy, &mut retiring);
            self.compiled.insert(key.clone(), compiled);
            self.held.insert(key.clone(), held);
        }
        for (peer, direction) in old_held.peers {
            self.release_peer(peer, &(key.clone(), direction));
        }
        for port in old_held.named {
            self.release_named(&port, key);
        }
    }

    fn compile_policy(
        &mut self,
        key: &ObjectRef,
        policy: &NetworkPolicy,
        retiring: &mut Retiring,
    ) -> (CompiledPolicy, Held) {
        let mut held = Held::default();
        let mut compile =
            |engine: &mut Self, rules: &Option<Vec<crate::model::Rule>>, direction| {
                rules.as_ref().map(|rules| {
                    rules
                        .iter()
                        .map(|rule| {
                            let peers = match &rule.peers {
                                Peers::All => None,
                                Peers::Only(peers) => Some(
                                    peers
                                        .iter()
                                        .map(|peer| {
                                            let def = PeerDef::new(peer, &key.namespace)?;
                                            let user = (key.clone(), direction);
                                            let id = engine.acquire_peer(def, &user, retiring);
                                            held.peers.push((id, direction));
                                            Some(id)
                                        })
                                        .collect(),
                                ),
                            };
                            if direction == Direction::Egress
                                && let Ports::Only(ports) = &rule.ports
                            {
                                for port in ports {
                                    if let PortMatch::Named(name) = &port.port {
                                        let named = NamedPort {
                                            name: name.clone(),
                                            protocol: port.protocol,
                                        };
                                        engine.acquire_named(&named, key);
                                        held.named.push(named);
                                    }
                                }
                            }
                            CompiledRule {
                                peers,
                                ports: rule.ports.clone(),
                            }
                        })
                        .collect()
                })
            };
        let ingress = compile(self, &policy.ingress, Direction::Ingress);
        let egress = compile(self, &policy.egress, Direction::Egress);
        (CompiledPolicy { ingress, egress }, held)
    }

    fn acquire_peer(&mut self, def: PeerDef, user: &User, retiring: &mut Retiring) -> PeerId {
        if matches!(def, PeerDef::IpBlock { .. })
            && !self.peers.defines(&def)
            && let Some(id) = retiring.take(&def, &self.peers)
            && let Some(old) = self.peers.redefine_block(id, def.clone(), user)
        {
            self.reprefix_block(&old, &def);
            return id;
        }
        let (id, created) = self.peers.acquire(def, user);
        if created {
            self.populate_peer(id);
        }
        id
    }

    /// Fills in a new peer: the members of a pod peer, the trie prefixes of an ipBlock.
    fn populate_peer(&mut self, id: PeerId) {
        let Some(def) = self.peers.get(id).map(|state| state.def.clone()) else {
            return;
        };
        match &def {
            PeerDef::IpBlock { cidr, except } => {
                self.hold_trie_prefixes(std::iter::once(cidr).chain(except));
                self.dirty.prefixes.insert(*cidr);
                self.dirty.prefixes.extend(except.iter().copied());
                self.spread_block_peer(id, cidr, except);
            }
            PeerDef::Pods { .. } => {
                // Both maps are sorted by name: walked together, not looked up one by one
                // (a peer over namespace labels tests every namespace of the cluster).
                let mut known = self.snapshot.namespaces.iter().peekable();
                let namespaces: Vec<String> = self
                    .pods_by_ns
                    .keys()
                    .filter(|name| {
                        while known.next_if(|(known, _)| known < name).is_some() {}
                        let namespace = known
                            .peek()
                            .filter(|(known, _)| known == name)
                            .map(|(_, namespace)| *namespace);
                        def.covers_namespace(name, namespace)
                    })
                    .cloned()
                    .collect();
                for namespace in namespaces {
                    let ns = self.snapshot.namespaces.get(&namespace);
                    // The namespace's pods are one run of the snapshot, in key order.
                    let members: Vec<ObjectRef> = self
                        .snapshot
                        .pods
                        .range(ObjectRef::new(&namespace, "")..)
                        .take_while(|(key, _)| key.namespace == namespace)
                        .filter(|(_, pod)| def.matches_pod(pod, ns))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in members {
                        self.peers.set_member(id, &key, true);
                        self.mark_pod_hosts(&key);
                    }
                }
            }
        }
    }

    /// An ipBlock peer went from `old` to `new` in place: its trie prefixes follow, and only
    /// addresses under a CIDR or except that one has and the other has not (in that role)
    /// can change membership.
    fn reprefix_block(&mut self, old: &PeerDef, new: &PeerDef) {
        // (prefix, is the CIDR): an except may be the other version's CIDR.
        type Roles = BTreeSet<(IpPrefix, bool)>;
        let prefixes = |def: &PeerDef| -> Vec<(IpPrefix, bool)> {
            match def {
                PeerDef::IpBlock { cidr, except } => std::iter::once((*cidr, true))
                    .chain(except.iter().map(|prefix| (*prefix, false)))
                    .collect(),
                PeerDef::Pods { .. } => Vec::new(),
            }
        };
        let (old, new) = (prefixes(old), prefixes(new));
        self.hold_trie_prefixes(new.iter().map(|(prefix, _)| prefix));
        // Those that leave are under the symmetric difference, marked below.
        self.release_trie_prefixes(old.iter().map(|(prefix, _)| prefix));
        let (old, new): (Roles, Roles) = (old.into_iter().collect(), new.into_iter().collect());
        for (prefix, _) in old.symmetric_difference(&new) {
            self.mark_subtree(prefix);
        }
    }

    /// A new ipBlock peer joins the signature of the trie prefixes it covers. A class that
    /// lies under the CIDR and is mostly covered takes the peer in place, and only its
    /// prefixes under an except are recomputed (they leave it); of any other class, the
    /// covered prefixes are. Not every address under the CIDR, as a recompute would.
    fn spread_block_peer(&mut self, id: PeerId, cidr: &IpPrefix, except: &[IpPrefix]) {
        let (first, last) = cidr.subtree_bounds();
        // Per class: its prefixes the peer covers, and those under the CIDR it excepts.
        let mut under: BTreeMap<u32, (Vec<IpPrefix>, Vec<IpPrefix>)> = BTreeMap::new();
        for (prefix, class) in self.state.ipcache.range(first..=last) {
            if !cidr.contains(prefix) {
                continue;
            }
            let (covered, excepted) = under.entry(class.id).or_default();
            if except.iter().any(|carve| carve.contains(prefix)) {
                excepted.push(*prefix);
            } else {
                covered.push(*prefix);
            }
        }
        let mut touched = Touched::new();
        for (class, (covered, excepted)) in under {
            if covered.is_empty() {
                continue;
            }
            let all_under = u32::try_from(covered.len() + excepted.len()).ok()
                == Some(self.classes.members(class));
            if class >= CLASS_FIRST_DYNAMIC && all_under && covered.len() >= excepted.len() {
                self.classes.add_block_peer(class, id, &mut touched);
                self.dirty.prefixes.extend(excepted);
            } else {
                self.dirty.prefixes.extend(covered);
            }
        }
        for (dep, classes) in touched {
            self.mark_dependents(&dep, &classes);
        }
    }

    /// Counts a reference of an ipBlock peer to each of `prefixes` (its CIDR and excepts).
    fn hold_trie_prefixes<'a>(&mut self, prefixes: impl IntoIterator<Item = &'a IpPrefix>) {
        for prefix in prefixes {
            *self.trie_refs.entry(*prefix).or_default() += 1;
        }
    }

    /// Drops a reference to each of `prefixes`; returns those no peer holds any more.
    fn release_trie_prefixes<'a>(
        &mut self,
        prefixes: impl IntoIterator<Item = &'a IpPrefix>,
    ) -> Vec<IpPrefix> {
        let mut leaving = Vec::new();
        for prefix in prefixes {
            if let Some(count) = self.trie_refs.get_mut(prefix) {
                *count -= 1;
                if *count == 0 {
                    self.trie_refs.remove(prefix);
                    leaving.push(*prefix);
                }
            }
        }
        leaving
    }

    fn release_peer(&mut self, id: PeerId, user: &User) {
        let Some(state) = self.peers.release(id, user) else {
            return;
        };
        for member in &state.members {
            self.mark_pod_hosts(member);
        }
        if let PeerDef::IpBlock { cidr, except } = &state.def {
            let leaving = self.release_trie_prefixes(std::iter::once(cidr).chain(except));
            // Usually the classes can simply forget the peer, and only the CIDR and excepts
            // that leave the trie move, not every address under them. Those leave first, so
            // that the classes left behind can merge with what remains.
            let (gone, staying): (Vec<IpPrefix>, Vec<IpPrefix>) = leaving
                .into_iter()
                .partition(|prefix| self.prefix_sig(prefix).is_none());
            self.dirty.prefixes.extend(staying);
            self.reclassify(gone);
            let mut touched = Touched::new();
            if let Some(merges) = self.classes.drop_block_peer(id, &mut touched) {
                self.repoint_classes(&merges);
                for (dep, classes) in touched {
                    self.mark_dependents(&dep, &classes);
                }
            } else {
                self.mark_subtree(cidr);
                self.dirty.prefixes.extend(except.iter().copied());
            }
        }
    }

    fn acquire_named(&mut self, port: &NamedPort, policy: &ObjectRef) {
        let users = self.named_users.entry(port.clone()).or_default();
        let first = users.is_empty();
        *users.entry(policy.clone()).or_default() += 1;
        if first {
            self.mark_named_pods(port);
        }
    }

    fn release_named(&mut self, port: &NamedPort, policy: &ObjectRef) {
        let Some(users) = self.named_users.get_mut(port) else {
            return;
        };
        if let Some(count) = users.get_mut(policy) {
            *count -= 1;
            if *count == 0 {
                users.remove(policy);
            }
        }
        if users.is_empty() {
            self.named_users.remove(port);
            self.mark_named_pods(port);
        }
    }

    fn mark_named_pods(&mut self, port: &NamedPort) {
        let pods: Vec<ObjectRef> = self
            .named_pods
            .get(port)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for pod in pods {
            self.mark_pod_hosts(&pod);
        }
    }

    /// The pod-owned part of the signature of `pod`'s addresses.
    fn pod_part(&self, pod: &ObjectRef) -> PodPart {
        let peers = self
            .peers
            .of_pod(pod)
            .map(|peers| peers.iter().copied().collect())
            .unwrap_or_default();
        let mut named: BTreeMap<NamedPort, BTreeSet<u16>> = BTreeMap::new();
        if !self.named_users.is_empty()
            && let Some(pod) = self.snapshot.pods.get(pod)
        {
            for port in &pod.ports {
                let Some(name) = &port.name else {
                    continue;
                };
                let key = NamedPort {
                    name: name.clone(),
                    protocol: port.protocol,
                };
                if self.named_users.contains_key(&key) {
                    named.entry(key).or_default().insert(port.port);
                }
            }
        }
        PodPart::new(
            peers,
            named
                .into_iter()
                .map(|(port, numbers)| (port, numbers.into_iter().collect()))
                .collect(),
        )
    }

    /// The signature of trie prefix `prefix`, or `None` if it does not belong in the trie
    /// (not an ipBlock prefix, and not a pod address with a pod part).
    fn prefix_sig(&self, prefix: &IpPrefix) -> Option<Sig> {
        let pod = prefix
            .is_host()
            .then(|| {
                self.claims
                    .get(&prefix.addr)
                    .and_then(|owners| owners.first())
            })
            .flatten()
            .and_then(|owner| self.pod_parts.get(owner));
        if pod.is_none() && !self.trie_refs.contains_key(prefix) {
            return None;
        }
        Some(Sig {
            blocks: self.peers.ip_blocks_containing(prefix),
            pod: pod.unwrap_or(&self.no_part).clone(),
        })
    }

    fn refresh_classes(&mut self) {
        for pod in std::mem::take(&mut self.dirty.parts) {
            let part = self.pod_part(&pod);
            if part.is_empty() {
                self.pod_parts.remove(&pod);
            } else {
                self.pod_parts.insert(pod, Arc::new(part));
            }
        }
        let hosts = std::mem::take(&mut self.dirty.hosts);
        let mut prefixes = std::mem::take(&mut self.dirty.prefixes);
        prefixes.extend(hosts.iter().map(|addr| IpPrefix::host(*addr)));
        self.reclassify(prefixes);
        // Endpoint entries follow address owners.
        self.dirty.hosts = hosts;
    }

    /// Points the ipcache prefixes of each merged class (`from`, `into`) at the class that
    /// absorbed it. Merges are rare and their classes small, so a scan of the ipcache beats
    /// an index from every class to its prefixes.
    fn repoint_classes(&mut self, merges: &[(u32, u32)]) {
        if merges.is_empty() {
            return;
        }
        let into: HashMap<u32, u32> = merges.iter().copied().collect();
        let moved: Vec<(IpPrefix, u32)> = self
            .state
            .ipcache
            .iter()
            .filter_map(|(prefix, class)| into.get(&class.id).map(|id| (*prefix, *id)))
            .collect();
        for (prefix, id) in moved {
            self.journal
                .ipcache(&mut self.state, prefix, Some(PeerClass { id }));
        }
    }

    /// Gives `prefixes` the classes of their signatures now, and marks the set entries that
    /// depend on what moved.
    fn reclassify(&mut self, prefixes: impl IntoIterator<Item = IpPrefix>) {
        let moves: Vec<ClassMove> = prefixes
            .into_iter()
            .map(|prefix| ClassMove {
                prefix,
                old: self.state.ipcache.get(&prefix).map(|class| class.id),
                new: self.prefix_sig(&prefix),
            })
            .collect();
        let mut touched = Touched::new();
        for (prefix, class) in self.classes.assign(moves, &mut touched) {
            self.journal
                .ipcache(&mut self.state, prefix, class.map(|id| PeerClass { id }));
        }
        for (dep, classes) in touched {
            self.mark_dependents(&dep, &classes);
        }
    }

    /// Marks the entries of `classes` in the sets of the endpoint directions that read `dep`.
    fn mark_dependents(&mut self, dep: &Dep, classes: &BTreeSet<u32>) {
        let users: Vec<(ObjectRef, Direction)> = match dep {
            Dep::Peer(peer) => self
                .peers
                .get(*peer)
                .map(|state| state.users.keys().cloned().collect())
                .unwrap_or_default(),
            Dep::Named(port) => self
                .named_users
                .get(port)
                .map(|users| {
                    users
                        .keys()
                        .map(|policy| (policy.clone(), Direction::Egress))
                        .collect()
                })
                .unwrap_or_default(),
        };
        for (policy, direction) in users {
            for local in self.selected.get(&policy).into_iter().flatten() {
                match self.dirty.endpoints.entry((local.clone(), direction)) {
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert(Some(classes.clone()));
                    }
                    std::collections::btree_map::Entry::Occupied(mut entry) => {
                        if let Some(scope) = entry.get_mut() {
                            scope.extend(classes.iter().copied());
                        }
                    }
                }
            }
        }
    }

    fn refresh_sets(&mut self) {
        let dirty = std::mem::take(&mut self.dirty.endpoints);
        let departed = std::mem::take(&mut self.dirty.departed);
        let mut targets = Vec::new();
        let mut moves = Vec::new();
        for ((key, direction), scope) in dirty {
            let (Some(local), Some(pod)) =
                (self.locals.get_mut(&key), self.snapshot.pods.get(&key))
            else {
                continue;
            };
            let old = *local.set(direction);
            let compiled = &self.compiled;
            let policies = local
                .selecting
                .iter()
                .filter_map(|policy| compiled.get(policy).map(|compiled| (policy, compiled)));
            let new = match (scope, old) {
                // Only some classes changed and the endpoint is not isolated: nothing to do.
                (Some(_), None) => continue,
                (Some(classes), Some(set)) => {
                    let fresh = sets::content(
                        pod,
                        direction,
                        policies,
                        Some(&classes),
                        &self.classes,
                        &mut self.rules,
                    );
                    match (fresh, self.sets.get(set)) {
                        (Some(fresh), Some(current)) => {
                            Target::Patch(current.patch_to(&fresh, &classes))
                        }
                        (Some(fresh), None) => Target::Content(fresh),
                        (None, _) => Target::NotIsolated,
                    }
                }
                (None, _) => match sets::content(
                    pod,
                    direction,
                    policies,
                    None,
                    &self.classes,
                    &mut self.rules,
                ) {
                    Some(content) => Target::Content(content),
                    None => Target::NotIsolated,
                },
            };
            moves.push(SetMove {
                direction,
                old,
                new,
            });
            targets.push(Some((key, direction)));
        }
        for mut local in departed {
            for direction in Direction::BOTH {
                let old = local.set(direction).take();
                if old.is_some() {
                    moves.push(SetMove {
                        direction,
                        old,
                        new: Target::NotIsolated,
                    });
                    targets.push(None);
                }
            }
            self.endpoint_ids.remove(&local.id);
        }
        let mut writes = SetWrites::default();
        let results = self.sets.assign(moves, &mut self.rules, &mut writes);
        let SetWrites { policy, rules } = writes;
        for (id, rule) in rules {
            self.journal.rule(&mut self.state, id, rule);
        }
        for (key, value) in policy {
            self.journal.policy(&mut self.state, key, value);
        }
        for (target, new) in targets.into_iter().zip(results) {
            let Some((key, direction)) = target else {
                continue;
            };
            if let Some(local) = self.locals.get_mut(&key) {
                let set = local.set(direction);
                if *set != new {
                    *set = new;
                    self.dirty.locals.insert(key);
                }
            }
        }
    }

    fn refresh_endpoint_entries(&mut self) {
        let mut addrs = std::mem::take(&mut self.dirty.hosts);
        for key in std::mem::take(&mut self.dirty.locals) {
            if let Some(pod) = self.snapshot.pods.get(&key) {
                addrs.extend(pod.ips.iter().map(|ip| Addr::from(*ip)));
            }
        }
        for addr in addrs {
            let value = self
                .claims
                .get(&addr)
                .and_then(|owners| owners.first())
                .and_then(|owner| self.locals.get(owner))
                .map(Local::value);
            self.journal.endpoint(&mut self.state, addr, value);
        }
    }
}
