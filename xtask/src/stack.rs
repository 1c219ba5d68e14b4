//! The verifier's combined stack limit, checked on the object before any kernel sees it.
//!
//! Every program may use 512 bytes of stack across its deepest chain of bpf-to-bpf calls.
//! The kernel adds each frame's depth rounded up: to 16 bytes on 6.7 and later, to 32 bytes
//! (of at least one byte, so an empty frame costs 32) before that, Debian 12's 6.1 included.
//! A program that fits on the host can so fail to load on 6.1, which only the slow kernel
//! matrix would otherwise find. This reads the object's instructions: each function's
//! deepest frame-pointer offset (direct, or through a register copied from r10) and its
//! calls, and sums the deepest chain the way 6.1 does.

use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex, SymbolKind};

/// The verifier's limit (`MAX_BPF_STACK`).
pub const LIMIT: u32 = 512;
/// The rounding of each frame on the oldest kernel we support (6.1).
const ROUND: u32 = 32;

/// One function: where it is and what it uses.
#[derive(Debug, Default, Clone)]
struct Func {
    name: String,
    depth: u32,
    /// Callees, by (section, offset).
    calls: Vec<(SectionIndex, u64)>,
}

/// A program's deepest chain under 6.1's rounding.
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub program: String,
    pub total: u32,
    /// `name (depth)` of each frame, outermost first.
    pub frames: Vec<(String, u32)>,
}

fn frame(depth: u32) -> u32 {
    depth.max(1).div_ceil(ROUND) * ROUND
}

/// Depth and callees of the function at `insns` (the function's bytes), whose first
/// instruction is at `base` in its section.
fn scan(
    insns: &[u8],
    base: u64,
    section: SectionIndex,
    relocs: &HashMap<u64, (SectionIndex, u64, bool)>,
) -> (u32, Vec<(SectionIndex, u64)>) {
    let mut depth = 0i64;
    let mut calls = Vec::new();
    // Registers holding r10 plus an offset.
    let mut fp: [Option<i64>; 11] = [None; 11];
    fp[10] = Some(0);
    let mut pc = 0usize;
    while pc + 8 <= insns.len() {
        let i = &insns[pc..pc + 8];
        let code = i[0];
        let dst = (i[1] & 0x0f) as usize;
        let src = (i[1] >> 4) as usize;
        let off = i16::from_le_bytes([i[2], i[3]]) as i64;
        let imm = i32::from_le_bytes([i[4], i[5], i[6], i[7]]) as i64;
        let class = code & 0x07;
        let mut note = |base: Option<i64>, off: i64| {
            if let Some(b) = base {
                depth = depth.max(-(b + off));
            }
        };
        match class {
            // LDX: src is the base.
            0x01 => {
                note(fp.get(src).copied().flatten(), off);
                if dst < 10 {
                    fp[dst] = None;
                }
            }
            // ST, STX: dst is the base.
            0x02 | 0x03 => note(fp.get(dst).copied().flatten(), off),
            // ALU64.
            0x07 if dst < 10 => {
                let op = code & 0xf0;
                let by_reg = code & 0x08 != 0;
                fp[dst] = match (op, by_reg) {
                    // mov rX, rY
                    (0xb0, true) => fp.get(src).copied().flatten(),
                    // add rX, imm / sub rX, imm
                    (0x00, false) => fp[dst].map(|b| b + imm),
                    (0x10, false) => fp[dst].map(|b| b - imm),
                    _ => None,
                };
                if let Some(b) = fp[dst] {
                    note(Some(b), 0);
                }
            }
            // ALU (32-bit) and LD clobber their destination.
            0x04 | 0x00 if dst < 10 => fp[dst] = None,
            // JMP: calls.
            0x05 if code == 0x85 => {
                if src == 1 {
                    let at = base + pc as u64;
                    let target = match relocs.get(&at) {
                        Some(&(sec, value, is_section)) => (
                            sec,
                            if is_section {
                                value + ((imm + 1) * 8) as u64
                            } else {
                                value
                            },
                        ),
                        None => (section, (at as i64 + (imm + 1) * 8) as u64),
                    };
                    calls.push(target);
                }
                // A call clobbers r0-r5.
                for r in fp.iter_mut().take(6) {
                    *r = None;
                }
            }
            _ => {}
        }
        // ld_imm64 takes two slots.
        pc += if code == 0x18 { 16 } else { 8 };
    }
    (depth.max(0) as u32, calls)
}

