//! Test helpers: builders for the in-memory model, and a minimal ELF64 writer for the parser's
//! tests (hand-written rather than `object`'s write support, so tests can also produce the
//! malformed files a real writer would refuse, and the workspace needs no extra dependency).

use object::elf;

use super::{
    insn::{Insn, asm::*},
    model::{Function, MapDef, Object, Reloc, RelocTarget},
};

/// A program function in section `classifier` (offsets are assigned by [`object_with`]).
pub fn program(name: &str, insns: Vec<Insn>) -> Function {
    Function {
        name: name.to_owned(),
        section: "classifier".to_owned(),
        section_offset: 0,
        insns,
        relocations: Default::default(),
    }
}

/// A `.text` function starting at slot `section_offset`.
pub fn text_function(name: &str, section_offset: usize, insns: Vec<Insn>) -> Function {
    Function {
        section: ".text".to_owned(),
        section_offset,
        ..program(name, insns)
    }
}

/// An object of `programs` laid out one after the other in their sections, and `maps`.
pub fn object_with(programs: Vec<Function>, maps: Vec<MapDef>) -> Object {
    let mut next: std::collections::HashMap<String, usize> = Default::default();
    let functions = programs
        .into_iter()
        .map(|mut f| {
            let offset = next.entry(f.section.clone()).or_default();
            f.section_offset = *offset;
            *offset += f.insns.len();
            f
        })
        .collect();
    Object { functions, maps }
}

/// A relocation against `.text` symbol `symbol` at `slot` (a function symbol, or the section
/// symbol when `is_function` is false).
pub fn code_reloc(symbol: &str, slot: usize, is_function: bool) -> Reloc {
    Reloc {
        symbol: symbol.to_owned(),
        target: RelocTarget::Code {
            section: ".text".to_owned(),
            slot,
            is_function,
        },
    }
}

/// A relocation against `symbol` in data section `section`.
pub fn data_reloc(symbol: &str, section: &str) -> Reloc {
    Reloc {
        symbol: symbol.to_owned(),
        target: RelocTarget::Data {
            section: section.to_owned(),
        },
    }
}

/// A relocation against undefined `symbol`.
pub fn undefined_reloc(symbol: &str) -> Reloc {
    Reloc {
        symbol: symbol.to_owned(),
        target: RelocTarget::Undefined,
    }
}

/// A map definition.
pub fn map(name: &str, map_type: u32, flags: u32) -> MapDef {
    MapDef {
        name: name.to_owned(),
        map_type,
        key_size: 4,
        value_size: 8,
        max_entries: 16,
        flags,
    }
}

/// A small tc program that does everything right: reads `skb->len` and `skb->data`, looks up
/// an ARRAY map, loads packet bytes and calls a `.text` function.
pub fn clean_object() -> Object {
    let [map_lo, map_hi] = ld_imm64(1, 0);
    let body = vec![
        mov64_reg(6, 1),  // 0: r6 = ctx
        ldx_w(7, 6, 0),   // 1: r7 = skb->len
        ldx_w(8, 6, 76),  // 2: r8 = skb->data
        mov64_reg(2, 10), // 3
        add64_imm(2, -4), // 4
        map_lo,           // 5: r1 = &NP_CONFIG
        map_hi,           // 6
        call_helper(1),   // 7: bpf_map_lookup_elem
        mov64_reg(1, 6),  // 8
        mov64_imm(2, 0),  // 9
        mov64_reg(3, 10), // 10
        add64_imm(3, -8), // 11
        mov64_imm(4, 4),  // 12
        call_helper(26),  // 13: bpf_skb_load_bytes
        call_local(-1),   // 14: helper_fn
        exit(),           // 15
    ];
    let mut object = object_with(vec![program("ingress", body)], vec![map("NP_CONFIG", 2, 0)]);
    object.functions[0].relocations.insert(
        5,
        Reloc {
            symbol: "NP_CONFIG".to_owned(),
            target: RelocTarget::Map(0),
        },
    );
    object.functions[0]
        .relocations
        .insert(14, code_reloc("helper_fn", 0, true));
    object
        .functions
        .push(text_function("helper_fn", 0, vec![mov64_imm(0, 0), exit()]));
    object
}

/// A section to write: name, type, flags, data, link, info, entsize.
type SectionSpec = (String, u32, u64, Vec<u8>, u32, u32, u64);

/// A minimal little-endian ELF64 relocatable writer: sections, one symbol table, `SHT_REL`
/// relocations. No validation: tests write broken files with it too.
pub struct ElfBuilder {
    /// `e_machine` (EM_BPF by default).
    pub machine: u16,
    sections: Vec<(String, u32, u64, Vec<u8>)>,
    /// (name, section index, value, size, st_type)
    symbols: Vec<(String, u16, u64, u64, u8)>,
    /// (section index, offset, symbol index)
    relocs: Vec<(usize, u64, usize)>,
}

impl Default for ElfBuilder {
    fn default() -> Self {
        Self {
            machine: elf::EM_BPF,
            sections: Vec::new(),
            symbols: Vec::new(),
            relocs: Vec::new(),
        }
    }
}

impl ElfBuilder {
    /// Adds a section; returns its index.
    pub fn section(&mut self, name: &str, sh_type: u32, data: Vec<u8>) -> usize {
        let flags = u64::from(elf::SHF_ALLOC);
        self.sections.push((name.to_owned(), sh_type, flags, data));
        self.sections.len()
    }

