//! The NAT header rewrite on the gateway, which routes the packet: one side's address and port
//! (or ICMP echo identifier), every checksum that covers them, and one hop of TTL.

use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, programs::TcContext};
use egress_common::{counters::DropReason, proto::IPPROTO_ICMP};

use crate::{
    csum,
    l3::{self, Side},
    parse::{ptr_at_mut, Packet4, ICMP_ID},
};

/// Sets `side` of the packet to `addr`:`port` (network byte order) and routes it one hop on.
///
/// The L4 checksum goes through `bpf_l4_csum_replace`, the only way to handle CHECKSUM_PARTIAL
/// and CHECKSUM_COMPLETE skbs correctly (the address is in the pseudo header, the port not).
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    p: &Packet4,
    side: Side,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    let old_addr = side.addr(p);
    let (port_off, old_port) = match (p.proto, side) {
        (IPPROTO_ICMP, Side::Src) => (p.l4_off + ICMP_ID, p.sport),
        (IPPROTO_ICMP, Side::Dst) => (p.l4_off + ICMP_ID, p.dport),
        (_, Side::Src) => (p.l4_off, p.sport),
        (_, Side::Dst) => (p.l4_off + 2, p.dport),
    };
    l3::forward_as(ctx, p, side, addr)?;
    if old_port != port {
        let at: *mut u16 = ptr_at_mut(ctx, port_off)?;
        // SAFETY: bounds checked by ptr_at_mut; packet data has no alignment guarantee.
        unsafe { at.write_unaligned(port) };
    }
    let (csum_off, addr_flags) = csum::l4_csum(p);
    let mangled = addr_flags & BPF_F_MARK_MANGLED_0 as u64;
    if p.proto != IPPROTO_ICMP && old_addr != addr {
        csum::l4_replace(ctx, csum_off, old_addr, addr, addr_flags | 4)?;
    }
    if old_port != port {
        csum::l4_replace(ctx, csum_off, old_port.into(), port.into(), mangled | 2)?;
    }
    Ok(())
}
