//! One eBPF instruction slot: decoding from the 8 little-endian bytes of `struct bpf_insn`,
//! what it does to control flow, and whether the 4.19 instruction set has it.
//!
//! Owns the opcode encoding only; what a program may do with an instruction (helpers, maps,
//! context fields) is decided in `analyze` and `ctx`.

/// Size of one instruction slot in bytes.
pub const INSN_SIZE: usize = 8;

// Instruction classes (`code & 0x07`).
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;

// Jump operations (`code & 0xf0`).
const JMP_JA: u8 = 0x00;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;

// ALU operations.
const ALU_NEG: u8 = 0x80;
const ALU_MOV: u8 = 0xb0;
const ALU_ARSH: u8 = 0xc0;
const ALU_END: u8 = 0xd0;

// Memory modes (`code & 0xe0`) and sizes (`code & 0x18`).
const MODE_IMM: u8 = 0x00;
const MODE_ABS: u8 = 0x20;
const MODE_IND: u8 = 0x40;
const MODE_MEM: u8 = 0x60;
const MODE_XADD: u8 = 0xc0;
const SIZE_DW: u8 = 0x18;

/// `BPF_LD | BPF_IMM | BPF_DW`: the two-slot 64-bit immediate load.
pub const LD_IMM64: u8 = CLASS_LD | MODE_IMM | SIZE_DW;
/// `BPF_JMP | BPF_CALL`.
pub const CALL: u8 = CLASS_JMP | JMP_CALL;
/// `BPF_PSEUDO_CALL`: `src_reg` of a BPF-to-BPF call.
pub const PSEUDO_CALL: u8 = 1;

/// One decoded instruction slot (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble of byte 1).
    pub dst: u8,
    /// Source register (high nibble of byte 1).
    pub src: u8,
    /// Signed offset (jumps, memory).
    pub off: i16,
    /// Signed immediate (helper id, call offset, constants).
    pub imm: i32,
}

/// Where control goes after an instruction, within its function.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// The next slot (or the one after it for `ld_imm64`).
    Next(usize),
    /// A conditional jump: the next slot and the target (relative offsets resolved by the
    /// caller).
    Branch { next: usize, target: i64 },
    /// An unconditional jump to a relative target.
    Jump { target: i64 },
    /// A helper call: continues at the next slot.
    Helper { id: i32, next: usize },
    /// A BPF-to-BPF call: continues at the next slot once the callee returns.
    Call { next: usize },
    /// `exit`.
    Exit,
}

