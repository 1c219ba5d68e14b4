//! The gateway's SNAT engine: NAT/conntrack entries (both directions in one LRU hash) and the
//! header rewrites. Deciding (`snat_mapping`) is separate from acting (`rewrite_src`,
//! `rewrite_dst`).

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, BPF_EXIST, BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        BPF_NOEXIST,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_sk_lookup_udp, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use egress_common::{
    config::Config,
    counters::{DropReason, NAT_STAT_ALLOCATIONS, NAT_STAT_PORT_RETRIES},
    nat::{NatEntry4, NatKey4, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET, NAT_F_REVERSE},
};

use crate::{
    counters::count_nat,
    csum,
    maps::{EGW_FRAG4, EGW_NAT4},
    parse::{
        ptr_at_mut, Packet4, ICMP_CSUM, ICMP_ID, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_OFF,
        TCP_ACK, TCP_CSUM, TCP_FIN, TCP_RST, TCP_SYN, UDP_CSUM,
    },
};

/// Random port tries after the pod's own port is taken.
const PORT_RETRIES: u32 = 32;
/// A flow closed by FINs in both directions gives its port to a new connection after being
/// idle this long (its last ACK has arrived by then). A reset flow gives it at once.
const CLOSED_REUSE_NS: u64 = 1_000_000_000;
/// A reset flow's port waits this long: the RST may still be on its way to the remote (taking
/// another CPU's path), and a SYN on the same tuple overtaking it meets a live connection
/// there, which costs the new connection a SYN retransmission (a second).
const RESET_REUSE_NS: u64 = 100_000_000;

/// `last_seen_ns` is refreshed at most this often (fewer writes to shared cache lines).
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;
const EEXIST: i32 = 17;

/// The source address and port a flow leaves with.
#[derive(Clone, Copy)]
pub struct Mapping {
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
}

/// Conntrack state implied by a packet's TCP flags (non-TCP: established after any packet).
#[inline(always)]
fn next_state(cur: u8, p: &Packet4, reply: bool) -> u8 {
    if p.proto != IPPROTO_TCP {
        return if reply { CT_ESTABLISHED } else { cur };
    }
    if p.tcp_flags & TCP_RST != 0 {
        CT_RESET
    } else if p.tcp_flags & TCP_FIN != 0 {
        if cur < CT_CLOSING {
            CT_CLOSING
        } else {
            cur
        }
    } else if reply && cur == CT_NEW {
        CT_ESTABLISHED
    } else if !reply && p.tcp_flags & TCP_SYN != 0 && cur > CT_ESTABLISHED {
        // A new SYN on a closed tuple starts over.
        CT_NEW
    } else {
        cur
    }
}

/// Refreshes an entry's `last_seen_ns` and state.
#[inline(always)]
pub fn touch(e: *mut NatEntry4, p: &Packet4, reply: bool) {
    // SAFETY: `e` comes from a map lookup in this program run; racing writers only store
    // whole aligned integers, which is what expiry needs.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        let state = next_state((*e).state, p, reply);
        if state != (*e).state {
            (*e).state = state;
            (*e).last_seen_ns = now;
        } else if now.saturating_sub((*e).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*e).last_seen_ns = now;
        }
    }
}

