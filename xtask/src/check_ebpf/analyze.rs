//! The checks: each program of a parsed [`Object`] linked as the kernel loads it, then held to
//! the 4.19 contract (size, loops, reachability, instruction set, relocations, helpers, maps,
//! `__sk_buff` accesses). Produces the summary the table prints and every violation found.
//!
//! Works on the in-memory model only: no ELF, no printing.

use std::{collections::BTreeSet, fmt};

use super::{
    contract::{self, HelperVerdict, ProgramType},
    ctx,
    link::Linked,
    model::{Object, RelocTarget},
};

/// What the check found: one summary per program and every violation.
#[derive(Debug, Default)]
pub struct Report {
    /// One entry per program, in object order.
    pub programs: Vec<ProgramSummary>,
    /// Every violation of the contract; empty when the object passes.
    pub violations: Vec<Violation>,
}

/// A program as the kernel would load it.
#[derive(Debug)]
pub struct ProgramSummary {
    /// The program's name (its function's symbol).
    pub name: String,
    /// Its ELF section.
    pub section: String,
    /// Its program type, from the section.
    pub program_type: ProgramType,
    /// Instruction slots, callees included (what the kernel counts against `BPF_MAXINSNS`).
    pub insns: usize,
    /// The BPF-to-BPF callees linked into it, in link order.
    pub subprograms: Vec<String>,
    /// Names of the maps it references.
    pub maps: BTreeSet<String>,
    /// Ids of the helpers it calls.
    pub helpers: BTreeSet<i32>,
}

/// One violation of the 4.19 contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub kind: Kind,
    /// Where.
    pub location: Location,
    /// For an instruction: its function, offset, section and section offset
    /// (`memcpy+9, .text insn 9`), to find it in `llvm-objdump -d`.
    pub origin: Option<String>,
    /// What, for a human.
    pub message: String,
}

/// The rules of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// More than `BPF_MAXINSNS` slots, callees included.
    TooManyInsns,
    /// A loop: a jump (or call) back into code on the current path.
    BackEdge,
    /// Code the program can never reach; 4.19 rejects it.
    Unreachable,
    /// A jump out of its function, into an `ld_imm64`, or past the end of the function.
    BadJump,
    /// A BPF-to-BPF call that cannot be resolved.
    BadCall,
    /// An instruction the 4.19 instruction set does not have.
    Isa,
    /// A relocation into anything but the `maps` section.
    Relocation,
    /// A helper 4.19 does not have.
    UnknownHelper,
    /// A helper 4.19 has, but not for this program type.
    HelperNotForType,
    /// `bpf_tail_call` in a program with BPF-to-BPF calls.
    TailCallWithCalls,
    /// A `__sk_buff` access 4.19 rejects.
    ContextAccess,
    /// A map type 4.19 does not have.
    MapType,
    /// Map flags 4.19 does not have or requires.
    MapFlags,
    /// A program section this check has no helper list for.
    UnknownProgramType,
    /// An object without any program.
    NoPrograms,
}

/// Where a violation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The object as a whole.
    Object,
    /// A map definition.
    Map(String),
    /// A program, and the instruction in the kernel's numbering (callees appended after the
    /// program's own function, as in the verifier log).
    Program {
        /// The program's name.
        name: String,
        /// The instruction index, when the violation has one.
        insn: Option<usize>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Object => write!(f, "{}", self.message),
            Location::Map(name) => write!(f, "map {name}: {}", self.message),
            Location::Program {
                name,
                insn: Some(insn),
            } => match &self.origin {
                Some(origin) => write!(f, "{name} insn {insn} ({origin}): {}", self.message),
                None => write!(f, "{name} insn {insn}: {}", self.message),
            },
            Location::Program { name, insn: None } => write!(f, "{name}: {}", self.message),
        }
    }
}

/// Checks every program and map of `object` against the 4.19 contract.
pub fn check(object: &Object) -> Report {
    let mut report = Report::default();
    for (index, func) in object.functions.iter().enumerate() {
        if func.is_program() {
            check_program(&Linked::link(object, index), &mut report);
        }
    }
    if report.programs.is_empty() {
        report.violations.push(Violation {
            kind: Kind::NoPrograms,
            location: Location::Object,
            origin: None,
            message: "the object has no program (no function outside .text)".to_owned(),
        });
    }
    check_maps(object, &mut report);
    report
}

