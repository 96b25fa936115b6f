//! How much work the verifier does on each program: the "processed N insns" of its statistics.
//!
//! Kernels 5.16+ report it as `verified_insns` (aya: `ProgramInfo::verified_instruction_count`),
//! but 5.10 only prints it in the verifier log, and aya 0.14 throws the log of a successful load
//! away (`aya/src/programs/mod.rs`, `load_program`: its first attempt passes no log buffer at
//! all). So this loads every program once more by itself, the way aya does (aya-obj parses and
//! relocates, aya creates the maps), with `log_level = BPF_LOG_STATS` and a buffer, and reads
//! the figure from the log. It works the same on every kernel of the matrix (5.10, 6.1, 6.12);
//! on 5.16+ it equals `verified_insns`.
//!
//! What differs from aya's load, and why it does not change the count:
//! - No program BTF (`prog_btf_fd`, `func_info`, `line_info`): the verifier walks static
//!   subprograms inline either way, and every callee of our programs is static (the global
//!   ones, `memcpy` and friends, are never called; aya marks those static anyway).
//! - Hash maps and tries are created with at most [`HASH_ENTRIES_CAP`] entries: the verifier
//!   does not look at their capacity, and the object's 262,144-entry connection table would
//!   otherwise cost tens of MiB per call. Arrays keep theirs (a constant key beyond the end
//!   of an array is judged differently).

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use aya_obj::{
    EbpfSectionKind, Object, ProgramSection,
    generated::{bpf_attr, bpf_cmd, bpf_map_type, bpf_prog_type},
};

/// `BPF_LOG_STATS` (`include/linux/bpf_verifier.h`, 5.2+): only the statistics, no trace.
const BPF_LOG_STATS: u32 = 4;
/// First size of the log buffer; the statistics take a few hundred bytes.
const LOG_SIZE: usize = 64 * 1024;
/// Capacity given to hash maps and LPM tries (see the module docs).
const HASH_ENTRIES_CAP: u32 = 1024;

/// Loads every program of `object` (an eBPF ELF object as aya loads it) and returns its name
/// with the number of instructions the verifier processed, sorted by name. The programs and
/// maps are released before it returns. Needs root (CAP_BPF and CAP_NET_ADMIN, or
/// CAP_SYS_ADMIN on 5.10). Only tc programs (`classifier` sections) are supported.
pub fn processed_instructions(object: &[u8]) -> Result<Vec<(String, u32)>> {
    raise_memlock_limit();
    let mut object = Object::parse(object).context("parsing the eBPF object")?;

    // Maps first: the programs refer to them by fd. The `MapData`s own the fds, so they live
    // until every program is loaded.
    // (name, the object's definition, the map created from it)
    let mut maps: Vec<(String, aya_obj::Map, MapData)> = Vec::with_capacity(object.maps.len());
    for (name, definition) in &object.maps {
        if matches!(definition, aya_obj::Map::Btf(_)) {
            // Their BTF key and value ids would need the object's BTF loaded into the kernel.
            bail!(
                "map {name} is a BTF map (`.maps`): only legacy `maps` definitions are supported"
            );
        }
        if definition.section_kind() == EbpfSectionKind::Rodata {
            // The verifier reads constants out of frozen read-only data: it would have to be
            // filled and frozen first. (`.data` and `.bss` values are unknown to it anyway.)
            bail!("map {name} is `.rodata`: read-only global data is not supported");
        }
        let mut map = definition.clone();
        let hash_like = [
            bpf_map_type::BPF_MAP_TYPE_HASH,
            bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH,
            bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
            bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH,
            bpf_map_type::BPF_MAP_TYPE_LPM_TRIE,
        ];
        if hash_like.iter().any(|t| *t as u32 == map.map_type()) {
            map.set_max_entries(map.max_entries().min(HASH_ENTRIES_CAP));
        }
        // `create` also sizes a perf event array of 0 entries to the number of CPUs.
        let data =
            MapData::create(map, name, None).with_context(|| format!("creating map {name}"))?;
        maps.push((name.clone(), definition.clone(), data));
    }

    // Relocation as `EbpfLoader::load` does it (aya/src/bpf.rs): "text sections" are all
    // sections holding functions; map references get the fds, then each program gets its
    // BPF-to-BPF callees (our `#[inline(never)]` functions in `.text`) appended.
    let text_sections: HashSet<usize> = object
        .functions
        .keys()
        .map(|(section, _)| *section)
        .collect();
    object
        .relocate_maps(
            // Relocation finds a map by the section and symbol of its definition (a copy:
            // `relocate_maps` borrows the object mutably).
            maps.iter().map(|(name, definition, data)| {
                (name.as_str(), data.fd().as_fd().as_raw_fd(), definition)
            }),
            &text_sections,
        )
        .context("relocating map references")?;
    object
        .relocate_calls(&text_sections)
        .context("linking BPF-to-BPF calls")?;

    let mut counts = Vec::with_capacity(object.programs.len());
    for (name, program) in &object.programs {
        if !matches!(program.section, ProgramSection::SchedClassifier) {
            bail!(
                "program {name} is not a tc classifier: {:?}",
                program.section
            );
        }
        let function = object
            .functions
            .get(&program.function_key())
            .with_context(|| format!("program {name} has no function"))?;
        let log = load_with_stats(&function.instructions, &program.license)
            .with_context(|| format!("loading program {name}"))?;
        let processed = parse_processed(&log)
            .with_context(|| format!("no \"processed N insns\" in the log of {name}:\n{log}"))?;
        counts.push((name.clone(), processed));
    }
    counts.sort();
    drop(maps);
    Ok(counts)
}

