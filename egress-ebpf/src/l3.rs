//! IPv4 header writes on the hops the programs route: one hop less of TTL, optionally a new
//! source or destination address, with the header checksum updated here (RFC 1624).
//!
//! Header bytes are written through direct packet access: helper calls cost tens of ns each on
//! kernels with retpolines, and the header stays self-consistent, so a CHECKSUM_COMPLETE
//! `skb->csum` needs no change. Every caller has checked that the TTL is above 1.

use aya_ebpf::programs::TcContext;
use egress_common::counters::DropReason;

use crate::{
    csum,
    parse::{ptr_at_mut, Packet4, IP_OFF},
};

/// Which address of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source (SNAT of a pod's packet).
    Src,
    /// The destination (reverse NAT of a reply).
    Dst,
}

impl Side {
    /// The packet's current address on this side.
    #[inline(always)]
    pub fn addr(self, p: &Packet4) -> u32 {
        match self {
            Side::Src => p.saddr,
            Side::Dst => p.daddr,
        }
    }

    /// Offset of this side's address in the IPv4 header.
    #[inline(always)]
    fn header_off(self) -> usize {
        match self {
            Side::Src => 12,
            Side::Dst => 16,
        }
    }
}

/// Forwards without translation: one hop less.
#[inline(always)]
pub fn forward(ctx: &TcContext, p: &Packet4) -> Result<(), DropReason> {
    forward_as(ctx, p, Side::Src, p.saddr)
}

/// Forwards with `side`'s address set to `addr`: one hop less.
#[inline(always)]
pub fn forward_as(ctx: &TcContext, p: &Packet4, side: Side, addr: u32) -> Result<(), DropReason> {
    let h: *mut [u8; 20] = ptr_at_mut(ctx, IP_OFF)?;
    // SAFETY: bounds checked by ptr_at_mut; byte array, no alignment needed.
    let h = unsafe { &mut *h };
    let mut check = u16::from_ne_bytes([h[10], h[11]]);
    let old_addr = side.addr(p);
    if old_addr != addr {
        check = csum::replace32(check, old_addr, addr);
        let at = side.header_off();
        h[at..at + 4].copy_from_slice(&addr.to_ne_bytes());
    }
    // TTL and protocol form one 16-bit word of the checksum.
    let old = u16::from_ne_bytes([p.ttl, p.proto]);
    let new = u16::from_ne_bytes([p.ttl - 1, p.proto]);
    check = csum::replace16(check, old, new);
    h[8] = p.ttl - 1;
    h[10..12].copy_from_slice(&check.to_ne_bytes());
    Ok(())
}

/// Size of the largest IPv4 packet this skb becomes on the wire (GSO: one segment).
#[inline(always)]
pub fn wire_l3_len(ctx: &TcContext, p: &Packet4) -> u32 {
    // SAFETY: reading a field of our own context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return u32::from(p.tot_len);
    }
    let l4_hlen = if p.tcp_hlen > 0 { p.tcp_hlen } else { 8 };
    gso_size + (p.l4_off - IP_OFF + l4_hlen) as u32
}
