//! `NP_IPCACHE`: an LPM trie from address prefixes to peer classes.
//!
//! A peer class is a set of addresses that every selector relevant to this node treats alike
//! (the same pod/namespace selector peers and ipBlock peers match them, and named ports resolve
//! the same for them). ipBlock CIDRs, their excepts and every pod address are all prefixes in
//! the trie, so the longest match of an address names exactly the peers it belongs to, and
//! ipBlock rules also match pod addresses.
//!
//! The key data is an [`Addr`]: the prefix length counts the family byte and its padding
//! ([`Addr::FAMILY_BITS`]) plus the address bits.

use crate::addr::Addr;

/// Map name.
pub const MAP_NAME: &str = "NP_IPCACHE";

/// Key data of the trie (the prefix length is carried by the LPM key wrapper).
pub type IpcacheKey = Addr;

/// The class policy entries use to mean "any peer" (rules without `from`/`to`).
pub const CLASS_ANY: u32 = 0;
/// The class of addresses that no selector matches (no prefix in the trie, or one whose
/// peers are all carved out).
pub const CLASS_WORLD: u32 = 1;
/// The first class id the compiler hands out.
pub const CLASS_FIRST_DYNAMIC: u32 = 2;

/// Value: the peer class of the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerClass {
    pub id: u32,
}
const _: () = assert!(core::mem::size_of::<PeerClass>() == 4);

/// The LPM prefix length of an address prefix of `len` bits.
#[inline(always)]
pub const fn lpm_prefix_len(len: u32) -> u32 {
    Addr::FAMILY_BITS + len
}

#[cfg(feature = "user")]
crate::impl_pod!(PeerClass);
