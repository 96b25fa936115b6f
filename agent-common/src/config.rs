//! `NP_CONFIG`: a one-element array with node-wide settings that userspace can flip at run
//! time (global data would need kernel 5.2).

/// Map name.
pub const MAP_NAME: &str = "NP_CONFIG";

/// Enforcement is off (the `disable_network_policy` switch): every packet passes. The zeroed
/// element a new map starts with means "enforce", so a half-initialised map never fails open.
pub const CONFIG_ENFORCEMENT_OFF: u32 = 1 << 0;

/// The single value of the array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Config {
    /// `CONFIG_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 4);

#[cfg(feature = "user")]
crate::impl_pod!(Config);
