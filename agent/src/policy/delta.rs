//! [`Delta`]: the map entries one batch of changes adds, changes and removes, and the only
//! order in which a backend may apply them ([`Delta::ops`]).
//!
//! The engine writes its [`NodeState`] through a [`Journal`] that remembers the first value of
//! every key it touches; the delta is the difference between those and the final values, so
//! work that cancels out within a batch never reaches the kernel.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{addr::Addr, endpoint::Endpoint, ipcache::PeerClass, policy::PolicyValue};

use super::{IpPrefix, NodeState, PolicyEntryKey, RuleRef};

/// Changes to a [`NodeState`], grouped by map and kind. Apply them with [`Delta::ops`] (or
/// [`NodeState::apply`]), never field by field in another order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub rules_added: BTreeMap<u32, RuleRef>,
    pub policy_upserts: BTreeMap<PolicyEntryKey, PolicyValue>,
    pub ipcache_upserts: BTreeMap<IpPrefix, PeerClass>,
    pub endpoint_upserts: BTreeMap<Addr, Endpoint>,
    pub endpoint_removals: BTreeSet<Addr>,
    pub ipcache_removals: BTreeSet<IpPrefix>,
    pub policy_removals: BTreeSet<PolicyEntryKey>,
    pub rules_removed: BTreeSet<u32>,
}

/// One step of applying a [`Delta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    AddRule(u32, &'a RuleRef),
    UpsertPolicy(PolicyEntryKey, PolicyValue),
    UpsertIpcache(IpPrefix, PeerClass),
    UpsertEndpoint(Addr, Endpoint),
    RemoveEndpoint(Addr),
    RemoveIpcache(IpPrefix),
    RemovePolicy(PolicyEntryKey),
    RemoveRule(u32),
}

impl Delta {
    /// The selected endpoints of `state` (the state this delta leads to) whose verdicts a
    /// partial write of the delta can leave wrong: those whose entry it changes or whose
    /// policy sets gain or lose entries, and every selected endpoint when it moves peer
    /// classes (any set may name a class).
    pub fn endpoints_at_stake(&self, state: &NodeState) -> BTreeMap<Addr, Endpoint> {
        let classes_move = !self.ipcache_upserts.is_empty() || !self.ipcache_removals.is_empty();
        let sets: BTreeSet<u32> = self
            .policy_upserts
            .keys()
            .chain(&self.policy_removals)
            .map(|key| key.key.set_id())
            .collect();
        state
            .selected_endpoints()
            .filter(|(addr, endpoint)| {
                classes_move
                    || self.endpoint_upserts.contains_key(*addr)
                    || sets.contains(&endpoint.ingress_set)
                    || sets.contains(&endpoint.egress_set)
            })
            .map(|(addr, endpoint)| (*addr, *endpoint))
            .collect()
    }

    /// The steps in the order that never exposes a state in which traffic is judged by
    /// entries that are not there yet:
    /// 1. rule table additions (so every id a packet may be credited to can be explained);
    /// 2. policy entries (new sets' entries and new entries of existing sets, including those
    ///    of classes no address maps to yet);
    /// 3. ipcache upserts (addresses move to classes whose entries are in);
    /// 4. endpoint upserts (endpoints switch to sets whose entries are in; the set ids and
    ///    isolation flags of one endpoint change in one atomic value update, so isolation
    ///    never starts before its allows exist);
    /// 5. endpoint removals; 6. ipcache removals (addresses fall back to a shorter prefix,
    ///    whose class's entries are in); 7. policy removals; 8. rule table removals.
    ///
    /// Between steps the datapath allows at most the union of the old and the new policy for
    /// entries in flux, never less than both: a change takes effect when the batch is done.
    pub fn ops(&self) -> impl Iterator<Item = Op<'_>> {
        let Self {
            rules_added,
            policy_upserts,
            ipcache_upserts,
            endpoint_upserts,
            endpoint_removals,
            ipcache_removals,
            policy_removals,
            rules_removed,
        } = self;
        let rules = rules_added.iter().map(|(id, rule)| Op::AddRule(*id, rule));
        let policy = policy_upserts
            .iter()
            .map(|(key, value)| Op::UpsertPolicy(*key, *value));
        let ipcache = ipcache_upserts
            .iter()
            .map(|(key, value)| Op::UpsertIpcache(*key, *value));
        let endpoints = endpoint_upserts
            .iter()
            .map(|(key, value)| Op::UpsertEndpoint(*key, *value));
        rules
            .chain(policy)
            .chain(ipcache)
            .chain(endpoints)
            .chain(endpoint_removals.iter().map(|key| Op::RemoveEndpoint(*key)))
            .chain(ipcache_removals.iter().map(|key| Op::RemoveIpcache(*key)))
            .chain(policy_removals.iter().map(|key| Op::RemovePolicy(*key)))
            .chain(rules_removed.iter().map(|id| Op::RemoveRule(*id)))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        let Self {
            rules_added,
            policy_upserts,
            ipcache_upserts,
            endpoint_upserts,
            endpoint_removals,
            ipcache_removals,
            policy_removals,
            rules_removed,
        } = self;
        rules_added.len()
            + policy_upserts.len()
            + ipcache_upserts.len()
            + endpoint_upserts.len()
            + endpoint_removals.len()
            + ipcache_removals.len()
            + policy_removals.len()
            + rules_removed.len()
    }
}

