//! [`EbpfBackend`]: the [`Backend`] over the eBPF maps.
//!
//! Set and class ids carry a generation bit ([`GENERATION_BIT`]), and each generation has its
//! own ipcache trie. [`Backend::converge`] writes the whole state with the generation the
//! endpoints do not use (policy entries, then that generation's trie, then the endpoints,
//! each switching both directions in one update), records it, and only then removes what is
//! stale: entries of a previous agent and of this one never share an id while both are
//! present, and no lookup pairs a set of one generation with a class of the other, so a
//! restart neither opens a hole nor drops allowed traffic.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{
    addr::Addr,
    config::GENERATION_BIT,
    endpoint::Endpoint,
    ipcache::{self, CLASS_FIRST_DYNAMIC},
    metrics::DropReason,
    policy::{DIR_EGRESS, DIR_INGRESS, PolicyKey, SET_EMPTY},
};

use super::{Datapath, EbpfError, MapSizes};
use crate::{
    backend::{Backend, BackendError, Count, Counters, InterfaceRole, MapUsage, PodInterfaces},
    policy::{Delta, NodeState, Op, PolicyEntryKey},
};

/// The eBPF datapath as a backend.
pub struct EbpfBackend {
    datapath: Datapath,
    /// How large [`Backend::grow`] may make each map.
    size_limits: MapSizes,
    /// The generation bit of the ids this agent writes (0 or [`GENERATION_BIT`]).
    generation: u32,
    /// Rule ids the state refers to, for the counters.
    rules: BTreeSet<u32>,
}

impl EbpfBackend {
    /// Wraps a loaded datapath, adopting the generation recorded in its (pinned) config.
    pub fn new(datapath: Datapath) -> Result<Self, EbpfError> {
        let generation = datapath.config()?.generation & GENERATION_BIT;
        Ok(Self {
            size_limits: datapath.sizes(),
            datapath,
            generation,
            rules: BTreeSet::new(),
        })
    }

