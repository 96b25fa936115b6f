//! Reference-counted interning of contents (class signatures, set contents) to stable ids.
//!
//! Content determines identity (two ids never hold equal contents), but an id outlives changes
//! of its content when [`Interner::rename`] moves all its users at once: that keeps ids, and so
//! map entries, stable across incremental changes. The index is a hash of the content (only
//! looked up, never iterated, so output order cannot depend on it).

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
};

#[derive(Debug)]
struct Slot<C> {
    content: C,
    refs: u32,
}

/// Ids in `first..`, handed out in increasing order (wrapping, skipping live ids).
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
    pub(crate) fn acquire(&mut self, content: C) -> (u32, bool) {
        if let Some(id) = self.id_of(&content) {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.refs += 1;
            }
            return (id, false);
        }
        let id = loop {
            let candidate = self.next.max(self.first);
            self.next = candidate.wrapping_add(1);
            if !self.slots.contains_key(&candidate) {
                break candidate;
            }
        };
        self.by_hash.entry(hash_of(&content)).or_default().push(id);
        self.slots.insert(id, Slot { content, refs: 1 });
        (id, true)
    }

    /// Drops a reference; returns the content when the id died.
    pub(crate) fn release(&mut self, id: u32) -> Option<C> {
        let slot = self.slots.get_mut(&id)?;
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs > 0 {
            return None;
        }
        let slot = self.slots.remove(&id)?;
        self.unindex(id, &slot.content);
        Some(slot.content)
    }

    /// Gives `id` a new content that no id holds yet; returns the old content.
    pub(crate) fn rename(&mut self, id: u32, content: C) -> Option<C> {
        debug_assert!(self.id_of(&content).is_none(), "contents are unique");
        let hash = hash_of(&content);
        let slot = self.slots.get_mut(&id)?;
        let old = std::mem::replace(&mut slot.content, content);
        self.unindex(id, &old);
        self.by_hash.entry(hash).or_default().push(id);
        Some(old)
    }

    fn unindex(&mut self, id: u32, content: &C) {
        let hash = hash_of(content);
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

    /// Moves members to new contents. Each move is (the member's current id, its new content);
    /// `None` on either side means "no interned content" (the caller's special ids: world
    /// class, empty set, not isolated). Returns each member's new id.
    ///
    /// When every member of an id moves, the id follows the members that keep its content,
    /// or else the largest group of them that moves to a content no id holds (the id is
    /// renamed: those members keep their id and only its content changes). Everything else
    /// acquires its new content before releasing its old one, so a member that stays never
    /// makes its id die and come back.
    pub(crate) fn reassign(
        &mut self,
        moves: Vec<(Option<u32>, Option<C>)>,
        events: &mut Vec<Event<C>>,
    ) -> Vec<Option<u32>>
    where
        C: Clone,
    {
        let mut decided: Vec<Option<Option<u32>>> = vec![None; moves.len()];
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, (old, _)) in moves.iter().enumerate() {
            if let Some(old) = old {
                groups.entry(*old).or_default().push(index);
            }
        }
        for (id, members) in &groups {
            if members.len() != self.refs(*id) as usize {
                continue;
            }
            // Every member moves: split them by new content.
            let mut subgroups: Vec<(&C, Vec<usize>)> = Vec::new();
            for index in members {
                let Some(content) = moves[*index].1.as_ref() else {
                    continue;
                };
                match subgroups.iter_mut().find(|(other, _)| *other == content) {
                    Some((_, indices)) => indices.push(*index),
                    None => subgroups.push((content, vec![*index])),
                }
            }
            // Members that keep the content keep the id; otherwise the largest group moving
            // to a content no id holds takes the id with it.
            let keeper = match subgroups.iter().position(|(content, _)| self.get(*id) == Some(*content)) {
                Some(staying) => Some(staying),
                None => subgroups
                    .iter()
                    .enumerate()
                    .filter(|(_, (content, _))| self.id_of(content).is_none())
                    .max_by_key(|(position, (_, indices))| (indices.len(), std::cmp::Reverse(*position)))
                    .map(|(position, _)| position),
            };
            let Some((content, indices)) = keeper.map(|position| &subgroups[position]) else {
                continue;
            };
            if self.get(*id) != Some(*content) {
                let content = (*content).clone();
                if let Some(old) = self.rename(*id, content) {
                    events.push(Event::Renamed { id: *id, old });
                }
            }
            // The others acquire their content and release this id below.
            for index in indices {
                decided[*index] = Some(Some(*id));
            }
        }
        let mut releases = Vec::new();
        for (index, (old, new)) in moves.into_iter().enumerate() {
            if decided[index].is_some() {
                continue;
            }
            let new_id = new.map(|content| {
                let (id, created) = self.acquire(content);
                if created {
                    events.push(Event::Created { id });
                }
                id
            });
            decided[index] = Some(new_id);
            releases.extend(old);
        }
        for id in releases {
            if let Some(old) = self.release(id) {
                events.push(Event::Died { id, old });
            }
        }
        decided.into_iter().map(Option::flatten).collect()
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
    fn equal_contents_share_an_id_until_the_last_reference_goes() {
        let mut interner = Interner::new(2);
        let (a, created) = interner.acquire("a");
        assert!(created);
        assert_eq!(a, 2);
        assert_eq!(interner.acquire("a"), (a, false));
        assert_eq!(interner.refs(a), 2);
        assert_eq!(interner.release(a), None);
        assert_eq!(interner.release(a), Some("a"));
        assert_eq!(interner.id_of(&"a"), None);
    }

    #[test]
    fn a_renamed_id_keeps_its_references_under_the_new_content() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        assert_eq!(interner.rename(a, "b"), Some("a"));
        assert_eq!(interner.id_of(&"b"), Some(a));
        assert_eq!(interner.id_of(&"a"), None);
        let (again, created) = interner.acquire("a");
        assert!(created && again != a);
    }

    #[test]
    fn reassigning_all_members_of_an_id_to_one_new_content_renames_it() {
        let mut interner = Interner::new(1);
        let (a, _) = interner.acquire("a");
        interner.acquire("a");
        let mut events = Vec::new();
        let ids = interner.reassign(vec![(Some(a), Some("b")), (Some(a), Some("b"))], &mut events);
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
            vec![(Some(a), Some("c")), (Some(a), Some("b")), (Some(a), Some("b"))],
            &mut events,
        );
        let c = ids[0].expect("c interned");
        assert_eq!(ids, vec![Some(c), Some(a), Some(a)]);
        assert_eq!(events, vec![Event::Renamed { id: a, old: "a" }, Event::Created { id: c }]);
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
