//! The eBPF datapath: loads the embedded object, sizes, pins and exposes its maps, attaches its
//! programs to interfaces, and hands them out for test runs.
//!
//! What each map holds is defined in `agent-common`; this module only moves values in and out.

mod attach;

use std::path::{Path, PathBuf};

pub use attach::{AttachMode, NETLINK_HANDLE, NETLINK_PRIORITY};

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
    programs::{ProgramError, SchedClassifier, TcAttachType},
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

/// Maps that keep state across agent restarts when pinned: everything but the event array,
/// whose buffers belong to the reader.
const PINNED_MAPS: [&str; 9] = [
    endpoint::MAP_NAME,
    ipcache::MAP_NAME,
    policy::MAP_NAME,
    services::MAP_NAME,
    conntrack::MAP_NAME,
    fragments::MAP_NAME,
    config::MAP_NAME,
    metrics::DROPS_MAP_NAME,
    metrics::RULE_HITS_MAP_NAME,
];

/// What an interface is to the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// The host side of a pod's veth: `netpol_from_pod` at tc ingress, `netpol_to_pod` at tc
    /// egress.
    Pod,
    /// An uplink: `netpol_to_uplink` at tc egress.
    Uplink,
}

impl InterfaceRole {
    fn hooks(self) -> &'static [attach::Hook] {
        const POD: [attach::Hook; 2] = [
            attach::Hook {
                program: PROG_FROM_POD,
                attach_type: TcAttachType::Ingress,
            },
            attach::Hook {
                program: PROG_TO_POD,
                attach_type: TcAttachType::Egress,
            },
        ];
        const UPLINK: [attach::Hook; 1] = [attach::Hook {
            program: PROG_TO_UPLINK,
            attach_type: TcAttachType::Egress,
        }];
        match self {
            Self::Pod => &POD,
            Self::Uplink => &UPLINK,
        }
    }
}

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
    #[error("attaching or detaching {program} on {iface} failed")]
    Attach {
        iface: String,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the tcx link of {program} on {iface} is unusable")]
    Link {
        iface: String,
        program: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("pinning at {path} failed")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to load the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub sizes: MapSizes,
    /// Pin the state maps (and tcx links) here and adopt what is already pinned, so state
    /// survives the agent; `None` keeps everything private to this process (tests).
    pub pin_dir: Option<PathBuf>,
    pub attach_mode: AttachMode,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            sizes: MapSizes::default(),
            pin_dir: None,
            attach_mode: AttachMode::detect(),
        }
    }
}

/// The loaded object with typed handles on its maps.
pub struct Datapath {
    ebpf: Ebpf,
    attach_mode: AttachMode,
    pin_dir: Option<PathBuf>,
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
    /// Loads the embedded object with private maps of `sizes` and loads (not attaches) every
    /// program.
    pub fn load(sizes: MapSizes) -> Result<Self, EbpfError> {
        Self::load_with(&LoadOptions {
            sizes,
            ..LoadOptions::default()
        })
    }

    /// Loads the embedded object as `options` say and loads (not attaches) every program.
    /// With a pin directory, maps already pinned there are adopted with their contents.
    pub fn load_with(options: &LoadOptions) -> Result<Self, EbpfError> {
        raise_memlock_limit();
        let LoadOptions {
            sizes,
            pin_dir,
            attach_mode,
        } = options;
        let MapSizes {
            endpoints,
            ipcache,
            policy,
            services,
            conntrack,
            fragments,
            rules,
        } = *sizes;
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).map_err(|source| EbpfError::Pin {
                path: dir.clone(),
                source,
            })?;
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
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
            attach_mode: *attach_mode,
            pin_dir: pin_dir.clone(),
        })
    }

    /// Attaches the programs of `role` to `iface`, replacing ours if they are there already.
    /// They stay attached when this process exits.
    pub fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), EbpfError> {
        let links_dir = self.links_dir();
        for hook in role.hooks() {
            let mode = self.attach_mode;
            let program = self.program(hook.program)?;
            attach::attach(program, iface, *hook, mode, &links_dir)?;
        }
        Ok(())
    }

    /// Removes our programs of `role` from `iface`; filters of others are not touched.
    pub fn detach(&self, iface: &str, role: InterfaceRole) -> Result<(), EbpfError> {
        let links_dir = self.links_dir();
        for hook in role.hooks() {
            attach::detach(iface, *hook, self.attach_mode, &links_dir)?;
        }
        Ok(())
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir
            .as_deref()
            .unwrap_or(Path::new(agent_common::PIN_DIR))
            .join("links")
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

/// Where bpffs is mounted on every distribution we know.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at `path` unless it is already there (pins need it; some hosts do not mount it).
pub fn ensure_bpffs(path: &Path) -> Result<(), EbpfError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let pin_error = |source| EbpfError::Pin {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(pin_error)?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|error| pin_error(std::io::Error::other(error)))?;
    // SAFETY: statfs writes only into the zeroed struct passed in.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is valid for writes.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(pin_error(std::io::Error::last_os_error()));
    }
    #[expect(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64, not everywhere")]
    if stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fs_type = c"bpf";
    // SAFETY: all strings are NUL-terminated; no data argument.
    let rc = unsafe {
        libc::mount(
            fs_type.as_ptr(),
            c_path.as_ptr(),
            fs_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(pin_error(std::io::Error::last_os_error()));
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
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
