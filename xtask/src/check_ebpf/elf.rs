//! Reads an eBPF ELF object (bpfel, as bpf-linker writes it) into the [`Object`] model:
//! functions of the executable sections from their `STT_FUNC` symbols, relocations on them from
//! `SHT_REL`/`SHT_RELA` sections, and legacy map definitions from section `maps`.
//!
//! A thin layer: every judgement is in `analyze`. Input is untrusted: anything malformed is an
//! error naming what is wrong, never a panic. `.BTF`, `.BTF.ext` and DWARF sections are ignored
//! (aya sanitizes BTF for old kernels).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result, bail, ensure};
use object::{
    LittleEndian as LE, SectionIndex,
    elf::{self, FileHeader64},
    read::elf::{FileHeader as _, Rel as _, Rela as _, SectionHeader as _, Sym as _},
};

use super::{
    insn::{INSN_SIZE, Insn},
    model::{Function, MapDef, Object, Reloc, RelocTarget},
};

/// `sizeof(struct bpf_map_def)` without aya's `id` and `pinning` (libbpf's legacy layout).
const MAP_DEF_MIN_SIZE: u64 = 20;

/// What a section holds, for this check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Code,
    Maps,
    Other,
}

struct Section<'d> {
    name: String,
    kind: Kind,
    data: &'d [u8],
}

struct Symbol {
    name: String,
    st_type: u8,
    /// Defining section; `None` for undefined and absolute symbols.
    section: Option<usize>,
    absolute: bool,
    value: u64,
    size: u64,
}

/// Parses the object in `data`.
pub fn parse(data: &[u8]) -> Result<Object> {
    let header = FileHeader64::<LE>::parse(data)
        .map_err(|e| anyhow::anyhow!("not a 64-bit ELF file: {e}"))?;
    let endian = header
        .endian()
        .map_err(|_| anyhow::anyhow!("not a little-endian ELF file (bpfel expected)"))?;
    let machine = header.e_machine(endian);
    ensure!(
        machine == elf::EM_BPF,
        "not an eBPF object (e_machine {machine}, expected EM_BPF 247)"
    );
    let table = header
        .sections(endian, data)
        .context("reading the section headers")?;

    let mut sections = Vec::with_capacity(table.len());
    for (index, section) in table.enumerate() {
        let name = table
            .section_name(endian, section)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .with_context(|| format!("reading the name of section {}", index.0))?;
        let flags = section.sh_flags(endian);
        let sh_type = section.sh_type(endian);
        let kind = if sh_type == elf::SHT_PROGBITS && flags & u64::from(elf::SHF_EXECINSTR) != 0 {
            Kind::Code
        } else if name.starts_with("maps") {
            Kind::Maps
        } else {
            Kind::Other
        };
        let data = if kind == Kind::Other {
            &[][..]
        } else {
            section
                .data(endian, data)
                .map_err(|e| anyhow::anyhow!("section `{name}`: {e}"))?
        };
        if kind == Kind::Code {
            ensure!(
                data.len().is_multiple_of(INSN_SIZE),
                "section `{name}` is {} bytes, not a whole number of 8-byte instructions \
                 (truncated?)",
                data.len()
            );
        }
        sections.push(Section { name, kind, data });
    }

    let symtab = table
        .symbols(endian, data, elf::SHT_SYMTAB)
        .context("reading the symbol table")?;
    ensure!(!symtab.is_empty(), "the object has no symbol table");
    let mut symbols = Vec::with_capacity(symtab.len());
    for (index, sym) in symtab.enumerate() {
        let section = symtab
            .symbol_section(endian, sym, index)
            .map_err(|e| anyhow::anyhow!("symbol {}: {e}", index.0))?
            .map(|s| s.0);
        if let Some(s) = section {
            ensure!(
                s < sections.len(),
                "symbol {} names section {s}, which does not exist",
                index.0
            );
        }
        let name = match (sym.st_type(), section) {
            (elf::STT_SECTION, Some(s)) => sections[s].name.clone(),
            _ => symtab
                .symbol_name(endian, sym)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .map_err(|e| anyhow::anyhow!("symbol {}: {e}", index.0))?,
        };
        symbols.push(Symbol {
            name,
            st_type: sym.st_type(),
            section,
            absolute: sym.st_shndx(endian) == elf::SHN_ABS,
            value: sym.st_value(endian),
            size: sym.st_size(endian),
        });
    }

    let mut object = Object::default();
    let map_index = parse_maps(&sections, &symbols, &mut object)?;
    parse_functions(&sections, &symbols, &mut object)?;

    for (index, section) in table.enumerate() {
        let target = section.info_link(endian).0;
        let relocations: Vec<(u64, u32)> = if let Some((rels, link)) = section
            .rel(endian, data)
            .map_err(|e| anyhow::anyhow!("section {}: {e}", index.0))?
        {
            ensure_symtab(link, &symtab, index)?;
            rels.iter()
                .map(|r| (r.r_offset(endian), r.r_sym(endian)))
                .collect()
        } else if let Some((relas, link)) = section
            .rela(endian, data)
            .map_err(|e| anyhow::anyhow!("section {}: {e}", index.0))?
        {
            ensure_symtab(link, &symtab, index)?;
            relas
                .iter()
                .map(|r| (r.r_offset(endian), r.r_sym(endian, false)))
                .collect()
        } else {
            continue;
        };
        let Some(code) = sections.get(target).filter(|s| s.kind == Kind::Code) else {
            // Relocations of .BTF, .BTF.ext or debug sections.
            continue;
        };
        for (offset, sym) in relocations {
            add_relocation(
                &mut object,
                &sections,
                &symbols,
                &map_index,
                code,
                offset,
                sym,
            )?;
        }
    }
    Ok(object)
}

