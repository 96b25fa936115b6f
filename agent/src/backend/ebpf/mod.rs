//! The eBPF datapath: loads the embedded object, sizes and exposes its maps, and hands out its
//! programs for attaching or test runs.
//!
//! What each map holds is defined in `agent-common`; this module only moves values in and out.

use agent_common::{
    addr::Addr,
    config::{self, Config},
    conntrack::{self, CtEntry, CtKey},
    endpoint::{self, Endpoint},
    fragments,
    ipcache::{self, PeerClass},
    metrics::{self, Counter, DropReason},
    policy::{self, PolicyKey, PolicyValue},
    services::{self, ServiceRange},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier},
};

/// The object built from `agent-ebpf` (see `agent/build.rs`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpol-tc"));

/// Program for tc ingress of a pod's host-side veth (the pod's egress).
pub const PROG_FROM_POD: &str = "netpol_from_pod";
/// Program for tc egress of a pod's host-side veth (the pod's ingress).
pub const PROG_TO_POD: &str = "netpol_to_pod";
/// Program for tc egress of an uplink (a pod's egress after DNAT).
pub const PROG_TO_UPLINK: &str = "netpol_to_uplink";
/// Every program in the object.
pub const PROGRAMS: [&str; 3] = [PROG_FROM_POD, PROG_TO_POD, PROG_TO_UPLINK];

/// Capacities of the maps whose size depends on the cluster or the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Local pod addresses.
    pub endpoints: u32,
    /// Address prefixes (pod addresses and ipBlock CIDRs with their excepts).
    pub ipcache: u32,
    /// Allow entries.
    pub policy: u32,
    /// Service address ranges.
    pub services: u32,
    /// Tracked connections (LRU: the oldest is evicted when full).
    pub conntrack: u32,
    /// Fragmented datagrams in flight (LRU).
    pub fragments: u32,
    /// Rule ids with counters (ids at or above it are not counted).
    pub rules: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            endpoints: 1024,
            ipcache: 65_536,
            policy: 65_536,
            services: 64,
            conntrack: 262_144,
            fragments: 8192,
            rules: 65_536,
        }
    }
}

/// Errors of the eBPF datapath; each names the map or program involved.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {name}: {operation} failed")]
    MapUpdate {
        name: &'static str,
        operation: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("program {name} could not be loaded")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// The loaded object with typed handles on its maps.
pub struct Datapath {
    ebpf: Ebpf,
    endpoints: HashMap<MapData, Addr, Endpoint>,
    ipcache: LpmTrie<MapData, Addr, PeerClass>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    services: LpmTrie<MapData, Addr, ServiceRange>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    config: Array<MapData, Config>,
    drops: PerCpuArray<MapData, Counter>,
    rule_hits: PerCpuArray<MapData, Counter>,
}

impl Datapath {
    /// Loads the embedded object with `sizes` and loads (not attaches) every program.
    pub fn load(sizes: MapSizes) -> Result<Self, EbpfError> {
        raise_memlock_limit();
        let MapSizes {
            endpoints,
            ipcache,
            policy,
            services,
            conntrack,
            fragments,
            rules,
        } = sizes;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(endpoint::MAP_NAME, endpoints)
            .map_max_entries(ipcache::MAP_NAME, ipcache)
            .map_max_entries(policy::MAP_NAME, policy)
            .map_max_entries(services::MAP_NAME, services)
            .map_max_entries(conntrack::MAP_NAME, conntrack)
            .map_max_entries(fragments::MAP_NAME, fragments)
            .map_max_entries(metrics::RULE_HITS_MAP_NAME, rules)
            .load(OBJECT)
            .map_err(EbpfError::Load)?;
        for name in PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram { name })?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            program
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        Ok(Self {
            endpoints: take_map(&mut ebpf, endpoint::MAP_NAME)?,
            ipcache: take_map(&mut ebpf, ipcache::MAP_NAME)?,
            policy: take_map(&mut ebpf, policy::MAP_NAME)?,
            services: take_map(&mut ebpf, services::MAP_NAME)?,
            conntrack: take_map(&mut ebpf, conntrack::MAP_NAME)?,
            config: take_map(&mut ebpf, config::MAP_NAME)?,
            drops: take_map(&mut ebpf, metrics::DROPS_MAP_NAME)?,
            rule_hits: take_map(&mut ebpf, metrics::RULE_HITS_MAP_NAME)?,
            ebpf,
        })
    }

    /// A loaded program, for attaching or test runs.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, EbpfError> {
        self.ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram { name })?
            .try_into()
            .map_err(|source| EbpfError::Program { name, source })
    }

    pub fn insert_endpoint(&mut self, addr: Addr, endpoint: Endpoint) -> Result<(), EbpfError> {
        self.endpoints
            .insert(addr, endpoint, 0)
            .map_err(update_error(endpoint::MAP_NAME, "insert"))
    }

    pub fn remove_endpoint(&mut self, addr: &Addr) -> Result<(), EbpfError> {
        self.endpoints
            .remove(addr)
            .map_err(update_error(endpoint::MAP_NAME, "remove"))
    }

    /// Maps the prefix `addr/len` (address bits, without the family byte) to `class`.
    pub fn insert_prefix(&mut self, addr: Addr, len: u32, class: u32) -> Result<(), EbpfError> {
        let key = Key::new(ipcache::lpm_prefix_len(len), addr);
        self.ipcache
            .insert(&key, PeerClass { id: class }, 0)
            .map_err(update_error(ipcache::MAP_NAME, "insert"))
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
        self.policy
            .insert(&key, PolicyValue { rule }, 0)
            .map_err(update_error(policy::MAP_NAME, "insert"))
    }

    /// Marks `addr/len` as a Service range: egress to it is decided after DNAT.
    pub fn insert_service_range(&mut self, addr: Addr, len: u32) -> Result<(), EbpfError> {
        let key = Key::new(ipcache::lpm_prefix_len(len), addr);
        self.services
            .insert(&key, ServiceRange { flags: 0 }, 0)
            .map_err(update_error(services::MAP_NAME, "insert"))
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

fn sum_cpus(per_cpu: &[Counter]) -> Counter {
    per_cpu.iter().fold(Counter::default(), |sum, cell| Counter {
        packets: sum.packets + cell.packets,
        bytes: sum.bytes + cell.bytes,
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap { name })?;
    T::try_from(map).map_err(|source| EbpfError::MapType { name, source })
}

fn update_error(name: &'static str, operation: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::MapUpdate {
        name,
        operation,
        source,
    }
}

/// Kernels before 5.11 charge map memory to RLIMIT_MEMLOCK. Raising the soft limit to the hard
/// one is all an unprivileged raise can do; a map that still does not fit fails with an error
/// naming it.
fn raise_memlock_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                tracing::debug!("could not raise RLIMIT_MEMLOCK to its hard limit");
            }
        }
    }
}
