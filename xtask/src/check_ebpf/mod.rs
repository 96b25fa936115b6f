//! `cargo xtask check-ebpf`: static check of a built object against the kernel 4.19 contract
//! (handbook/kernels.md), on any machine, before any kernel sees it.
//!
//! For every program, linked with its BPF-to-BPF callees as aya loads it: at most 4096
//! instructions, no loops (back-edges) and no unreachable code, only 4.19 opcodes, relocations
//! only into the legacy `maps` section, only helpers 4.19 offers to tc programs (no tail call
//! mixed with BPF-to-BPF calls), only `__sk_buff` fields and accesses of 4.19. For every map:
//! a 4.19 map type and flags. Prints a table of programs and maps; fails listing every
//! violation.
//!
//! What it cannot see: the verifier's own work (stack depth, pointer and bounds tracking) is
//! left to the VM tests; but the oldest kernel they boot is 5.10, so 4.19's limit of 131072
//! verifier-processed instructions (1M since 5.2) is checked by nothing.
//!
//! Modules: `elf` reads the object into the `model`; `link` lays programs out as the kernel
//! sees them; `analyze` and `ctx` check them against the facts in `contract`; `insn` decodes
//! instructions; `demangle` makes callee names readable.

mod analyze;
mod contract;
mod ctx;
mod demangle;
mod elf;
mod insn;
mod link;
mod model;
#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use self::{analyze::Report, model::Object};

/// Flags of `cargo xtask check-ebpf`.
#[derive(clap::Args, Default)]
pub struct Options {
    /// The object to check (default: build it first).
    #[arg(long)]
    pub object: Option<PathBuf>,
}

/// Checks the object given in `options`, building it first when none is given.
pub fn run(options: &Options) -> Result<()> {
    let object = match &options.object {
        Some(path) => path.clone(),
        None => crate::build_ebpf::run(&crate::build_ebpf::Options::default())?,
    };
    check_file(&object)
}

/// Checks the object at `path`, prints the table, fails on any violation.
pub fn check_file(path: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let object = elf::parse(&data)
        .with_context(|| format!("{} is not a valid eBPF object", path.display()))?;
    let report = analyze::check(&object);
    println!(
        "check-ebpf: {} against the kernel 4.19 contract",
        path.display()
    );
    print!("{}", table(&object, &report));
    verdict(&report, path)
}

/// `Ok` when the report has no violation; else an error listing every one.
fn verdict(report: &Report, path: &Path) -> Result<()> {
    if report.violations.is_empty() {
        println!(
            "check-ebpf: ok, {} program(s) fit the 4.19 contract",
            report.programs.len()
        );
        return Ok(());
    }
    let list: Vec<String> = report
        .violations
        .iter()
        .map(|v| format!("  - {v}"))
        .collect();
    anyhow::bail!(
        "{} violation(s) of the kernel 4.19 contract in {}:\n{}",
        report.violations.len(),
        path.display(),
        list.join("\n")
    )
}

/// The program table, then the map table. List cells (maps, helpers, callees) take one line
/// per item, so the table stays narrow however many there are.
fn table(object: &Object, report: &Report) -> String {
    let one = |text: String| vec![text];
    let list = |items: Vec<String>| {
        if items.is_empty() {
            vec!["-".to_owned()]
        } else {
            items
        }
    };
    let mut programs = vec![
        [
            "program",
            "section",
            "type",
            "insns",
            "maps",
            "helpers",
            "subprograms",
        ]
        .map(|h| one(h.to_owned())),
    ];
    for p in &report.programs {
        programs.push([
            one(p.name.clone()),
            one(p.section.clone()),
            one(p.program_type.to_string()),
            one(format!("{}/{}", p.insns, contract::MAX_INSNS)),
            list(p.maps.iter().cloned().collect()),
            list(
                p.helpers
                    .iter()
                    .map(|&id| contract::helper_name(id))
                    .collect(),
            ),
            list(p.subprograms.clone()),
        ]);
    }
    let mut maps =
        vec![["map", "type", "key", "value", "max_entries", "flags"].map(|h| one(h.to_owned()))];
    for m in &object.maps {
        maps.push([
            one(m.name.clone()),
            one(format!(
                "{} ({})",
                contract::map_type_name(m.map_type),
                m.map_type
            )),
            one(m.key_size.to_string()),
            one(m.value_size.to_string()),
            one(m.max_entries.to_string()),
            one(format!("{:#x}", m.flags)),
        ]);
    }
    let mut out = render(&programs);
    if object.maps.is_empty() {
        out.push_str("(no maps)\n");
    } else {
        out.push('\n');
        out.push_str(&render(&maps));
    }
    out
}

