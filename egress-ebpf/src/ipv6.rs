//! IPv6 from pods (issue 15). The gateway does not translate IPv6 yet, and until it does a
//! selected pod's IPv6 packet to a destination of its policy must not leave from its node's
//! own IPv6 address: that is the SPF failure the gateway exists to prevent, and nothing would
//! report it. A policy in `ipv6: refuse` mode (the default) has its IPv6 destinations
//! programmed with `ACTION_REFUSE` (`EGW_POLICY6`); such a packet is answered at once: a TCP
//! SYN with a RST (the connect fails at once, ECONNREFUSED; see `reset` for why not ICMPv6),
//! anything else with an ICMPv6 destination unreachable, administratively prohibited
//! (RFC 4443), so that a mail server moves on to the MX's IPv4 address instead of waiting for
//! a timeout. Neighbour discovery, MLD, link-local and multicast
//! traffic is never touched; everything else keeps the normal path.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    btf_maps::lpm_trie::Key,
    helpers::{bpf_csum_diff, bpf_skb_change_tail},
    programs::TcContext,
};
use egress_common::{
    counters::DropReason,
    endpoint::EP_F_SELECTED,
    policy::{PolicyKey6, ACTION_REFUSE, POLICY_ID_BITS},
};

use crate::{
    counters::count_drop,
    csum,
    icmp::send_back,
    maps::{LookupCopy, EGW_ENDPOINTS4, EGW_POLICY6, EGW_VETH_PODS},
    parse::ETH_HLEN,
    NEXT,
};

pub const ETH_P_IPV6: u16 = 0x86dd;
const IP6_HLEN: usize = 40;
const ICMP6_HLEN: usize = 8;
/// Quoted in the answer: the packet's IPv6 header and the 8 bytes after it (the ports, and
/// TCP's sequence number, which the pod's kernel checks before it fails the connect)...
const QUOTE: usize = IP6_HLEN + 8;
/// ...or, from packets that long, 20 (a TCP header without options). The kernel cuts a packet
/// no shorter than the end of the checksum its sender left to the hardware (a pod's TCP
/// segment: CHECKSUM_PARTIAL, the TCP checksum ends 18 bytes into the TCP header), and a
/// quote must reach that far.
const QUOTE_LONG: usize = IP6_HLEN + 20;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_TCP: u8 = 6;
const TCP_HLEN: usize = 20;
const TCP_FLAGS: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_RST: u8 = 0x04;
const ICMP6_DST_UNREACH: u8 = 1;
const ICMP6_ADMIN_PROHIBITED: u8 = 1;
/// ICMPv6 types from 128 on are informational; below, errors (never answered with one).
const ICMP6_INFO_MIN: u8 = 128;
const HOP_LIMIT: u8 = 64;

const V6: usize = ETH_HLEN;
const NEXT_HDR: usize = V6 + 6;
const SRC: usize = V6 + 8;
const DST: usize = V6 + 24;
const L4: usize = V6 + IP6_HLEN;

/// Link-local (fe80::/10) by its first two bytes.
#[inline(always)]
fn link_local(hi: [u8; 2]) -> bool {
    hi[0] == 0xfe && hi[1] & 0xc0 == 0x80
}

/// Neighbour discovery (router/neighbour solicitation and advertisement, redirect) and
/// multicast listener messages: the link's own business.
#[inline(always)]
fn link_control(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=137 | 143)
}

