//! Relevant peers: the `from`/`to` entries of policies that select at least one local endpoint,
//! interned by content so that equal peers of different policies are one, with their members.
//!
//! A pod/namespace selector peer keeps the set of pods it matches; an ipBlock peer is indexed by
//! its CIDR so the ipBlock part of a prefix's signature is found by looking up its ancestors.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{Namespace, ObjectRef, Peer, Pod, Protocol};

use super::{
    Direction, IpPrefix,
    selector::{canonical, matches, matches_namespace},
};

pub(crate) type PeerId = u32;

/// Which namespaces a pod peer looks in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum NsScope {
    /// The policy's own namespace (a podSelector alone).
    Named(String),
    Matching(crate::model::Selector),
}

/// A peer with the policy's namespace resolved, in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum PeerDef {
    Pods {
        namespaces: NsScope,
        pods: crate::model::Selector,
    },
    IpBlock {
        cidr: IpPrefix,
        except: Vec<IpPrefix>,
    },
}

impl PeerDef {
    /// The definition of a model peer of a policy in `namespace`; `None` for a peer that
    /// matches nothing.
    pub(crate) fn new(peer: &Peer, namespace: &str) -> Option<Self> {
        match peer {
            Peer::Nothing => None,
            Peer::Pods { namespaces, pods } => Some(Self::Pods {
                namespaces: match namespaces {
                    None => NsScope::Named(namespace.to_owned()),
                    Some(selector) => NsScope::Matching(canonical(selector)),
                },
                pods: canonical(pods),
            }),
            Peer::IpBlock(block) => {
                let prefix = |cidr: &crate::model::Cidr| IpPrefix::from_ip(cidr.addr(), cidr.len());
                let mut except: Vec<IpPrefix> = block.except.iter().map(prefix).collect();
                except.sort();
                except.dedup();
                Some(Self::IpBlock {
                    cidr: prefix(&block.cidr),
                    except,
                })
            }
        }
    }

    /// Whether this pod peer matches `pod` (in `namespace`, `None` if unknown). HostNetwork
    /// pods are never matched by selectors.
    pub(crate) fn matches_pod(&self, pod: &Pod, namespace: Option<&Namespace>) -> bool {
        let Self::Pods {
            namespaces,
            pods: selector,
        } = self
        else {
            return false;
        };
        !pod.host_network
            && match namespaces {
                NsScope::Named(name) => *name == pod.namespace,
                NsScope::Matching(selector) => {
                    matches_namespace(selector, &pod.namespace, namespace)
                }
            }
            && matches(selector, &pod.labels)
    }

    /// Whether this pod peer's namespace scope covers namespace `name`.
    pub(crate) fn covers_namespace(&self, name: &str, namespace: Option<&Namespace>) -> bool {
        match self {
            Self::Pods {
                namespaces: NsScope::Named(own),
                ..
            } => own == name,
            Self::Pods {
                namespaces: NsScope::Matching(selector),
                ..
            } => matches_namespace(selector, name, namespace),
            Self::IpBlock { .. } => false,
        }
    }
}