/// Collects the violations of one linked program.
struct Findings<'l, 'a> {
    linked: &'l Linked<'a>,
    violations: Vec<Violation>,
}

impl Findings<'_, '_> {
    fn at(&mut self, kind: Kind, insn: usize, message: String) {
        let origin = Some(self.linked.locate(insn));
        self.add(kind, Some(insn), origin, message);
    }

    fn push(&mut self, kind: Kind, insn: Option<usize>, message: String) {
        self.add(kind, insn, None, message);
    }

    fn add(&mut self, kind: Kind, insn: Option<usize>, origin: Option<String>, message: String) {
        let name = self.linked.name().to_owned();
        self.violations.push(Violation {
            kind,
            location: Location::Program { name, insn },
            origin,
            message,
        });
    }
}

fn check_program(linked: &Linked<'_>, report: &mut Report) {
    let entry = linked.function(0);
    let program_type = ProgramType::from_section(&entry.section);
    let mut found = Findings {
        linked,
        violations: Vec::new(),
    };
    let mut summary = ProgramSummary {
        name: entry.name.clone(),
        section: entry.section.clone(),
        program_type,
        insns: linked.insns.len(),
        subprograms: (1..linked.parts.len())
            .map(|p| linked.function_name(p))
            .collect(),
        maps: BTreeSet::new(),
        helpers: BTreeSet::new(),
    };

    if program_type == ProgramType::Unknown {
        found.push(
            Kind::UnknownProgramType,
            None,
            format!(
                "section `{}` is not a tc classifier section; this check only has the 4.19 helper \
                 list of sched_cls (add the program type's list to check_ebpf/contract.rs)",
                entry.section
            ),
        );
    }
    check_size(linked, &mut found);
    for (at, why) in &linked.bad_calls {
        found.at(Kind::BadCall, *at, why.clone());
    }
    check_control_flow(linked, &mut found);
    check_instructions(linked, program_type, &mut summary, &mut found);
    if program_type == ProgramType::SchedCls {
        for (at, why) in ctx::check(linked) {
            found.at(Kind::ContextAccess, at, why);
        }
    }
    report.violations.append(&mut found.violations);
    report.programs.push(summary);
}

/// `BPF_MAXINSNS`, counted over the linked program like the kernel's `insn_cnt`.
fn check_size(linked: &Linked<'_>, found: &mut Findings<'_, '_>) {
    let total = linked.insns.len();
    if total <= contract::MAX_INSNS {
        return;
    }
    let parts: Vec<String> = (0..linked.parts.len())
        .map(|p| {
            format!(
                "{} {}",
                linked.function_name(p),
                linked.function(p).insns.len()
            )
        })
        .collect();
    found.push(
        Kind::TooManyInsns,
        None,
        format!(
            "{total} instructions, over the 4.19 limit of {} (BPF_MAXINSNS; {})",
            contract::MAX_INSNS,
            parts.join(" + ")
        ),
    );
}

/// The memory builtins bpf-linker links from `compiler_builtins`: each is a loop.
const MEM_BUILTINS: [&str; 5] = ["memcpy", "memmove", "memset", "memcmp", "bcmp"];