impl Insn {
    /// Decodes one slot from its 8 little-endian bytes.
    pub fn from_bytes(bytes: [u8; INSN_SIZE]) -> Self {
        Self {
            code: bytes[0],
            dst: bytes[1] & 0x0f,
            src: bytes[1] >> 4,
            off: i16::from_le_bytes([bytes[2], bytes[3]]),
            imm: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// Encodes the slot (tests build objects with it).
    #[cfg(test)]
    pub fn to_bytes(self) -> [u8; INSN_SIZE] {
        let [o0, o1] = self.off.to_le_bytes();
        let [i0, i1, i2, i3] = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            o0,
            o1,
            i0,
            i1,
            i2,
            i3,
        ]
    }

    /// The instruction class (`code & 0x07`).
    pub fn class(self) -> u8 {
        self.code & 0x07
    }

    /// Whether this is the first slot of a two-slot `ld_imm64`.
    pub fn is_ld_imm64(self) -> bool {
        self.code == LD_IMM64
    }

    /// Whether this is a BPF-to-BPF call.
    pub fn is_pseudo_call(self) -> bool {
        self.code == CALL && self.src == PSEUDO_CALL
    }

    /// Whether this is a helper call.
    pub fn is_helper_call(self) -> bool {
        self.code == CALL && self.src == 0
    }

    /// The number of slots this instruction takes (2 for `ld_imm64`).
    pub fn slots(self) -> usize {
        if self.is_ld_imm64() { 2 } else { 1 }
    }

    /// Control flow out of the instruction at slot `at`. Jump targets are returned as signed
    /// slot indices in the same function (they may fall outside it: the caller checks).
    pub fn flow(self, at: usize) -> Flow {
        let next = at + self.slots();
        let relative = |delta: i64| at as i64 + delta + 1;
        match self.class() {
            CLASS_JMP | CLASS_JMP32 => {
                let op = self.code & 0xf0;
                match op {
                    JMP_EXIT if self.class() == CLASS_JMP => Flow::Exit,
                    JMP_CALL if self.class() == CLASS_JMP => {
                        if self.src == PSEUDO_CALL {
                            Flow::Call { next }
                        } else {
                            Flow::Helper { id: self.imm, next }
                        }
                    }
                    JMP_JA if self.class() == CLASS_JMP => Flow::Jump {
                        target: relative(i64::from(self.off)),
                    },
                    // `gotol` (JMP32 | JA, cpu v4) jumps by imm; flagged by `isa_error`.
                    JMP_JA => Flow::Jump {
                        target: relative(i64::from(self.imm)),
                    },
                    JMP_CALL | JMP_EXIT => Flow::Next(next),
                    _ => Flow::Branch {
                        next,
                        target: relative(i64::from(self.off)),
                    },
                }
            }
            _ => Flow::Next(next),
        }
    }

    /// Why 4.19 would reject this opcode, or `None` when the 4.19 instruction set has it.
    /// Mirrors the opcode checks of v4.19 `kernel/bpf/verifier.c` (`check_alu_op`, `do_check`)
    /// for what LLVM can emit; `ld_imm64` pseudo sources other than 0 and 1 (map fd) came later.
    pub fn isa_error(self) -> Option<&'static str> {
        let op = self.code & 0xf0;
        let mode = self.code & 0xe0;
        match self.class() {
            CLASS_JMP32 => Some("BPF_JMP32 instruction class (needs 5.1; build for cpu v1/v2)"),
            CLASS_ALU | CLASS_ALU64 => {
                let is_64 = self.class() == CLASS_ALU64;
                if op > ALU_END {
                    Some("unknown ALU operation")
                } else if self.off != 0 {
                    // sdiv/smod and movsx encode in `off` (cpu v4, 6.6).
                    Some("ALU instruction with a non-zero offset (signed div/mod or movsx, cpu v4)")
                } else if op == ALU_END && is_64 {
                    Some("BPF_ALU64 | BPF_END byte swap (cpu v4, 6.6)")
                } else if op == ALU_ARSH && !is_64 {
                    Some("32-bit BPF_ARSH (needs 5.0)")
                } else if op == ALU_NEG && self.code & 0x08 != 0 {
                    Some("BPF_NEG with a register source")
                } else if op == ALU_END && ![16, 32, 64].contains(&self.imm) {
                    Some("byte swap of an unknown width")
                } else {
                    None
                }
            }
            CLASS_JMP => match op {
                0xe0 | 0xf0 => Some("unknown jump operation"),
                JMP_JA | JMP_CALL | JMP_EXIT if self.code & 0x08 != 0 => {
                    Some("ja/call/exit with a register source")
                }
                JMP_CALL if self.src > PSEUDO_CALL => Some("kfunc call (needs 5.13)"),
                _ => None,
            },
            CLASS_LD => {
                if self.is_ld_imm64() {
                    match self.src {
                        0 | 1 => None,
                        2 => Some("ld_imm64 of a map value (BPF_PSEUDO_MAP_VALUE, needs 5.2)"),
                        _ => Some("ld_imm64 with a pseudo source 4.19 does not know"),
                    }
                } else if (mode == MODE_ABS || mode == MODE_IND) && self.code & 0x18 != SIZE_DW {
                    None
                } else {
                    Some("unknown BPF_LD instruction")
                }
            }
            CLASS_LDX if mode == MODE_MEM => None,
            CLASS_LDX => Some("sign-extending or unknown load (BPF_MEMSX is cpu v4, 6.6)"),
            CLASS_ST if mode == MODE_MEM => None,
            CLASS_ST => Some("unknown BPF_ST instruction"),
            CLASS_STX if mode == MODE_MEM => None,
            CLASS_STX if mode == MODE_XADD => match (self.code & 0x18, self.imm) {
                (0x00 | SIZE_DW, 0) => None,
                (0x00 | SIZE_DW, _) => Some("atomic operation other than add (needs 5.12)"),
                _ => Some("atomic add of a size other than 4 or 8 bytes"),
            },
            _ => Some("unknown BPF_STX instruction"),
        }
    }

