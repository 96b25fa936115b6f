//! [`NodeState`]: the compiled state of one node, exactly what the datapath maps hold, and the
//! key types of its two LPM tries.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use agent_common::{
    addr::{Addr, FAMILY_V4},
    endpoint::Endpoint,
    ipcache::{PeerClass, lpm_prefix_len},
    policy::{PolicyKey, PolicyValue},
};

use super::RuleRef;

/// An address prefix as an `NP_IPCACHE` key: the address (host bits clear) and its length in
/// address bits (the LPM length adds the family byte: [`IpPrefix::lpm_len`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    /// Ordered first, so every prefix inside another sorts within the outer one's address range.
    pub addr: Addr,
    pub len: u8,
}

impl IpPrefix {
    /// `addr/len` with the host bits cleared; `len` is clamped to the family's width.
    pub fn new(addr: Addr, len: u8) -> Self {
        let len = len.min(max_len(&addr));
        let mut addr = addr;
        mask_bits(&mut addr.bytes.0, usize::from(len));
        Self { addr, len }
    }

    /// The host prefix of `addr` (/32 or /128).
    pub fn host(addr: Addr) -> Self {
        Self {
            len: max_len(&addr),
            addr,
        }
    }

    pub fn from_ip(ip: IpAddr, len: u8) -> Self {
        Self::new(Addr::from(ip), len)
    }

    pub fn is_host(&self) -> bool {
        self.len == max_len(&self.addr)
    }

    /// The LPM prefix length of this key (family byte included).
    pub fn lpm_len(&self) -> u32 {
        lpm_prefix_len(u32::from(self.len))
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &IpPrefix) -> bool {
        self.addr.family == other.addr.family
            && self.len <= other.len
            && Self::new(other.addr, self.len).addr == self.addr
    }

    /// The first and last keys (in [`IpPrefix`] order) of the prefixes `self` contains.
    pub fn subtree_bounds(&self) -> (IpPrefix, IpPrefix) {
        let first = IpPrefix {
            addr: self.addr,
            len: self.len,
        };
        let mut last = self.addr;
        let width = usize::from(max_len(&self.addr));
        for bit in usize::from(self.len)..width {
            last.bytes[bit / 8] |= 0x80 >> (bit % 8);
        }
        (
            first,
            IpPrefix {
                addr: last,
                len: max_len(&last),
            },
        )
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr.to_ip() {
            Some(ip) => write!(f, "{ip}/{}", self.len),
            None => write!(
                f,
                "family{}:{:?}/{}",
                self.addr.family, self.addr.bytes, self.len
            ),
        }
    }
}

fn max_len(addr: &Addr) -> u8 {
    if addr.family == FAMILY_V4 { 32 } else { 128 }
}

/// Clears every bit of `bytes` from bit `keep` on.
pub(crate) fn mask_bits(bytes: &mut [u8], keep: usize) {
    for (index, byte) in bytes.iter_mut().enumerate() {
        let start = index * 8;
        if start >= keep {
            *byte = 0;
        } else if start + 8 > keep {
            *byte &= 0xffu8 << (start + 8 - keep);
        }
    }
}

/// An `NP_POLICY` key: the key data with the bits past `prefix_len` clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntryKey {
    pub key: PolicyKey,
    /// LPM length in bits of the key data (`PREFIX_ANY_PROTO`..=`PREFIX_FULL`).
    pub prefix_len: u32,
}

impl PolicyEntryKey {
    /// A key with the bits past `prefix_len` cleared.
    pub fn new(key: PolicyKey, prefix_len: u32) -> Self {
        let mut bytes = policy_key_bytes(&key);
        let keep = usize::try_from(prefix_len).unwrap_or(usize::MAX);
        mask_bits(&mut bytes, keep);
        Self {
            key: policy_key_from_bytes(bytes),
            prefix_len: prefix_len.min(96),
        }
    }
}

pub(crate) fn policy_key_bytes(key: &PolicyKey) -> [u8; 12] {
    let PolicyKey {
        set,
        class,
        direction,
        protocol,
        port,
    } = *key;
    [
        set[0], set[1], set[2], set[3], class[0], class[1], class[2], class[3], direction,
        protocol, port[0], port[1],
    ]
}

fn policy_key_from_bytes(b: [u8; 12]) -> PolicyKey {
    PolicyKey {
        set: [b[0], b[1], b[2], b[3]],
        class: [b[4], b[5], b[6], b[7]],
        direction: b[8],
        protocol: b[9],
        port: [b[10], b[11]],
    }
}

/// The compiled state of one node: every entry of the three datapath maps, and the rule table
/// their values point into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// `NP_ENDPOINTS`: one entry per address of every local pod (`ifindex` is left 0: the
    /// runtime knows interfaces, the engine does not).
    pub endpoints: BTreeMap<Addr, Endpoint>,
    /// `NP_IPCACHE`: prefixes to peer classes.
    pub ipcache: BTreeMap<IpPrefix, PeerClass>,
    /// `NP_POLICY`: allow entries.
    pub policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Rule ids used by `policy` values.
    pub rules: BTreeMap<u32, RuleRef>,
}

impl NodeState {
    /// The endpoints a policy selects (isolated in some direction).
    pub fn selected_endpoints(&self) -> impl Iterator<Item = (&Addr, &Endpoint)> {
        self.endpoints
            .iter()
            .filter(|(_, endpoint)| endpoint.is_isolated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_clear_host_bits_and_know_what_they_contain() {
        let wide = IpPrefix::new(Addr::v4([10, 1, 2, 3]), 8);
        assert_eq!(wide.addr, Addr::v4([10, 0, 0, 0]));
        let narrow = IpPrefix::new(Addr::v4([10, 1, 2, 3]), 24);
        assert!(wide.contains(&narrow));
        assert!(!narrow.contains(&wide));
        assert!(!wide.contains(&IpPrefix::new(Addr::v6([10; 16]), 64)));
        assert!(IpPrefix::host(Addr::v4([1, 2, 3, 4])).is_host());
        assert_eq!(wide.lpm_len(), lpm_prefix_len(8));
    }

    #[test]
    fn subtree_bounds_enclose_exactly_the_contained_prefixes() {
        let outer = IpPrefix::new(Addr::v4([10, 0, 0, 0]), 8);
        let (first, last) = outer.subtree_bounds();
        let inside = IpPrefix::host(Addr::v4([10, 255, 255, 255]));
        let after = IpPrefix::new(Addr::v4([11, 0, 0, 0]), 8);
        assert!(first <= inside && inside <= last);
        assert!(after > last);
        let zero = IpPrefix::new(Addr::v6([0; 16]), 0);
        let (_, last) = zero.subtree_bounds();
        assert_eq!(last.addr.bytes.0, [0xff; 16]);
    }

    #[test]
    fn policy_keys_are_masked_past_their_prefix() {
        let key = PolicyKey::new(3, 4, 1, 6, 0x1234);
        let any_port = PolicyEntryKey::new(key, 80);
        assert_eq!(any_port.key, PolicyKey::new(3, 4, 1, 6, 0));
        let block = PolicyEntryKey::new(key, 88);
        assert_eq!(block.key.port_number(), 0x1200);
        let any_proto = PolicyEntryKey::new(key, 72);
        assert_eq!(any_proto.key, PolicyKey::new(3, 4, 1, 0, 0));
    }
}
