//! The eBPF datapath: loads the embedded object, sizes, pins and exposes its maps, attaches its
//! programs to interfaces, and hands them out for test runs.
//!
//! What each map holds is defined in `agent-common`; this module only moves values in and out.

mod attach;
mod backend;
mod clock;
mod events;
mod maps;

use std::path::{Path, PathBuf};

pub use attach::{AttachMode, NETLINK_HANDLE, NETLINK_PRIORITY};

pub use backend::EbpfBackend;
pub use clock::{ClockReading, monotonic_ns};
pub use events::{EventReader, EventSink, EventThread};
pub use maps::Maps;

use crate::backend::InterfaceRole;

use agent_common::{
    addr::Addr,
    clock::Clock,
    config, conntrack,
    endpoint::{self, Endpoint},
    fragments,
    ipcache::{self, PeerClass},
    metrics::{self, Counter},
    policy::{self, PolicyKey, PolicyValue},
    services::{self, ServiceRange},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError, perf::PerfEventArray},
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
/// Programs for the hooks of a pod interface the agent knows no pod of yet: they drop.
pub const PROG_UNKNOWN_FROM_POD: &str = "netpol_unknown_from_pod";
pub const PROG_UNKNOWN_TO_POD: &str = "netpol_unknown_to_pod";
/// The benchmark's baseline: a program that only returns (never attached).
pub const PROG_FLOOR: &str = "netpol_floor";
/// Reports the programs' clock to the loader (never attached).
pub const PROG_CLOCK: &str = "netpol_clock";
/// Every program in the object.
pub const PROGRAMS: [&str; 6] = [
    PROG_FROM_POD,
    PROG_TO_POD,
    PROG_TO_UPLINK,
    PROG_UNKNOWN_FROM_POD,
    PROG_UNKNOWN_TO_POD,
    PROG_FLOOR,
];

/// Maps that keep state across agent restarts (and a datapath reloaded with larger maps) when
/// pinned. The event array too: programs of a reloaded datapath then report to the reader
/// that is already running.
const PINNED_MAPS: [&str; 11] = [
    agent_common::events::MAP_NAME,
    endpoint::MAP_NAME,
    ipcache::MAP_NAMES[0],
    ipcache::MAP_NAMES[1],
    policy::MAP_NAME,
    services::MAP_NAME,
    conntrack::MAP_NAME,
    fragments::MAP_NAME,
    config::MAP_NAME,
    metrics::DROPS_MAP_NAME,
    metrics::RULE_HITS_MAP_NAME,
];

/// The programs of an interface role and where they go.
fn hooks(role: InterfaceRole) -> &'static [attach::Hook] {
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
    const UNKNOWN_POD: [attach::Hook; 2] = [
        attach::Hook {
            program: PROG_UNKNOWN_FROM_POD,
            attach_type: TcAttachType::Ingress,
        },
        attach::Hook {
            program: PROG_UNKNOWN_TO_POD,
            attach_type: TcAttachType::Egress,
        },
    ];
    match role {
        InterfaceRole::Pod => &POD,
        InterfaceRole::Uplink => &UPLINK,
        InterfaceRole::UnknownPod => &UNKNOWN_POD,
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
    /// Service ranges and addresses (every Service of the cluster has one or two).
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
        // LPM tries allocate per entry (BPF_F_NO_PREALLOC): their capacity is only a cap, so it
        // is generous. A restart holds two id generations of policy entries for a moment.
        Self {
            endpoints: 1024,
            ipcache: 262_144,
            policy: 262_144,
            services: 16_384,
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
    #[error("cannot open the pinned map {}", path.display())]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("map {name} has an unexpected type or layout")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "map {name} is full ({capacity} entries): raise its size in the agent configuration (a restart moves the state to a map of the new size)"
    )]
    MapFull { name: &'static str, capacity: u32 },
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
    #[error("opening the drop-event buffer of CPU {cpu} failed")]
    Events {
        cpu: u32,
        #[source]
        source: aya::maps::perf::PerfBufferError,
    },
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("reading the programs' clock failed")]
    Clock(#[source] clock::ClockError),
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
    pub clock: ClockChoice,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            sizes: MapSizes::default(),
            pin_dir: None,
            attach_mode: AttachMode::detect(),
            clock: ClockChoice::Ticks,
        }
    }
}

