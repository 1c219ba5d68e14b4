//! ICMP errors this node builds: fragmentation-needed and time-exceeded answers to a pod's
//! packet. (Errors from the internet about translated flows: `nat::icmp`.)

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use egress_common::{config::Config, counters::DropReason, proto::IPPROTO_ICMP};

use crate::{
    csum,
    parse::{
        load_exact, Packet4, ETH_HLEN, ICMP_DEST_UNREACH, ICMP_EXC_TTL, ICMP_FRAG_NEEDED,
        ICMP_HLEN, ICMP_TIME_EXCEEDED, IP_HLEN, IP_OFF,
    },
};

/// Bytes of the offending packet quoted in an ICMP error: its IPv4 header (no options) and
/// the first 8 bytes of its payload.
const QUOTE_LEN: usize = 28;
const ICMP_TTL: u8 = 64;

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
    make_frag_needed(ctx, cfg, p, mtu)?;
    send_back(ctx)
}

/// Turns the packet into an ICMP "fragmentation needed" (next-hop MTU `mtu`) from this node to
/// its sender; the caller sends it (the gateway: back through the tunnel).
#[inline(always)]
pub fn make_frag_needed(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    mtu: u32,
) -> Result<(), DropReason> {
    let e = IcmpError {
        typ: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        mtu: mtu as u16,
        reason: DropReason::FragNeeded,
    };
    make_error(ctx, cfg, p, &e)
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
pub fn send_back(ctx: &TcContext) -> Result<i32, DropReason> {
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
    let ip_check = csum::of_bytes(&b, 0, IP_HLEN);
    b[10..12].copy_from_slice(&ip_check.to_ne_bytes());

    b[IP_HLEN] = e.typ;
    b[IP_HLEN + 1] = e.code;
    b[IP_HLEN + 6..IP_HLEN + 8].copy_from_slice(&e.mtu.to_be_bytes());
    let icmp_check = csum::of_bytes(&b, IP_HLEN, IP_HLEN + ICMP_HLEN + QUOTE_LEN);
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
