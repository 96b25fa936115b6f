//! The in-memory model of an eBPF object that the checks work on: functions as instruction
//! arrays with their relocations, and legacy map definitions.
//!
//! Owns the shape of the data only. `elf` fills it from an object file; tests build it
//! directly. Nothing here knows about kernels.

use std::collections::BTreeMap;

use super::insn::Insn;

/// An eBPF object: every function of its executable sections, and its maps.
#[derive(Debug, Default)]
pub struct Object {
    /// Functions in section order, then address order.
    pub functions: Vec<Function>,
    /// Legacy map definitions (section `maps`), in section order.
    pub maps: Vec<MapDef>,
}

/// One function: an `STT_FUNC` symbol's range of an executable section.
#[derive(Debug, Clone)]
pub struct Function {
    /// Symbol name (program name for functions outside `.text`).
    pub name: String,
    /// The section the function lives in: `classifier`, `.text`...
    pub section: String,
    /// Slot index of the function's first instruction within its section.
    pub section_offset: usize,
    /// The function's instruction slots (an `ld_imm64` takes two).
    pub insns: Vec<Insn>,
    /// Relocations, by slot index within the function.
    pub relocations: BTreeMap<usize, Reloc>,
}

impl Function {
    /// Whether the function is a program entry point (it is in a program section, not in
    /// `.text`, where BPF-to-BPF callees live).
    pub fn is_program(&self) -> bool {
        !is_text_section(&self.section)
    }
}

/// Whether `section` holds BPF-to-BPF callees rather than programs (`.text`, `.text.*`, as
/// aya-obj reads it).
pub fn is_text_section(section: &str) -> bool {
    section.starts_with(".text")
}

/// A relocation on one instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloc {
    /// The symbol the relocation names (a section symbol is named after its section).
    pub symbol: String,
    /// What the symbol is.
    pub target: RelocTarget,
}

/// What a relocation points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelocTarget {
    /// A legacy map definition: index into [`Object::maps`].
    Map(usize),
    /// Code: a symbol in an executable section.
    Code {
        /// The symbol's section.
        section: String,
        /// The symbol's value, in slots from the start of its section.
        slot: usize,
        /// Whether the symbol is a function (`STT_FUNC`): a call then goes to the symbol itself;
        /// otherwise (a section symbol) to `slot + imm + 1`, as aya-obj resolves it.
        is_function: bool,
    },
    /// Any other defined symbol: `.data`, `.rodata*`, `.bss`, `.maps` (BTF maps), absolute...
    Data {
        /// The symbol's section (`*ABS*` for absolute symbols).
        section: String,
    },
    /// An undefined (external) symbol: nothing will resolve it at load time.
    Undefined,
}

/// A legacy map definition (`struct bpf_map_def` in section `maps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    /// Symbol name (the map's name in aya).
    pub name: String,
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Maximum number of entries.
    pub max_entries: u32,
    /// `map_flags`.
    pub flags: u32,
}