/// The first `N` bytes of the packet, linear (pulled in if need be); `None` if it is shorter.
/// Read and written in place, never copied to the stack: this path's frame must stay small.
#[inline(always)]
fn head<const N: usize>(ctx: &TcContext) -> Option<*mut [u8; N]> {
    if ctx.data() + N > ctx.data_end() {
        let _ = ctx.pull_data(N as u32);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    (start + N <= end).then_some(start as *mut [u8; N])
}

/// `egw_from_pod` for a frame that is not IPv4. Out of line, with a small frame of its own:
/// the IPv4 path's frame is near the verifier's stack limit.
#[inline(never)]
pub fn from_pod6(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(h) = head::<L4>(ctx) else {
        return Ok(NEXT);
    };
    // SAFETY: `head` checked the bounds; reads of packet bytes.
    let h = unsafe { &*h };
    if u16::from_be_bytes([h[12], h[13]]) != ETH_P_IPV6 {
        return Ok(NEXT);
    }
    if h[V6] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    if h[DST] == 0xff || link_local([h[DST], h[DST + 1]]) || link_local([h[SRC], h[SRC + 1]]) {
        return Ok(NEXT);
    }
    // A value whatever the protocol: none left undefined for the verifier.
    let icmp = h[NEXT_HDR] == IPPROTO_ICMPV6;
    let icmp_type = if icmp {
        ctx.load::<u8>(L4).map_err(|_| DropReason::Malformed)?
    } else {
        0
    };
    if icmp && link_control(icmp_type) {
        return Ok(NEXT);
    }
    // The pod behind this veth, and its policy.
    // SAFETY: reading a field of our own context.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let Some(pod4) = EGW_VETH_PODS.lookup_copy(ifindex) else {
        return Ok(NEXT);
    };
    let Some(ep) = EGW_ENDPOINTS4.lookup_copy(pod4) else {
        return Ok(NEXT);
    };
    if ep.ifindex != ifindex || ep.flags & EP_F_SELECTED == 0 {
        return Ok(NEXT);
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[DST..DST + 16]);
    let key = Key::new(
        POLICY_ID_BITS + 128,
        PolicyKey6 {
            policy_id_be: ep.policy_id.to_be(),
            dst,
        },
    );
    match EGW_POLICY6.get(&key) {
        Some(v) if v.action == ACTION_REFUSE => {}
        _ => return Ok(NEXT),
    }
    // Never an error about an error (RFC 4443 2.4), nor one to no address (duplicate address
    // detection has no source yet, but goes to a multicast group, passed above): dropped,
    // counted. Read here, not kept across the lookups (the frame must stay small).
    // SAFETY: `head` checked the bounds; reads of packet bytes.
    let h = unsafe { &*head::<L4>(ctx).ok_or(DropReason::Malformed)? };
    // SAFETY: inside those bounds; unaligned reads.
    let unspecified = unsafe {
        let p = h.as_ptr().add(SRC).cast::<u64>();
        p.read_unaligned() | p.add(1).read_unaligned() == 0
    };
    if unspecified
        || (icmp && icmp_type < ICMP6_INFO_MIN)
        || (ctx.len() as usize) < ETH_HLEN + QUOTE
    {
        return Err(DropReason::Ipv6Refused);
    }
    count_drop(DropReason::Ipv6Refused);
    if h[NEXT_HDR] == IPPROTO_TCP
        && ctx
            .load::<u8>(L4 + TCP_FLAGS)
            .map_err(|_| DropReason::Malformed)?
            & (TCP_SYN | TCP_ACK)
            == TCP_SYN
    {
        reset(ctx)?;
        return send_back(ctx);
    }
    if (ctx.len() as usize) >= ETH_HLEN + QUOTE_LONG {
        refuse::<QUOTE_LONG>(ctx)?;
    } else {
        refuse::<QUOTE>(ctx)?;
    }
    send_back(ctx)
}

/// Turns a TCP SYN into the RST that refuses it (as nftables' `reject with tcp reset`): from
/// the destination, acknowledging the SYN, Ethernet addresses swapped. A TCP connect ends at
/// once (ECONNREFUSED): an ICMPv6 error would too from a router, but one sent back on the
/// SYN's own way in reaches the socket while `connect()` still holds it, and Linux then keeps
/// it as a soft error (`tcp_v6_err`): the connect would fail only at the first retransmission,
/// a second later. A RST waits in the socket's backlog and ends it on release.
#[inline(always)]
fn reset(ctx: &TcContext) -> Result<(), DropReason> {
    const LEN: usize = L4 + TCP_HLEN;
    // The kernel keeps what a CHECKSUM_PARTIAL segment's checksum covers: 18 bytes of TCP.
    // SAFETY: plain helper call on our skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, LEN as u32, 0) } != 0 {
        return Err(DropReason::Rewrite);
    }
    let h = head::<LEN>(ctx).ok_or(DropReason::Rewrite)?;
    // SAFETY: `head` checked the bounds; the program owns the packet's bytes.
    let h = unsafe { &mut *h };
    for i in 0..6 {
        h.swap(i, i + 6);
    }
    for i in 0..16 {
        h.swap(SRC + i, DST + i);
    }
    h[V6 + 4] = 0;
    h[V6 + 5] = TCP_HLEN as u8;
    h[V6 + 7] = HOP_LIMIT;
    let t = L4;
    h.swap(t, t + 2);
    h.swap(t + 1, t + 3);
    let seq = u32::from_be_bytes([h[t + 4], h[t + 5], h[t + 6], h[t + 7]]);
    let ack = seq.wrapping_add(1).to_be_bytes();
    h[t + 8..t + 12].copy_from_slice(&ack);
    h[t + 12] = (TCP_HLEN as u8 / 4) << 4;
    h[t + TCP_FLAGS] = TCP_RST | TCP_ACK;
    let start = h.as_mut_ptr();
    // Sequence number, window, checksum and urgent pointer zero (word stores: a zeroing
    // loop would become a `memset` call, a frame the 6.1 stack count adds).
    // SAFETY: inside the bounds `head` checked.
    unsafe {
        start.add(t + 4).cast::<u32>().write_unaligned(0);
        start.add(t + 14).cast::<u16>().write_unaligned(0);
        start.add(t + 16).cast::<u32>().write_unaligned(0);
    }
    // SAFETY: both ranges lie inside the packet (`head`); the helper only reads them.
    let sum = unsafe {
        let s = bpf_csum_diff(core::ptr::null_mut(), 0, start.add(SRC).cast(), 32, 0);
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            start.add(L4).cast(),
            TCP_HLEN as u32,
            s as u32,
        )
    };
    if sum < 0 {
        return Err(DropReason::Rewrite);
    }
    let pseudo = u64::from(u16::from_ne_bytes([0, TCP_HLEN as u8]))
        + u64::from(u16::from_ne_bytes([0, IPPROTO_TCP]));
    let check = csum::fold(sum as u64 + pseudo).to_ne_bytes();
    h[t + 16] = check[0];
    h[t + 17] = check[1];
    Ok(())
}

