//! `NP_POLICY`: an LPM trie of allow entries.
//!
//! Key data, in this order: policy set, peer class, direction, protocol, destination port.
//! The fields that can be wildcarded come last, so one trie expresses all of:
//! - an exact port: the full 96 bits;
//! - a port range: split into aligned power-of-two blocks, each a shorter prefix;
//! - every port of one protocol: the prefix stops before the port (80 bits);
//! - every protocol and port (a rule without `ports`, ICMP included): it stops before the
//!   protocol (72 bits).
//!
//! "Any peer" (a rule without `from`/`to`) is the class [`crate::ipcache::CLASS_ANY`]; the
//! programs look up the packet's peer class first and `CLASS_ANY` second. There are only allow
//! entries: a hit allows, a miss denies.

/// Map name.
pub const MAP_NAME: &str = "NP_POLICY";

/// Traffic to the endpoint.
pub const DIR_INGRESS: u8 = 0;
/// Traffic from the endpoint.
pub const DIR_EGRESS: u8 = 1;

/// The set id of an isolated endpoint that nothing is allowed for.
pub const SET_EMPTY: u32 = 0;

/// Prefix length that matches every protocol and port of a (set, class, direction).
pub const PREFIX_ANY_PROTO: u32 = 72;
/// Prefix length that matches every port of one protocol.
pub const PREFIX_ANY_PORT: u32 = 80;
/// Prefix length of an exact port.
pub const PREFIX_FULL: u32 = 96;

/// Key data of the trie. Multi-byte fields are big-endian so that prefixes over the port
/// are port ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyKey {
    /// Policy set id, big-endian.
    pub set: [u8; 4],
    /// Peer class id, big-endian.
    pub class: [u8; 4],
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1/58 ICMP).
    pub protocol: u8,
    /// Destination port, big-endian; 0 for protocols without ports.
    pub port: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

impl PolicyKey {
    /// Builds a key from host-order fields.
    #[inline(always)]
    pub const fn new(set: u32, class: u32, direction: u8, protocol: u8, port: u16) -> Self {
        Self {
            set: set.to_be_bytes(),
            class: class.to_be_bytes(),
            direction,
            protocol,
            port: port.to_be_bytes(),
        }
    }

    pub const fn set_id(&self) -> u32 {
        u32::from_be_bytes(self.set)
    }

    pub const fn class_id(&self) -> u32 {
        u32::from_be_bytes(self.class)
    }

    pub const fn port_number(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Value: which rule the entry came from (for counters, events and explain).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyValue {
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 4);

#[cfg(feature = "user")]
crate::impl_pod!(PolicyKey, PolicyValue);