/// The clock the programs read (see `agent_common::clock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockChoice {
    /// The tick counter where the kernel has `bpf_jiffies64` and it calibrates, else the
    /// precise clock.
    Ticks,
    /// `bpf_ktime_get_ns` on every packet.
    Precise,
}

/// The loaded object: its programs, and its maps ([`Maps`], which a datapath derefs to).
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    attach_mode: AttachMode,
    pin_dir: Option<PathBuf>,
    /// Taken by [`Datapath::event_reader`].
    events: Option<PerfEventArray<MapData>>,
    /// How the programs' clock is scaled (zeroed: the precise clock).
    clock: Clock,
    clock_choice: ClockChoice,
}

// The maps are the datapath's state: reads and writes go to them directly.
impl std::ops::Deref for Datapath {
    type Target = Maps;

    fn deref(&self) -> &Maps {
        &self.maps
    }
}

impl std::ops::DerefMut for Datapath {
    fn deref_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }
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
        Self::load_replacing(options, false)
    }

    /// [`Datapath::load_with`]; `replace_all` replaces every pinned map a converge rewrites
    /// (see [`replace_resized_pins`]).
    fn load_replacing(options: &LoadOptions, replace_all: bool) -> Result<Self, EbpfError> {
        raise_memlock_limit();
        let LoadOptions {
            sizes,
            pin_dir,
            attach_mode,
            clock: clock_choice,
        } = options;
        let mut sizes = *sizes;
        if let Some(dir) = pin_dir {
            replace_resized_pins(dir, &mut sizes, replace_all);
        }
        let MapSizes {
            endpoints,
            ipcache,
            policy,
            services,
            conntrack,
            fragments,
            rules,
        } = sizes;
        let load_object = |object: &[u8]| -> Result<Ebpf, EbpfError> {
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
            loader
                .map_max_entries(endpoint::MAP_NAME, endpoints)
                .map_max_entries(ipcache::MAP_NAMES[0], ipcache)
                .map_max_entries(ipcache::MAP_NAMES[1], ipcache)
                .map_max_entries(policy::MAP_NAME, policy)
                .map_max_entries(services::MAP_NAME, services)
                .map_max_entries(conntrack::MAP_NAME, conntrack)
                .map_max_entries(fragments::MAP_NAME, fragments)
                .map_max_entries(metrics::RULE_HITS_MAP_NAME, rules)
                .load(object)
                .map_err(EbpfError::Load)
        };
        let (mut ebpf, clock) = load_programs(*clock_choice, load_object)?;
        let endpoints: aya::maps::HashMap<MapData, Addr, Endpoint> =
            take_map(&mut ebpf, endpoint::MAP_NAME)?;
        let adopted: Vec<(Addr, Endpoint)> = endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(update_error(endpoint::MAP_NAME, "read"))?;
        let sources = maps::InterfaceSources::new(
            take_map(&mut ebpf, endpoint::IF_SOURCES_MAP_NAME)?,
            &adopted,
        )?;
        let maps = Maps {
            sizes,
            endpoints,
            sources: Some(sources),
            ipcache: [
                take_map(&mut ebpf, ipcache::MAP_NAMES[0])?,
                take_map(&mut ebpf, ipcache::MAP_NAMES[1])?,
            ],
            policy: take_map(&mut ebpf, policy::MAP_NAME)?,
            services: take_map(&mut ebpf, services::MAP_NAME)?,
            conntrack: take_map(&mut ebpf, conntrack::MAP_NAME)?,
            fragments: take_map(&mut ebpf, fragments::MAP_NAME)?,
            config: take_map(&mut ebpf, config::MAP_NAME)?,
            drops: take_map(&mut ebpf, metrics::DROPS_MAP_NAME)?,
            rule_hits: take_map(&mut ebpf, metrics::RULE_HITS_MAP_NAME)?,
        };
        Ok(Self {
            events: Some(take_map(&mut ebpf, agent_common::events::MAP_NAME)?),
            ebpf,
            maps,
            attach_mode: *attach_mode,
            pin_dir: pin_dir.clone(),
            clock,
            clock_choice: *clock_choice,
        })
    }

    /// How the programs' clock is scaled (`tick_ns` 0: they read the precise clock).
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// One reading of the programs' clock (`netpol_clock`).
    pub fn read_clock(&self) -> Result<ClockReading, EbpfError> {
        clock::read(clock_program(&self.ebpf)?).map_err(EbpfError::Clock)
    }

    /// A new datapath with maps of `sizes`: every map a converge rewrites whole is new (and
    /// pinned in place of the old one), the others are shared. The programs attached now keep
    /// enforcing with the old maps until a converge has filled the new ones and the new
    /// programs are attached in their place.
    pub fn reload(&self, sizes: MapSizes) -> Result<Self, EbpfError> {
        let options = LoadOptions {
            sizes,
            pin_dir: self.pin_dir.clone(),
            attach_mode: self.attach_mode,
            clock: self.clock_choice,
        };
        let mut reloaded = Self::load_replacing(&options, true)?;
        // Shared when pinned; copied for private maps (the switch, events, the generation).
        reloaded.set_config(self.config()?)?;
        Ok(reloaded)
    }

    /// Attaches the programs of `role` to `iface`, replacing ours if they are there already.
    /// They stay attached when this process exits.
    /// A pod interface changes between [`InterfaceRole::Pod`] and
    /// [`InterfaceRole::UnknownPod`] by attaching the new role: netlink filters are replaced in
    /// place; tcx links of the other role are removed once the new ones run (in between both
    /// run, and the unknown-pod program drops: closed, never open).
    pub fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), EbpfError> {
        let links_dir = self.links_dir();
        for hook in hooks(role) {
            let mode = self.attach_mode;
            let program = self.program(hook.program)?;
            attach::attach(program, iface, *hook, mode, &links_dir)?;
        }
        let replaced = match role {
            InterfaceRole::Pod => Some(InterfaceRole::UnknownPod),
            InterfaceRole::UnknownPod => Some(InterfaceRole::Pod),
            InterfaceRole::Uplink => None,
        };
        if let Some(replaced) = replaced
            && self.attach_mode == AttachMode::Tcx
        {
            for hook in hooks(replaced) {
                attach::detach(iface, *hook, AttachMode::Tcx, &links_dir)?;
            }
        }
        Ok(())
    }

    /// Removes our programs of `role` from `iface`; filters of others are not touched.
    pub fn detach(&self, iface: &str, role: InterfaceRole) -> Result<(), EbpfError> {
        let links_dir = self.links_dir();
        for hook in hooks(role) {
            attach::detach(iface, *hook, self.attach_mode, &links_dir)?;
        }
        Ok(())
    }

    /// Removes pinned tcx links of interfaces that no longer exist; returns how many.
    pub fn remove_orphaned_links(&self) -> Result<usize, EbpfError> {
        attach::remove_orphaned_pins(&self.links_dir())
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

    /// The reader of drop and audit events (once), with events switched on in the programs.
    pub fn event_reader(&mut self) -> Result<EventReader, EbpfError> {
        let array = self.events.take().ok_or(EbpfError::MissingMap {
            name: agent_common::events::MAP_NAME,
        })?;
        let reader = EventReader::open(array)?;
        let mut config = self.config()?;
        config.flags |= agent_common::config::CONFIG_EVENTS;
        self.set_config(config)?;
        Ok(reader)
    }
}