/// A depth-first walk from the entry like v4.19 `check_cfg`: an edge back to an instruction on
/// the current path is a loop ("back-edge"); a backward jump to code already finished is not.
/// Calls are edges into the callee, so recursion is a loop too. Then every instruction must
/// have been reached.
fn check_control_flow(linked: &Linked<'_>, found: &mut Findings<'_, '_>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        New,
        OnPath,
        Done,
    }
    let len = linked.insns.len();
    if len == 0 {
        found.push(
            Kind::BadJump,
            None,
            "the program has no instructions".to_owned(),
        );
        return;
    }
    let mut color = vec![Color::New; len];
    // The current path: each instruction with its successors and how many were followed.
    let mut path: Vec<(usize, Vec<usize>, usize)> = Vec::new();
    let enter = |at: usize,
                 color: &mut [Color],
                 path: &mut Vec<(usize, Vec<usize>, usize)>,
                 found: &mut Findings<'_, '_>| {
        color[at] = Color::OnPath;
        let successors = linked.successors(at);
        if let Some(problem) = successors.problem {
            found.at(Kind::BadJump, at, problem);
        }
        path.push((
            at,
            successors.edges.into_iter().map(|(to, _)| to).collect(),
            0,
        ));
    };
    enter(0, &mut color, &mut path, found);
    while let Some((at, successors, next)) = path.last_mut() {
        let Some(&to) = successors.get(*next) else {
            color[*at] = Color::Done;
            path.pop();
            continue;
        };
        *next += 1;
        let at = *at;
        match color[to] {
            Color::New => enter(to, &mut color, &mut path, found),
            Color::OnPath => {
                let function = linked.function_name(linked.part_of(at).0);
                let hint = if MEM_BUILTINS.contains(&function.as_str()) {
                    format!(
                        "; `{function}` is the compiler builtin bpf-linker links when LLVM does not \
                         inline a copy, fill or compare: make that one explicit, fixed-size \
                         stores (handbook/toolchain.md, pitfall 9)"
                    )
                } else {
                    ", unroll it".to_owned()
                };
                found.at(
                    Kind::BackEdge,
                    at,
                    format!(
                        "back-edge to insn {to} ({}): loops are rejected before 5.3{hint}",
                        linked.short_locate(to)
                    ),
                );
            }
            Color::Done => {}
        }
    }

    // Unreached instructions, one violation per run.
    let mut at = 0;
    while at < len {
        if color[at] != Color::New || linked.is_second_half(at) {
            at += 1;
            continue;
        }
        let start = at;
        while at < len && (color[at] == Color::New || linked.is_second_half(at)) {
            at += 1;
        }
        let what = if at - start == 1 {
            "this instruction is unreachable".to_owned()
        } else {
            format!("insns {start}..{} are unreachable", at - 1)
        };
        found.at(
            Kind::Unreachable,
            start,
            format!("{what}; 4.19 rejects unreachable code"),
        );
    }
}

/// Per instruction: the instruction set, relocations, helpers, and what the summary lists.
fn check_instructions(
    linked: &Linked<'_>,
    program_type: ProgramType,
    summary: &mut ProgramSummary,
    found: &mut Findings<'_, '_>,
) {
    let mut tail_calls = Vec::new();
    for at in linked.instructions() {
        let insn = linked.insns[at];
        if let Some(why) = insn.isa_error() {
            found.at(Kind::Isa, at, format!("opcode {:#04x}: {why}", insn.code));
        }
        // A cut-off ld_imm64 (no second half in its function) is reported by the flow check.
        if insn.is_ld_imm64() && at + 1 < linked.insns.len() && linked.is_second_half(at + 1) {
            let second = linked.insns[at + 1];
            // The kernel wants code, registers and offset of the second half all zero.
            if (second.code, second.dst, second.src, second.off) != (0, 0, 0, 0) {
                found.at(
                    Kind::Isa,
                    at,
                    "malformed second half of ld_imm64".to_owned(),
                );
            }
        }
        if insn.is_helper_call() {
            let id = insn.imm;
            summary.helpers.insert(id);
            let name = contract::helper_name(id);
            match contract::helper_verdict(program_type, id) {
                HelperVerdict::Allowed => {}
                HelperVerdict::Unknown => found.at(
                    Kind::UnknownHelper,
                    at,
                    format!("{name} (id {id}) does not exist in 4.19"),
                ),
                HelperVerdict::NotForType => found.at(
                    Kind::HelperNotForType,
                    at,
                    format!("{name} (id {id}) exists in 4.19 but not for {program_type} programs"),
                ),
            }
            if id == contract::HELPER_TAIL_CALL {
                tail_calls.push(at);
            }
        }
        check_relocation(linked, at, summary, found);
    }
    if linked.parts.len() > 1 {
        for at in tail_calls {
            found.at(
                Kind::TailCallWithCalls,
                at,
                format!(
                    "bpf_tail_call in a program with BPF-to-BPF calls ({}): 4.19 rejects the mix \
                     (allowed from 5.10 on x86-64 only)",
                    summary.subprograms.join(", ")
                ),
            );
        }
    }
}

