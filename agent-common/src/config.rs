//! `NP_CONFIG`: a one-element array with node-wide settings that userspace can change at run
//! time (global data would need kernel 5.2).

/// Map name.
pub const MAP_NAME: &str = "NP_CONFIG";

/// Enforcement is off (the `disable_network_policy` switch): every packet passes. The zeroed
/// element a new map starts with means "enforce", so a half-initialised map never fails open.
pub const CONFIG_ENFORCEMENT_OFF: u32 = 1 << 0;
/// Send drop (and audit) events to `NP_EVENTS`.
pub const CONFIG_EVENTS: u32 = 1 << 1;

/// The single value of the array. Timeouts are milliseconds; 0 means "use the default", so a zeroed
/// element is a working configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Config {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// A TCP connection that has not seen a reply yet.
    pub tcp_syn_timeout_ms: u32,
    /// An established TCP connection.
    pub tcp_established_timeout_ms: u32,
    /// A TCP connection after RST or FIN both ways.
    pub tcp_close_timeout_ms: u32,
    /// UDP, SCTP and other protocols with ports.
    pub udp_timeout_ms: u32,
    /// ICMP echo and protocols without ports.
    pub other_timeout_ms: u32,
    /// Userspace only: which id generation the set and class ids in the maps belong to (see
    /// `GENERATION_BIT`). The programs ignore it.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 28);

/// The bit of set and class ids that tells the two id generations apart. A restarting agent
/// writes its state with the other generation's ids, so entries of the old and the new agent
/// never share an id while both are in the maps, and only then removes the old ones.
pub const GENERATION_BIT: u32 = 1 << 31;

/// Timeouts used where the config says 0, in milliseconds.
pub mod defaults {
    pub const TCP_SYN_MS: u32 = 60_000;
    pub const TCP_ESTABLISHED_MS: u32 = 6 * 3600 * 1000;
    pub const TCP_CLOSE_MS: u32 = 10_000;
    pub const UDP_MS: u32 = 60_000;
    pub const OTHER_MS: u32 = 30_000;
}

#[cfg(feature = "user")]
crate::impl_pod!(Config);