/// `pods app=db in namespace shop`, `pods role=client in namespaces team=a`,
/// `ipBlock 10.0.0.0/8 except 10.1.0.0/16`.
impl std::fmt::Display for PeerDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pods {
                namespaces: NsScope::Named(namespace),
                pods,
            } => write!(f, "pods {pods} in namespace {namespace}"),
            Self::Pods {
                namespaces: NsScope::Matching(namespaces),
                pods,
            } => write!(f, "pods {pods} in namespaces {namespaces}"),
            Self::IpBlock { cidr, except } => {
                write!(f, "ipBlock {cidr}")?;
                if !except.is_empty() {
                    let except: Vec<String> = except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", except.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// A container port name with the protocol it must be declared with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct NamedPort {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
}

/// Who holds a reference to a peer: a policy's rules of one direction.
pub(crate) type User = (ObjectRef, Direction);

#[derive(Debug)]
pub(crate) struct PeerState {
    pub(crate) def: PeerDef,
    /// Reference counts per user.
    pub(crate) users: BTreeMap<User, u32>,
    /// Pods a pod peer matches (empty for ipBlock peers).
    pub(crate) members: BTreeSet<ObjectRef>,
}

/// The relevant peers and their members.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    peers: BTreeMap<PeerId, PeerState>,
    by_def: BTreeMap<PeerDef, PeerId>,
    next: PeerId,
    /// Pod peers each pod belongs to.
    pod_peers: BTreeMap<ObjectRef, BTreeSet<PeerId>>,
    /// ipBlock peers by CIDR (only looked up).
    cidrs: HashMap<IpPrefix, BTreeSet<PeerId>>,
    /// ipBlock peers by except (only looked up).
    excepts: HashMap<IpPrefix, BTreeSet<PeerId>>,
    /// How many CIDRs and excepts have each (family, length): the ancestor lengths worth
    /// trying.
    block_lens: BTreeMap<(u32, u8), u32>,
}

/// Adds (`add`) or removes `id` under `prefix` in `index`, counting lengths in `lens`.
fn index_block(
    index: &mut HashMap<IpPrefix, BTreeSet<PeerId>>,
    lens: &mut BTreeMap<(u32, u8), u32>,
    prefix: &IpPrefix,
    id: PeerId,
    add: bool,
) {
    let key = (prefix.addr.family, prefix.len);
    if add {
        index.entry(*prefix).or_default().insert(id);
        *lens.entry(key).or_default() += 1;
        return;
    }
    if let Some(ids) = index.get_mut(prefix) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(prefix);
        }
    }
    if let Some(count) = lens.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            lens.remove(&key);
        }
    }
}

impl PeerTable {
    pub(crate) fn get(&self, id: PeerId) -> Option<&PeerState> {
        self.peers.get(&id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (PeerId, &PeerState)> {
        self.peers.iter().map(|(id, state)| (*id, state))
    }

    /// Whether a peer has definition `def`.
    pub(crate) fn defines(&self, def: &PeerDef) -> bool {
        self.by_def.contains_key(def)
    }

    /// Pod peers (id and definition).
    pub(crate) fn pod_peers(&self) -> impl Iterator<Item = (PeerId, &PeerDef)> {
        self.peers
            .iter()
            .filter(|(_, state)| matches!(state.def, PeerDef::Pods { .. }))
            .map(|(id, state)| (*id, &state.def))
    }

    /// The pod peers `pod` belongs to.
    pub(crate) fn of_pod(&self, pod: &ObjectRef) -> Option<&BTreeSet<PeerId>> {
        self.pod_peers.get(pod)
    }

    /// Adds a reference from `user`; returns the id and whether the peer is new (its members
    /// are then still to be filled in by the caller).
    pub(crate) fn acquire(&mut self, def: PeerDef, user: &User) -> (PeerId, bool) {
        if let Some(id) = self.by_def.get(&def) {
            if let Some(state) = self.peers.get_mut(id) {
                *state.users.entry(user.clone()).or_default() += 1;
            }
            return (*id, false);
        }
        let id = loop {
            let candidate = self.next;
            self.next = self.next.wrapping_add(1);
            if !self.peers.contains_key(&candidate) {
                break candidate;
            }
        };
        self.index_def(&def, id, true);
        self.by_def.insert(def.clone(), id);
        self.peers.insert(
            id,
            PeerState {
                def,
                users: BTreeMap::from([(user.clone(), 1)]),
                members: BTreeSet::new(),
            },
        );
        (id, true)
    }

    /// Whether ipBlock peer `id` is held by nothing but the references counted in `held`
    /// (one policy's old version): it can then take another definition in place.
    pub(crate) fn is_block_held_only_by(&self, id: PeerId, held: &BTreeMap<User, u32>) -> bool {
        self.peers.get(&id).is_some_and(|state| {
            matches!(state.def, PeerDef::IpBlock { .. }) && state.users == *held
        })
    }

    /// Gives ipBlock peer `id` the ipBlock definition `def`, which no peer has, and adds a
    /// reference from `user`; returns the old definition. The id stays, so the signature of
    /// every prefix whose membership did not change stays too.
    pub(crate) fn redefine_block(
        &mut self,
        id: PeerId,
        def: PeerDef,
        user: &User,
    ) -> Option<PeerDef> {
        if !matches!(def, PeerDef::IpBlock { .. }) || self.by_def.contains_key(&def) {
            return None;
        }
        let state = self.peers.get_mut(&id)?;
        if !matches!(state.def, PeerDef::IpBlock { .. }) {
            return None;
        }
        *state.users.entry(user.clone()).or_default() += 1;
        let old = std::mem::replace(&mut state.def, def.clone());
        self.index_def(&old, id, false);
        self.index_def(&def, id, true);
        self.by_def.remove(&old);
        self.by_def.insert(def, id);
        Some(old)
    }

    /// Drops a reference from `user`; returns the peer when it is no longer used (its members
    /// are removed from the pod index).
    pub(crate) fn release(&mut self, id: PeerId, user: &User) -> Option<PeerState> {
        let state = self.peers.get_mut(&id)?;
        if let Some(count) = state.users.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                state.users.remove(user);
            }
        }
        if !state.users.is_empty() {
            return None;
        }
        let state = self.peers.remove(&id)?;
        self.by_def.remove(&state.def);
        for member in &state.members {
            if let Some(peers) = self.pod_peers.get_mut(member) {
                peers.remove(&id);
                if peers.is_empty() {
                    self.pod_peers.remove(member);
                }
            }
        }
        self.index_def(&state.def, id, false);
        Some(state)
    }