/// Relocations: `ld_imm64` may name a map, a BPF-to-BPF call may name code; nothing else loads
/// on 4.19.
fn check_relocation(
    linked: &Linked<'_>,
    at: usize,
    summary: &mut ProgramSummary,
    found: &mut Findings<'_, '_>,
) {
    let (part, local) = linked.part_of(at);
    let Some(reloc) = linked.function(part).relocations.get(&local) else {
        return;
    };
    let insn = linked.insns[at];
    let symbol = &reloc.symbol;
    if insn.is_pseudo_call() {
        // Resolved, or reported as a bad call, by the linker.
        return;
    }
    if !insn.is_ld_imm64() {
        found.at(
            Kind::Relocation,
            at,
            format!(
                "relocation against `{symbol}` on an instruction that is not ld_imm64 or a call"
            ),
        );
        return;
    }
    match &reloc.target {
        RelocTarget::Map(index) => match linked.object.maps.get(*index) {
            Some(map) => {
                summary.maps.insert(map.name.clone());
            }
            None => found.at(
                Kind::Relocation,
                at,
                format!("map `{symbol}` is not defined"),
            ),
        },
        RelocTarget::Code { .. } => found.at(
            Kind::Relocation,
            at,
            format!("ld_imm64 of the address of function `{symbol}` (callbacks need 5.13)"),
        ),
        RelocTarget::Data { section } if section.starts_with(".maps") => found.at(
            Kind::Relocation,
            at,
            format!(
                "references BTF-defined map `{symbol}` (section {section}); only legacy `maps` \
                 definitions are in the contract"
            ),
        ),
        RelocTarget::Data { section } => found.at(
            Kind::Relocation,
            at,
            format!(
                "references `{symbol}` in {section}: global data needs 5.2 (configuration goes in \
                 an ARRAY map)"
            ),
        ),
        RelocTarget::Undefined => found.at(
            Kind::Relocation,
            at,
            format!("references undefined symbol `{symbol}`"),
        ),
    }
}

