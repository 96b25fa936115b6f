//! `NP_DROPS`: per-CPU packet counters by drop reason and direction.
//!
//! Reason codes are fixed forever: a retired reason keeps its number and is renamed
//! `Unused<n>`. Adding one means updating `agent/src/metrics.rs` and the debug CLI.

/// Map name.
pub const DROPS_MAP_NAME: &str = "NP_DROPS";

/// Why a packet was dropped (or, in audit mode, would have been).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No allow entry matched.
    Policy = 1,
    /// The IP header was shorter than it claims or could not be read.
    Malformed = 2,
    /// A packet from a pod interface carried another local pod's source address.
    Spoofed = 3,
    /// A non-first fragment with no flow to attribute it to.
    Fragment = 4,
    /// The config map could not be read (never expected: the array always has its element).
    NoConfig = 5,
    /// Traffic to a pod interface for an address that is no known endpoint: a pod the agent
    /// has not programmed (yet) is isolated, not open.
    NoEndpoint = 6,
    /// The endpoint's policy could not be written completely (a map full, a failed write):
    /// the agent denies its traffic until the write succeeds.
    NotProgrammed = 7,
    /// Traffic of a pod interface the agent knows no pod of yet (created while the agent was
    /// down, or its CNI plugin out of the chain): isolated, not open, until the agent knows it.
    UnknownPod = 8,
}

impl DropReason {
    /// One past the largest reason code: the number of rows per direction.
    pub const COUNT: u32 = 9;
    /// Every reason, in code order.
    pub const ALL: [Self; 8] = [
        Self::Policy,
        Self::Malformed,
        Self::Spoofed,
        Self::Fragment,
        Self::NoConfig,
        Self::NoEndpoint,
        Self::NotProgrammed,
        Self::UnknownPod,
    ];

    /// Index of the (reason, direction) counter in `NP_DROPS`.
    #[inline(always)]
    pub const fn counter_index(self, direction: u8) -> u32 {
        direction as u32 * Self::COUNT + self as u32
    }

    /// A short stable name for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Malformed => "malformed",
            Self::Spoofed => "spoofed",
            Self::Fragment => "fragment",
            Self::NoConfig => "no_config",
            Self::NoEndpoint => "no_endpoint",
            Self::NotProgrammed => "not_programmed",
            Self::UnknownPod => "unknown_pod",
        }
    }
}

/// Entries in `NP_DROPS`: two directions of [`DropReason::COUNT`] rows.
pub const DROPS_ENTRIES: u32 = 2 * DropReason::COUNT;

/// One per-CPU counter cell.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
crate::impl_pod!(Counter);

/// `NP_RULE_HITS`: per-CPU packets and bytes allowed per rule id (index), for the rule
/// counters of `/metrics`. Packets of tracked connections are credited to the rule that
/// allowed the connection.
pub const RULE_HITS_MAP_NAME: &str = "NP_RULE_HITS";
