//! `NP_IPCACHE` and `NP_IPCACHE1`: LPM tries from address prefixes to peer classes, one per
//! id generation (see [`crate::config::GENERATION_BIT`]).
//!
//! A peer class is a set of addresses that every selector relevant to this node treats alike
//! (the same pod/namespace selector peers and ipBlock peers match them, and named ports resolve
//! the same for them). ipBlock CIDRs, their excepts and every pod address are all prefixes in
//! the trie, so the longest match of an address names exactly the peers it belongs to, and
//! ipBlock rules also match pod addresses.
//!
//! The key data is an [`Addr`]: the prefix length counts the family byte and its padding
//! ([`Addr::FAMILY_BITS`]) plus the address bits.

//! An endpoint's peers are looked up in the trie of its sets' generation. A converge fills
//! the other generation's trie, policy entries first, before it switches the endpoints, and
//! one endpoint update switches both of its directions: no lookup ever pairs an old set with
//! a new class (a false drop or a false allow), not even for a moment.

use crate::{addr::Addr, config::GENERATION_BIT};

/// Map names, indexed by [`generation_index`].
pub const MAP_NAMES: [&str; 2] = ["NP_IPCACHE", "NP_IPCACHE1"];

/// Which trie holds the classes of the generation of `id` (a set id or a generation bit).
#[inline(always)]
pub const fn generation_index(id: u32) -> usize {
    if id & GENERATION_BIT == 0 { 0 } else { 1 }
}

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
