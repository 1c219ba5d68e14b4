//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624), for the headers
//! the programs build or patch themselves. Packet fields already covered by the kernel's
//! checksum helpers (`bpf_l3_csum_replace`, `bpf_l4_csum_replace`) go through those instead,
//! because only they handle CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs correctly.

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
