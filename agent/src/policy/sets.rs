//! Policy sets: the allow entries of one endpoint in one direction, shared by every endpoint
//! whose entries (keys and rule ids) are identical.
//!
//! A set's content is computed from the policies selecting the endpoint, the classes of their
//! peers, and named ports (ingress: resolved on the endpoint itself; egress: per destination
//! class). An isolated endpoint with no entries uses [`SET_EMPTY`] and needs no entries.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
};

use agent_common::{
    ipcache::CLASS_ANY,
    policy::{PolicyKey, PolicyValue, SET_EMPTY},
};

use crate::model::{ObjectRef, Pod, PortMatch, Ports};

use super::{
    Direction, PolicyEntryKey, RuleRef,
    classes::ClassTable,
    interner::{Event, Interner},
    peers::{NamedPort, PeerId},
    ports::{self, PortKey},
    rules::RuleTable,
};

/// A policy's rules with their peers resolved to relevant peer ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompiledPolicy {
    pub(crate) ingress: Option<Vec<CompiledRule>>,
    pub(crate) egress: Option<Vec<CompiledRule>>,
}

impl CompiledPolicy {
    pub(crate) fn rules(&self, direction: Direction) -> Option<&[CompiledRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    /// `None`: all peers; otherwise one entry per API peer, `None` for a peer that matches
    /// nothing.
    pub(crate) peers: Option<Vec<Option<PeerId>>>,
    pub(crate) ports: Ports,
}

/// One allow entry of a set: the policy key without its set id and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EntryKey {
    pub(crate) class: u32,
    pub(crate) port: PortKey,
}

impl EntryKey {
    /// The keys of every entry of `class`.
    fn of_class(class: u32) -> std::ops::RangeInclusive<EntryKey> {
        let first = PortKey {
            protocol: 0,
            port: 0,
            prefix_len: 0,
        };
        let last = PortKey {
            protocol: u8::MAX,
            port: u16::MAX,
            prefix_len: u8::MAX,
        };
        EntryKey { class, port: first }..=EntryKey { class, port: last }
    }

    /// A well-mixed hash of the entry with its rule, summed into [`SetContent`]'s hash.
    fn hash_with(&self, rule: u32) -> u64 {
        let EntryKey {
            class,
            port:
                PortKey {
                    protocol,
                    port,
                    prefix_len,
                },
        } = *self;
        let packed = u64::from(class) << 32
            | u64::from(protocol) << 24
            | u64::from(prefix_len) << 16
            | u64::from(port);
        splitmix(packed ^ splitmix(u64::from(rule)))
    }
}

/// SplitMix64's finaliser.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Changes to a set's entries: a rule id to set, or `None` to remove.
pub(crate) type Patch = BTreeMap<EntryKey, Option<u32>>;

/// The content of a set: its direction and entries with their rule ids. Its hash is the sum
/// of its entries' hashes, kept up to date, so identity checks cost nothing per entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct SetContent {
    direction: Option<Direction>,
    entries: BTreeMap<EntryKey, u32>,
    /// Entries per rule id.
    rules: BTreeMap<u32, u32>,
    sum: u64,
}

impl PartialEq for SetContent {
    fn eq(&self, other: &Self) -> bool {
        self.direction == other.direction && self.entries == other.entries
    }
}

impl Eq for SetContent {}

/// What [`SetContent`] hashes: a content and a probe with the same fields hash alike.
#[derive(Hash)]
struct HashedAs {
    direction: Option<Direction>,
    sum: u64,
}

impl Hash for SetContent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        HashedAs {
            direction: self.direction,
            sum: self.sum,
        }
        .hash(state);
    }
}

