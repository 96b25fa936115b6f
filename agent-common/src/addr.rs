//! The address form every map uses: a family word and 16 address bytes, IPv4 in the first four.
//!
//! Keeping the family in front of the address lets one LPM trie hold both families without an
//! IPv6 prefix such as `::/0` ever matching an IPv4 address (it would with IPv4-mapped IPv6).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `family` value for IPv4.
pub const FAMILY_V4: u32 = 4;
/// `family` value for IPv6.
pub const FAMILY_V6: u32 = 6;

/// An IPv4 or IPv6 address as the maps store it: five aligned words, no padding.
///
/// The layout is for the eBPF side: LLVM fills byte-aligned or padded memory through `memset`
/// calls, and bpf-linker's `memset` is a loop that 4.19 rejects.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Addr {
    /// [`FAMILY_V4`] or [`FAMILY_V6`] (native byte order; always matched in full).
    pub family: u32,
    /// Network byte order; an IPv4 address fills bytes 0..4 and leaves the rest zero.
    pub bytes: AddrBytes,
}
const _: () = assert!(core::mem::size_of::<Addr>() == 20);

/// Sixteen address bytes, 4-aligned so that LLVM fills and copies them with word stores
/// (see [`Addr`]). Dereferences to `[u8; 16]`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AddrBytes(pub [u8; 16]);

impl core::ops::Deref for AddrBytes {
    type Target = [u8; 16];

    #[inline(always)]
    fn deref(&self) -> &[u8; 16] {
        &self.0
    }
}

impl core::ops::DerefMut for AddrBytes {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u8; 16] {
        &mut self.0
    }
}

impl Addr {
    /// Bits in the LPM data before the address: the family word (always matched in full).
    pub const FAMILY_BITS: u32 = 32;

    /// An IPv4 address.
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[0] = octets[0];
        bytes[1] = octets[1];
        bytes[2] = octets[2];
        bytes[3] = octets[3];
        Self {
            family: FAMILY_V4,
            bytes: AddrBytes(bytes),
        }
    }

    /// An IPv6 address.
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            bytes: AddrBytes(octets),
        }
    }

    /// The address length in bits of this family (32 or 128).
    pub const fn max_prefix_len(&self) -> u32 {
        if self.family == FAMILY_V4 { 32 } else { 128 }
    }

    /// Back to a `core::net` address; `None` for an unknown family.
    pub fn to_ip(&self) -> Option<IpAddr> {
        match self.family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
                self.bytes[0],
                self.bytes[1],
                self.bytes[2],
                self.bytes[3],
            ))),
            FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(self.bytes.0))),
            _ => None,
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4.octets()),
            IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(Addr);
