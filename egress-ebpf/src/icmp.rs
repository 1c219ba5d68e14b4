//! ICMP: fragmentation-needed answers to pods, and reverse translation of ICMP errors that
//! the internet sends about translated flows.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use egress_common::{
    config::Config,
    counters::DropReason,
    nat::{NatEntry4, NatKey4},
};

use crate::{
    csum,
    maps::EGW_NAT4,
    nat::touch,
    parse::{
        load_exact, Packet4, ETH_HLEN, ICMP_CSUM, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_EXC_TTL,
        ICMP_FRAG_NEEDED, ICMP_ID, ICMP_TIME_EXCEEDED, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
        IP_CSUM_OFF, IP_DST_OFF, IP_OFF, TCP_CSUM, UDP_CSUM,
    },
};

/// Bytes of the offending packet quoted in an ICMP error: its IPv4 header (no options) and
/// the first 8 bytes of its payload.
const QUOTE_LEN: usize = 28;
const IP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const ICMP_TTL: u8 = 64;

#[inline(always)]
fn word(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

/// One's-complement checksum of `b[from..to]` (even length).
#[inline(always)]
fn checksum(b: &[u8; IP_HLEN + ICMP_HLEN + QUOTE_LEN], from: usize, to: usize) -> u16 {
    let mut s = 0u64;
    let mut i = from;
    while i + 1 < to {
        s += u64::from(word(b, i));
        i += 2;
    }
    csum::fold(s)
}

/// Turns the packet into an ICMP "fragmentation needed" (next-hop MTU `mtu`) addressed to its
/// sender, from this node, and sends it back out of the interface it came in on.
/// Only for packets with a 20-byte IPv4 header; never for ICMP errors.
#[inline(always)]
pub fn send_frag_needed(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    mtu: u32,
) -> Result<i32, DropReason> {
    let e = IcmpError {
        typ: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        mtu: mtu as u16,
        reason: DropReason::FragNeeded,
    };
    make_error(ctx, cfg, p, &e)?;
    send_back(ctx)
}

/// As `send_frag_needed`, an ICMP "time exceeded in transit" for a packet whose TTL ran out
/// on this hop.
#[inline(always)]
pub fn send_time_exceeded(ctx: &TcContext, cfg: &Config, p: &Packet4) -> Result<i32, DropReason> {
    make_time_exceeded(ctx, cfg, p)?;
    send_back(ctx)
}

/// Turns the packet into an ICMP "time exceeded in transit" from this node to its sender; the
/// caller sends it (the gateway: back through the tunnel).
#[inline(always)]
pub fn make_time_exceeded(ctx: &TcContext, cfg: &Config, p: &Packet4) -> Result<(), DropReason> {
    let e = IcmpError {
        typ: ICMP_TIME_EXCEEDED,
        code: ICMP_EXC_TTL,
        mtu: 0,
        reason: DropReason::TtlExceeded,
    };
    make_error(ctx, cfg, p, &e)
}

/// An ICMP error to build: type, code, next-hop MTU (0 if unused), and the drop reason when
/// none can be built.
struct IcmpError {
    typ: u8,
    code: u8,
    mtu: u16,
    reason: DropReason,
}

/// Sends the packet back out of the interface it came in on.
#[inline(always)]
fn send_back(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading a field of our own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Redirect);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Rewrites the packet in place into the ICMP error `e` addressed to its sender, from this
/// node, Ethernet addresses swapped.
#[inline(always)]
fn make_error(ctx: &TcContext, cfg: &Config, p: &Packet4, e: &IcmpError) -> Result<(), DropReason> {
    if p.l4_off != IP_OFF + IP_HLEN || p.is_icmp_error() {
        return Err(e.reason);
    }
    let mut macs = [0u8; 12];
    load_exact(ctx, 0, &mut macs)?;
    let mut quote = [0u8; QUOTE_LEN];
    load_exact(ctx, IP_OFF, &mut quote)?;
    let mut b = [0u8; IP_HLEN + ICMP_HLEN + QUOTE_LEN];
    b[IP_HLEN + ICMP_HLEN..].copy_from_slice(&quote);

    let tot_len = ((IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u16).to_be_bytes();
    b[0] = 0x45;
    b[1] = 0xc0; // precedence: internetwork control, as routers send errors
    b[2] = tot_len[0];
    b[3] = tot_len[1];
    b[8] = ICMP_TTL;
    b[9] = IPPROTO_ICMP;
    b[12..16].copy_from_slice(&cfg.node_ip4.to_ne_bytes());
    b[16..20].copy_from_slice(&p.saddr.to_ne_bytes());
    let ip_check = checksum(&b, 0, IP_HLEN);
    b[10..12].copy_from_slice(&ip_check.to_ne_bytes());

    b[IP_HLEN] = e.typ;
    b[IP_HLEN + 1] = e.code;
    b[IP_HLEN + 6..IP_HLEN + 8].copy_from_slice(&e.mtu.to_be_bytes());
    let icmp_check = checksum(&b, IP_HLEN, IP_HLEN + ICMP_HLEN + QUOTE_LEN);
    b[IP_HLEN + 2..IP_HLEN + 4].copy_from_slice(&icmp_check.to_ne_bytes());

    // SAFETY: plain helper call on our skb.
    let ret = unsafe {
        bpf_skb_change_tail(
            ctx.skb.skb,
            (ETH_HLEN + IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u32,
            0,
        )
    };
    if ret != 0 {
        return Err(e.reason);
    }
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0).map_err(|_| DropReason::Rewrite)?;
    ctx.store(IP_OFF, &b, 0).map_err(|_| DropReason::Rewrite)
}

/// Applies `bpf_l4_csum_replace` to the outer ICMP checksum for a 16- or 32-bit change.
#[inline(always)]
fn icmp_fix(
    ctx: &TcContext,
    csum_off: usize,
    from: u32,
    to: u32,
    size: u64,
) -> Result<(), DropReason> {
    if from == to {
        return Ok(());
    }
    ctx.l4_csum_replace(csum_off, from.into(), to.into(), size)
        .map_err(|_| DropReason::Rewrite)
}

/// If `p` is an ICMP error about a packet this gateway translated, rewrites it for the pod:
/// outer destination, the quoted header's source address and port (or echo identifier), the
/// quoted IPv4 and L4 checksums, and the ICMP checksum over all of it. Returns the flow's
/// reverse NAT entry; `Ok(None)` when the error is not about one of our flows.
#[inline(always)]
pub fn reverse_icmp_error(ctx: &TcContext, p: &Packet4) -> Result<Option<NatEntry4>, DropReason> {
    let iip = p.l4_off + ICMP_HLEN;
    let mut h = [0u8; IP_HLEN];
    load_exact(ctx, iip, &mut h)?;
    if h[0] >> 4 != 4 || h[0] & 0xf < 5 {
        return Err(DropReason::Malformed);
    }
    let il4 = iip + usize::from(h[0] & 0xf) * 4;
    let proto = h[9];
    let isaddr = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let idaddr = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    let mut l4 = [0u8; 8];
    load_exact(ctx, il4, &mut l4)?;
    let (isport, idport, port_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (word(&l4, 0), word(&l4, 2), il4),
        IPPROTO_ICMP if l4[0] == ICMP_ECHO => (word(&l4, ICMP_ID), 0, il4 + ICMP_ID),
        _ => return Ok(None),
    };
    if isaddr != p.daddr {
        return Ok(None);
    }
    let key = NatKey4 {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto,
        _pad: [0; 3],
    };
    let Some(e) = EGW_NAT4.get_ptr_mut(key) else {
        return Ok(None);
    };
    touch(e, p, true);
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
    icmp_fix(ctx, icsum, isaddr, e.addr, 4)?;
    icmp_fix(ctx, icsum, old_ih_check.into(), new_ih_check.into(), 2)?;

    // Quoted source port / echo identifier.
    if isport != e.port {
        ctx.store(port_off, &e.port, 0)
            .map_err(|_| DropReason::Rewrite)?;
        icmp_fix(ctx, icsum, isport.into(), e.port.into(), 2)?;
    }

    // Quoted L4 checksum, when the quote holds it.
    let l4_check_off = match proto {
        IPPROTO_UDP => il4 + UDP_CSUM,
        IPPROTO_TCP => il4 + TCP_CSUM,
        _ => il4 + ICMP_CSUM,
    };
    if let Ok(old) = ctx.load::<u16>(l4_check_off) {
        // A zero UDP checksum means "none" and stays zero.
        if !(proto == IPPROTO_UDP && old == 0) {
            let mut new = csum::replace16(old, isport, e.port);
            if proto != IPPROTO_ICMP {
                new = csum::replace32(new, isaddr, e.addr);
            }
            if proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            ctx.store(l4_check_off, &new, 0)
                .map_err(|_| DropReason::Rewrite)?;
            icmp_fix(ctx, icsum, old.into(), new.into(), 2)?;
        }
    }
    Ok(Some(e))
}
