//! Reverse translation of ICMP errors that the internet sends about translated flows (as
//! Cilium's snat_v4_icmp_rewrite_ingress_embedded): the outer destination becomes the pod, and
//! the quoted packet (the pod's own, as it left) gets the pod's address and port back, with
//! every checksum that covers them.

use aya_ebpf::programs::TcContext;
use egress_common::{
    counters::DropReason,
    nat::{NatEntry4, NatKey4, NAT_F_REVERSE},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack::refresh,
    csum::{self, word},
    maps::EGW_NAT4,
    parse::{Packet4, ICMP_CSUM, IP_CSUM_OFF, IP_DST_OFF, IP_OFF, TCP_CSUM, UDP_CSUM},
    quote::quoted,
};

/// If `p` is an ICMP error about a packet this gateway translated, rewrites it for the pod:
/// outer destination, the quoted header's source address and port (or echo identifier), the
/// quoted IPv4 and L4 checksums, and the ICMP checksum over all of it. Returns the flow's
/// reverse NAT entry; `Ok(None)` when the error is not about one of our flows.
#[inline(always)]
pub fn reverse_icmp_error(ctx: &TcContext, p: &Packet4) -> Result<Option<NatEntry4>, DropReason> {
    let Some(q) = quoted(ctx, p)? else {
        return Ok(None);
    };
    let (h, iip, il4, port_off) = (q.ip, q.ip_off, q.l4_off, q.port_off);
    let (isaddr, isport, proto) = (q.key.saddr, q.key.sport, q.key.proto);
    if isaddr != p.daddr {
        return Ok(None);
    }
    // Only what lies inside the datagram is the quote: bytes past its total length (a link
    // trailer) are neither read as its ports nor rewritten (the ICMP checksum does not cover
    // them).
    let end = IP_OFF + usize::from(p.tot_len);
    if port_off + 2 > end {
        return Ok(None);
    }
    // The reverse entry: the quoted packet's key as its reply would carry it.
    let key = NatKey4 {
        saddr: q.key.daddr,
        daddr: isaddr,
        sport: q.key.dport,
        dport: isport,
        proto,
        kind: 0,
        _pad: [0; 2],
    };
    let Some(e) = EGW_NAT4.get_ptr_mut(key) else {
        return Ok(None);
    };
    // SAFETY: valid map value pointer.
    if unsafe { (*e).flags } & NAT_F_REVERSE == 0 {
        // Errors are matched against reverse entries only.
        return Ok(None);
    }
    refresh(e);
    // SAFETY: valid map value pointer.
    let e = unsafe { *e };
    let icsum = p.l4_off + ICMP_CSUM;

    // Outer destination: the IPv4 checksum only (ICMP has no pseudo header).
    ctx.l3_csum_replace(IP_CSUM_OFF, p.daddr.into(), e.addr.into(), 4)
        .map_err(|_| DropReason::Rewrite)?;
    ctx.store(IP_DST_OFF, &e.addr, 0)
        .map_err(|_| DropReason::Rewrite)?;

    // Quoted IPv4 header: source address and its header checksum.
    let old_ih_check = word(&h, 10);
    let new_ih_check = csum::replace32(old_ih_check, isaddr, e.addr);
    ctx.store(iip + 12, &e.addr, 0)
        .map_err(|_| DropReason::Rewrite)?;
    ctx.store(iip + 10, &new_ih_check, 0)
        .map_err(|_| DropReason::Rewrite)?;
    csum::l4_replace(ctx, icsum, isaddr, e.addr, 4)?;
    csum::l4_replace(ctx, icsum, old_ih_check.into(), new_ih_check.into(), 2)?;

    // Quoted source port / echo identifier.
    if isport != e.port {
        ctx.store(port_off, &e.port, 0)
            .map_err(|_| DropReason::Rewrite)?;
        csum::l4_replace(ctx, icsum, isport.into(), e.port.into(), 2)?;
    }

    fix_quoted_l4_csum(
        ctx,
        proto,
        il4,
        end,
        (isaddr, isport),
        (e.addr, e.port),
        icsum,
    )?;
    Ok(Some(e))
}

/// Updates the quoted packet's L4 checksum (when the quote, which ends at `end`, holds it) for
/// its source changed from `old` to `new` (address, port), and the ICMP checksum at `icsum`
/// for that change.
#[inline(always)]
fn fix_quoted_l4_csum(
    ctx: &TcContext,
    proto: u8,
    il4: usize,
    end: usize,
    old: (u32, u16),
    new: (u32, u16),
    icsum: usize,
) -> Result<(), DropReason> {
    let l4_check_off = match proto {
        IPPROTO_UDP => il4 + UDP_CSUM,
        IPPROTO_TCP => il4 + TCP_CSUM,
        _ => il4 + ICMP_CSUM,
    };
    if l4_check_off + 2 > end {
        return Ok(());
    }
    let Ok(old_check) = ctx.load::<u16>(l4_check_off) else {
        return Ok(());
    };
    // A zero UDP checksum means "none" and stays zero.
    if proto == IPPROTO_UDP && old_check == 0 {
        return Ok(());
    }
    let mut check = csum::replace16(old_check, old.1, new.1);
    if proto != IPPROTO_ICMP {
        check = csum::replace32(check, old.0, new.0);
    }
    if proto == IPPROTO_UDP && check == 0 {
        check = 0xffff;
    }
    ctx.store(l4_check_off, &check, 0)
        .map_err(|_| DropReason::Rewrite)?;
    csum::l4_replace(ctx, icsum, old_check.into(), check.into(), 2)
}