fn ensure_symtab(
    link: SectionIndex,
    symtab: &object::read::elf::SymbolTable<'_, FileHeader64<LE>>,
    index: SectionIndex,
) -> Result<()> {
    ensure!(
        link == symtab.section(),
        "relocation section {} uses symbol table {}, not the object's ({})",
        index.0,
        link.0,
        symtab.section().0
    );
    Ok(())
}

/// Map definitions: one per symbol in each `maps` section. Returns (section, offset) to index
/// into `object.maps`.
fn parse_maps(
    sections: &[Section<'_>],
    symbols: &[Symbol],
    object: &mut Object,
) -> Result<HashMap<(usize, u64), usize>> {
    let mut index = HashMap::new();
    for (s, section) in sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == Kind::Maps)
    {
        let mut defs: Vec<&Symbol> = symbols
            .iter()
            .filter(|sym| {
                sym.section == Some(s) && !matches!(sym.st_type, elf::STT_SECTION | elf::STT_FILE)
            })
            .collect();
        defs.sort_by_key(|sym| sym.value);
        ensure!(
            section.data.is_empty() || !defs.is_empty(),
            "section `{}` holds {} bytes but no map symbol",
            section.name,
            section.data.len()
        );
        for sym in defs {
            let bytes = symbol_bytes(section, sym)?;
            ensure!(
                sym.size >= MAP_DEF_MIN_SIZE,
                "map `{}` is {} bytes, smaller than struct bpf_map_def ({MAP_DEF_MIN_SIZE})",
                sym.name,
                sym.size
            );
            let field = |i: usize| {
                let at = i * 4;
                u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
            };
            index.insert((s, sym.value), object.maps.len());
            object.maps.push(MapDef {
                name: sym.name.clone(),
                map_type: field(0),
                key_size: field(1),
                value_size: field(2),
                max_entries: field(3),
                flags: field(4),
            });
        }
    }
    Ok(index)
}

/// The bytes of `sym` in `section`, or an error when the symbol points outside it.
fn symbol_bytes<'d>(section: &Section<'d>, sym: &Symbol) -> Result<&'d [u8]> {
    let end = sym.value.checked_add(sym.size);
    let range = end
        .filter(|&end| end <= section.data.len() as u64)
        .and_then(|end| Some(usize::try_from(sym.value).ok()?..usize::try_from(end).ok()?));
    match range {
        Some(range) => Ok(&section.data[range]),
        None => bail!(
            "symbol `{}` ({} bytes at offset {}) points outside section `{}` ({} bytes)",
            sym.name,
            sym.size,
            sym.value,
            section.name,
            section.data.len()
        ),
    }
}

