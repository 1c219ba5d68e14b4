//! IPv6 from pods (issue 15). The gateway does not translate IPv6 yet, and until it does a
//! selected pod's IPv6 packet to a destination of its policy must not leave from its node's
//! own IPv6 address: that is the SPF failure the gateway exists to prevent, and nothing would
//! report it. A policy in `ipv6: refuse` mode (the default) has its IPv6 destinations
//! programmed with `ACTION_REFUSE` (`EGW_POLICY6`); such a packet is answered at once with an
//! ICMPv6 destination unreachable, administratively prohibited (RFC 4443), so that the pod's
//! TCP connect fails at once (EACCES) and a mail server moves on to the MX's IPv4 address
//! instead of waiting for a timeout. Neighbour discovery, MLD, link-local and multicast
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
/// TCP's sequence number, which the pod's kernel checks before it fails the connect).
const QUOTE: usize = IP6_HLEN + 8;
const IPPROTO_ICMPV6: u8 = 58;
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
    // SAFETY: inside the bounds `head` checked; unaligned reads of packet bytes.
    let src = unsafe {
        let p = h.as_ptr().add(SRC).cast::<u64>();
        p.read_unaligned() | p.add(1).read_unaligned()
    };
    if src == 0 {
        return Ok(NEXT); // duplicate address detection
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
    // Never an error about an error (RFC 4443 2.4): dropped, counted.
    if (icmp && icmp_type < ICMP6_INFO_MIN) || (ctx.len() as usize) < ETH_HLEN + QUOTE {
        return Err(DropReason::Ipv6Refused);
    }
    count_drop(DropReason::Ipv6Refused);
    refuse(ctx)?;
    send_back(ctx)
}

/// Turns the packet into the ICMPv6 destination unreachable (administratively prohibited)
/// that answers it: from the destination it was refused for, to the pod, quoting its first
/// `QUOTE` bytes, Ethernet addresses swapped. Built in the packet itself: its tail cut to the
/// quote, room for the new headers made in front of it.
#[inline(always)]
fn refuse(ctx: &TcContext) -> Result<(), DropReason> {
    // SAFETY: plain helper call on our skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + QUOTE) as u32, 0) } != 0 {
        return Err(DropReason::Rewrite);
    }
    ctx.adjust_room((IP6_HLEN + ICMP6_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| DropReason::Rewrite)?;
    const TOTAL: usize = ETH_HLEN + IP6_HLEN + ICMP6_HLEN + QUOTE;
    const Q: usize = L4 + ICMP6_HLEN;
    let h = head::<TOTAL>(ctx).ok_or(DropReason::Rewrite)?;
    // SAFETY: `head` checked the bounds; the program owns the packet's bytes.
    let h = unsafe { &mut *h };
    for i in 0..6 {
        h.swap(i, i + 6);
    }
    let len = ((ICMP6_HLEN + QUOTE) as u16).to_be_bytes();
    h[V6..SRC].copy_from_slice(&[0x60, 0, 0, 0, len[0], len[1], IPPROTO_ICMPV6, HOP_LIMIT]);
    // From the refused destination (the quote's), to the pod (the quote's source).
    for i in 0..16 {
        h[SRC + i] = h[Q + 24 + i];
        h[DST + i] = h[Q + 8 + i];
    }
    h[L4..Q].copy_from_slice(&[ICMP6_DST_UNREACH, ICMP6_ADMIN_PROHIBITED, 0, 0, 0, 0, 0, 0]);
    // The checksum: pseudo header (both addresses, the upper-layer length, the next header)
    // and the whole message, summed where they lie.
    let start = h.as_mut_ptr();
    // SAFETY: both ranges lie inside the packet (`head`); the helper only reads them.
    let sum = unsafe {
        let s = bpf_csum_diff(core::ptr::null_mut(), 0, start.add(SRC).cast(), 32, 0);
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            start.add(L4).cast(),
            (ICMP6_HLEN + QUOTE) as u32,
            s as u32,
        )
    };
    if sum < 0 {
        return Err(DropReason::Rewrite);
    }
    let pseudo = u64::from(u16::from_ne_bytes([0, (ICMP6_HLEN + QUOTE) as u8]))
        + u64::from(u16::from_ne_bytes([0, IPPROTO_ICMPV6]));
    let check = csum::fold(sum as u64 + pseudo).to_ne_bytes();
    h[L4 + 2] = check[0];
    h[L4 + 3] = check[1];
    Ok(())
}