impl SetContent {
    fn new(direction: Direction) -> Self {
        Self {
            direction: Some(direction),
            ..Self::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn map_key(&self, set: u32, entry: &EntryKey) -> PolicyEntryKey {
        let direction = self.direction.map_or(0, Direction::as_u8);
        let EntryKey { class, port } = *entry;
        PolicyEntryKey::new(
            PolicyKey::new(set, class, direction, port.protocol, port.port),
            u32::from(port.prefix_len),
        )
    }

    /// Sets or removes one entry; returns the rule ids that entered or left the set.
    fn set(
        &mut self,
        key: EntryKey,
        rule: Option<u32>,
        gained: &mut Vec<u32>,
        lost: &mut Vec<u32>,
    ) {
        let old = match rule {
            Some(rule) => self.entries.insert(key, rule),
            None => self.entries.remove(&key),
        };
        if old == rule {
            return;
        }
        if let Some(old) = old {
            self.sum = self.sum.wrapping_sub(key.hash_with(old));
            if let Some(count) = self.rules.get_mut(&old) {
                *count -= 1;
                if *count == 0 {
                    self.rules.remove(&old);
                    lost.push(old);
                }
            }
        }
        if let Some(rule) = rule {
            self.sum = self.sum.wrapping_add(key.hash_with(rule));
            let count = self.rules.entry(rule).or_default();
            *count += 1;
            if *count == 1 {
                gained.push(rule);
            }
        }
    }

    /// Adds an entry unless its key is taken (the first rule visited wins).
    fn add(&mut self, key: EntryKey, rule: u32) {
        if !self.entries.contains_key(&key) {
            self.set(key, Some(rule), &mut Vec::new(), &mut Vec::new());
        }
    }

    /// The patch that turns the entries of `classes` into those of `fresh`.
    pub(crate) fn patch_to(&self, fresh: &SetContent, classes: &BTreeSet<u32>) -> Patch {
        let mut patch = Patch::new();
        for class in classes {
            let range = EntryKey::of_class(*class);
            for (key, rule) in fresh.entries.range(range.clone()) {
                if self.entries.get(key) != Some(rule) {
                    patch.insert(*key, Some(*rule));
                }
            }
            for key in self.entries.range(range).map(|(key, _)| key) {
                if !fresh.entries.contains_key(key) {
                    patch.insert(*key, None);
                }
            }
        }
        patch
    }

    /// The hash identity and size this content would have after `patch`.
    fn after(&self, patch: &Patch) -> (HashedAs, usize) {
        let mut sum = self.sum;
        let mut len = self.entries.len();
        for (key, rule) in patch {
            if let Some(old) = self.entries.get(key) {
                sum = sum.wrapping_sub(key.hash_with(*old));
                len -= 1;
            }
            if let Some(rule) = rule {
                sum = sum.wrapping_add(key.hash_with(*rule));
                len += 1;
            }
        }
        let hashed = HashedAs {
            direction: self.direction,
            sum,
        };
        (hashed, len)
    }
}

/// The content of `endpoint`'s set for `direction`, from the policies selecting it (in name
/// order); `None` when none of them covers `direction` (not isolated). With `only`, just the
/// entries of those (dynamic) classes.
///
/// Entries are visited in [`RuleRef`] order (policy, rule, peer, port, "all" first), so keeping
/// the first rule id of each key keeps the smallest rule, whatever the history.
pub(crate) fn content<'a>(
    endpoint: &Pod,
    direction: Direction,
    policies: impl Iterator<Item = (&'a ObjectRef, &'a CompiledPolicy)>,
    only: Option<&BTreeSet<u32>>,
    classes: &ClassTable,
    rules: &mut RuleTable,
) -> Option<SetContent> {
    let mut isolated = false;
    let mut content = SetContent::new(direction);
    for (policy, compiled) in policies {
        let Some(policy_rules) = compiled.rules(direction) else {
            continue;
        };
        isolated = true;
        for (rule_index, rule) in policy_rules.iter().enumerate() {
            let peers: Vec<(Option<u32>, Option<Option<PeerId>>)> = match &rule.peers {
                None => vec![(None, None)],
                Some(peers) => (0u32..)
                    .zip(peers)
                    .map(|(index, peer)| (Some(index), Some(*peer)))
                    .collect(),
            };
            for (peer_index, peer) in peers {
                let port_entries: Vec<(Option<u32>, Option<&crate::model::PolicyPort>)> =
                    match &rule.ports {
                        Ports::All => vec![(None, None)],
                        Ports::Only(ports) => (0u32..)
                            .zip(ports)
                            .map(|(i, port)| (Some(i), Some(port)))
                            .collect(),
                    };
                for (port_index, port) in port_entries {
                    // The rule id is interned on the first entry only: most pairs of a
                    // class-limited recomputation emit none.
                    let mut rule_id = None;
                    let mut emit = |class: u32, key: PortKey, rules: &mut RuleTable| {
                        let id = *rule_id.get_or_insert_with(|| {
                            rules.intern(&RuleRef {
                                policy: policy.clone(),
                                direction,
                                rule: u32::try_from(rule_index).unwrap_or(u32::MAX),
                                peer: peer_index,
                                port: port_index,
                            })
                        });
                        content.add(EntryKey { class, port: key }, id);
                    };
                    emit_entries(
                        endpoint, direction, peer, port, only, classes, rules, &mut emit,
                    );
                }
            }
        }
    }
    isolated.then_some(content)
}

/// The entries one (peer, port) pair of a rule allows. `peer`: `None` for all peers,
/// `Some(None)` for a peer that matches nothing; `port`: `None` for all ports.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn emit_entries(
    endpoint: &Pod,
    direction: Direction,
    peer: Option<Option<PeerId>>,
    port: Option<&crate::model::PolicyPort>,
    only: Option<&BTreeSet<u32>>,
    classes: &ClassTable,
    rules: &mut RuleTable,
    emit: &mut impl FnMut(u32, PortKey, &mut RuleTable),
) {
    let no_classes = BTreeSet::new();
    let of_peer = |peer: PeerId| classes.of_peer(peer).unwrap_or(&no_classes);
    // The classes the peer has (of `only`, if given: never CLASS_ANY, whose entries no class
    // change affects).
    let peer_classes: Vec<u32> = match (peer, only) {
        (Some(None), _) => return,
        (None, None) => vec![CLASS_ANY],
        (None, Some(_)) => Vec::new(),
        (Some(Some(peer)), None) => of_peer(peer).iter().copied().collect(),
        (Some(Some(peer)), Some(only)) => {
            let of_peer = of_peer(peer);
            only.iter()
                .copied()
                .filter(|class| of_peer.contains(class))
                .collect()
        }
    };
    let Some(port) = port else {
        for class in peer_classes {
            emit(class, PortKey::ANY, rules);
        }
        return;
    };
    let protocol = port.protocol.number();
    let keys = match &port.port {
        PortMatch::All => vec![PortKey::any_port(protocol)],
        PortMatch::Number(number) => vec![PortKey::exact(protocol, *number)],
        PortMatch::Range { start, end } => ports::range(protocol, *start, *end),
        PortMatch::Nothing => return,
        PortMatch::Named(name) if direction == Direction::Ingress => endpoint
            .ports
            .iter()
            .filter(|declared| {
                declared.protocol == port.protocol && declared.name.as_deref() == Some(name)
            })
            .map(|declared| PortKey::exact(protocol, declared.port))
            .collect(),
        PortMatch::Named(name) => {
            // Egress: the number depends on the destination pod, which the class knows.
            let named = NamedPort {
                name: name.clone(),
                protocol: port.protocol,
            };
            let Some(resolved) = classes.of_named(&named) else {
                return;
            };
            let mut emit_class = |class: u32, numbers: &[u16]| {
                for number in numbers {
                    emit(class, PortKey::exact(protocol, *number), rules);
                }
            };
            if let Some(only) = only {
                let in_peer = |class: &u32| match peer {
                    Some(Some(peer)) => of_peer(peer).contains(class),
                    _ => true,
                };
                for class in only.iter().filter(|class| in_peer(class)) {
                    if let Some(numbers) = resolved.get(class) {
                        emit_class(*class, numbers);
                    }
                }
                return;
            }
            match peer {
                Some(Some(peer)) => {
                    let of_peer = of_peer(peer);
                    if of_peer.len() < resolved.len() {
                        for class in of_peer {
                            if let Some(numbers) = resolved.get(class) {
                                emit_class(*class, numbers);
                            }
                        }
                    } else {
                        for (class, numbers) in resolved {
                            if of_peer.contains(class) {
                                emit_class(*class, numbers);
                            }
                        }
                    }
                }
                _ => {
                    for (class, numbers) in resolved {
                        emit_class(*class, numbers);
                    }
                }
            }
            return;
        }
    };
    for class in peer_classes {
        for key in &keys {
            emit(class, *key, rules);
        }
    }
}

