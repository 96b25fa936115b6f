//! Reference-counted interning of contents (class signatures, set contents) to stable ids.
//!
//! Content determines identity (two ids never hold equal contents), but an id outlives changes
//! of its content when [`Interner::reassign`] moves its users together: that keeps ids, and so
//! map entries, stable across incremental changes. The index is a hash of the content (only
//! looked up, never iterated, so output order cannot depend on it).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
};

use agent_common::config::GENERATION_BIT;

#[derive(Debug)]
struct Slot<C> {
    content: C,
    refs: u32,
}

/// Ids in `first..GENERATION_BIT`, handed out in increasing order (wrapping, skipping live
/// ids). The top bit is the eBPF backend's: it tells the set and class ids of two agent
/// generations apart (`agent_common::config::GENERATION_BIT`).
#[derive(Debug)]
pub(crate) struct Interner<C> {
    slots: BTreeMap<u32, Slot<C>>,
    by_hash: HashMap<u64, Vec<u32>>,
    first: u32,
    next: u32,
}

fn hash_of<C: Hash>(content: &C) -> u64 {
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    hasher.finish()
}

impl<C: Hash + Eq> Interner<C> {
    pub(crate) fn new(first: u32) -> Self {
        Self {
            slots: BTreeMap::new(),
            by_hash: HashMap::new(),
            first,
            next: first,
        }
    }

    pub(crate) fn get(&self, id: u32) -> Option<&C> {
        self.slots.get(&id).map(|slot| &slot.content)
    }

    pub(crate) fn refs(&self, id: u32) -> u32 {
        self.slots.get(&id).map_or(0, |slot| slot.refs)
    }

    pub(crate) fn id_of(&self, content: &C) -> Option<u32> {
        self.by_hash
            .get(&hash_of(content))?
            .iter()
            .copied()
            .find(|id| self.get(*id) == Some(content))
    }