    /// For loads and stores (`LDX`, `ST`, `STX` in `BPF_MEM` or `BPF_XADD` mode): the access
    /// size in bytes.
    pub fn mem_size(self) -> i64 {
        match self.code & 0x18 {
            0x00 => 4,
            0x08 => 2,
            0x10 => 1,
            _ => 8,
        }
    }

    /// Whether this is a `BPF_LDX | BPF_MEM` load.
    pub fn is_load(self) -> bool {
        self.class() == CLASS_LDX && self.code & 0xe0 == MODE_MEM
    }

    /// Whether this is a `BPF_STX | BPF_MEM` store of a register.
    pub fn is_store_reg(self) -> bool {
        self.class() == CLASS_STX && self.code & 0xe0 == MODE_MEM
    }

    /// Whether this is a `BPF_ST | BPF_MEM` store of an immediate.
    pub fn is_store_imm(self) -> bool {
        self.class() == CLASS_ST && self.code & 0xe0 == MODE_MEM
    }

    /// Whether this is a `BPF_STX | BPF_XADD` atomic add.
    pub fn is_xadd(self) -> bool {
        self.class() == CLASS_STX && self.code & 0xe0 == MODE_XADD
    }

    /// Whether this is a 64-bit register move (`BPF_ALU64 | BPF_MOV | BPF_X`).
    pub fn is_mov64_reg(self) -> bool {
        self.code == CLASS_ALU64 | ALU_MOV | 0x08
    }

    /// Whether the instruction writes `dst` (ALU ops, loads, `ld_imm64`).
    pub fn writes_dst(self) -> bool {
        matches!(self.class(), CLASS_ALU | CLASS_ALU64 | CLASS_LDX) || self.is_ld_imm64()
    }

    /// Whether this is a legacy `BPF_LD | BPF_ABS/IND` packet load, which clobbers r0..r5.
    pub fn is_ld_abs_ind(self) -> bool {
        self.class() == CLASS_LD && !self.is_ld_imm64()
    }
}

#[cfg(test)]
pub mod asm {
    //! A tiny assembler for tests: the instructions the crafted programs need.

    use super::*;

