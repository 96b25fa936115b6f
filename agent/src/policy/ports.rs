//! The protocol and port part of policy keys: what one port entry becomes in an LPM trie keyed
//! by (protocol, port).

use agent_common::policy::{PREFIX_ANY_PORT, PREFIX_ANY_PROTO, PREFIX_FULL};

/// The protocol/port tail of a policy key with its LPM length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PortKey {
    pub(crate) protocol: u8,
    pub(crate) port: u16,
    /// LPM length of the whole key ([`PREFIX_ANY_PROTO`]..=[`PREFIX_FULL`]).
    pub(crate) prefix_len: u8,
}

const fn prefix(len: u32) -> u8 {
    // The three constants are 72, 80 and 96.
    len as u8
}

impl PortKey {
    /// Every protocol and port (a rule without ports; ICMP included).
    pub(crate) const ANY: Self = Self {
        protocol: 0,
        port: 0,
        prefix_len: prefix(PREFIX_ANY_PROTO),
    };

    /// Every port of `protocol`.
    pub(crate) const fn any_port(protocol: u8) -> Self {
        Self {
            protocol,
            port: 0,
            prefix_len: prefix(PREFIX_ANY_PORT),
        }
    }

    /// Exactly `port` of `protocol`.
    pub(crate) const fn exact(protocol: u8, port: u16) -> Self {
        Self {
            protocol,
            port,
            prefix_len: prefix(PREFIX_FULL),
        }
    }
}

/// `start..=end` of `protocol` as aligned power-of-two blocks, each one LPM entry (at most 30
/// for any range); nothing when `start > end`.
pub(crate) fn range(protocol: u8, start: u16, end: u16) -> Vec<PortKey> {
    let mut blocks = Vec::new();
    let (mut low, high) = (u32::from(start), u32::from(end));
    while low <= high {
        // The largest block that starts at `low` (alignment) and ends by `high`.
        let mut size_bits = low.trailing_zeros().min(16);
        while size_bits > 0 && low + (1 << size_bits) - 1 > high {
            size_bits -= 1;
        }
        blocks.push(PortKey {
            protocol,
            // `low` <= `high` <= u16::MAX.
            port: u16::try_from(low).unwrap_or(u16::MAX),
            prefix_len: prefix(PREFIX_FULL) - size_bits as u8,
        });
        low += 1 << size_bits;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[PortKey]) -> Vec<u16> {
        let mut ports = Vec::new();
        for block in blocks {
            let size = 1u32 << (96 - u32::from(block.prefix_len));
            assert_eq!(
                u32::from(block.port) % size,
                0,
                "block {block:?} is aligned"
            );
            for port in u32::from(block.port)..u32::from(block.port) + size {
                ports.push(u16::try_from(port).expect("in range"));
            }
        }
        ports
    }

    #[test]
    fn ranges_split_into_aligned_blocks_that_cover_exactly_the_range() {
        for (start, end) in [
            (80, 80),
            (80, 81),
            (1, 65535),
            (8000, 8100),
            (0, 65535),
            (65535, 65535),
        ] {
            let blocks = range(6, start, end);
            assert_eq!(
                covered(&blocks),
                (start..=end).collect::<Vec<_>>(),
                "{start}-{end}"
            );
            assert!(blocks.len() <= 30);
        }
        assert_eq!(range(6, 0, 65535), vec![PortKey::any_port(6)]);
    }

    #[test]
    fn an_inverted_range_covers_nothing() {
        assert!(range(6, 90, 80).is_empty());
    }
}