    /// Adds a reference to `content`; returns its id and whether it was just created.
    #[cfg(test)]
    fn acquire(&mut self, content: C) -> (u32, bool) {
        if let Some(id) = self.id_of(&content) {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.refs += 1;
            }
            return (id, false);
        }
        (self.insert(content, 1), true)
    }

    /// A new id for `content` with `refs` references.
    fn insert(&mut self, content: C, refs: u32) -> u32 {
        let id = loop {
            let candidate = if self.next < self.first || self.next >= GENERATION_BIT {
                self.first
            } else {
                self.next
            };
            self.next = candidate + 1;
            if !self.slots.contains_key(&candidate) {
                break candidate;
            }
        };
        self.by_hash.entry(hash_of(&content)).or_default().push(id);
        self.slots.insert(id, Slot { content, refs });
        id
    }

    fn unindex(&mut self, id: u32, content: &C) {
        self.unindex_hash(id, hash_of(content));
    }

    fn unindex_hash(&mut self, id: u32, hash: u64) {
        if let Some(ids) = self.by_hash.get_mut(&hash) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether some id's content hashes like `probe` (a value whose `Hash` writes what the
    /// content's would).
    pub(crate) fn any_hashing_like(&self, probe: &impl Hash) -> bool {
        self.by_hash.contains_key(&hash_of(probe))
    }

    /// Changes the content of `id` in place; the caller makes sure no other id holds the
    /// result.
    pub(crate) fn update(&mut self, id: u32, change: impl FnOnce(&mut C)) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let old_hash = hash_of(&slot.content);
        change(&mut slot.content);
        let new_hash = hash_of(&slot.content);
        if old_hash != new_hash {
            if let Some(ids) = self.by_hash.get_mut(&old_hash) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.by_hash.remove(&old_hash);
                }
            }
            self.by_hash.entry(new_hash).or_default().push(id);
        }
    }

    /// Moves every member of `from` to `into` and forgets `from`, whose content goes with it;
    /// the caller repoints the members. Returns the content `from` held.
    pub(crate) fn merge(&mut self, from: u32, into: u32) -> Option<C> {
        let slot = self.slots.remove(&from)?;
        self.unindex(from, &slot.content);
        if let Some(target) = self.slots.get_mut(&into) {
            target.refs += slot.refs;
        }
        Some(slot.content)
    }

    /// Moves members to new contents. Each move is (the member's current id, its new content);
    /// `None` on either side means "no interned content" (the caller's special ids: world
    /// class, empty set, not isolated). Returns each member's new id.
    ///
    /// Ids follow their members, so as few members as possible change id: each new content
    /// goes to the old id that brings it most members, if that id may take it (it holds the
    /// content already, or every member of it is moved so its content is free to change); the
    /// id is then renamed. A content an id holds for members that do not move stays with it.
    /// Other contents get new ids, and ids left without members die.
    pub(crate) fn reassign(
        &mut self,
        moves: Vec<(Option<u32>, Option<C>)>,
        events: &mut Vec<Event<C>>,
    ) -> Vec<Option<u32>>
    where
        C: Clone,
    {
        // Distinct new contents ("targets") and each move's target.
        let mut targets: Vec<C> = Vec::new();
        let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut olds = Vec::with_capacity(moves.len());
        let mut target_of = Vec::with_capacity(moves.len());
        for (old, new) in moves {
            olds.push(old);
            target_of.push(new.map(|content| {
                let candidates = by_hash.entry(hash_of(&content)).or_default();
                match candidates.iter().find(|t| targets[**t] == content) {
                    Some(target) => *target,
                    None => {
                        candidates.push(targets.len());
                        targets.push(content);
                        targets.len() - 1
                    }
                }
            }));
        }

        // How many members of each old id move, and to which target.
        let mut moving: BTreeMap<u32, u32> = BTreeMap::new();
        let mut pairs: BTreeMap<(usize, u32), u32> = BTreeMap::new();
        for (old, target) in olds.iter().zip(&target_of) {
            if let Some(old) = old {
                *moving.entry(*old).or_default() += 1;
                if let Some(target) = target {
                    *pairs.entry((*target, *old)).or_default() += 1;
                }
            }
        }
        let free =
            |interner: &Self, id: u32| moving.get(&id).copied().unwrap_or(0) == interner.refs(id);
        let holders: Vec<Option<u32>> = targets.iter().map(|content| self.id_of(content)).collect();

        let mut id_of_target: Vec<Option<u32>> = vec![None; targets.len()];
        let mut taken: BTreeSet<u32> = BTreeSet::new();
        // A content held for members that stay stays with its holder.
        for (target, holder) in holders.iter().enumerate() {
            if let Some(holder) = holder
                && !free(self, *holder)
            {
                id_of_target[target] = Some(*holder);
                taken.insert(*holder);
            }
        }
        // Then the largest contributions first (an id keeping its content wins a tie).
        let mut ranked: Vec<((usize, u32), u32)> = pairs.into_iter().collect();
        ranked.sort_by_key(|((target, id), count)| {
            (
                std::cmp::Reverse(*count),
                holders[*target] != Some(*id),
                *target,
                *id,
            )
        });
        for ((target, id), _) in ranked {
            if id_of_target[target].is_some() || taken.contains(&id) || !free(self, id) {
                continue;
            }
            let holder_gives_way = match holders[target] {
                None => true,
                Some(holder) => holder == id || free(self, holder),
            };
            if holder_gives_way {
                id_of_target[target] = Some(id);
                taken.insert(id);
            }
        }
        // Holders not claimed by another content keep theirs.
        for (target, holder) in holders.iter().enumerate() {
            if let Some(holder) = holder
                && id_of_target[target].is_none()
                && !taken.contains(holder)
            {
                id_of_target[target] = Some(*holder);
                taken.insert(*holder);
            }
        }

        // Renames first (all old hashes out, then all new ones in, so swaps are fine), then
        // new ids.
        let mut renamed = Vec::new();
        for (target, id) in id_of_target.iter().enumerate() {
            if let Some(id) = id
                && self.get(*id) != Some(&targets[target])
            {
                renamed.push((*id, target));
            }
        }
        for (id, _) in &renamed {
            if let Some(slot) = self.slots.get(id) {
                let hash = hash_of(&slot.content);
                self.unindex_hash(*id, hash);
            }
        }
        for (id, target) in &renamed {
            let content = targets[*target].clone();
            let hash = hash_of(&content);
            if let Some(slot) = self.slots.get_mut(id) {
                let old = std::mem::replace(&mut slot.content, content);
                events.push(Event::Renamed { id: *id, old });
            }
            self.by_hash.entry(hash).or_default().push(*id);
        }
        for (target, id) in id_of_target.iter_mut().enumerate() {
            if id.is_none() {
                let new = self.insert(targets[target].clone(), 0);
                events.push(Event::Created { id: new });
                *id = Some(new);
            }
        }

        // Move the references; ids left with none die.
        let mut result = Vec::with_capacity(olds.len());
        let mut emptied = BTreeSet::new();
        for (old, target) in olds.into_iter().zip(target_of) {
            let new = target.and_then(|target| id_of_target[target]);
            if old != new {
                if let Some(slot) = new.and_then(|id| self.slots.get_mut(&id)) {
                    slot.refs += 1;
                }
                if let Some(old) = old
                    && let Some(slot) = self.slots.get_mut(&old)
                {
                    slot.refs = slot.refs.saturating_sub(1);
                    if slot.refs == 0 {
                        emptied.insert(old);
                    }
                }
            }
            result.push(new);
        }
        for id in emptied {
            if self.refs(id) == 0
                && let Some(slot) = self.slots.remove(&id)
            {
                self.unindex(id, &slot.content);
                events.push(Event::Died {
                    id,
                    old: slot.content,
                });
            }
        }
        result
    }
}

