//! Links a program the way aya 0.14 hands it to the kernel: the program's function, then every
//! BPF-to-BPF callee appended once, depth first in call order (aya-obj `FunctionLinker`). Also
//! owns the control-flow graph of the linked program, in the kernel's numbering.
//!
//! Does not judge anything but calls it cannot resolve; the checks live in `analyze` and `ctx`.

use std::collections::{BTreeMap, HashMap};

use super::{
    demangle::demangle,
    insn::{Flow, Insn},
    model::{Function, Object, RelocTarget},
};

/// One function placed in a linked program.
#[derive(Debug)]
pub struct Part {
    /// Index into [`Object::functions`].
    pub func: usize,
    /// Index of the function's first slot in the linked program.
    pub base: usize,
    /// The calls that enter it (slots in the linked program), in link order.
    pub called_from: Vec<usize>,
}

/// A program with its callees appended, as the kernel sees it.
pub struct Linked<'a> {
    /// The object the functions come from.
    pub object: &'a Object,
    /// The program's function first, then its callees.
    pub parts: Vec<Part>,
    /// Every slot of the linked program.
    pub insns: Vec<Insn>,
    /// For each slot: the index of its part.
    owner: Vec<usize>,
    /// For each slot: whether it is the second half of an `ld_imm64`.
    second_half: Vec<bool>,
    /// Resolved BPF-to-BPF calls: call slot to the callee's first slot.
    calls: BTreeMap<usize, usize>,
    /// Calls that cannot be resolved: call slot and why.
    pub bad_calls: Vec<(usize, String)>,
}

/// How control reaches a successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// Plain flow within a function.
    Flow,
    /// Back from a helper or BPF-to-BPF call: r0..r5 are clobbered.
    Return,
    /// Into a callee: only r1..r5 (the arguments) carry over.
    Enter,
}

/// The successors of one slot, and what is wrong with its control flow if anything.
#[derive(Debug, Default)]
pub struct Successors {
    /// Where control can go next.
    pub edges: Vec<(usize, Edge)>,
    /// Why the kernel would reject this instruction's control flow.
    pub problem: Option<String>,
}