/// Every map definition is created by aya at load time, used or not.
fn check_maps(object: &Object, report: &mut Report) {
    for map in &object.maps {
        let users: Vec<&str> = report
            .programs
            .iter()
            .filter(|p| p.maps.contains(&map.name))
            .map(|p| p.name.as_str())
            .collect();
        let used_by = if users.is_empty() {
            "unused, but aya creates it anyway".to_owned()
        } else {
            format!("used by {}", users.join(", "))
        };
        let mut push = |kind, message: String| {
            report.violations.push(Violation {
                kind,
                location: Location::Map(map.name.clone()),
                origin: None,
                message: format!("{message} ({used_by})"),
            });
        };
        if !contract::map_type_exists(map.map_type) {
            push(
                Kind::MapType,
                format!(
                    "type {} ({}) does not exist in 4.19",
                    map.map_type,
                    contract::map_type_name(map.map_type)
                ),
            );
        }
        let unknown_flags = map.flags & !contract::MAP_FLAGS_4_19;
        if unknown_flags != 0 {
            push(
                Kind::MapFlags,
                format!("map_flags {unknown_flags:#x} do not exist in 4.19"),
            );
        }
        if map.map_type == contract::MAP_TYPE_LPM_TRIE
            && map.flags & contract::MAP_F_NO_PREALLOC == 0
        {
            push(
                Kind::MapFlags,
                "LPM_TRIE without BPF_F_NO_PREALLOC is refused".to_owned(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_ebpf::{
        insn::{Insn, asm::*},
        testutil::*,
    };

    fn kinds(report: &Report) -> Vec<Kind> {
        report.violations.iter().map(|v| v.kind).collect()
    }

    fn only(report: &Report, kind: Kind) -> &Violation {
        let found: Vec<_> = report
            .violations
            .iter()
            .filter(|v| v.kind == kind)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {kind:?}, got {:#?}",
            report.violations
        );
        found[0]
    }

    fn at(name: &str, insn: usize) -> Location {
        Location::Program {
            name: name.to_owned(),
            insn: Some(insn),
        }
    }

    #[test]
    fn a_clean_program_passes_and_is_summarised() {
        let report = check(&clean_object());
        assert_eq!(report.violations, vec![]);
        let [program] = &report.programs[..] else {
            panic!("{:?}", report.programs)
        };
        assert_eq!(program.name, "ingress");
        assert_eq!(program.section, "classifier");
        assert_eq!(program.program_type, ProgramType::SchedCls);
        assert_eq!(program.insns, clean_object().functions[0].insns.len() + 2);
        assert_eq!(program.subprograms, vec!["helper_fn".to_owned()]);
        assert_eq!(program.maps.iter().collect::<Vec<_>>(), vec!["NP_CONFIG"]);
        assert_eq!(
            program.helpers.iter().copied().collect::<Vec<_>>(),
            vec![1, 26]
        );
    }

    #[test]
    fn a_program_over_4096_instructions_counting_its_callees_is_too_big() {
        // 4000 in the program + 100 in the callee: each alone fits, together they do not.
        let mut body = vec![call_local(0)];
        body.resize(4000 - 1, mov64_imm(0, 0));
        body.push(exit());
        let mut callee = vec![mov64_imm(0, 0); 99];
        callee.push(exit());
        let mut object = object_with(vec![program("big", body)], vec![]);
        object.functions.push(text_function("callee", 0, callee));
        // The call's pc-relative offset cannot reach another section: name the callee.
        object.functions[0]
            .relocations
            .insert(0, code_reloc("callee", 0, true));
        let report = check(&object);
        let v = only(&report, Kind::TooManyInsns);
        assert_eq!(
            v.location,
            Location::Program {
                name: "big".to_owned(),
                insn: None
            }
        );
        assert!(v.message.contains("4100 instructions"), "{}", v.message);
        assert_eq!(report.programs[0].insns, 4100);

        let fits = object_with(
            vec![program(
                "fits",
                vec![mov64_imm(0, 0); 4095]
                    .into_iter()
                    .chain([exit()])
                    .collect(),
            )],
            vec![],
        );
        assert_eq!(check(&fits).violations, vec![]);
    }

    #[test]
    fn a_backward_jump_that_closes_a_loop_is_a_back_edge() {
        let body = vec![
            mov64_imm(0, 0),    // 0
            add64_imm(0, 1),    // 1
            jeq_imm(0, 10, -2), // 2: back to 1
            exit(),             // 3
        ];
        let report = check(&object_with(vec![program("looping", body)], vec![]));
        let v = only(&report, Kind::BackEdge);
        assert_eq!(v.location, at("looping", 2));
        assert!(v.message.contains("back-edge to insn 1"), "{}", v.message);
    }

    #[test]
    fn forward_jumps_and_backward_jumps_to_finished_code_are_fine() {
        // 0: if r1 == 0 goto 3; 1: r0 = 1; 2: exit; 3: r0 = 2; 4: goto 2 (backward, no cycle:
        // the kernel's check_cfg accepts it, so must we).
        let body = vec![
            jeq_imm(1, 0, 2),
            mov64_imm(0, 1),
            exit(),
            mov64_imm(0, 2),
            ja(-3),
        ];
        assert_eq!(
            check(&object_with(vec![program("forward", body)], vec![])).violations,
            vec![]
        );
    }

    #[test]
    fn a_loop_only_reachable_through_a_subprogram_call_is_caught() {
        // The loop lives in .text (like a memcpy builtin) and the program only calls it.
        let mut object = object_with(
            vec![program("caller", vec![call_local(-1), exit()])],
            vec![],
        );
        object.functions[0]
            .relocations
            .insert(0, code_reloc(".text", 0, false));
        object.functions.push(text_function(
            "memcpy_like",
            0,
            vec![mov64_imm(0, 0), add64_imm(0, 1), jeq_imm(0, 8, -2), exit()],
        ));
        let report = check(&object);
        let v = only(&report, Kind::BackEdge);
        // Kernel numbering: the callee is appended after the program's two instructions.
        assert_eq!(v.location, at("caller", 2 + 2));
        assert_eq!(
            v.origin.as_deref(),
            Some("memcpy_like+2, .text insn 2; memcpy_like is called at insn 0 (caller+0)")
        );
        assert!(
            v.message.contains("back-edge to insn 3 (memcpy_like+1"),
            "{}",
            v.message
        );
        assert_eq!(
            report.programs[0].subprograms,
            vec!["memcpy_like".to_owned()]
        );
    }

    #[test]
    fn recursion_is_a_loop() {
        let mut object = object_with(vec![program("entry", vec![call_local(-1), exit()])], vec![]);
        object.functions[0]
            .relocations
            .insert(0, code_reloc("rec", 0, true));
        object
            .functions
            .push(text_function("rec", 0, vec![call_local(-1), exit()]));
        let report = check(&object);
        assert_eq!(only(&report, Kind::BackEdge).location, at("entry", 2));
    }

    #[test]
    fn pc_relative_calls_within_text_resolve_without_relocations() {
        // a: call b (pc-relative, no relocation); b: a leaf.
        let mut object = object_with(vec![program("entry", vec![call_local(-1), exit()])], vec![]);
        object.functions[0]
            .relocations
            .insert(0, code_reloc("a", 0, true));
        object
            .functions
            .push(text_function("a", 0, vec![call_local(1), exit()]));
        object
            .functions
            .push(text_function("b", 2, vec![mov64_imm(0, 0), exit()]));
        let report = check(&object);
        assert_eq!(report.violations, vec![]);
        assert_eq!(
            report.programs[0].subprograms,
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert_eq!(report.programs[0].insns, 6);
    }

    #[test]
    fn a_call_to_an_undefined_function_is_reported() {
        let mut object = object_with(vec![program("entry", vec![call_local(-1), exit()])], vec![]);
        object.functions[0]
            .relocations
            .insert(0, undefined_reloc("memcpy"));
        let report = check(&object);
        let v = only(&report, Kind::BadCall);
        assert_eq!(v.location, at("entry", 0));
        assert!(v.message.contains("memcpy"), "{}", v.message);
    }

    #[test]
    fn references_to_rodata_data_and_bss_are_global_data() {
        for section in [".rodata", ".data", ".bss", ".rodata.str1.1"] {
            let [lo, hi] = ld_imm64(1, 0);
            let mut object = object_with(
                vec![program("globals", vec![lo, hi, mov64_imm(0, 0), exit()])],
                vec![],
            );
            object.functions[0]
                .relocations
                .insert(0, data_reloc("CONFIG", section));
            let report = check(&object);
            let v = only(&report, Kind::Relocation);
            assert_eq!(v.location, at("globals", 0));
            assert!(
                v.message.contains(section) && v.message.contains("5.2"),
                "{}",
                v.message
            );
        }
    }

    #[test]
    fn a_relocation_into_btf_maps_is_not_a_legacy_map() {
        let [lo, hi] = ld_imm64(1, 0);
        let mut object = object_with(
            vec![program("btf", vec![lo, hi, mov64_imm(0, 0), exit()])],
            vec![],
        );
        object.functions[0]
            .relocations
            .insert(0, data_reloc("EVENTS", ".maps"));
        assert!(
            only(&check(&object), Kind::Relocation)
                .message
                .contains("BTF-defined")
        );
    }

    #[test]
    fn a_ringbuf_map_does_not_exist_in_4_19() {
        let mut object = clean_object();
        object.maps.push(map("AYA_LOGS", 27, 0));
        let report = check(&object);
        let v = only(&report, Kind::MapType);
        assert_eq!(v.location, Location::Map("AYA_LOGS".to_owned()));
        assert!(v.message.contains("RINGBUF"), "{}", v.message);
        // Queue (22) and sk_storage (24) are later too; the 4.19 ones pass.
        for (ty, ok) in [(22, false), (24, false), (1, true), (11, true), (20, true)] {
            let mut object = clean_object();
            object.maps.push(map("M", ty, if ty == 11 { 1 } else { 0 }));
            assert_eq!(
                !kinds(&check(&object)).contains(&Kind::MapType),
                ok,
                "type {ty}"
            );
        }
    }

    #[test]
    fn map_flags_of_later_kernels_and_lpm_without_no_prealloc_are_refused() {
        let mut object = clean_object();
        object.maps.push(map("RDONLY_PROG", 2, 1 << 7));
        object.maps.push(map("LPM", 11, 0));
        let report = check(&object);
        assert_eq!(kinds(&report), vec![Kind::MapFlags, Kind::MapFlags]);
    }

    #[test]
    fn a_helper_beyond_4_19_is_unknown() {
        let body = vec![call_helper(181), exit()];
        let report = check(&object_with(vec![program("looper", body)], vec![]));
        let v = only(&report, Kind::UnknownHelper);
        assert_eq!(v.location, at("looper", 0));
        assert!(v.message.contains("bpf_loop"), "{}", v.message);
        // 84 (sk_lookup_tcp) is the first helper after 4.19.
        let report = check(&object_with(
            vec![program("p", vec![call_helper(84), exit()])],
            vec![],
        ));
        assert_eq!(kinds(&report), vec![Kind::UnknownHelper]);
    }

    #[test]
    fn a_helper_of_4_19_that_tc_programs_may_not_call_is_refused() {
        // bpf_get_current_pid_tgid (14) is for tracing programs; bpf_xdp_adjust_head (44) is XDP.
        for id in [14, 44, 4] {
            let report = check(&object_with(
                vec![program("p", vec![call_helper(id), exit()])],
                vec![],
            ));
            assert_eq!(kinds(&report), vec![Kind::HelperNotForType], "helper {id}");
        }
        // What a NetworkPolicy dataplane calls is allowed.
        for id in [1, 2, 3, 5, 8, 12, 25, 26, 28, 68, 83] {
            let report = check(&object_with(
                vec![program("p", vec![call_helper(id), exit()])],
                vec![],
            ));
            assert_eq!(report.violations, vec![], "helper {id}");
        }
    }

    #[test]
    fn tail_calls_in_a_program_with_subprograms_are_refused() {
        let mut object = object_with(
            vec![program(
                "tail",
                vec![call_helper(12), call_local(-1), exit()],
            )],
            vec![],
        );
        object.functions[0]
            .relocations
            .insert(1, code_reloc("f", 0, true));
        object
            .functions
            .push(text_function("f", 0, vec![mov64_imm(0, 0), exit()]));
        assert_eq!(
            only(&check(&object), Kind::TailCallWithCalls).location,
            at("tail", 0)
        );
    }

    #[test]
    fn unreachable_code_and_jumps_out_of_the_function_are_reported() {
        let body = vec![mov64_imm(0, 0), exit(), mov64_imm(0, 1), exit()];
        let report = check(&object_with(vec![program("dead", body)], vec![]));
        let v = only(&report, Kind::Unreachable);
        assert_eq!(v.location, at("dead", 2));
        assert!(v.message.contains("insns 2..3"), "{}", v.message);

        let body = vec![jeq_imm(1, 0, 5), exit()];
        let report = check(&object_with(vec![program("wild", body)], vec![]));
        assert_eq!(only(&report, Kind::BadJump).location, at("wild", 0));

        let body = vec![mov64_imm(0, 0)];
        let report = check(&object_with(vec![program("falls", body)], vec![]));
        assert!(
            only(&report, Kind::BadJump)
                .message
                .contains("past the end")
        );
    }

    #[test]
    fn instructions_of_later_kernels_are_refused() {
        let body = vec![
            jeq32_imm(0, 0, 0),
            Insn {
                code: 0xc4,
                ..Insn::default()
            },
            exit(),
        ];
        let report = check(&object_with(vec![program("v3", body)], vec![]));
        assert_eq!(kinds(&report), vec![Kind::Isa, Kind::Isa]);
    }

    #[test]
    fn programs_outside_tc_sections_are_flagged_as_unchecked() {
        let mut prog = program("xdp_prog", vec![mov64_imm(0, 0), exit()]);
        prog.section = "xdp".to_owned();
        let report = check(&object_with(vec![prog], vec![]));
        assert_eq!(kinds(&report), vec![Kind::UnknownProgramType]);
    }

    #[test]
    fn an_object_without_programs_fails() {
        assert_eq!(kinds(&check(&Object::default())), vec![Kind::NoPrograms]);
    }

    #[test]
    fn violations_print_with_program_and_instruction() {
        let report = check(&object_with(
            vec![program("p", vec![call_helper(181), exit()])],
            vec![],
        ));
        let text = report.violations[0].to_string();
        assert_eq!(
            text,
            "p insn 0 (p+0, classifier insn 0): bpf_loop (5.17) (id 181) does not exist in 4.19"
        );
    }
}