fn sum_cpus(per_cpu: &[Counter]) -> Counter {
    per_cpu
        .iter()
        .fold(Counter::default(), |sum, cell| Counter {
            packets: sum.packets + cell.packets,
            bytes: sum.bytes + cell.bytes,
        })
}

/// Pinned maps whose capacity, key or value size is not what this agent wants.
///
/// Maps a converge rewrites whole (endpoints, ipcache, policy, Services) are replaced: their
/// pins are removed, so the loader creates them anew. The programs attached now keep the old
/// maps, and enforce with them, until the first converge has filled the new ones and the new
/// programs replace them: no gap. Maps of traffic state (connections, fragments, counters)
/// keep their capacity, which `sizes` is set to: a new connection table would judge the
/// replies of open connections as new ones. `netpol-agent cleanup` resets those.
/// `replace_all` replaces every rewritten map, whatever its size (a reload).
fn replace_resized_pins(dir: &Path, sizes: &mut MapSizes, replace_all: bool) {
    use std::mem::size_of;
    // LPM trie keys carry a 4-byte prefix length.
    let lpm = |data: usize| 4 + data;
    let rewritten: [(&'static str, u32, usize, usize); 5] = [
        (
            endpoint::MAP_NAME,
            sizes.endpoints,
            size_of::<Addr>(),
            size_of::<Endpoint>(),
        ),
        (
            ipcache::MAP_NAMES[0],
            sizes.ipcache,
            lpm(size_of::<Addr>()),
            size_of::<PeerClass>(),
        ),
        (
            ipcache::MAP_NAMES[1],
            sizes.ipcache,
            lpm(size_of::<Addr>()),
            size_of::<PeerClass>(),
        ),
        (
            policy::MAP_NAME,
            sizes.policy,
            lpm(size_of::<PolicyKey>()),
            size_of::<PolicyValue>(),
        ),
        (
            services::MAP_NAME,
            sizes.services,
            lpm(size_of::<Addr>()),
            size_of::<ServiceRange>(),
        ),
    ];
    for (name, capacity, key_size, value_size) in rewritten {
        let path = dir.join(name);
        let Ok(pinned) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let wanted = (capacity, key_size as u32, value_size as u32);
        let found = (pinned.max_entries(), pinned.key_size(), pinned.value_size());
        if found == wanted && !replace_all {
            continue;
        }
        if found != wanted {
            tracing::warn!(
                map = name,
                pinned_capacity = found.0,
                capacity,
                "replacing a pinned map of another size or layout: the programs attached now keep enforcing with the old one until the new one holds the state"
            );
        }
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(
                map = name,
                error = &error as &dyn std::error::Error,
                "cannot remove the pin; adopting it as it is"
            );
        }
    }
    for (name, wanted) in [
        (conntrack::MAP_NAME, &mut sizes.conntrack),
        (fragments::MAP_NAME, &mut sizes.fragments),
        (metrics::RULE_HITS_MAP_NAME, &mut sizes.rules),
    ] {
        let Ok(pinned) = aya::maps::MapInfo::from_pin(dir.join(name)) else {
            continue;
        };
        if pinned.max_entries() != *wanted {
            tracing::warn!(
                map = name,
                pinned_capacity = pinned.max_entries(),
                capacity = *wanted,
                "keeping the pinned capacity of a traffic-state map (`netpol-agent cleanup` resets it)"
            );
            *wanted = pinned.max_entries();
        }
    }
}