    /// Lets [`Backend::grow`] make each map up to `factor` times its size now (1: never).
    pub fn with_growth_limit(mut self, factor: u32) -> Self {
        let sizes = self.datapath.sizes();
        let limit = |size: u32| size.saturating_mul(factor.max(1));
        self.size_limits = MapSizes {
            endpoints: limit(sizes.endpoints),
            ipcache: limit(sizes.ipcache),
            policy: limit(sizes.policy),
            services: limit(sizes.services),
            ..sizes
        };
        self
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    fn tag_set(&self, set: u32) -> u32 {
        if set == SET_EMPTY {
            set
        } else {
            set | self.generation
        }
    }

    fn tag_class(&self, class: u32) -> u32 {
        if class < CLASS_FIRST_DYNAMIC {
            class
        } else {
            class | self.generation
        }
    }

    fn policy_key(&self, key: &PolicyEntryKey) -> PolicyKey {
        let raw = key.key;
        PolicyKey::new(
            self.tag_set(raw.set_id()),
            self.tag_class(raw.class_id()),
            raw.direction,
            raw.protocol,
            raw.port_number(),
        )
    }

    fn endpoint(&self, addr: &Addr, endpoint: &Endpoint, pods: &PodInterfaces) -> Endpoint {
        Endpoint {
            ifindex: pods.get(addr).copied().unwrap_or(0),
            ingress_set: self.tag_set(endpoint.ingress_set),
            egress_set: self.tag_set(endpoint.egress_set),
            ..*endpoint
        }
    }

    fn write(&mut self, op: Op<'_>, pods: &PodInterfaces) -> Result<(), EbpfError> {
        match op {
            Op::AddRule(rule, _) => {
                self.rules.insert(rule);
            }
            Op::UpsertPolicy(key, value) => {
                let tagged = self.policy_key(&key);
                self.datapath
                    .insert_policy(key.prefix_len, tagged, value.rule)?;
            }
            Op::UpsertIpcache(prefix, class) => {
                let class = self.tag_class(class.id);
                self.datapath.insert_prefix(
                    self.generation,
                    prefix.addr,
                    u32::from(prefix.len),
                    class,
                )?;
            }
            Op::UpsertEndpoint(addr, endpoint) => {
                let endpoint = self.endpoint(&addr, &endpoint, pods);
                self.datapath.insert_endpoint(addr, endpoint)?;
            }
            Op::RemoveEndpoint(addr) => self.datapath.remove_endpoint(&addr)?,
            Op::RemoveIpcache(prefix) => {
                self.datapath
                    .remove_prefix(self.generation, prefix.addr, u32::from(prefix.len))?;
            }
            Op::RemovePolicy(key) => {
                let tagged = self.policy_key(&key);
                self.datapath.remove_policy(key.prefix_len, tagged)?;
            }
            Op::RemoveRule(rule) => {
                self.rules.remove(&rule);
                self.datapath.reset_rule_hits(rule)?;
            }
        }
        Ok(())
    }

    fn converge_maps(&mut self, state: &NodeState, pods: &PodInterfaces) -> Result<(), EbpfError> {
        let old_generation = self.generation;
        self.generation = old_generation ^ GENERATION_BIT;
        if let Err(error) = self.write_generation(state, pods) {
            // The switch did not happen: the endpoints still use the old generation, and the
            // next converge clears this half-written one, never the one in use.
            self.generation = old_generation;
            return Err(error);
        }

        // Stale: endpoints the state does not have, and everything of the old generation.
        for (addr, _) in self.datapath.endpoints()? {
            if !state.endpoints.contains_key(&addr) {
                self.datapath.remove_endpoint(&addr)?;
            }
        }
        self.clear_prefixes(old_generation)?;
        let wanted: BTreeSet<(u32, PolicyKey)> = state
            .policy
            .keys()
            .map(|key| (key.prefix_len, self.policy_key(key)))
            .collect();
        self.remove_generation(old_generation, &wanted)?;
        Ok(())
    }

    /// Writes the whole state with `self.generation` and records that generation as the one
    /// in use.
    fn write_generation(
        &mut self,
        state: &NodeState,
        pods: &PodInterfaces,
    ) -> Result<(), EbpfError> {
        // Leftovers of a convergence that died half-way use the generation we are about to
        // write: clear them first, so no old entry is read under a new meaning.
        self.remove_generation(self.generation, &BTreeSet::new())?;
        self.clear_prefixes(self.generation)?;
        let everything = Delta {
            rules_added: state.rules.clone(),
            policy_upserts: state.policy.clone(),
            ipcache_upserts: state.ipcache.clone(),
            endpoint_upserts: state.endpoints.clone(),
            ..Delta::default()
        };
        self.rules.clear();
        for op in everything.ops() {
            self.write(op, pods)?;
        }
        let mut config = self.datapath.config()?;
        config.generation = self.generation;
        self.datapath.set_config(config)
    }

    /// Empties the ipcache trie of `generation`.
    fn clear_prefixes(&mut self, generation: u32) -> Result<(), EbpfError> {
        for (addr, len, _) in self.datapath.prefixes(generation)? {
            self.datapath.remove_prefix(generation, addr, len)?;
        }
        Ok(())
    }

    /// Removes policy entries of `generation` that are not `keep`.
    fn remove_generation(
        &mut self,
        generation: u32,
        keep: &BTreeSet<(u32, PolicyKey)>,
    ) -> Result<(), EbpfError> {
        for (prefix_len, key, _) in self.datapath.policies()? {
            let tagged = key.set_id() & GENERATION_BIT == generation
                || key.class_id() & GENERATION_BIT == generation;
            if tagged && !keep.contains(&(prefix_len, key)) {
                self.datapath.remove_policy(prefix_len, key)?;
            }
        }
        Ok(())
    }
}

impl Backend for EbpfBackend {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn converge(&mut self, state: &NodeState, pods: &PodInterfaces) -> Result<(), BackendError> {
        Ok(self.converge_maps(state, pods)?)
    }

    fn apply(&mut self, delta: &Delta, pods: &PodInterfaces) -> Result<(), BackendError> {
        for op in delta.ops() {
            self.write(op, pods)?;
        }
        Ok(())
    }