/// Interned sets (ids from 1; [`SET_EMPTY`] is never interned).
#[derive(Debug)]
pub(crate) struct SetTable {
    interner: Interner<SetContent>,
}

impl Default for SetTable {
    fn default() -> Self {
        Self {
            interner: Interner::new(SET_EMPTY + 1),
        }
    }
}

/// Writes to the policy map and the rule table that set changes cause.
#[derive(Debug, Default)]
pub(crate) struct SetWrites {
    pub(crate) policy: Vec<(PolicyEntryKey, Option<PolicyValue>)>,
    pub(crate) rules: Vec<(u32, Option<RuleRef>)>,
}

/// What an endpoint direction's set becomes.
pub(crate) enum Target {
    NotIsolated,
    /// The whole new content.
    Content(SetContent),
    /// Changes to the current content (the endpoint stays isolated).
    Patch(Patch),
}

/// An endpoint direction whose set is to be recomputed: its isolation now (`None`: not
/// isolated, `Some(set)`) and what it becomes.
pub(crate) struct SetMove {
    pub(crate) direction: Direction,
    pub(crate) old: Option<u32>,
    pub(crate) new: Target,
}

impl SetTable {
    pub(crate) fn get(&self, set: u32) -> Option<&SetContent> {
        self.interner.get(set)
    }