    /// Adds (`add`) or removes ipBlock peer `id` under its CIDR and excepts in the indexes
    /// `ip_blocks_containing` reads; nothing for a pod peer.
    fn index_def(&mut self, def: &PeerDef, id: PeerId, add: bool) {
        if let PeerDef::IpBlock { cidr, except } = def {
            index_block(&mut self.cidrs, &mut self.block_lens, cidr, id, add);
            for carve in except {
                index_block(&mut self.excepts, &mut self.block_lens, carve, id, add);
            }
        }
    }

    /// Makes `pod` a member of pod peer `id` or not; returns whether that changed anything.
    pub(crate) fn set_member(&mut self, id: PeerId, pod: &ObjectRef, member: bool) -> bool {
        let Some(state) = self.peers.get_mut(&id) else {
            return false;
        };
        if member {
            if !state.members.insert(pod.clone()) {
                return false;
            }
            self.pod_peers.entry(pod.clone()).or_default().insert(id);
        } else {
            if !state.members.remove(pod) {
                return false;
            }
            if let Some(peers) = self.pod_peers.get_mut(pod) {
                peers.remove(&id);
                if peers.is_empty() {
                    self.pod_peers.remove(pod);
                }
            }
        }
        true
    }

    /// The ipBlock peers that contain every address of `prefix`: a CIDR that is an ancestor of
    /// it and no except that is. Because the trie holds every CIDR and except, this is also the
    /// ipBlock membership of every address whose longest match is `prefix`.
    pub(crate) fn ip_blocks_containing(&self, prefix: &IpPrefix) -> Vec<PeerId> {
        let (mut included, mut excluded) = (Vec::new(), Vec::new());
        let family = prefix.addr.family;
        for (_, len) in self
            .block_lens
            .range((family, 0)..=(family, prefix.len))
            .map(|(k, _)| *k)
        {
            let ancestor = IpPrefix::new(prefix.addr, len);
            included.extend(self.cidrs.get(&ancestor).into_iter().flatten());
            excluded.extend(self.excepts.get(&ancestor).into_iter().flatten());
        }
        included.sort_unstable();
        included.dedup();
        if !excluded.is_empty() {
            excluded.sort_unstable();
            included.retain(|id| excluded.binary_search(id).is_err());
        }
        included
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}