    /// Adds an executable section; returns its index.
    pub fn code_section(&mut self, name: &str, data: Vec<u8>) -> usize {
        let flags = u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR);
        self.sections
            .push((name.to_owned(), elf::SHT_PROGBITS, flags, data));
        self.sections.len()
    }

    /// Adds a symbol; returns its index.
    pub fn symbol(
        &mut self,
        name: &str,
        section: usize,
        value: u64,
        size: u64,
        st_type: u8,
    ) -> usize {
        let shndx = u16::try_from(section).expect("few sections in tests");
        self.symbols
            .push((name.to_owned(), shndx, value, size, st_type));
        self.symbols.len()
    }

    /// Adds the section symbol of `section`; returns its index.
    pub fn section_symbol(&mut self, section: usize) -> usize {
        self.symbol("", section, 0, 0, elf::STT_SECTION)
    }

    /// Adds an undefined symbol; returns its index.
    pub fn undefined(&mut self, name: &str) -> usize {
        self.symbol(name, 0, 0, 0, elf::STT_NOTYPE)
    }

    /// Adds a relocation at byte `offset` of `section` against `symbol`.
    pub fn reloc(&mut self, section: usize, offset: u64, symbol: usize) {
        self.relocs.push((section, offset, symbol));
    }

    /// Writes the file.
    pub fn build(&self) -> Vec<u8> {
        fn strtab(names: impl Iterator<Item = String>) -> (Vec<u8>, Vec<u32>) {
            let mut table = vec![0];
            let offsets = names
                .map(|name| {
                    let at = table.len() as u32;
                    table.extend_from_slice(name.as_bytes());
                    table.push(0);
                    at
                })
                .collect();
            (table, offsets)
        }
        let mut all: Vec<SectionSpec> = self
            .sections
            .iter()
            .map(|(n, t, f, d)| (n.clone(), *t, *f, d.clone(), 0, 0, 0))
            .collect();
        let symtab_index = (all.len() + 1 + self.sections.len()) as u32;
        let strtab_index = symtab_index + 1;
        for (index, (name, ..)) in self.sections.iter().enumerate() {
            let mut data = Vec::new();
            for (_, offset, symbol) in self.relocs.iter().filter(|r| r.0 == index + 1) {
                data.extend_from_slice(&offset.to_le_bytes());
                let info = ((*symbol as u64) << 32) | u64::from(elf::R_BPF_64_64);
                data.extend_from_slice(&info.to_le_bytes());
            }
            all.push((
                format!(".rel{name}"),
                elf::SHT_REL,
                0,
                data,
                symtab_index,
                index as u32 + 1,
                16,
            ));
        }
        let (sym_names, sym_name_offsets) = strtab(self.symbols.iter().map(|s| s.0.clone()));
        let mut symtab = vec![0; 24];
        for ((_, shndx, value, size, st_type), name) in self.symbols.iter().zip(&sym_name_offsets) {
            symtab.extend_from_slice(&name.to_le_bytes());
            let bind = if *st_type == elf::STT_SECTION {
                elf::STB_LOCAL
            } else {
                elf::STB_GLOBAL
            };
            symtab.push((bind << 4) | st_type);
            symtab.push(0);
            symtab.extend_from_slice(&shndx.to_le_bytes());
            symtab.extend_from_slice(&value.to_le_bytes());
            symtab.extend_from_slice(&size.to_le_bytes());
        }
        all.push((
            ".symtab".to_owned(),
            elf::SHT_SYMTAB,
            0,
            symtab,
            strtab_index,
            1,
            24,
        ));
        all.push((".strtab".to_owned(), elf::SHT_STRTAB, 0, sym_names, 0, 0, 0));
        let (mut shstrtab, mut sh_names) = strtab(all.iter().map(|s| s.0.clone()));
        let shstrtab_name = shstrtab.len() as u32;
        shstrtab.extend_from_slice(b".shstrtab\0");
        sh_names.push(shstrtab_name);
        all.push((
            ".shstrtab".to_owned(),
            elf::SHT_STRTAB,
            0,
            shstrtab,
            0,
            0,
            0,
        ));

        let mut out = vec![0; 64];
        let mut headers = vec![0; 64]; // the null section
        for ((_, sh_type, flags, data, link, info, entsize), name) in all.iter().zip(&sh_names) {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            let offset = out.len() as u64;
            out.extend_from_slice(data);
            headers.extend_from_slice(&name.to_le_bytes());
            headers.extend_from_slice(&sh_type.to_le_bytes());
            headers.extend_from_slice(&flags.to_le_bytes());
            headers.extend_from_slice(&0_u64.to_le_bytes()); // addr
            headers.extend_from_slice(&offset.to_le_bytes());
            headers.extend_from_slice(&(data.len() as u64).to_le_bytes());
            headers.extend_from_slice(&link.to_le_bytes());
            headers.extend_from_slice(&info.to_le_bytes());
            headers.extend_from_slice(&8_u64.to_le_bytes()); // addralign
            headers.extend_from_slice(&entsize.to_le_bytes());
        }
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        out.extend_from_slice(&headers);

        let header = &mut out[..64];
        header[..4].copy_from_slice(&elf::ELFMAG);
        header[4] = elf::ELFCLASS64;
        header[5] = elf::ELFDATA2LSB;
        header[6] = elf::EV_CURRENT;
        header[16..18].copy_from_slice(&elf::ET_REL.to_le_bytes());
        header[18..20].copy_from_slice(&self.machine.to_le_bytes());
        header[20..24].copy_from_slice(&1_u32.to_le_bytes());
        header[40..48].copy_from_slice(&shoff.to_le_bytes());
        header[52..54].copy_from_slice(&64_u16.to_le_bytes()); // ehsize
        header[58..60].copy_from_slice(&64_u16.to_le_bytes()); // shentsize
        let shnum = (all.len() + 1) as u16;
        header[60..62].copy_from_slice(&shnum.to_le_bytes());
        header[62..64].copy_from_slice(&(shnum - 1).to_le_bytes()); // shstrndx
        out
    }
}
