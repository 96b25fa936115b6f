//! Typed handles on the datapath's maps, and every read and write of them: the agent's
//! [`Datapath`](super::Datapath) holds them next to its programs; the debug CLI opens the same
//! maps from their pins ([`Maps::open_pinned`]) and only ever reads.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use agent_common::{
    addr::Addr,
    addr::{FAMILY_V4, FAMILY_V6},
    config::{self, Config, GENERATION_BIT},
    conntrack::{self, CtEntry, CtKey},
    endpoint::{self, Endpoint, IfSources},
    fragments::{self, FragEntry, FragKey},
    ipcache::{self, PeerClass},
    metrics::{self, Counter, DropReason},
    policy::{self, PolicyKey, PolicyValue},
    services::{self, ServiceRange},
};
use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
};

use super::{EbpfError, MapSizes, insert_error, sum_cpus, tolerate_missing, update_error};

/// The maps the programs read and write, with the capacities they were created with.
pub struct Maps {
    pub(super) sizes: MapSizes,
    pub(super) endpoints: HashMap<MapData, Addr, Endpoint>,
    /// One per id generation ([`ipcache::generation_index`]).
    pub(super) ipcache: [LpmTrie<MapData, Addr, PeerClass>; 2],
    pub(super) policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub(super) services: LpmTrie<MapData, Addr, ServiceRange>,
    pub(super) conntrack: HashMap<MapData, CtKey, CtEntry>,
    pub(super) fragments: HashMap<MapData, FragKey, FragEntry>,
    pub(super) config: Array<MapData, Config>,
    pub(super) drops: PerCpuArray<MapData, Counter>,
    pub(super) rule_hits: PerCpuArray<MapData, Counter>,
    /// `NP_IF_SOURCES`, kept in step with `endpoints` by every write of them; `None` for maps
    /// opened from their pins, which are only read.
    pub(super) sources: Option<InterfaceSources>,
}

/// `NP_IF_SOURCES` and the endpoints' interfaces it is made of.
pub(super) struct InterfaceSources {
    map: Array<MapData, IfSources>,
    /// Every endpoint address with a known interface, and that interface.
    owners: BTreeMap<Addr, u32>,
}

impl InterfaceSources {
    /// The table for `endpoints` (those adopted from pins, or none), written whole.
    pub(super) fn new(
        map: Array<MapData, IfSources>,
        endpoints: &[(Addr, Endpoint)],
    ) -> Result<Self, EbpfError> {
        let mut sources = Self {
            map,
            owners: BTreeMap::new(),
        };
        for (addr, endpoint) in endpoints {
            sources.set_owner(*addr, endpoint.ifindex)?;
        }
        Ok(sources)
    }

    /// The interface `addr` is recorded on (0: none).
    fn owner(&self, addr: &Addr) -> u32 {
        self.owners.get(addr).copied().unwrap_or(0)
    }

    /// Records that `addr` belongs to interface `ifindex` (0: no known interface, or gone) and
    /// rewrites the slots this changes.
    fn set_owner(&mut self, addr: Addr, ifindex: u32) -> Result<(), EbpfError> {
        let previous = if ifindex == 0 {
            self.owners.remove(&addr)
        } else {
            self.owners.insert(addr, ifindex)
        };
        for changed in [previous, Some(ifindex)].into_iter().flatten() {
            if changed != 0 {
                self.write_slot(IfSources::slot(changed))?;
            }
        }
        Ok(())
    }

    /// Writes slot `slot` from `owners`: the one interface of that slot with its addresses, or
    /// nothing where it would not be exact (two interfaces sharing the slot, two addresses of
    /// one family), which leaves those interfaces to the endpoint lookup.
    fn write_slot(&mut self, slot: u32) -> Result<(), EbpfError> {
        let mut value = IfSources::default();
        let mut exact = true;
        for (addr, &ifindex) in &self.owners {
            if IfSources::slot(ifindex) != slot {
                continue;
            }
            if value.ifindex != 0 && value.ifindex != ifindex {
                exact = false;
                break;
            }
            value.ifindex = ifindex;
            match addr.family {
                FAMILY_V4 if value.v4 == 0 => {
                    let bytes = &addr.bytes;
                    value.v4 = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                }
                FAMILY_V6 if value.v6 == Default::default() => value.v6 = addr.bytes,
                _ => {
                    exact = false;
                    break;
                }
            }
        }
        if !exact {
            value = IfSources::default();
        }
        self.map
            .set(slot, value, 0)
            .map_err(update_error(endpoint::IF_SOURCES_MAP_NAME, "set"))
    }