/// Functions: the `STT_FUNC` symbols of each executable section (a section without any is one
/// function named after the section).
fn parse_functions(
    sections: &[Section<'_>],
    symbols: &[Symbol],
    object: &mut Object,
) -> Result<()> {
    for (s, section) in sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == Kind::Code)
    {
        let mut funcs: Vec<&Symbol> = symbols
            .iter()
            .filter(|sym| sym.section == Some(s) && sym.st_type == elf::STT_FUNC && sym.size > 0)
            .collect();
        funcs.sort_by(|a, b| (a.value, &a.name).cmp(&(b.value, &b.name)));
        funcs.dedup_by(|b, a| a.value == b.value && a.size == b.size);
        let mut end_of_previous = 0;
        let mut found = Vec::new();
        for sym in funcs {
            let bytes = symbol_bytes(section, sym)?;
            ensure!(
                sym.value.is_multiple_of(INSN_SIZE as u64)
                    && sym.size.is_multiple_of(INSN_SIZE as u64),
                "function `{}` in `{}` is not aligned to 8-byte instructions (offset {}, size {})",
                sym.name,
                section.name,
                sym.value,
                sym.size
            );
            ensure!(
                sym.value >= end_of_previous,
                "function `{}` in `{}` overlaps the function before it",
                sym.name,
                section.name
            );
            end_of_previous = sym.value + sym.size;
            found.push(function(
                &sym.name,
                section,
                sym.value as usize / INSN_SIZE,
                bytes,
            ));
        }
        if found.is_empty() && !section.data.is_empty() {
            found.push(function(&section.name, section, 0, section.data));
        }
        object.functions.extend(found);
    }
    Ok(())
}

fn function(name: &str, section: &Section<'_>, section_offset: usize, bytes: &[u8]) -> Function {
    Function {
        name: name.to_owned(),
        section: section.name.clone(),
        section_offset,
        insns: bytes.chunks_exact(INSN_SIZE).map(decode).collect(),
        relocations: BTreeMap::new(),
    }
}

fn decode(chunk: &[u8]) -> Insn {
    let mut bytes = [0; INSN_SIZE];
    bytes.copy_from_slice(chunk);
    Insn::from_bytes(bytes)
}