/// BPF_PROG_LOAD of a sched_cls program with the statistics logged; returns the log. The
/// program is unloaded again (its fd closed) before this returns.
///
/// The fields 5.10 needs: `prog_type`, `insns`/`insn_cnt`, `license` (GPL for GPL-only
/// helpers), `log_level`/`log_size` (at least 128)/`log_buf`. `kern_version` is only checked
/// for kprobes before 5.0; `expected_attach_type` means nothing to sched_cls; no name (aya sets
/// one, but the verifier does not care).
fn load_with_stats(
    instructions: &[aya_obj::generated::bpf_insn],
    license: &std::ffi::CStr,
) -> Result<String> {
    let insn_cnt = u32::try_from(instructions.len()).context("too many instructions")?;
    let mut log_size = LOG_SIZE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut log = vec![0u8; log_size];
        // SAFETY: `bpf_attr` is a union of structs of integers (and arrays of them), for which
        // all zeroes is a valid value; unset fields must be zero for the kernel.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the union is zeroed, so viewing it as the BPF_PROG_LOAD member is valid.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32;
        load.insns = instructions.as_ptr() as u64;
        load.insn_cnt = insn_cnt;
        load.license = license.as_ptr() as u64;
        load.log_level = BPF_LOG_STATS;
        load.log_buf = log.as_mut_ptr() as u64;
        load.log_size = u32::try_from(log.len()).context("log buffer too large")?;
        // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute whose pointers (instructions,
        // license, log) outlive the call; the kernel reads the first two and writes at most
        // `log_size` bytes into the third. The size passed is that of `attr`, all of which is
        // initialised (fields newer than the running kernel are zero, as it requires).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_PROG_LOAD as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        let error = (ret < 0).then(std::io::Error::last_os_error);
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]).into_owned();
        match error {
            None => {
                let fd = RawFd::try_from(ret).context("BPF_PROG_LOAD returned no fd")?;
                // SAFETY: BPF_PROG_LOAD succeeded, so `fd` is a new descriptor owned by no one
                // else; dropping the `OwnedFd` closes it, which unloads the program.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                return Ok(text);
            }
            // The log did not fit (the load fails then, even when verification passed).
            Some(error) if error.raw_os_error() == Some(libc::ENOSPC) && attempts < 4 => {
                log_size *= 16;
            }
            // A signal interrupted the verifier.
            Some(error) if error.raw_os_error() == Some(libc::EAGAIN) && attempts < 4 => {}
            Some(error) => {
                return Err(error)
                    .with_context(|| format!("BPF_PROG_LOAD failed; verifier log:\n{text}"));
            }
        }
    }
}

/// The N of the verifier's "processed N insns (limit ...) max_states_per_insn ..." line
/// (`print_verification_stats` in `kernel/bpf/verifier.c`, same wording from 5.2 to 6.12).
fn parse_processed(log: &str) -> Option<u32> {
    log.lines().rev().find_map(|line| {
        let rest = line.trim_start().strip_prefix("processed ")?;
        let (number, rest) = rest.split_once(' ')?;
        rest.starts_with("insns").then(|| number.parse().ok())?
    })
}

/// Kernels before 5.11 charge maps and programs to RLIMIT_MEMLOCK (64 KiB by default on 5.10,
/// less than one of our programs). Best effort, as the agent's loader does it: later kernels
/// charge memory cgroups instead, and a container's root may not raise the limit.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct passed in.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::parse_processed;

    #[test]
    fn reads_the_statistics_line() {
        let log = "verification time 1234 usec\nstack depth 120+48\n\
                   processed 5120 insns (limit 1000000) max_states_per_insn 4 total_states 300 \
                   peak_states 250 mark_read 12\n";
        assert_eq!(parse_processed(log), Some(5120));
        assert_eq!(
            parse_processed("BPF program is too large. Processed 1000001 insn\n"),
            None
        );
        assert_eq!(parse_processed(""), None);
    }
}