/// Loads the object and every program, with the tick counter as the programs' clock when
/// `choice` and the kernel allow, else as built (its `NP_CLOCK` zeroed).
fn load_programs(
    choice: ClockChoice,
    load_object: impl Fn(&[u8]) -> Result<Ebpf, EbpfError>,
) -> Result<(Ebpf, Clock), EbpfError> {
    if choice == ClockChoice::Ticks {
        match load_ticking(&load_object) {
            Ok(loaded) => return Ok(loaded),
            // Kernels before 5.5 have no `bpf_jiffies64`: the clock program does not load.
            Err(error) => tracing::info!(
                error = format!("{error:#}"),
                "the programs read the precise clock (bpf_ktime_get_ns)"
            ),
        }
    }
    let mut ebpf = load_object(OBJECT)?;
    load_program(&mut ebpf, PROG_CLOCK)?;
    for name in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    Ok((ebpf, Clock::default()))
}

/// [`load_programs`] with the tick counter: the calibration's first reading is taken before
/// the other programs load, its second after.
fn load_ticking(
    load_object: impl Fn(&[u8]) -> Result<Ebpf, EbpfError>,
) -> anyhow::Result<(Ebpf, Clock)> {
    let object = clock::with_ticks(OBJECT)?;
    let mut ebpf = load_object(object.bytes())?;
    // Taken out to be written while a program is borrowed; dropped once every program holds
    // it.
    let mut map = take_map(&mut ebpf, agent_common::clock::MAP_NAME)?;
    let first = clock::read(load_program(&mut ebpf, PROG_CLOCK)?)?;
    for name in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    let clock = clock::calibrate(first, clock_program(&ebpf)?, &mut map)?;
    tracing::info!(
        tick_ns = clock.tick_ns,
        "the programs read the tick counter (bpf_jiffies64)"
    );
    Ok((ebpf, clock))
}

