//! Checksums: Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624) for
//! the headers the programs build or patch themselves, and the kernel's L4 checksum helper for
//! fields the pseudo header or the payload checksum covers (only it handles CHECKSUM_PARTIAL
//! and CHECKSUM_COMPLETE skbs correctly).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use egress_common::{
    counters::DropReason,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::parse::{Packet4, ICMP_CSUM, TCP_CSUM, UDP_CSUM};

/// Folds a 32/64-bit one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub fn fold(sum: u64) -> u16 {
    let mut s = sum;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit word changed from `old` to `new`.
/// All three values in the same byte order.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!check) + u64::from(!old) + u64::from(new);
    fold(sum)
}

/// As `replace16`, for a 32-bit field.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, (old >> 16) as u16, (new >> 16) as u16);
    replace16(c, old as u16, new as u16)
}

/// The 16-bit word at `b[i..i + 2]`, in packet byte order.
#[inline(always)]
pub fn word(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

/// The checksum of `b[from..to]` (even length).
#[inline(always)]
pub fn of_bytes<const N: usize>(b: &[u8; N], from: usize, to: usize) -> u16 {
    let mut s = 0u64;
    let mut i = from;
    while i + 1 < to {
        s += u64::from(word(b, i));
        i += 2;
    }
    fold(s)
}

/// Offset of the L4 checksum and the `bpf_l4_csum_replace` flags for a change of an address
/// (pseudo-header) field. ICMP has no pseudo header; a zero UDP checksum stays zero.
#[inline(always)]
pub fn l4_csum(p: &Packet4) -> (usize, u64) {
    match p.proto {
        IPPROTO_TCP => (p.l4_off + TCP_CSUM, BPF_F_PSEUDO_HDR as u64),
        IPPROTO_UDP => (
            p.l4_off + UDP_CSUM,
            (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
        ),
        _ => (p.l4_off + ICMP_CSUM, 0),
    }
}

/// `bpf_l4_csum_replace` of the checksum at `off` for a change `from` -> `to`; `flags` carry
/// the field size (2 or 4) and the pseudo-header bits. Nothing when nothing changes.
#[inline(always)]
pub fn l4_replace(
    ctx: &TcContext,
    off: usize,
    from: u32,
    to: u32,
    flags: u64,
) -> Result<(), DropReason> {
    if from == to {
        return Ok(());
    }
    ctx.l4_csum_replace(off, from.into(), to.into(), flags)
        .map_err(|_| DropReason::Rewrite)
}