/// What [`Interner::reassign`] did to ids, for the caller to update what depends on them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<C> {
    Created { id: u32 },
    Renamed { id: u32, old: C },
    Died { id: u32, old: C },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contents_share_an_id_until_the_last_member_leaves() {
        let mut interner = Interner::new(2);
        let (a, created) = interner.acquire("a");
        assert!(created);
        assert_eq!(a, 2);
        assert_eq!(interner.acquire("a"), (a, false));
        let mut events = Vec::new();
        assert_eq!(
            interner.reassign(vec![(Some(a), None)], &mut events),
            vec![None]
        );
        assert!(events.is_empty());
        assert_eq!(
            interner.reassign(vec![(Some(a), None)], &mut events),
            vec![None]
        );
        assert_eq!(events, vec![Event::Died { id: a, old: "a" }]);
        assert_eq!(interner.id_of(&"a"), None);
    }

    #[test]
    fn swapped_contents_keep_every_member_on_its_id() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        let (b, _) = interner.acquire("b");
        let mut events = Vec::new();
        let ids = interner.reassign(
            vec![(Some(a), Some("b")), (Some(b), Some("a"))],
            &mut events,
        );
        assert_eq!(ids, vec![Some(a), Some(b)]);
        assert_eq!((interner.get(a), interner.get(b)), (Some(&"b"), Some(&"a")));
        assert_eq!(
            (interner.id_of(&"a"), interner.id_of(&"b")),
            (Some(b), Some(a))
        );
    }

    #[test]
    fn reassigning_all_members_of_an_id_to_one_new_content_renames_it() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        interner.acquire("a");
        let mut events = Vec::new();
        let ids = interner.reassign(
            vec![(Some(a), Some("b")), (Some(a), Some("b"))],
            &mut events,
        );
        assert_eq!(ids, vec![Some(a), Some(a)]);
        assert_eq!(events, vec![Event::Renamed { id: a, old: "a" }]);
    }

    #[test]
    fn reassigning_part_of_an_id_creates_and_keeps() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        interner.acquire("a");
        let mut events = Vec::new();
        let ids = interner.reassign(vec![(Some(a), Some("b"))], &mut events);
        let b = ids[0].expect("b interned");
        assert_ne!(a, b);
        assert_eq!(events, vec![Event::Created { id: b }]);
        assert_eq!((interner.refs(a), interner.refs(b)), (1, 1));
    }

    #[test]
    fn when_members_diverge_the_largest_group_keeps_the_id() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        interner.acquire("a");
        interner.acquire("a");
        let mut events = Vec::new();
        let ids = interner.reassign(
            vec![
                (Some(a), Some("c")),
                (Some(a), Some("b")),
                (Some(a), Some("b")),
            ],
            &mut events,
        );
        let c = ids[0].expect("c interned");
        assert_eq!(ids, vec![Some(c), Some(a), Some(a)]);
        assert_eq!(
            events,
            vec![Event::Renamed { id: a, old: "a" }, Event::Created { id: c }]
        );
        assert_eq!((interner.refs(a), interner.refs(c)), (2, 1));
        assert_eq!(interner.get(a), Some(&"b"));
    }

    #[test]
    fn reassigning_onto_an_existing_content_merges_and_frees_the_old_id() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        let (b, _) = interner.acquire("b");
        let mut events = Vec::new();
        let ids = interner.reassign(vec![(Some(a), Some("b")), (None, None)], &mut events);
        assert_eq!(ids, vec![Some(b), None]);
        assert_eq!(events, vec![Event::Died { id: a, old: "a" }]);
        assert_eq!(interner.refs(b), 2);
    }
}