#[inline(always)]
fn is_new_syn(p: &Packet4) -> bool {
    p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Runs `f` while holding the claim on reverse key `rkey`; `None` if another CPU holds it.
/// Every change of a reverse entry's owner happens under the claim, so two CPUs can never
/// both hand one port to a new flow.
#[inline(always)]
fn with_claim<T>(rkey: &NatKey4, f: impl FnOnce() -> T) -> Option<T> {
    let ckey = rkey.claim();
    EGW_NAT4
        .insert(ckey, NatEntry4::default(), BPF_NOEXIST as u64)
        .ok()?;
    let r = f();
    let _ = EGW_NAT4.remove(ckey);
    Some(r)
}

/// Whether the flow that owns reverse entry `rev` is over, so that its port may serve a new
/// connection to the same remote: reset in either direction, or closed by FINs in both, and
/// quiet since. A flow whose forward entry is gone sends nothing any more.
#[inline(always)]
fn closed(rev: &NatEntry4, fwd: Option<&NatEntry4>, now: u64) -> bool {
    let (fstate, flast) = match fwd {
        Some(f) => (f.state, f.last_seen_ns),
        None => (CT_CLOSING, 0),
    };
    let last = if flast > rev.last_seen_ns {
        flast
    } else {
        rev.last_seen_ns
    };
    let quiet = now.saturating_sub(last);
    if rev.state == CT_RESET || fstate == CT_RESET {
        return quiet >= RESET_REUSE_NS;
    }
    rev.state == CT_CLOSING && fstate == CT_CLOSING && quiet >= CLOSED_REUSE_NS
}

/// Hands the port of reverse key `rkey` to a new flow (reverse value `rval`) if the flow that
/// holds it is over (see `closed`), as conntrack lets a new SYN reuse a closed tuple. The old
/// flow's forward entry goes; if its pod reuses the tuple, it gets a port of its own.
#[inline(always)]
fn take_over(rkey: &NatKey4, rval: &NatEntry4, now: u64) -> bool {
    with_claim(rkey, || {
        // SAFETY: copied out at once.
        let Some(old) = EGW_NAT4.get_ptr(*rkey).map(|e| unsafe { *e }) else {
            return false;
        };
        let okey = rkey.forward_of(old.addr, old.port);
        // SAFETY: copied out at once.
        let ofwd = EGW_NAT4.get_ptr(okey).map(|e| unsafe { *e });
        // A forward entry that maps elsewhere is not this flow's.
        let ofwd = ofwd.filter(|f| f.addr == rkey.daddr && f.port == rkey.dport);
        if !closed(&old, ofwd.as_ref(), now) {
            return false;
        }
        if EGW_NAT4.insert(*rkey, *rval, BPF_EXIST as u64).is_err() {
            return false;
        }
        if ofwd.is_some() {
            let _ = EGW_NAT4.remove(okey);
        }
        true
    })
    .unwrap_or(false)
}

/// For a SYN that reuses the tuple of a closed flow: whether the flow's port is still its
/// own (then the reverse entry starts over with it), or went to another flow meanwhile.
#[inline(always)]
fn still_owns(p: &Packet4, m: Mapping) -> bool {
    let rkey = p.nat_key().reply_to(m.addr, m.port);
    with_claim(&rkey, || match EGW_NAT4.get_ptr_mut(rkey) {
        // SAFETY: valid map value pointer.
        Some(r) if unsafe { (*r).addr == p.saddr && (*r).port == p.sport } => {
            touch(r, p, false);
            true
        }
        _ => false,
    })
    .unwrap_or(false)
}

/// Whether a host socket owns the reply tuple `rkey` (then the port is not free).
#[inline(always)]
fn host_socket_owns(ctx: &TcContext, rkey: &NatKey4) -> bool {
    // SAFETY: zeroed is a valid bpf_sock_tuple.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the ipv4 arm of the union.
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = rkey.saddr;
        t.daddr = rkey.daddr;
        t.sport = rkey.sport;
        t.dport = rkey.dport;
    }
    let size = 12u32;
    let skb = ctx.skb.skb.cast();
    // SAFETY: helper calls with a valid tuple; every returned socket is released.
    unsafe {
        let sk = match rkey.proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0),
            _ => return false,
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
    }
    true
}