    fn fail_closed(
        &mut self,
        endpoints: &BTreeMap<Addr, Endpoint>,
        pods: &PodInterfaces,
    ) -> Result<(), BackendError> {
        // Each one on its own: an endpoint that cannot be written (its map full) is no
        // endpoint to the programs, and dropped as such on its interface.
        let mut first_error = None;
        for (addr, endpoint) in crate::backend::not_programmed(endpoints) {
            let written = Endpoint {
                ifindex: pods.get(&addr).copied().unwrap_or(0),
                ..endpoint
            };
            if let Err(error) = self.datapath.insert_endpoint(addr, written) {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    fn set_service_ranges(&mut self, ranges: &[(Addr, u8)]) -> Result<(), BackendError> {
        let wanted: BTreeSet<(Addr, u32)> = ranges
            .iter()
            .map(|(addr, len)| (*addr, u32::from(*len)))
            .collect();
        for (addr, len) in &wanted {
            self.datapath.insert_service_range(*addr, *len)?;
        }
        for (addr, len) in self.datapath.service_ranges()? {
            if !wanted.contains(&(addr, len)) {
                self.datapath.remove_service_range(addr, len)?;
            }
        }
        Ok(())
    }

    fn set_enforcement(&mut self, enforce: bool) -> Result<(), BackendError> {
        let mut config = self.datapath.config()?;
        if enforce {
            config.flags &= !agent_common::config::CONFIG_ENFORCEMENT_OFF;
        } else {
            config.flags |= agent_common::config::CONFIG_ENFORCEMENT_OFF;
        }
        Ok(self.datapath.set_config(config)?)
    }

    fn grow(&mut self, error: &BackendError) -> Result<bool, BackendError> {
        let BackendError::Ebpf(EbpfError::MapFull { name, .. }) = error else {
            return Ok(false);
        };
        let mut sizes = self.datapath.sizes();
        let limits = self.size_limits;
        let (size, limit) = match *name {
            agent_common::endpoint::MAP_NAME => (&mut sizes.endpoints, limits.endpoints),
            agent_common::policy::MAP_NAME => (&mut sizes.policy, limits.policy),
            agent_common::services::MAP_NAME => (&mut sizes.services, limits.services),
            name if ipcache::MAP_NAMES.contains(&name) => (&mut sizes.ipcache, limits.ipcache),
            _ => return Ok(false),
        };
        if *size >= limit {
            tracing::warn!(
                map = name,
                capacity = *size,
                "the map is at its growth limit (--map-growth-limit): the pods it concerns stay denied"
            );
            return Ok(false);
        }
        let from = *size;
        *size = size.saturating_mul(2).min(limit);
        tracing::warn!(
            map = name,
            from,
            to = *size,
            "growing a full map: a new datapath with larger maps takes over once it holds the state"
        );
        self.datapath = self.datapath.reload(sizes)?;
        self.rules.clear();
        Ok(true)
    }

    fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        Ok(self.datapath.attach(iface, role)?)
    }

    fn detach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        Ok(self.datapath.detach(iface, role)?)
    }

    fn remove_orphans(&mut self) -> Result<usize, BackendError> {
        Ok(self.datapath.remove_orphaned_links()?)
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        let mut counters = Counters::default();
        for reason in DropReason::ALL {
            for (direction, name) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
                let count = self.datapath.drops(reason, direction)?;
                counters.drops.insert(
                    (reason.name(), name),
                    Count {
                        packets: count.packets,
                        bytes: count.bytes,
                    },
                );
            }
        }
        for rule in &self.rules {
            if *rule >= self.datapath.sizes().rules {
                continue;
            }
            let count = self.datapath.rule_hits(*rule)?;
            counters.rules.insert(
                *rule,
                Count {
                    packets: count.packets,
                    bytes: count.bytes,
                },
            );
        }
        Ok(counters)
    }

    fn usage(&self) -> Result<Vec<MapUsage>, BackendError> {
        let sizes = self.datapath.sizes();
        let usage = |name, entries: usize, capacity: u32| MapUsage {
            name,
            entries: entries as u64,
            capacity: u64::from(capacity),
        };
        Ok(vec![
            usage(
                agent_common::endpoint::MAP_NAME,
                self.datapath.endpoints()?.len(),
                sizes.endpoints,
            ),
            usage(
                ipcache::MAP_NAMES[0],
                self.datapath.prefixes(0)?.len(),
                sizes.ipcache,
            ),
            usage(
                ipcache::MAP_NAMES[1],
                self.datapath.prefixes(GENERATION_BIT)?.len(),
                sizes.ipcache,
            ),
            usage(
                agent_common::policy::MAP_NAME,
                self.datapath.policies()?.len(),
                sizes.policy,
            ),
            usage(
                agent_common::services::MAP_NAME,
                self.datapath.service_ranges()?.len(),
                sizes.services,
            ),
        ])
    }
}
