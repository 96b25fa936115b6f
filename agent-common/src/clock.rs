//! `NP_CLOCK`: how the programs turn their clock into CLOCK_MONOTONIC nanoseconds.
//!
//! Every time in the maps (connection and fragment ages) is CLOCK_MONOTONIC nanoseconds.
//! `bpf_ktime_get_ns` reads that clock, at the cost of a clocksource read on every call (about
//! 35 ns a packet in the project's VMs). From kernel 5.5, `bpf_jiffies64` reads the tick
//! counter instead, and the verifier inlines it into one load. Where the kernel has it, the
//! loader turns the programs' `bpf_ktime_get_ns` calls into `bpf_jiffies64` and writes here how
//! to scale the ticks: `ticks * tick_ns + offset_ns`, CLOCK_MONOTONIC to within a tick. Times
//! written by either clock therefore compare (an agent upgrade, a kernel without jiffies).
//!
//! Not pinned: each loaded datapath has its own, matching how its programs were loaded.

/// Map name.
pub const MAP_NAME: &str = "NP_CLOCK";

/// The single value of the array. A zeroed element (`tick_ns` 0) means the clock already
/// reads nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Clock {
    /// Nanoseconds per tick (the kernel's TICK_NSEC), 0 for a nanosecond clock.
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds at tick 0.
    pub offset_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Clock>() == 16);

impl Clock {
    /// Nanoseconds for the clock's raw reading `raw`.
    #[inline(always)]
    pub fn to_ns(&self, raw: u64) -> u64 {
        if self.tick_ns == 0 {
            return raw;
        }
        raw.wrapping_mul(self.tick_ns).wrapping_add(self.offset_ns)
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(Clock);
