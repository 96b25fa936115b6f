//! Peer classes: addresses that every relevant selector treats alike share a class.
//!
//! The signature of an address is the set of relevant peers it matches plus, for every named
//! port a relevant egress rule uses, the numbers that name resolves to on the pod owning the
//! address. A trie prefix's signature is that of the addresses whose longest match it is (the
//! policy engine section of `docs/ARCHITECTURE.md` says why all of them have the same one). An
//! empty signature is [`CLASS_WORLD`]; every other one is interned to a class id from
//! [`CLASS_FIRST_DYNAMIC`].

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    sync::Arc,
};

use agent_common::ipcache::{CLASS_FIRST_DYNAMIC, CLASS_WORLD};

use super::{
    IpPrefix,
    interner::{Event, Interner},
    peers::{NamedPort, PeerId},
};

/// The part of a signature that comes from the pod owning the address (shared by all its
/// addresses and kept per pod, so ipBlock changes do not recompute it). It carries its own
/// digest, so hashing a signature does not walk it.
#[derive(Clone, Debug, Default)]
pub(crate) struct PodPart {
    /// Relevant pod peers the pod matches, sorted.
    peers: Vec<PeerId>,
    /// Resolutions of relevant egress named ports on the pod, sorted, non-empty ones only.
    named: Vec<(NamedPort, Vec<u16>)>,
    digest: u64,
}

impl PodPart {
    pub(crate) fn new(peers: Vec<PeerId>, named: Vec<(NamedPort, Vec<u16>)>) -> Self {
        let digest = if peers.is_empty() && named.is_empty() {
            0
        } else {
            let mut hasher = std::hash::DefaultHasher::new();
            (&peers, &named).hash(&mut hasher);
            hasher.finish()
        };
        Self {
            peers,
            named,
            digest,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.named.is_empty()
    }
}

impl PartialEq for PodPart {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.peers == other.peers && self.named == other.named
    }
}

impl Eq for PodPart {}

impl Hash for PodPart {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

/// What an address is to the node's policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Sig {
    /// Relevant ipBlock peers the address is in, sorted.
    pub(crate) blocks: Vec<PeerId>,
    /// The owning pod's part (empty for an address no pod owns).
    pub(crate) pod: Arc<PodPart>,
}

impl Sig {
    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.pod.is_empty()
    }

    fn peers(&self) -> BTreeSet<PeerId> {
        self.blocks.iter().chain(&self.pod.peers).copied().collect()
    }
}

/// Something set contents are computed from that a class change can alter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Dep {
    /// The classes of a peer.
    Peer(PeerId),
    /// The classes (and their numbers) a named port resolves in.
    Named(NamedPort),
}

/// What changed for set computation: each dependency with the classes it changed for.
pub(crate) type Touched = BTreeMap<Dep, BTreeSet<u32>>;

/// Interned classes with the reverse indexes set computation reads.
#[derive(Debug)]
pub(crate) struct ClassTable {
    interner: Interner<Sig>,
    peer_classes: BTreeMap<PeerId, BTreeSet<u32>>,
    named_classes: BTreeMap<NamedPort, BTreeMap<u32, Vec<u16>>>,
}

impl Default for ClassTable {
    fn default() -> Self {
        Self {
            interner: Interner::new(CLASS_FIRST_DYNAMIC),
            peer_classes: BTreeMap::new(),
            named_classes: BTreeMap::new(),
        }
    }
}

/// A prefix whose class is to be recomputed: its ipcache value now (`None`: not in the trie)
/// and its new signature (`None`: it leaves the trie).
pub(crate) struct ClassMove {
    pub(crate) prefix: IpPrefix,
    pub(crate) old: Option<u32>,
    pub(crate) new: Option<Sig>,
}

impl ClassTable {
    /// Classes whose signature holds `peer`.
    pub(crate) fn of_peer(&self, peer: PeerId) -> Option<&BTreeSet<u32>> {
        self.peer_classes.get(&peer)
    }

    /// Classes in which `port` resolves, with the numbers.
    pub(crate) fn of_named(&self, port: &NamedPort) -> Option<&BTreeMap<u32, Vec<u16>>> {
        self.named_classes.get(port)
    }

    pub(crate) fn len(&self) -> usize {
        self.interner.len()
    }

    /// How many prefixes have `class`.
    pub(crate) fn members(&self, class: u32) -> u32 {
        self.interner.refs(class)
    }

    /// Adds ipBlock peer `peer`, which no class holds yet, to the signature of `class`, every
    /// prefix of which it covers: the class keeps its id and prefixes. No other class can hold
    /// the result, since none holds the peer.
    pub(crate) fn add_block_peer(&mut self, class: u32, peer: PeerId, touched: &mut Touched) {
        let Some(old) = self.interner.get(class).cloned() else {
            return;
        };
        let mut new = old.clone();
        if let Err(at) = new.blocks.binary_search(&peer) {
            new.blocks.insert(at, peer);
        }
        self.reindex(class, &old, &new, touched);
        self.interner.update(class, |sig| *sig = new);
    }