/// Turns the packet into the ICMPv6 destination unreachable (administratively prohibited)
/// that answers it: from the destination it was refused for, to the pod, quoting its first
/// `N` bytes, Ethernet addresses swapped. Built in the packet itself: its tail cut to the
/// quote, room for the new headers made in front of it.
#[inline(always)]
fn refuse<const N: usize>(ctx: &TcContext) -> Result<(), DropReason> {
    // SAFETY: plain helper call on our skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + N) as u32, 0) } != 0 {
        return Err(DropReason::Rewrite);
    }
    ctx.adjust_room((IP6_HLEN + ICMP6_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| DropReason::Rewrite)?;
    const Q: usize = L4 + ICMP6_HLEN;
    // Every byte written lies in the first `QUOTE` bytes of the quote.
    let h = head::<{ Q + QUOTE }>(ctx).ok_or(DropReason::Rewrite)?;
    // SAFETY: `head` checked the bounds; the program owns the packet's bytes.
    let h = unsafe { &mut *h };
    for i in 0..6 {
        h.swap(i, i + 6);
    }
    let msg = ICMP6_HLEN + N;
    let len = (msg as u16).to_be_bytes();
    h[V6..SRC].copy_from_slice(&[0x60, 0, 0, 0, len[0], len[1], IPPROTO_ICMPV6, HOP_LIMIT]);
    // From the refused destination (the quote's), to the pod (the quote's source).
    for i in 0..16 {
        h[SRC + i] = h[Q + 24 + i];
        h[DST + i] = h[Q + 8 + i];
    }
    h[L4..Q].copy_from_slice(&[ICMP6_DST_UNREACH, ICMP6_ADMIN_PROHIBITED, 0, 0, 0, 0, 0, 0]);
    // The checksum: pseudo header (both addresses, the upper-layer length, the next header)
    // and the whole message, summed where they lie.
    if ctx.data() + L4 + msg > ctx.data_end() {
        ctx.pull_data((L4 + msg) as u32)
            .map_err(|_| DropReason::Rewrite)?;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + L4 + msg > end {
        return Err(DropReason::Rewrite);
    }
    // SAFETY: both ranges lie inside the packet (checked above); the helper only reads them.
    let sum = unsafe {
        let s = bpf_csum_diff(core::ptr::null_mut(), 0, (start + SRC) as *mut u32, 32, 0);
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (start + L4) as *mut u32,
            msg as u32,
            s as u32,
        )
    };
    if sum < 0 {
        return Err(DropReason::Rewrite);
    }
    let pseudo = u64::from(u16::from_ne_bytes([0, msg as u8]))
        + u64::from(u16::from_ne_bytes([0, IPPROTO_ICMPV6]));
    let check = csum::fold(sum as u64 + pseudo).to_ne_bytes();
    ctx.store(L4 + 2, &check, 0)
        .map_err(|_| DropReason::Rewrite)
}