/// Left-aligned columns separated by two spaces, a rule under the header row; a cell of
/// several lines makes its row that tall.
fn render<const N: usize>(rows: &[[Vec<String>; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            for line in cell {
                *width = (*width).max(line.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    for (i, row) in rows.iter().enumerate() {
        let height = row.iter().map(Vec::len).max().unwrap_or(0);
        for l in 0..height {
            line(std::array::from_fn(|c| {
                row[c].get(l).map_or("", String::as_str)
            }));
        }
        if i == 0 {
            let rules = widths.map(|w| "-".repeat(w));
            line(std::array::from_fn(|c| rules[c].as_str()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{insn::asm::*, testutil::*, *};

    #[test]
    fn the_table_names_maps_and_helpers() {
        let object = clean_object();
        let text = table(&object, &analyze::check(&object));
        let cells = |line: &str| -> Vec<String> {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            cells(lines[0]),
            [
                "program",
                "section",
                "type",
                "insns",
                "maps",
                "helpers",
                "subprograms"
            ],
            "{text}"
        );
        assert_eq!(
            cells(lines[2]),
            [
                "ingress",
                "classifier",
                "sched_cls",
                "18/4096",
                "NP_CONFIG",
                "bpf_map_lookup_elem",
                "helper_fn"
            ],
            "{text}"
        );
        // The second helper goes on a line of its own, in the helpers column.
        assert_eq!(cells(lines[3]), ["bpf_skb_load_bytes"], "{text}");
        assert_eq!(lines[3].find("bpf_skb"), lines[2].find("bpf_map"), "{text}");
        assert_eq!(
            cells(lines[7]),
            ["NP_CONFIG", "ARRAY (2)", "4", "8", "16", "0x0"],
            "{text}"
        );
    }

    #[test]
    fn a_clean_elf_file_passes_and_a_bad_one_lists_every_violation() {
        let dir = std::env::temp_dir().join(format!("check-ebpf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");

        let code =
            |insns: &[insn::Insn]| insns.iter().flat_map(|i| i.to_bytes()).collect::<Vec<_>>();
        let mut good = ElfBuilder::default();
        let prog = good.code_section("classifier", code(&[mov64_imm(0, 0), exit()]));
        good.symbol("pass", prog, 0, 16, object::elf::STT_FUNC);
        let good_path = dir.join("good.o");
        std::fs::write(&good_path, good.build()).expect("write");
        check_file(&good_path).expect("a clean object passes");

        let mut bad = ElfBuilder::default();
        let prog = bad.code_section(
            "classifier",
            code(&[call_helper(181), mov64_imm(0, 0), ja(-2), exit()]),
        );
        bad.symbol("bad", prog, 0, 32, object::elf::STT_FUNC);
        let bad_path = dir.join("bad.o");
        std::fs::write(&bad_path, bad.build()).expect("write");
        let err = check_file(&bad_path).expect_err("violations").to_string();
        assert!(
            err.contains(
                "bad insn 0 (bad+0, classifier insn 0): bpf_loop (5.17) (id 181) does not exist"
            ),
            "{err}"
        );
        assert!(
            err.contains("bad insn 2 (bad+2, classifier insn 2): back-edge to insn 1 (bad+1"),
            "{err}"
        );
        assert!(
            err.contains("bad insn 3 (bad+3, classifier insn 3): this instruction is unreachable"),
            "{err}"
        );

        let missing = check_file(&dir.join("missing.o"))
            .expect_err("no file")
            .to_string();
        assert!(missing.contains("reading"), "{missing}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