/// The deepest chain of every program in the object at `path`.
pub fn chains(path: &Path) -> Result<Vec<Chain>> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let obj = object::File::parse(&*data).context("parse the eBPF object")?;
    let mut funcs: HashMap<(SectionIndex, u64), Func> = HashMap::new();
    let mut programs = Vec::new();
    for sec in obj.sections() {
        let Ok(bytes) = sec.data() else { continue };
        if sec.kind() != object::SectionKind::Text {
            continue;
        }
        let relocs: HashMap<u64, (SectionIndex, u64, bool)> = sec
            .relocations()
            .filter_map(|(at, r)| match r.target() {
                RelocationTarget::Symbol(s) => {
                    let s = obj.symbol_by_index(s).ok()?;
                    Some((
                        at,
                        (
                            s.section_index()?,
                            s.address(),
                            s.kind() == SymbolKind::Section,
                        ),
                    ))
                }
                _ => None,
            })
            .collect();
        let is_text = sec.name().ok() == Some(".text");
        for sym in obj.symbols() {
            if sym.section_index() != Some(sec.index()) || sym.kind() != SymbolKind::Text {
                continue;
            }
            let start = sym.address() - sec.address();
            let end = (start + sym.size()).min(bytes.len() as u64);
            let (depth, calls) = scan(
                &bytes[start as usize..end as usize],
                start,
                sec.index(),
                &relocs,
            );
            let name = sym.name().unwrap_or("?").to_string();
            if !is_text && sym.is_global() {
                programs.push(((sec.index(), start), name.clone()));
            }
            funcs.insert((sec.index(), start), Func { name, depth, calls });
        }
    }
    programs.sort_by(|a, b| a.1.cmp(&b.1));
    programs
        .into_iter()
        .map(|(at, program)| {
            let (total, frames) = deepest(&funcs, at, 0)?;
            Ok(Chain {
                program,
                total,
                frames,
            })
        })
        .collect()
}

fn deepest(
    funcs: &HashMap<(SectionIndex, u64), Func>,
    at: (SectionIndex, u64),
    level: usize,
) -> Result<(u32, Vec<(String, u32)>)> {
    if level > 8 {
        bail!("calls nest deeper than the verifier allows (8 frames): recursion?");
    }
    let f = funcs
        .get(&at)
        .with_context(|| format!("a call to {at:?}, where no function starts"))?;
    let mut best = (0, Vec::new());
    for &c in &f.calls {
        let d = deepest(funcs, c, level + 1)?;
        if d.0 > best.0 {
            best = d;
        }
    }
    let mut frames = vec![(f.name.clone(), f.depth)];
    frames.extend(best.1);
    Ok((frame(f.depth) + best.0, frames))
}

/// Fails when a program's deepest chain exceeds the limit on 6.1.
pub fn check(path: &Path) -> Result<()> {
    let mut over = Vec::new();
    for c in chains(path)? {
        let chain = c
            .frames
            .iter()
            .map(|(n, d)| format!("{n} {d}"))
            .collect::<Vec<_>>()
            .join(" -> ");
        println!(
            "xtask: stack {:<16} {:>3} of {LIMIT} bytes on 6.1 ({chain})",
            c.program, c.total
        );
        if c.total > LIMIT {
            over.push(c.program);
        }
    }
    if !over.is_empty() {
        bail!(
            "{} would exceed the verifier's {LIMIT}-byte stack on 6.1, where every frame is \
             rounded up to {ROUND} bytes: shrink the frames of the chain above",
            over.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = dst | (src << 4);
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    }

    #[test]
    fn frames_round_up_to_32_and_an_empty_one_still_costs_32() {
        assert_eq!(frame(0), 32);
        assert_eq!(frame(1), 32);
        assert_eq!(frame(56), 64);
        assert_eq!(frame(448), 448);
        assert_eq!(frame(449), 480);
    }

    #[test]
    fn depth_counts_direct_and_aliased_frame_pointer_accesses_and_calls() {
        let mut code = Vec::new();
        // *(u64 *)(r10 - 24) = r1
        code.extend(insn(0x7b, 10, 1, -24, 0));
        // r2 = r10; r2 += -40  (a key pointer handed to a helper)
        code.extend(insn(0xbf, 2, 10, 0, 0));
        code.extend(insn(0x07, 2, 0, 0, -40));
        // call +1 (a bpf-to-bpf call to the instruction after the next)
        code.extend(insn(0x85, 0, 1, 0, 1));
        // after a call r2 is no frame pointer: this store must not count
        code.extend(insn(0x7b, 2, 1, -100, 0));
        code.extend(insn(0x95, 0, 0, 0, 0));
        let (depth, calls) = scan(&code, 0, SectionIndex(3), &HashMap::new());
        assert_eq!(depth, 40);
        assert_eq!(calls, vec![(SectionIndex(3), 40)]);
    }

    #[test]
    fn the_built_object_is_within_the_limit_and_every_program_is_seen() {
        let obj = crate::root().join("target/bpfel-unknown-none/release/egress");
        assert!(
            obj.exists(),
            "no eBPF object at {}: run `cargo xtask build-ebpf` (`cargo xtask test` does)",
            obj.display()
        );
        let chains = chains(&obj).expect("chains");
        let names: Vec<&str> = chains.iter().map(|c| c.program.as_str()).collect();
        for p in egress_common::program_names::ALL {
            assert!(names.contains(&p), "{p} not found among {names:?}");
        }
        for c in &chains {
            assert!(c.total <= LIMIT, "{c:?}");
        }
    }
}