    pub(crate) fn len(&self) -> usize {
        self.interner.len()
    }

    /// Gives each endpoint direction the set of its new content, keeping set ids stable where
    /// it can; returns the new isolation of each and adds the map writes to `writes`.
    ///
    /// When every user of a set gets the same patch, the set is patched in place: only the
    /// patched entries are written. Otherwise contents are interned ([`Interner::reassign`]).
    pub(crate) fn assign(
        &mut self,
        moves: Vec<SetMove>,
        rules: &mut RuleTable,
        writes: &mut SetWrites,
    ) -> Vec<Option<u32>> {
        let mut decided: Vec<Option<Option<u32>>> = moves.iter().map(|_| None).collect();
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, SetMove { old, .. }) in moves.iter().enumerate() {
            if let Some(old) = old.filter(|set| *set != SET_EMPTY) {
                groups.entry(old).or_default().push(index);
            }
        }
        for (set, members) in groups {
            let patches: Option<Vec<&Patch>> = members
                .iter()
                .map(|index| match &moves[*index].new {
                    Target::Patch(patch) => Some(patch),
                    _ => None,
                })
                .collect();
            let Some(patches) = patches else {
                continue;
            };
            let Some(first) = patches.first().copied() else {
                continue;
            };
            if members.len() != self.interner.refs(set) as usize
                || patches.iter().any(|patch| *patch != first)
            {
                continue;
            }
            if !first.is_empty() {
                let Some(current) = self.interner.get(set) else {
                    continue;
                };
                let (hashed, len) = current.after(first);
                // An empty result is SET_EMPTY, and a hash some set has may be that set's
                // content: both go the general way.
                if len == 0 || self.interner.any_hashing_like(&hashed) {
                    continue;
                }
                self.patch_in_place(set, first, rules, writes);
            }
            for index in members {
                decided[index] = Some(Some(set));
            }
        }