    /// `r{dst} = imm` (64-bit).
    pub fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn {
            code: CLASS_ALU64 | ALU_MOV,
            dst,
            imm,
            ..Insn::default()
        }
    }

    /// `r{dst} = r{src}` (64-bit).
    pub fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn {
            code: CLASS_ALU64 | ALU_MOV | 0x08,
            dst,
            src,
            ..Insn::default()
        }
    }

    /// `r{dst} += imm` (64-bit).
    pub fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn {
            code: CLASS_ALU64,
            dst,
            imm,
            ..Insn::default()
        }
    }

    /// `if r{dst} == imm goto +off`.
    pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn {
            code: CLASS_JMP | 0x10,
            dst,
            off,
            imm,
            ..Insn::default()
        }
    }

    /// `if w{dst} == imm goto +off` (JMP32, 5.1).
    pub fn jeq32_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn {
            code: CLASS_JMP32 | 0x10,
            dst,
            off,
            imm,
            ..Insn::default()
        }
    }

    /// `goto +off`.
    pub fn ja(off: i16) -> Insn {
        Insn {
            code: CLASS_JMP | JMP_JA,
            off,
            ..Insn::default()
        }
    }

    /// `call helper#id`.
    pub fn call_helper(id: i32) -> Insn {
        Insn {
            code: CALL,
            imm: id,
            ..Insn::default()
        }
    }

    /// `call pc+imm` (BPF-to-BPF).
    pub fn call_local(imm: i32) -> Insn {
        Insn {
            code: CALL,
            src: PSEUDO_CALL,
            imm,
            ..Insn::default()
        }
    }

    /// `exit`.
    pub fn exit() -> Insn {
        Insn {
            code: CLASS_JMP | JMP_EXIT,
            ..Insn::default()
        }
    }

    /// `r{dst} = imm64` (two slots; the loader patches map references in).
    pub fn ld_imm64(dst: u8, imm: i32) -> [Insn; 2] {
        [
            Insn {
                code: LD_IMM64,
                dst,
                imm,
                ..Insn::default()
            },
            Insn::default(),
        ]
    }

    /// `r{dst} = *(u32 *)(r{src} + off)`.
    pub fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        Insn {
            code: CLASS_LDX | MODE_MEM,
            dst,
            src,
            off,
            ..Insn::default()
        }
    }

    /// `r{dst} = *(u64 *)(r{src} + off)`.
    pub fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
        Insn {
            code: CLASS_LDX | MODE_MEM | SIZE_DW,
            dst,
            src,
            off,
            ..Insn::default()
        }
    }

    /// `*(u32 *)(r{dst} + off) = r{src}`.
    pub fn stx_w(dst: u8, src: u8, off: i16) -> Insn {
        Insn {
            code: CLASS_STX | MODE_MEM,
            dst,
            src,
            off,
            ..Insn::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{asm::*, *};

    #[test]
    fn bytes_round_trip_through_decoding() {
        let insn = Insn {
            code: 0x85,
            dst: 3,
            src: 1,
            off: -2,
            imm: -7,
        };
        assert_eq!(Insn::from_bytes(insn.to_bytes()), insn);
        // The kernel's layout: dst in the low nibble, src in the high one.
        assert_eq!(insn.to_bytes()[1], 0x13);
    }

    #[test]
    fn jumps_resolve_relative_to_the_next_slot() {
        assert_eq!(ja(-1).flow(5), Flow::Jump { target: 5 });
        assert_eq!(
            jeq_imm(1, 0, 2).flow(5),
            Flow::Branch { next: 6, target: 8 }
        );
        assert_eq!(ld_imm64(1, 0)[0].flow(5), Flow::Next(7));
        assert_eq!(call_helper(1).flow(0), Flow::Helper { id: 1, next: 1 });
        assert_eq!(call_local(3).flow(0), Flow::Call { next: 1 });
        assert_eq!(exit().flow(0), Flow::Exit);
    }

    #[test]
    fn instructions_of_later_kernels_are_not_in_the_4_19_set() {
        assert_eq!(mov64_imm(0, 0).isa_error(), None);
        assert_eq!(ld_imm64(1, 0)[0].isa_error(), None);
        assert_eq!(call_local(1).isa_error(), None);
        assert!(jeq32_imm(0, 0, 1).isa_error().is_some());
        // 32-bit arsh (5.0), movsx (v4), bswap (v4), memsx (v4), atomic fetch-add (5.12).
        for code_off_imm in [
            (0xc4, 0, 1),
            (0xbf, 8, 0),
            (0xd7, 0, 16),
            (0x91, 0, 0),
            (0xdb, 0, 1),
        ] {
            let (code, off, imm) = code_off_imm;
            let insn = Insn {
                code,
                off,
                imm,
                ..Insn::default()
            };
            assert!(insn.isa_error().is_some(), "{insn:?} passed");
        }
    }
}