/// Resolves one relocation on `code` at byte `offset` against symbol `sym`, and files it under
/// the function holding that instruction (one outside every function is never loaded: ignored).
fn add_relocation(
    object: &mut Object,
    sections: &[Section<'_>],
    symbols: &[Symbol],
    map_index: &HashMap<(usize, u64), usize>,
    code: &Section<'_>,
    offset: u64,
    sym: u32,
) -> Result<()> {
    let slot = usize::try_from(offset)
        .ok()
        .filter(|&o| o.is_multiple_of(INSN_SIZE) && o < code.data.len())
        .map(|o| o / INSN_SIZE)
        .with_context(|| {
            format!(
                "relocation at `{}`+{offset} is not on an instruction of the section",
                code.name
            )
        })?;
    let symbol = usize::try_from(sym)
        .ok()
        .filter(|&i| i > 0)
        .and_then(|i| symbols.get(i))
        .with_context(|| {
            format!(
                "relocation at `{}`+{offset} names symbol {sym}, which does not exist",
                code.name
            )
        })?;
    let insn = decode(&code.data[slot * INSN_SIZE..(slot + 1) * INSN_SIZE]);
    let target = match symbol.section {
        None if symbol.absolute => RelocTarget::Data {
            section: "*ABS*".to_owned(),
        },
        None => RelocTarget::Undefined,
        Some(s) => match sections[s].kind {
            Kind::Code => {
                ensure!(
                    symbol.value.is_multiple_of(INSN_SIZE as u64),
                    "code symbol `{}` is not on an instruction boundary",
                    symbol.name
                );
                RelocTarget::Code {
                    section: sections[s].name.clone(),
                    slot: usize::try_from(symbol.value / INSN_SIZE as u64)
                        .context("code symbol offset out of range")?,
                    is_function: symbol.st_type == elf::STT_FUNC,
                }
            }
            Kind::Maps => {
                // Against a section symbol, the map's offset is in the instruction's imm.
                let at = if symbol.st_type == elf::STT_SECTION {
                    symbol.value.wrapping_add_signed(i64::from(insn.imm))
                } else {
                    symbol.value
                };
                let index = map_index.get(&(s, at)).with_context(|| {
                    format!(
                        "relocation at `{}`+{offset} points into `{}` at offset {at}, where no map \
                         is defined",
                        code.name, sections[s].name
                    )
                })?;
                RelocTarget::Map(*index)
            }
            Kind::Other => RelocTarget::Data {
                section: sections[s].name.clone(),
            },
        },
    };
    let owner = object.functions.iter_mut().find(|f| {
        f.section == code.name
            && f.section_offset <= slot
            && slot < f.section_offset + f.insns.len()
    });
    if let Some(func) = owner {
        let local = slot - func.section_offset;
        func.relocations.insert(
            local,
            Reloc {
                symbol: symbol.name.clone(),
                target,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_ebpf::{insn::asm::*, testutil::ElfBuilder};

    fn code(insns: &[Insn]) -> Vec<u8> {
        insns.iter().flat_map(|i| i.to_bytes()).collect()
    }

    #[test]
    fn functions_relocations_and_maps_are_read() {
        let mut elf = ElfBuilder::default();
        let [lo, hi] = ld_imm64(1, 0);
        let prog = elf.code_section("classifier", code(&[lo, hi, call_local(-1), exit()]));
        let text = elf.code_section(".text", code(&[mov64_imm(0, 0), exit()]));
        let maps = elf.section("maps", elf::SHT_PROGBITS, code_bytes_of_map(1, 28));
        elf.symbol("ingress", prog, 0, 32, elf::STT_FUNC);
        let callee = elf.symbol("callee", text, 0, 16, elf::STT_FUNC);
        let map = elf.symbol("NP_CONFIG", maps, 0, 28, elf::STT_OBJECT);
        elf.reloc(prog, 0, map);
        elf.reloc(prog, 16, callee);
        let object = parse(&elf.build()).expect("parses");

        assert_eq!(object.maps.len(), 1);
        assert_eq!(object.maps[0].name, "NP_CONFIG");
        assert_eq!(object.maps[0].map_type, 1);
        assert_eq!(object.maps[0].max_entries, 3);
        let names: Vec<_> = object
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.section.as_str()))
            .collect();
        assert_eq!(names, vec![("ingress", "classifier"), ("callee", ".text")]);
        let ingress = &object.functions[0];
        assert_eq!(ingress.insns.len(), 4);
        assert_eq!(ingress.relocations[&0].target, RelocTarget::Map(0));
        assert_eq!(
            ingress.relocations[&2].target,
            RelocTarget::Code {
                section: ".text".to_owned(),
                slot: 0,
                is_function: true
            }
        );
    }

    #[test]
    fn several_programs_in_one_section_are_split_by_their_symbols() {
        let mut elf = ElfBuilder::default();
        let prog = elf.code_section(
            "classifier",
            code(&[mov64_imm(0, 0), exit(), mov64_imm(0, 1), exit()]),
        );
        elf.symbol("egress", prog, 16, 16, elf::STT_FUNC);
        elf.symbol("ingress", prog, 0, 16, elf::STT_FUNC);
        let object = parse(&elf.build()).expect("parses");
        let names: Vec<_> = object
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.section_offset))
            .collect();
        assert_eq!(names, vec![("ingress", 0), ("egress", 2)]);
    }

    #[test]
    fn relocations_into_data_sections_and_undefined_symbols_are_kept() {
        let mut elf = ElfBuilder::default();
        let [lo, hi] = ld_imm64(1, 0);
        let prog = elf.code_section("classifier", code(&[lo, hi, lo, hi, exit()]));
        let rodata = elf.section(".rodata", elf::SHT_PROGBITS, vec![0; 8]);
        elf.symbol("p", prog, 0, 40, elf::STT_FUNC);
        let section_sym = elf.section_symbol(rodata);
        let missing = elf.undefined("memcpy");
        elf.reloc(prog, 0, section_sym);
        elf.reloc(prog, 16, missing);
        let object = parse(&elf.build()).expect("parses");
        let relocs = &object.functions[0].relocations;
        assert_eq!(relocs[&0].symbol, ".rodata");
        assert_eq!(
            relocs[&0].target,
            RelocTarget::Data {
                section: ".rodata".to_owned()
            }
        );
        assert_eq!(relocs[&2].symbol, "memcpy");
        assert_eq!(relocs[&2].target, RelocTarget::Undefined);
    }

    #[test]
    fn a_truncated_instruction_section_is_an_error() {
        let mut elf = ElfBuilder::default();
        let prog = elf.code_section("classifier", vec![0x95, 0, 0, 0, 0, 0, 0, 0, 0xb7, 0, 0, 0]);
        elf.symbol("p", prog, 0, 8, elf::STT_FUNC);
        let err = parse(&elf.build()).expect_err("12 bytes of code");
        assert!(
            err.to_string()
                .contains("not a whole number of 8-byte instructions"),
            "{err}"
        );
    }

    #[test]
    fn a_symbol_pointing_outside_its_section_is_an_error() {
        let mut elf = ElfBuilder::default();
        let prog = elf.code_section("classifier", code(&[exit()]));
        elf.symbol("p", prog, 0, 64, elf::STT_FUNC);
        let err = parse(&elf.build()).expect_err("symbol overruns the section");
        assert!(
            err.to_string()
                .contains("points outside section `classifier`"),
            "{err}"
        );

        let mut elf = ElfBuilder::default();
        let prog = elf.code_section("classifier", code(&[exit()]));
        let maps = elf.section("maps", elf::SHT_PROGBITS, vec![0; 28]);
        elf.symbol("p", prog, 0, 8, elf::STT_FUNC);
        elf.symbol("BIG", maps, 8, 28, elf::STT_OBJECT);
        let err = parse(&elf.build()).expect_err("map overruns the section");
        assert!(
            err.to_string().contains("points outside section `maps`"),
            "{err}"
        );
    }

    #[test]
    fn relocations_off_the_instructions_are_errors() {
        let mut elf = ElfBuilder::default();
        let prog = elf.code_section("classifier", code(&[exit()]));
        let f = elf.symbol("p", prog, 0, 8, elf::STT_FUNC);
        elf.reloc(prog, 4, f);
        assert!(parse(&elf.build()).is_err());
    }

    #[test]
    fn garbage_and_cut_files_are_errors_not_panics() {
        assert!(parse(b"").is_err());
        assert!(parse(&[0x7f, b'E', b'L', b'F']).is_err());
        assert!(parse(&[0xaa; 200]).is_err());
        let mut elf = ElfBuilder::default();
        let prog = elf.code_section("classifier", code(&[mov64_imm(0, 0), exit()]));
        elf.symbol("p", prog, 0, 16, elf::STT_FUNC);
        let bytes = elf.build();
        assert!(parse(&bytes).is_ok());
        // Every prefix of a valid object, and every single-byte corruption of its headers.
        for len in 0..bytes.len() {
            let _ = parse(&bytes[..len]);
        }
        for at in 0..bytes.len() {
            let mut broken = bytes.clone();
            broken[at] ^= 0xff;
            let _ = parse(&broken);
        }
    }

    #[test]
    fn objects_of_other_machines_are_refused() {
        let mut elf = ElfBuilder::default();
        elf.machine = elf::EM_X86_64;
        let err = parse(&elf.build()).expect_err("x86-64");
        assert!(err.to_string().contains("not an eBPF object"), "{err}");
    }

    fn code_bytes_of_map(map_type: u32, size: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = [map_type, 4, 8, 3, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        bytes.resize(size, 0);
        bytes
    }
}