impl NodeState {
    /// Applies `delta` in its order (what a backend does to the kernel maps).
    pub fn apply(&mut self, delta: &Delta) {
        for op in delta.ops() {
            match op {
                Op::AddRule(id, rule) => {
                    self.rules.insert(id, rule.clone());
                }
                Op::UpsertPolicy(key, value) => {
                    self.policy.insert(key, value);
                }
                Op::UpsertIpcache(key, value) => {
                    self.ipcache.insert(key, value);
                }
                Op::UpsertEndpoint(key, value) => {
                    self.endpoints.insert(key, value);
                }
                Op::RemoveEndpoint(key) => {
                    self.endpoints.remove(&key);
                }
                Op::RemoveIpcache(key) => {
                    self.ipcache.remove(&key);
                }
                Op::RemovePolicy(key) => {
                    self.policy.remove(&key);
                }
                Op::RemoveRule(id) => {
                    self.rules.remove(&id);
                }
            }
        }
    }
}

/// The first value of every key touched since the last [`Journal::take`], per map.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    endpoints: BTreeMap<Addr, Option<Endpoint>>,
    ipcache: BTreeMap<IpPrefix, Option<PeerClass>>,
    policy: BTreeMap<PolicyEntryKey, Option<PolicyValue>>,
    rules: BTreeMap<u32, Option<RuleRef>>,
}

fn write<K: Ord + Copy, V: Clone>(
    map: &mut BTreeMap<K, V>,
    first: &mut BTreeMap<K, Option<V>>,
    key: K,
    value: Option<V>,
) {
    first.entry(key).or_insert_with(|| map.get(&key).cloned());
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}

fn diff<K: Ord + Copy, V: Clone + PartialEq>(
    map: &BTreeMap<K, V>,
    first: BTreeMap<K, Option<V>>,
    upserts: &mut BTreeMap<K, V>,
    removals: &mut BTreeSet<K>,
) {
    for (key, before) in first {
        match (before, map.get(&key)) {
            (Some(before), Some(now)) if before == *now => {}
            (_, Some(now)) => {
                upserts.insert(key, now.clone());
            }
            (Some(_), None) => {
                removals.insert(key);
            }
            (None, None) => {}
        }
    }
}

impl Journal {
    pub(crate) fn endpoint(&mut self, state: &mut NodeState, key: Addr, value: Option<Endpoint>) {
        write(&mut state.endpoints, &mut self.endpoints, key, value);
    }

    pub(crate) fn ipcache(
        &mut self,
        state: &mut NodeState,
        key: IpPrefix,
        value: Option<PeerClass>,
    ) {
        write(&mut state.ipcache, &mut self.ipcache, key, value);
    }

    pub(crate) fn policy(
        &mut self,
        state: &mut NodeState,
        key: PolicyEntryKey,
        value: Option<PolicyValue>,
    ) {
        write(&mut state.policy, &mut self.policy, key, value);
    }

    pub(crate) fn rule(&mut self, state: &mut NodeState, id: u32, value: Option<RuleRef>) {
        write(&mut state.rules, &mut self.rules, id, value);
    }

    /// The delta from the first values to `state`, resetting the journal.
    pub(crate) fn take(&mut self, state: &NodeState) -> Delta {
        let Self {
            endpoints,
            ipcache,
            policy,
            rules,
        } = std::mem::take(self);
        let mut delta = Delta::default();
        diff(
            &state.endpoints,
            endpoints,
            &mut delta.endpoint_upserts,
            &mut delta.endpoint_removals,
        );
        diff(
            &state.ipcache,
            ipcache,
            &mut delta.ipcache_upserts,
            &mut delta.ipcache_removals,
        );
        diff(
            &state.policy,
            policy,
            &mut delta.policy_upserts,
            &mut delta.policy_removals,
        );
        diff(
            &state.rules,
            rules,
            &mut delta.rules_added,
            &mut delta.rules_removed,
        );
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_that_cancel_out_leave_no_delta() {
        let mut state = NodeState::default();
        let mut journal = Journal::default();
        let key = IpPrefix::host(Addr::v4([10, 0, 0, 1]));
        journal.ipcache(&mut state, key, Some(PeerClass { id: 2 }));
        journal.ipcache(&mut state, key, None);
        assert!(journal.take(&state).is_empty());

        journal.ipcache(&mut state, key, Some(PeerClass { id: 2 }));
        let delta = journal.take(&state);
        assert_eq!(delta.ipcache_upserts.len(), 1);
        journal.ipcache(&mut state, key, Some(PeerClass { id: 3 }));
        journal.ipcache(&mut state, key, Some(PeerClass { id: 2 }));
        assert!(journal.take(&state).is_empty());
        journal.ipcache(&mut state, key, None);
        assert_eq!(journal.take(&state).ipcache_removals.len(), 1);
    }

    #[test]
    fn ops_put_additions_before_switches_before_removals() {
        let mut delta = Delta::default();
        let prefix = IpPrefix::host(Addr::v4([10, 0, 0, 1]));
        let key = PolicyEntryKey::new(Default::default(), 96);
        delta.ipcache_removals.insert(prefix);
        delta.policy_removals.insert(key);
        delta
            .endpoint_upserts
            .insert(Addr::v4([10, 0, 0, 2]), Endpoint::default());
        delta.policy_upserts.insert(key, PolicyValue { rule: 1 });
        delta.ipcache_upserts.insert(prefix, PeerClass { id: 2 });
        let kinds: Vec<&str> = delta
            .ops()
            .map(|op| match op {
                Op::UpsertPolicy(..) => "policy+",
                Op::UpsertIpcache(..) => "ipcache+",
                Op::UpsertEndpoint(..) => "endpoint+",
                Op::RemoveIpcache(..) => "ipcache-",
                Op::RemovePolicy(..) => "policy-",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["policy+", "ipcache+", "endpoint+", "ipcache-", "policy-"]
        );
    }
}