/// Finds the mapping of a forward flow, or allocates one: the pod's own port when it lies in
/// the NAT range and is free, else random ports in the range. The reverse entry is inserted
/// first with BPF_NOEXIST, so a taken port is never overwritten; a port some host socket uses
/// is skipped as well.
#[inline(always)]
pub fn snat_mapping(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    egress_ip: u32,
    node_ip: u32,
    policy_id: u32,
) -> Result<Mapping, DropReason> {
    let key = p.nat_key();
    let syn = is_new_syn(p);
    if let Some(e) = EGW_NAT4.get_ptr_mut(key) {
        // SAFETY: valid map value pointer.
        let (addr, port, state, last) =
            unsafe { ((*e).addr, (*e).port, (*e).state, (*e).last_seen_ns) };
        let m = Mapping { addr, port };
        // A pod may open a new connection on the tuple of one it closed a moment ago. The
        // remote may not have processed that close yet (the last RST can be overtaken on
        // another CPU's path), and a SYN on its live tuple would be lost: such a SYN gets a
        // fresh port; the old reverse entry stays for the old flow's last packets.
        // SAFETY: helper without arguments.
        let just_closed = syn
            && state > CT_ESTABLISHED
            && unsafe { bpf_ktime_get_coarse_ns() }.saturating_sub(last) < RESET_REUSE_NS;
        if addr == egress_ip && !just_closed {
            // A new connection on an existing tuple (a closed one reused, or a SYN sent
            // again): its port may have gone to another flow (see `take_over`), and the
            // reverse entry must start over with it so that the port is not handed on.
            if !syn || still_owns(p, m) {
                touch(e, p, false);
                return Ok(m);
            }
            let _ = EGW_NAT4.remove(key);
        } else if addr == egress_ip {
            let _ = EGW_NAT4.remove(key);
        } else {
            // The policy's egress IP changed: the old mapping is stale, start over.
            let _ = EGW_NAT4.remove(key.reply_to(addr, port));
            let _ = EGW_NAT4.remove(key);
        }
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let state = next_state(CT_NEW, p, false);
    let min = u32::from(cfg.nat_port_min);
    let max = u32::from(cfg.nat_port_max);
    if min == 0 || max < min {
        return Err(DropReason::NoGatewayConfig);
    }
    let span = max - min + 1;
    let pod_port = u32::from(u16::from_be(p.sport));
    let mut cand = pod_port;
    let mut i = 0;
    while i <= PORT_RETRIES {
        if i > 0 || cand < min || cand > max {
            // SAFETY: helper without arguments.
            cand = min
                + unsafe { bpf_get_prandom_u32() }
                    .checked_rem(span)
                    .unwrap_or(0);
        }
        i += 1;
        let port = (cand as u16).to_be();
        let rkey = key.reply_to(egress_ip, port);
        if host_socket_owns(ctx, &rkey) {
            count_nat(NAT_STAT_PORT_RETRIES);
            continue;
        }
        let rval = NatEntry4 {
            addr: p.saddr,
            port: p.sport,
            flags: NAT_F_REVERSE,
            state,
            node_ip4: node_ip,
            policy_id,
            last_seen_ns: now,
        };
        match EGW_NAT4.insert(rkey, rval, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => {
                if !(syn && take_over(&rkey, &rval, now)) {
                    count_nat(NAT_STAT_PORT_RETRIES);
                    continue;
                }
            }
            Err(_) => return Err(DropReason::NatInsertFailed),
        }
        let fval = NatEntry4 {
            addr: egress_ip,
            port,
            flags: 0,
            state,
            node_ip4: node_ip,
            policy_id,
            last_seen_ns: now,
        };
        return match EGW_NAT4.insert(key, fval, BPF_NOEXIST as u64) {
            Ok(()) => {
                count_nat(NAT_STAT_ALLOCATIONS);
                Ok(Mapping {
                    addr: egress_ip,
                    port,
                })
            }
            Err(e) => {
                let _ = EGW_NAT4.remove(rkey);
                // Another CPU created the flow's mapping first: use it.
                match (e == -EEXIST).then(|| EGW_NAT4.get_ptr(key)).flatten() {
                    // SAFETY: valid map value pointer.
                    Some(v) => Ok(unsafe {
                        Mapping {
                            addr: (*v).addr,
                            port: (*v).port,
                        }
                    }),
                    None => Err(DropReason::NatInsertFailed),
                }
            }
        };
    }
    Err(DropReason::NatExhausted)
}

/// For the first fragment of a datagram, translated by `e`: remembers the flow under the
/// datagram's `{source, destination, IP id}` for its later fragments, which carry no ports.
/// Nothing for an unfragmented packet.
#[inline(always)]
pub fn remember_fragments(p: &Packet4, e: &NatEntry4) {
    if p.is_fragment() {
        let _ = EGW_FRAG4.insert(p.frag_key(), *e, 0);
    }
}

/// The flow of a later fragment, left by its datagram's first fragment.
#[inline(always)]
pub fn fragment_flow(p: &Packet4) -> Option<NatEntry4> {
    // SAFETY: copied out at once.
    EGW_FRAG4.get_ptr(p.frag_key()).map(|e| unsafe { *e })
}

/// Looks up the reverse entry of a reply and refreshes it. Returns the entry by value.
#[inline(always)]
pub fn reverse_lookup(p: &Packet4) -> Option<NatEntry4> {
    let e = EGW_NAT4.get_ptr_mut(p.nat_key())?;
    touch(e, p, true);
    // SAFETY: valid map value pointer.
    Some(unsafe { *e })
}

/// Offset of the L4 checksum and the `bpf_l4_csum_replace` flags for a change of an address
/// (pseudo-header) field. ICMP has no pseudo header.
#[inline(always)]
fn l4_csum(p: &Packet4) -> (usize, u64) {
    match p.proto {
        IPPROTO_TCP => (p.l4_off + TCP_CSUM, BPF_F_PSEUDO_HDR as u64),
        IPPROTO_UDP => (
            p.l4_off + UDP_CSUM,
            (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
        ),
        _ => (p.l4_off + ICMP_CSUM, 0),
    }
}

/// Rewrites one side (source or destination) of the packet: address, port or ICMP identifier,
/// every checksum that covers them, and (`hop`) the TTL.
///
/// Header bytes are written through direct packet access and the IPv4 header checksum is
/// updated here (RFC 1624): helper calls cost tens of ns each on kernels with retpolines,
/// and the header stays self-consistent, so a CHECKSUM_COMPLETE `skb->csum` needs no change.
/// The L4 checksum goes through `bpf_l4_csum_replace`, the only way to handle CHECKSUM_PARTIAL
/// and CHECKSUM_COMPLETE skbs correctly (the address is in the pseudo header, the port not).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet4,
    src: bool,
    new_addr: u32,
    new_port: u16,
    hop: bool,
) -> Result<(), DropReason> {
    let old_addr = if src { p.saddr } else { p.daddr };
    let (port_off, old_port) = match (p.proto, src) {
        (IPPROTO_ICMP, true) => (p.l4_off + ICMP_ID, p.sport),
        (IPPROTO_ICMP, false) => (p.l4_off + ICMP_ID, p.dport),
        (_, true) => (p.l4_off, p.sport),
        (_, false) => (p.l4_off + 2, p.dport),
    };
    write_ip(ctx, p, src, new_addr, hop)?;
    if old_port != new_port {
        let port: *mut u16 = ptr_at_mut(ctx, port_off)?;
        // SAFETY: bounds checked by ptr_at_mut; packet data has no alignment guarantee.
        unsafe { port.write_unaligned(new_port) };
    }
    let (csum_off, addr_flags) = l4_csum(p);
    let mangled = addr_flags & BPF_F_MARK_MANGLED_0 as u64;
    if p.proto != IPPROTO_ICMP && old_addr != new_addr {
        ctx.l4_csum_replace(csum_off, old_addr.into(), new_addr.into(), addr_flags | 4)
            .map_err(|_| DropReason::Rewrite)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(csum_off, old_port.into(), new_port.into(), mangled | 2)
            .map_err(|_| DropReason::Rewrite)?;
    }
    Ok(())
}

/// Writes the IPv4 source (`src`) or destination address and, with `hop`, one hop less of
/// TTL, updating the header checksum. The caller has checked that the TTL is above 1.
#[inline(always)]
fn write_ip(
    ctx: &TcContext,
    p: &Packet4,
    src: bool,
    new_addr: u32,
    hop: bool,
) -> Result<(), DropReason> {
    let h: *mut [u8; 20] = ptr_at_mut(ctx, IP_OFF)?;
    // SAFETY: bounds checked by ptr_at_mut; byte array, no alignment needed.
    let h = unsafe { &mut *h };
    let mut check = u16::from_ne_bytes([h[10], h[11]]);
    let old_addr = if src { p.saddr } else { p.daddr };
    if old_addr != new_addr {
        check = csum::replace32(check, old_addr, new_addr);
        let at = if src { 12 } else { 16 };
        h[at..at + 4].copy_from_slice(&new_addr.to_ne_bytes());
    }
    if hop {
        // TTL and protocol form one 16-bit word of the checksum.
        let old = u16::from_ne_bytes([p.ttl, p.proto]);
        let new = u16::from_ne_bytes([p.ttl - 1, p.proto]);
        check = csum::replace16(check, old, new);
        h[8] = p.ttl - 1;
    }
    h[10..12].copy_from_slice(&check.to_ne_bytes());
    Ok(())
}

/// SNAT of a later fragment (no L4 header): the source address becomes the egress IP, the
/// TTL one less.
#[inline(always)]
pub fn snat_addr_hop(ctx: &TcContext, p: &Packet4, addr: u32) -> Result<(), DropReason> {
    write_ip(ctx, p, true, addr, true)
}

/// Reverse NAT of a later fragment (no L4 header): the destination address becomes the pod's,
/// the TTL one less.
#[inline(always)]
pub fn rnat_addr_hop(ctx: &TcContext, p: &Packet4, addr: u32) -> Result<(), DropReason> {
    write_ip(ctx, p, false, addr, true)
}

/// Forwarding without translation: one hop less. The caller has checked that the TTL is
/// above 1.
#[inline(always)]
pub fn dec_ttl(ctx: &TcContext, p: &Packet4) -> Result<(), DropReason> {
    write_ip(ctx, p, true, p.saddr, true)
}

/// SNAT on the gateway, which routes the packet: the source becomes `m`, the TTL one less.
#[inline(always)]
pub fn snat_hop(ctx: &TcContext, p: &Packet4, m: Mapping) -> Result<(), DropReason> {
    rewrite(ctx, p, true, m.addr, m.port, true)
}

/// Reverse NAT on the gateway, which routes the reply: the destination becomes the pod's
/// address and port, the TTL one less.
#[inline(always)]
pub fn rnat_hop(ctx: &TcContext, p: &Packet4, addr: u32, port: u16) -> Result<(), DropReason> {
    rewrite(ctx, p, false, addr, port, true)
}