    /// Takes ipBlock peer `peer`, which nothing uses any more, out of the signature of every
    /// class holding it, in place: those class ids, and so most of the ipcache, stay as they
    /// are. A class left with the signature of a class without the peer (addresses the peer
    /// told apart) absorbs that class: returns those merges (`from`, `into`), whose prefixes the
    /// caller repoints. `None`, and nothing changed, when a class would be left with an empty
    /// signature or two of them with one: the caller recomputes the prefixes instead.
    pub(crate) fn drop_block_peer(
        &mut self,
        peer: PeerId,
        touched: &mut Touched,
    ) -> Option<Vec<(u32, u32)>> {
        let Some(classes) = self.peer_classes.get(&peer) else {
            return Some(Vec::new());
        };
        let mut renamed = Vec::with_capacity(classes.len());
        let mut contents = std::collections::HashSet::with_capacity(classes.len());
        for class in classes {
            let sig = self.interner.get(*class)?;
            let mut new = sig.clone();
            new.blocks.retain(|id| *id != peer);
            if new.blocks.len() == sig.blocks.len()
                || new.is_empty()
                || !contents.insert(new.clone())
            {
                return None;
            }
            let absorbed = self.interner.id_of(&new);
            renamed.push((*class, new, absorbed));
        }
        self.peer_classes.remove(&peer);
        let mut merges = Vec::new();
        for (class, new, absorbed) in renamed {
            if let Some(from) = absorbed
                && let Some(old) = self.interner.merge(from, class)
            {
                self.reindex(from, &old, &Sig::default(), touched);
                merges.push((from, class));
            }
            self.interner.update(class, |sig| *sig = new);
        }
        Some(merges)
    }

    /// Gives each prefix the class of its new signature, keeping class ids stable where it can
    /// ([`Interner::reassign`]). Returns the ipcache writes (`None`: remove) for prefixes whose
    /// value changed, and adds to `touched` what set contents depend on that changed, with the
    /// classes it changed for.
    pub(crate) fn assign(
        &mut self,
        moves: Vec<ClassMove>,
        touched: &mut Touched,
    ) -> Vec<(IpPrefix, Option<u32>)> {
        let dynamic = |class: Option<u32>| class.filter(|class| *class >= CLASS_FIRST_DYNAMIC);
        let mut heads = Vec::with_capacity(moves.len());
        let mut interned = Vec::with_capacity(moves.len());
        for ClassMove { prefix, old, new } in moves {
            let in_trie = new.is_some();
            interned.push((dynamic(old), new.filter(|sig| !sig.is_empty())));
            heads.push((prefix, old, in_trie));
        }
        let mut events = Vec::new();
        let ids = self.interner.reassign(interned, &mut events);
        for event in events {
            match event {
                Event::Created { id } => {
                    let new = self.interner.get(id).cloned().unwrap_or_default();
                    self.reindex(id, &Sig::default(), &new, touched);
                }
                Event::Renamed { id, old } => {
                    let new = self.interner.get(id).cloned().unwrap_or_default();
                    self.reindex(id, &old, &new, touched);
                }
                Event::Died { id, old } => self.reindex(id, &old, &Sig::default(), touched),
            }
        }
        heads
            .into_iter()
            .zip(ids)
            .filter_map(|((prefix, old, in_trie), id)| {
                let new = in_trie.then(|| id.unwrap_or(CLASS_WORLD));
                (new != old).then_some((prefix, new))
            })
            .collect()
    }

    /// Updates the reverse indexes of `class` from `old` to `new`.
    fn reindex(&mut self, class: u32, old: &Sig, new: &Sig, touched: &mut Touched) {
        let (old_peers, new_peers) = (old.peers(), new.peers());
        for peer in old_peers.difference(&new_peers) {
            if let Some(classes) = self.peer_classes.get_mut(peer) {
                classes.remove(&class);
                if classes.is_empty() {
                    self.peer_classes.remove(peer);
                }
            }
            touched.entry(Dep::Peer(*peer)).or_default().insert(class);
        }
        for peer in new_peers.difference(&old_peers) {
            self.peer_classes.entry(*peer).or_default().insert(class);
            touched.entry(Dep::Peer(*peer)).or_default().insert(class);
        }
        let old_named: BTreeMap<_, _> = old.pod.named.iter().map(|(port, n)| (port, n)).collect();
        let new_named: BTreeMap<_, _> = new.pod.named.iter().map(|(port, n)| (port, n)).collect();
        let ports: BTreeSet<&NamedPort> =
            old_named.keys().chain(new_named.keys()).copied().collect();
        for port in ports {
            let (before, after) = (old_named.get(port), new_named.get(port));
            if before == after {
                continue;
            }
            match after {
                Some(numbers) => {
                    self.named_classes
                        .entry(port.clone())
                        .or_default()
                        .insert(class, (*numbers).clone());
                }
                None => {
                    if let Some(classes) = self.named_classes.get_mut(port) {
                        classes.remove(&class);
                        if classes.is_empty() {
                            self.named_classes.remove(port);
                        }
                    }
                }
            }
            touched
                .entry(Dep::Named(port.clone()))
                .or_default()
                .insert(class);
        }
    }
}
