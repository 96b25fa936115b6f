//! The programs' clock (see `agent_common::clock`): where the kernel has `bpf_jiffies64`, the
//! object's `bpf_ktime_get_ns` calls become `bpf_jiffies64` before it is loaded, and `NP_CLOCK`
//! says how to turn ticks into CLOCK_MONOTONIC nanoseconds. The scale is worked out from one
//! reading of the tick counter (`netpol_clock` through BPF_PROG_TEST_RUN) against
//! CLOCK_MONOTONIC, then checked by reading the scaled clock back. Anything unexpected on the
//! way leaves the object as built: the precise clock, never a wrong one.

use agent_common::clock::Clock;
use aya::{
    maps::{Array, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use object::{Object, ObjectSection, SectionKind};

/// Helper ids (`enum bpf_func_id`).
const BPF_FUNC_KTIME_GET_NS: i32 = 5;
const BPF_FUNC_JIFFIES64: i32 = 118;
/// `BPF_JMP | BPF_CALL`; a helper call has source register 0 (a BPF-to-BPF call has 1).
const OPCODE_CALL: u8 = 0x85;
const INSN_LEN: usize = 8;

/// Kernel tick rates (`CONFIG_HZ`) the calibration recognises.
const HZ_CANDIDATES: [u64; 4] = [100, 250, 300, 1000];
/// The calibration's two readings lie at least this far apart: the rate is then known to
/// within 5 ticks a second, against 50 between the closest candidates (250 and 300).
const MIN_SPAN_NS: u64 = 200_000_000;

/// Why the programs keep the precise clock.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("the eBPF object cannot be read as ELF")]
    Elf(#[source] object::Error),
    #[error("the eBPF object reads no clock")]
    NoClockCall,
    #[error("reading the clock through a test run failed")]
    TestRun(#[source] aya::programs::ProgramError),
    #[error("the tick counter advanced {ticks} in {span_ns} ns: no known tick rate")]
    UnknownTickRate { ticks: u64, span_ns: u64 },
    #[error("writing NP_CLOCK failed")]
    Map(#[source] aya::maps::MapError),
    #[error("the scaled clock read {read_ns} ns, outside {before_ns}..={after_ns} ns")]
    Mismatch {
        read_ns: u64,
        before_ns: u64,
        after_ns: u64,
    },
}

/// An ELF object in memory, aligned as aya's parser wants it.
pub(super) struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` holds at least `bytes.len()` bytes; u64 has no invalid bit patterns.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len())
        };
        Self {
            words,
            len: bytes.len(),
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of `words` are initialised (copied in `copy_of`).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// A copy of `object` whose programs read the tick counter: every helper call of
/// `bpf_ktime_get_ns` in its code sections becomes one of `bpf_jiffies64` (same signature:
/// no arguments, a u64 back).
pub(super) fn with_ticks(object: &[u8]) -> Result<AlignedObject, ClockError> {
    let mut patched = AlignedObject::copy_of(object);
    let code: Vec<(usize, usize)> = {
        let file = object::File::parse(patched.bytes()).map_err(ClockError::Elf)?;
        file.sections()
            .filter(|section| section.kind() == SectionKind::Text)
            .filter_map(|section| section.file_range())
            .map(|(offset, size)| (offset as usize, size as usize))
            .collect()
    };
    let mut calls = 0;
    let bytes = patched.bytes_mut();
    for (offset, size) in code {
        let Some(section) = bytes.get_mut(offset..offset.saturating_add(size)) else {
            continue;
        };
        // The second half of a 16-byte load has opcode 0, so stepping by 8 never mistakes
        // an immediate for a call.
        for insn in section.chunks_exact_mut(INSN_LEN) {
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            if insn[0] == OPCODE_CALL && insn[1] == 0 && imm == BPF_FUNC_KTIME_GET_NS {
                insn[4..8].copy_from_slice(&BPF_FUNC_JIFFIES64.to_le_bytes());
                calls += 1;
            }
        }
    }
    if calls == 0 {
        return Err(ClockError::NoClockCall);
    }
    Ok(patched)
}

/// Works out `NP_CLOCK` for programs loaded from [`with_ticks`], writes it and checks it.
/// `program` is the loaded `netpol_clock`; `first` an earlier reading of it (taken before the
/// other programs were loaded, so that the wait for the second one mostly overlaps that).
pub(super) fn calibrate(
    first: ClockReading,
    program: &SchedClassifier,
    map: &mut Array<MapData, Clock>,
) -> Result<Clock, ClockError> {
    let waited = monotonic_ns().saturating_sub(first.after_ns);
    if waited < MIN_SPAN_NS {
        std::thread::sleep(std::time::Duration::from_nanos(MIN_SPAN_NS - waited));
    }
    let second = read(program)?;
    let clock = scale(&first, &second)?;
    map.set(0, clock, 0).map_err(ClockError::Map)?;
    // The counter moves in steps, and either reading may have been taken anywhere within one.
    let check = read(program)?;
    let slack = 2 * clock.tick_ns;
    let (before_ns, after_ns) = (
        check.before_ns.saturating_sub(slack),
        check.after_ns + slack,
    );
    if !(before_ns..=after_ns).contains(&check.now_ns) {
        return Err(ClockError::Mismatch {
            read_ns: check.now_ns,
            before_ns,
            after_ns,
        });
    }
    Ok(clock)
}

/// The scale of a tick counter from two readings: the known rate nearest the one measured,
/// and the offset that puts the later reading at its CLOCK_MONOTONIC time.
fn scale(first: &ClockReading, second: &ClockReading) -> Result<Clock, ClockError> {
    let span_ns = second.midpoint_ns().saturating_sub(first.midpoint_ns());
    let ticks = second.raw.wrapping_sub(first.raw);
    let unknown = ClockError::UnknownTickRate { ticks, span_ns };
    if span_ns == 0 {
        return Err(unknown);
    }
    let measured_hz = ticks as f64 * 1e9 / span_ns as f64;
    let hz = HZ_CANDIDATES
        .into_iter()
        .min_by(|a, b| {
            (*a as f64 - measured_hz)
                .abs()
                .total_cmp(&(*b as f64 - measured_hz).abs())
        })
        .filter(|&hz| (hz as f64 - measured_hz).abs() <= hz as f64 / 10.0)
        .ok_or(unknown)?;
    // The kernel's TICK_NSEC: the counter advances once per this much CLOCK_MONOTONIC time.
    let tick_ns = (1_000_000_000 + hz / 2) / hz;
    Ok(Clock {
        tick_ns,
        offset_ns: second
            .midpoint_ns()
            .wrapping_sub(second.raw.wrapping_mul(tick_ns)),
    })
}

/// One run of `netpol_clock`: what it wrote, between CLOCK_MONOTONIC before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    pub before_ns: u64,
    /// The clock the programs read, unscaled.
    pub raw: u64,
    /// The programs' time made of it (CLOCK_MONOTONIC nanoseconds).
    pub now_ns: u64,
    pub after_ns: u64,
}

impl ClockReading {
    fn midpoint_ns(&self) -> u64 {
        self.before_ns + self.after_ns.saturating_sub(self.before_ns) / 2
    }
}

/// Runs `netpol_clock` once.
pub(super) fn read(program: &SchedClassifier) -> Result<ClockReading, ClockError> {
    let frame = [0u8; 64];
    let mut out = [0u8; 64];
    let before = monotonic_ns();
    program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .map_err(ClockError::TestRun)?;
    let after = monotonic_ns();
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&out[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    Ok(ClockReading {
        before_ns: before,
        raw: word(0),
        now_ns: word(8),
        after_ns: after,
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of every time in the maps.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime only writes the struct passed in.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ns: u64, raw: u64) -> ClockReading {
        ClockReading {
            before_ns: at_ns - 10_000,
            raw,
            now_ns: 0,
            after_ns: at_ns + 10_000,
        }
    }

    #[test]
    fn the_tick_rate_is_the_known_one_nearest_the_rate_measured() {
        for hz in HZ_CANDIDATES {
            let tick_ns = (1_000_000_000 + hz / 2) / hz;
            // Any uptime, 300 s (where every rate's counter reads 2^32) included; each reading
            // anywhere within its tick.
            for uptime_s in [1, 299, 300, 301, 86_400, 400 * 86_400] {
                let start = (1u64 << 32) - 300 * hz + uptime_s * hz;
                for (phase, span_ticks) in [(0, hz / 5), (tick_ns - 1, hz / 5 + 1), (7, hz)] {
                    let at = uptime_s * 1_000_000_000 + phase;
                    let first = reading(at, start);
                    let later = at + span_ticks * tick_ns - phase;
                    let second = reading(later, start + span_ticks);
                    let clock = scale(&first, &second).expect("a known rate");
                    assert_eq!(clock.tick_ns, tick_ns, "HZ {hz} at {uptime_s} s");
                    assert_eq!(clock.to_ns(start + span_ticks), later);
                    assert_eq!(clock.to_ns(start + span_ticks + 1), later + tick_ns);
                }
            }
        }
    }

    #[test]
    fn a_rate_that_is_no_known_one_is_refused() {
        let first = reading(1_000_000_000, 5_000);
        for ticks in [0, 35, 175, 600, 5_000] {
            let second = reading(1_200_000_000, 5_000 + ticks);
            assert!(
                matches!(
                    scale(&first, &second),
                    Err(ClockError::UnknownTickRate { .. })
                ),
                "{ticks} ticks in 200 ms"
            );
        }
        assert!(scale(&first, &first).is_err());
    }

    #[test]
    fn only_helper_calls_of_the_precise_clock_are_rewritten() {
        let object = super::super::OBJECT;
        let patched = with_ticks(object).expect("the object reads a clock");
        assert_eq!(patched.bytes().len(), object.len());
        let changed: Vec<usize> = (0..object.len())
            .filter(|&i| object[i] != patched.bytes()[i])
            .collect();
        assert!(!changed.is_empty());
        for i in changed {
            // Only the low byte of an immediate: 5 -> 118.
            assert_eq!((object[i], patched.bytes()[i]), (5, 118), "byte {i}");
            assert_eq!(i % INSN_LEN, 4);
            assert_eq!(&object[i - 4..i - 2], &[OPCODE_CALL, 0]);
        }
    }
}