        let mut isolated = Vec::new();
        let mut interned = Vec::new();
        let mut pending = Vec::new();
        for (
            index,
            SetMove {
                direction,
                old,
                new,
            },
        ) in moves.into_iter().enumerate()
        {
            if decided[index].is_some() {
                continue;
            }
            let new = match new {
                Target::NotIsolated => None,
                Target::Content(content) => Some(content),
                Target::Patch(patch) => {
                    let mut content = old
                        .and_then(|set| self.interner.get(set))
                        .cloned()
                        .unwrap_or_else(|| SetContent::new(direction));
                    for (key, rule) in patch {
                        content.set(key, rule, &mut Vec::new(), &mut Vec::new());
                    }
                    Some(content)
                }
            };
            isolated.push(new.is_some());
            interned.push((
                old.filter(|set| *set != SET_EMPTY),
                new.filter(|c| !c.is_empty()),
            ));
            pending.push(index);
        }
        let mut events = Vec::new();
        let ids = self.interner.reassign(interned, &mut events);
        for event in events {
            match event {
                Event::Created { id } => {
                    if let Some(new) = self.interner.get(id) {
                        Self::write_diff(id, &SetContent::default(), new, rules, writes);
                    }
                }
                Event::Renamed { id, old } => {
                    if let Some(new) = self.interner.get(id) {
                        Self::write_diff(id, &old, new, rules, writes);
                    }
                }
                Event::Died { id, old } => {
                    Self::write_diff(id, &old, &SetContent::default(), rules, writes);
                }
            }
        }
        for ((index, isolated), id) in pending.into_iter().zip(isolated).zip(ids) {
            decided[index] = Some(isolated.then(|| id.unwrap_or(SET_EMPTY)));
        }
        decided.into_iter().map(Option::flatten).collect()
    }

    /// Applies `patch` to set `id` and writes exactly the entries it changes.
    fn patch_in_place(
        &mut self,
        id: u32,
        patch: &Patch,
        rules: &mut RuleTable,
        writes: &mut SetWrites,
    ) {
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        let mut keys = Vec::new();
        self.interner.update(id, |content| {
            for (key, rule) in patch {
                keys.push((
                    content.map_key(id, key),
                    rule.map(|rule| PolicyValue { rule }),
                ));
                content.set(*key, *rule, &mut gained, &mut lost);
            }
        });
        writes.policy.extend(keys);
        Self::write_rules(&gained, &lost, rules, writes);
    }

    /// The policy map and rule table writes that turn set `id` from `old` into `new`.
    fn write_diff(
        id: u32,
        old: &SetContent,
        new: &SetContent,
        rules: &mut RuleTable,
        writes: &mut SetWrites,
    ) {
        for (entry, rule) in &new.entries {
            if old.entries.get(entry) != Some(rule) {
                writes
                    .policy
                    .push((new.map_key(id, entry), Some(PolicyValue { rule: *rule })));
            }
        }
        for entry in old.entries.keys() {
            if !new.entries.contains_key(entry) {
                writes.policy.push((old.map_key(id, entry), None));
            }
        }
        let gained: Vec<u32> = new
            .rules
            .keys()
            .filter(|r| !old.rules.contains_key(r))
            .copied()
            .collect();
        let lost: Vec<u32> = old
            .rules
            .keys()
            .filter(|r| !new.rules.contains_key(r))
            .copied()
            .collect();
        Self::write_rules(&gained, &lost, rules, writes);
    }

    /// Rule references of a set that gained and lost rule ids.
    fn write_rules(gained: &[u32], lost: &[u32], rules: &mut RuleTable, writes: &mut SetWrites) {
        for rule in gained {
            if let Some(used) = rules.acquire(*rule) {
                writes.rules.push((*rule, Some(used.clone())));
            }
        }
        for rule in lost {
            if rules.release(*rule) {
                writes.rules.push((*rule, None));
            }
        }
    }
}