    /// The slots written (tests read them; the debug CLI cannot: the table is not pinned).
    pub(super) fn slots(&self) -> Result<Vec<IfSources>, EbpfError> {
        self.map
            .iter()
            .filter(|slot| !matches!(slot, Ok(value) if value.ifindex == 0))
            .collect::<Result<_, _>>()
            .map_err(update_error(endpoint::IF_SOURCES_MAP_NAME, "read"))
    }
}

impl Maps {
    /// The maps an agent pinned in `dir`, as they are now (the agent need not run). The debug
    /// CLI only reads them.
    pub fn open_pinned(dir: &Path) -> Result<Self, EbpfError> {
        let endpoints = open(dir, endpoint::MAP_NAME)?;
        let ipcache = [
            open(dir, ipcache::MAP_NAMES[0])?,
            open(dir, ipcache::MAP_NAMES[1])?,
        ];
        let policy = open(dir, policy::MAP_NAME)?;
        let services = open(dir, services::MAP_NAME)?;
        let conntrack = open(dir, conntrack::MAP_NAME)?;
        let fragments = open(dir, fragments::MAP_NAME)?;
        let rule_hits = open(dir, metrics::RULE_HITS_MAP_NAME)?;
        let capacity = |name: &'static str| -> Result<u32, EbpfError> {
            aya::maps::MapInfo::from_pin(dir.join(name))
                .map(|info| info.max_entries())
                .map_err(|source| EbpfError::OpenPin {
                    path: dir.join(name),
                    source,
                })
        };
        let sizes = MapSizes {
            endpoints: capacity(endpoint::MAP_NAME)?,
            ipcache: capacity(ipcache::MAP_NAMES[0])?,
            policy: capacity(policy::MAP_NAME)?,
            services: capacity(services::MAP_NAME)?,
            conntrack: capacity(conntrack::MAP_NAME)?,
            fragments: capacity(fragments::MAP_NAME)?,
            rules: capacity(metrics::RULE_HITS_MAP_NAME)?,
        };
        Ok(Self {
            sizes,
            endpoints,
            ipcache,
            policy,
            services,
            conntrack,
            fragments,
            config: open(dir, config::MAP_NAME)?,
            drops: open(dir, metrics::DROPS_MAP_NAME)?,
            rule_hits,
            sources: None,
        })
    }

    /// The capacities the maps were created with.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    /// Every tracked connection.
    pub fn connections(&self) -> Result<Vec<(CtKey, CtEntry)>, EbpfError> {
        self.conntrack
            .iter()
            .collect::<Result<_, _>>()
            .map_err(update_error(conntrack::MAP_NAME, "read"))
    }

    pub fn insert_endpoint(&mut self, addr: Addr, endpoint: Endpoint) -> Result<(), EbpfError> {
        let capacity = self.sizes.endpoints;
        // The table may only confirm what `NP_ENDPOINTS` says: an address whose interface
        // changes leaves it before the endpoint changes, and joins it after.
        let moved = self
            .sources
            .as_ref()
            .is_some_and(|sources| sources.owner(&addr) != endpoint.ifindex);
        if moved && let Some(sources) = &mut self.sources {
            sources.set_owner(addr, 0)?;
        }
        self.endpoints
            .insert(addr, endpoint, 0)
            .map_err(insert_error(endpoint::MAP_NAME, capacity))?;
        if moved && let Some(sources) = &mut self.sources {
            sources.set_owner(addr, endpoint.ifindex)?;
        }
        Ok(())
    }

    pub fn remove_endpoint(&mut self, addr: &Addr) -> Result<(), EbpfError> {
        if let Some(sources) = &mut self.sources {
            sources.set_owner(*addr, 0)?;
        }
        tolerate_missing(self.endpoints.remove(addr))
            .map_err(update_error(endpoint::MAP_NAME, "remove"))
    }

    /// The written slots of `NP_IF_SOURCES` (none for maps opened from their pins).
    pub fn interface_sources(&self) -> Result<Vec<IfSources>, EbpfError> {
        match &self.sources {
            Some(sources) => sources.slots(),
            None => Ok(Vec::new()),
        }
    }

    /// Maps the prefix `addr/len` (address bits, without the family word) to `class` in the
    /// trie of `generation` (0 or `GENERATION_BIT`).
    pub fn insert_prefix(
        &mut self,
        generation: u32,
        addr: Addr,
        len: u32,
        class: u32,
    ) -> Result<(), EbpfError> {
        let key = Key::new(ipcache::lpm_prefix_len(len), addr);
        let capacity = self.sizes.ipcache;
        let index = ipcache::generation_index(generation);
        self.ipcache[index]
            .insert(&key, PeerClass { id: class }, 0)
            .map_err(insert_error(ipcache::MAP_NAMES[index], capacity))
    }

    /// Adds an allow entry; `prefix_len` counts bits of the key data (see
    /// `agent_common::policy`).
    pub fn insert_policy(
        &mut self,
        prefix_len: u32,
        key: PolicyKey,
        rule: u32,
    ) -> Result<(), EbpfError> {
        let key = Key::new(prefix_len, key);
        let capacity = self.sizes.policy;
        self.policy
            .insert(&key, PolicyValue { rule }, 0)
            .map_err(insert_error(policy::MAP_NAME, capacity))
    }

    /// Zeroes the counters of `rule` (a retired id may be handed out again).
    pub fn reset_rule_hits(&mut self, rule: u32) -> Result<(), EbpfError> {
        if rule >= self.sizes.rules {
            return Ok(());
        }
        let zeros = self.zeroed_counters(metrics::RULE_HITS_MAP_NAME)?;
        self.rule_hits
            .set(rule, zeros, 0)
            .map_err(update_error(metrics::RULE_HITS_MAP_NAME, "reset"))
    }

    /// Marks `addr/len` as a Service range: egress to it is decided after DNAT.
    pub fn insert_service_range(&mut self, addr: Addr, len: u32) -> Result<(), EbpfError> {
        let key = Key::new(ipcache::lpm_prefix_len(len), addr);
        let capacity = self.sizes.services;
        self.services
            .insert(&key, ServiceRange { flags: 0 }, 0)
            .map_err(insert_error(services::MAP_NAME, capacity))
    }

    pub fn remove_prefix(
        &mut self,
        generation: u32,
        addr: Addr,
        len: u32,
    ) -> Result<(), EbpfError> {
        let key = Key::new(ipcache::lpm_prefix_len(len), addr);
        let index = ipcache::generation_index(generation);
        tolerate_missing(self.ipcache[index].remove(&key))
            .map_err(update_error(ipcache::MAP_NAMES[index], "remove"))
    }

    pub fn remove_policy(&mut self, prefix_len: u32, key: PolicyKey) -> Result<(), EbpfError> {
        let key = Key::new(prefix_len, key);
        tolerate_missing(self.policy.remove(&key)).map_err(update_error(policy::MAP_NAME, "remove"))
    }

    pub fn remove_service_range(&mut self, addr: Addr, len: u32) -> Result<(), EbpfError> {
        let key = Key::new(ipcache::lpm_prefix_len(len), addr);
        tolerate_missing(self.services.remove(&key))
            .map_err(update_error(services::MAP_NAME, "remove"))
    }

    /// Every endpoint in the map.
    pub fn endpoints(&self) -> Result<Vec<(Addr, Endpoint)>, EbpfError> {
        self.endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(update_error(endpoint::MAP_NAME, "read"))
    }

    /// Every ipcache entry of `generation`: (address, prefix length in address bits, class).
    pub fn prefixes(&self, generation: u32) -> Result<Vec<(Addr, u32, u32)>, EbpfError> {
        let index = ipcache::generation_index(generation);
        self.ipcache[index]
            .iter()
            .map(|entry| {
                entry.map(|(key, class)| {
                    (
                        key.data(),
                        key.prefix_len().saturating_sub(Addr::FAMILY_BITS),
                        class.id,
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map_err(update_error(ipcache::MAP_NAMES[index], "read"))
    }

    /// Every allow entry: (prefix length, key, rule).
    pub fn policies(&self) -> Result<Vec<(u32, PolicyKey, u32)>, EbpfError> {
        self.policy
            .iter()
            .map(|entry| entry.map(|(key, value)| (key.prefix_len(), key.data(), value.rule)))
            .collect::<Result<_, _>>()
            .map_err(update_error(policy::MAP_NAME, "read"))
    }

    /// Every Service range: (address, prefix length in address bits).
    pub fn service_ranges(&self) -> Result<Vec<(Addr, u32)>, EbpfError> {
        self.services
            .iter()
            .map(|entry| {
                entry.map(|(key, _)| {
                    (
                        key.data(),
                        key.prefix_len().saturating_sub(Addr::FAMILY_BITS),
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map_err(update_error(services::MAP_NAME, "read"))
    }

    /// The node-wide configuration.
    pub fn config(&self) -> Result<Config, EbpfError> {
        self.config
            .get(&0, 0)
            .map_err(update_error(config::MAP_NAME, "read"))
    }

    /// Empties the policy state and the connection and fragment tables, resets the config and
    /// the drop counters (a reset without reloading: test suites share one loaded datapath).
    pub fn clear(&mut self) -> Result<(), EbpfError> {
        for (addr, _) in self.endpoints()? {
            self.remove_endpoint(&addr)?;
        }
        for generation in [0, GENERATION_BIT] {
            for (addr, len, _) in self.prefixes(generation)? {
                self.remove_prefix(generation, addr, len)?;
            }
        }
        for (prefix_len, key, _) in self.policies()? {
            self.remove_policy(prefix_len, key)?;
        }
        for (addr, len) in self.service_ranges()? {
            self.remove_service_range(addr, len)?;
        }
        let connections: Vec<CtKey> = self
            .conntrack
            .keys()
            .collect::<Result<_, _>>()
            .map_err(update_error(conntrack::MAP_NAME, "read"))?;
        for key in connections {
            tolerate_missing(self.conntrack.remove(&key))
                .map_err(update_error(conntrack::MAP_NAME, "remove"))?;
        }
        let datagrams: Vec<FragKey> = self
            .fragments
            .keys()
            .collect::<Result<_, _>>()
            .map_err(update_error(fragments::MAP_NAME, "read"))?;
        for key in datagrams {
            tolerate_missing(self.fragments.remove(&key))
                .map_err(update_error(fragments::MAP_NAME, "remove"))?;
        }
        self.set_config(Config::default())?;
        for index in 0..metrics::DROPS_ENTRIES {
            let zeros = self.zeroed_counters(metrics::DROPS_MAP_NAME)?;
            self.drops
                .set(index, zeros, 0)
                .map_err(update_error(metrics::DROPS_MAP_NAME, "reset"))?;
        }
        Ok(())
    }

    fn zeroed_counters(&self, name: &'static str) -> Result<PerCpuValues<Counter>, EbpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::Pin {
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source,
        })?;
        PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|source| {
            EbpfError::MapUpdate {
                name,
                operation: "reset",
                source: MapError::from(source),
            }
        })
    }

    /// The tracked connection `key`, if any.
    pub fn connection(&self, key: &CtKey) -> Result<Option<CtEntry>, EbpfError> {
        match self.conntrack.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(EbpfError::MapUpdate {
                name: conntrack::MAP_NAME,
                operation: "read",
                source,
            }),
        }
    }

    pub fn set_config(&mut self, value: Config) -> Result<(), EbpfError> {
        self.config
            .set(0, value, 0)
            .map_err(update_error(config::MAP_NAME, "set"))
    }

    /// Packets dropped for `reason` in `direction`, summed over CPUs.
    pub fn drops(&self, reason: DropReason, direction: u8) -> Result<Counter, EbpfError> {
        let per_cpu = self
            .drops
            .get(&reason.counter_index(direction), 0)
            .map_err(update_error(metrics::DROPS_MAP_NAME, "read"))?;
        Ok(sum_cpus(&per_cpu))
    }

    /// Packets credited to `rule`, summed over CPUs.
    pub fn rule_hits(&self, rule: u32) -> Result<Counter, EbpfError> {
        let per_cpu = self
            .rule_hits
            .get(&rule, 0)
            .map_err(update_error(metrics::RULE_HITS_MAP_NAME, "read"))?;
        Ok(sum_cpus(&per_cpu))
    }
}

/// The map pinned as `dir/name`, typed.
fn open<T>(dir: &Path, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path: PathBuf = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| EbpfError::OpenPin {
        path: path.clone(),
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| EbpfError::MapType { name, source })?;
    T::try_from(map).map_err(|source| EbpfError::MapType { name, source })
}