impl<'a> Linked<'a> {
    /// Links the program whose function is `object.functions[entry]`.
    pub fn link(object: &'a Object, entry: usize) -> Self {
        let by_start: HashMap<(&str, usize), usize> = object
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| ((f.section.as_str(), f.section_offset), i))
            .collect();
        let mut linked = Self {
            object,
            parts: Vec::new(),
            insns: Vec::new(),
            owner: Vec::new(),
            second_half: Vec::new(),
            calls: BTreeMap::new(),
            bad_calls: Vec::new(),
        };
        // Function index to part index.
        let mut placed: HashMap<usize, usize> = HashMap::new();
        linked.append(entry, &mut placed);
        // Depth first, like aya: a callee is appended and scanned before the caller goes on.
        let mut stack = vec![(0_usize, 0_usize)];
        while let Some((part, slot)) = stack.pop() {
            let func = &object.functions[linked.parts[part].func];
            let Some(next_call) =
                (slot..func.insns.len()).find(|&i| func.insns[i].is_pseudo_call())
            else {
                continue;
            };
            stack.push((part, next_call + 1));
            let at = linked.parts[part].base + next_call;
            match resolve_call(object, func, next_call, &by_start) {
                Ok(callee) => {
                    let part = match placed.get(&callee) {
                        Some(&part) => part,
                        None => {
                            let part = linked.append(callee, &mut placed);
                            stack.push((part, 0));
                            part
                        }
                    };
                    linked.parts[part].called_from.push(at);
                    linked.calls.insert(at, linked.parts[part].base);
                }
                Err(why) => linked.bad_calls.push((at, why)),
            }
        }
        linked
    }

    /// Appends function `func`; returns its part index.
    fn append(&mut self, func: usize, placed: &mut HashMap<usize, usize>) -> usize {
        let base = self.insns.len();
        let part = self.parts.len();
        let insns = &self.object.functions[func].insns;
        self.insns.extend_from_slice(insns);
        self.owner.extend(std::iter::repeat_n(part, insns.len()));
        let mut i = 0;
        while i < insns.len() {
            self.second_half.push(false);
            if insns[i].is_ld_imm64() && i + 1 < insns.len() {
                self.second_half.push(true);
                i += 1;
            }
            i += 1;
        }
        self.parts.push(Part {
            func,
            base,
            called_from: Vec::new(),
        });
        placed.insert(func, part);
        part
    }

    /// The program's name (its function's symbol).
    pub fn name(&self) -> &str {
        &self.function(0).name
    }

    /// The function of part `part`.
    pub fn function(&self, part: usize) -> &'a Function {
        &self.object.functions[self.parts[part].func]
    }

    /// The part that slot `at` belongs to, and the slot's index within that function.
    pub fn part_of(&self, at: usize) -> (usize, usize) {
        let part = self.owner[at];
        (part, at - self.parts[part].base)
    }

    /// Whether slot `at` is the second half of an `ld_imm64` (not an instruction of its own).
    pub fn is_second_half(&self, at: usize) -> bool {
        self.second_half[at]
    }

    /// The start slots of real instructions (second halves of `ld_imm64` skipped).
    pub fn instructions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.insns.len()).filter(|&at| !self.second_half[at])
    }

    /// The readable name of part `part`'s function.
    pub fn function_name(&self, part: usize) -> String {
        demangle(&self.function(part).name)
    }

    /// Where slot `at` comes from, for messages: `memcpy+3, .text insn 45`, and for a callee
    /// where it is called from: `; memcpy is called at insn 12 (ingress+12)`.
    pub fn locate(&self, at: usize) -> String {
        let (part, local) = self.part_of(at);
        let func = self.function(part);
        let name = self.function_name(part);
        let mut out = format!(
            "{name}+{local}, {} insn {}",
            func.section,
            func.section_offset + local
        );
        let callers = &self.parts[part].called_from;
        if !callers.is_empty() {
            let sites: Vec<String> = callers
                .iter()
                .map(|&call| format!("{call} ({})", self.short_locate(call)))
                .collect();
            out.push_str(&format!("; {name} is called at insn {}", sites.join(", ")));
        }
        out
    }

    /// The position of slot `at` alone: `memcpy+3`.
    pub fn short_locate(&self, at: usize) -> String {
        let (part, local) = self.part_of(at);
        format!("{}+{local}", self.function_name(part))
    }

    /// The first slot of the callee of the resolved call at `at`.
    pub fn callee_at(&self, at: usize) -> Option<usize> {
        self.calls.get(&at).copied()
    }

    /// Control flow out of slot `at`, checked against its function's bounds as 4.19 does
    /// (`check_subprogs`: no jump may leave its function, the last instruction must be `exit`
    /// or `ja`; `check_cfg`: no jump into the middle of an `ld_imm64`).
    pub fn successors(&self, at: usize) -> Successors {
        let (part, local) = self.part_of(at);
        let base = self.parts[part].base;
        let len = self.function(part).insns.len();
        let insn = self.insns[at];
        let mut out = Successors::default();
        let to = |target: i64, edge: Edge, out: &mut Successors| match usize::try_from(target)
            .ok()
            .filter(|&t| t < len)
        {
            Some(t) if self.second_half[base + t] => {
                out.problem = Some(format!(
                    "jumps into the middle of the ld_imm64 at {}",
                    self.short_locate(base + t - 1)
                ));
            }
            Some(t) => out.edges.push((base + t, edge)),
            None if edge == Edge::Flow && target == len as i64 => {
                out.problem = Some(format!(
                    "falls through past the end of `{}` (its last instruction must be exit or ja)",
                    self.function_name(part)
                ));
            }
            None => {
                out.problem = Some(format!(
                    "jumps to {}+{target}, outside the function",
                    self.function_name(part)
                ));
            }
        };
        match insn.flow(local) {
            Flow::Next(next) if insn.is_ld_imm64() && next > len => {
                out.problem = Some("ld_imm64 is cut off by the end of the function".to_owned());
            }
            Flow::Next(next) => to(next as i64, Edge::Flow, &mut out),
            Flow::Branch { next, target } => {
                to(next as i64, Edge::Flow, &mut out);
                to(target, Edge::Flow, &mut out);
            }
            Flow::Jump { target } => to(target, Edge::Flow, &mut out),
            Flow::Helper { next, .. } => to(next as i64, Edge::Return, &mut out),
            Flow::Call { next } => {
                to(next as i64, Edge::Return, &mut out);
                if let Some(callee) = self.callee_at(at) {
                    out.edges.push((callee, Edge::Enter));
                }
            }
            Flow::Exit => {}
        }
        out
    }
}

/// The function a BPF-to-BPF call in `func` at slot `at` enters, resolved as aya-obj does: by
/// the call's relocation when it has one (a function symbol is the target itself, a section
/// symbol is offset by `imm + 1` slots), else relative to the call in the caller's section.
fn resolve_call(
    object: &Object,
    func: &Function,
    at: usize,
    by_start: &HashMap<(&str, usize), usize>,
) -> Result<usize, String> {
    let imm = i64::from(func.insns[at].imm);
    let (section, slot) = match func.relocations.get(&at) {
        Some(reloc) => match &reloc.target {
            RelocTarget::Code {
                section,
                slot,
                is_function: true,
            } => (section.as_str(), *slot as i64),
            RelocTarget::Code {
                section,
                slot,
                is_function: false,
            } => (section.as_str(), *slot as i64 + imm + 1),
            RelocTarget::Undefined => {
                return Err(format!(
                    "calls `{}`, which is undefined: the linker left it unresolved",
                    reloc.symbol
                ));
            }
            RelocTarget::Map(_) | RelocTarget::Data { .. } => {
                return Err(format!("calls `{}`, which is not code", reloc.symbol));
            }
        },
        None => (
            func.section.as_str(),
            (func.section_offset + at) as i64 + imm + 1,
        ),
    };
    let found = usize::try_from(slot)
        .ok()
        .and_then(|slot| by_start.get(&(section, slot)));
    if let Some(&callee) = found {
        return Ok(callee);
    }
    let inside = object.functions.iter().find(|f| {
        f.section == section
            && (f.section_offset as i64) < slot
            && slot < (f.section_offset + f.insns.len()) as i64
    });
    Err(match inside {
        Some(f) => format!(
            "calls into the middle of `{}` ({section} insn {slot})",
            f.name
        ),
        None => format!("calls {section} insn {slot}, where no function starts"),
    })
}