fn clock_program(ebpf: &Ebpf) -> Result<&SchedClassifier, EbpfError> {
    ebpf.program(PROG_CLOCK)
        .ok_or(EbpfError::MissingProgram { name: PROG_CLOCK })?
        .try_into()
        .map_err(|source| EbpfError::Program {
            name: PROG_CLOCK,
            source,
        })
}

/// Loads (verifies) the program `name` of the object.
fn load_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingProgram { name })?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })?;
    program
        .load()
        .map_err(|source| EbpfError::Program { name, source })?;
    Ok(program)
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap { name })?;
    T::try_from(map).map_err(|source| EbpfError::MapType { name, source })
}

/// Removing what is not there is done.
fn tolerate_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// A failed insert: "full" when the kernel says so (E2BIG for hash maps, ENOSPC for LPM tries).
fn insert_error(name: &'static str, capacity: u32) -> impl FnOnce(MapError) -> EbpfError {
    move |source| match &source {
        MapError::SyscallError(error)
            if matches!(
                error.io_error.raw_os_error(),
                Some(libc::E2BIG | libc::ENOSPC)
            ) =>
        {
            EbpfError::MapFull { name, capacity }
        }
        _ => EbpfError::MapUpdate {
            name,
            operation: "insert",
            source,
        },
    }
}

fn update_error(name: &'static str, operation: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::MapUpdate {
        name,
        operation,
        source,
    }
}

/// Removes our programs of `role` from `iface` for attach `mode`, without a loaded datapath
/// (`netpol-agent cleanup`). Others' filters are never touched.
pub fn detach_interface(
    iface: &str,
    role: InterfaceRole,
    mode: AttachMode,
    pin_dir: &Path,
) -> Result<(), EbpfError> {
    let links_dir = pin_dir.join("links");
    for hook in hooks(role) {
        attach::detach(iface, *hook, mode, &links_dir)?;
    }
    Ok(())
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
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but narrower on other targets"
    )]
    let f_type = i64::from(stat.f_type);
    if f_type == BPF_FS_MAGIC {
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

/// Kernels before 5.11 charge map memory to RLIMIT_MEMLOCK. Root may lift the limit; where
/// even that is refused (some containers cap the hard limit), the soft limit is raised to the
/// hard one, and a map that still does not fit fails with an error naming it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit/getrlimit only read and write the structs passed in.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                tracing::debug!("could not raise RLIMIT_MEMLOCK to its hard limit");
            }
        }
    }
}
