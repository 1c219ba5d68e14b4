//! Who may use the tunnel. Outer addresses prove nothing by themselves (a pod's UDP to a
//! node's tunnel port is masqueraded to the node's address; the internet can spoof node
//! addresses), so trust comes from where a tunnel packet arrived:
//!
//! - `egw_from_pod` drops every pod packet to the tunnel port of a cluster node's address
//!   ([`check_pod_packet`]);
//! - `egw_from_wire` on the underlay interface lets a tunnel packet on only if its outer source
//!   is a peer node and, for an on-link peer, its Ethernet source is that node's MAC; it marks
//!   the packet ([`underlay_gate`]), because the interface a packet arrived on is lost in
//!   decapsulation while the skb mark survives it;
//! - `egw_from_tunnel` takes only marked packets and clears the mark ([`take_mark`]). A packet
//!   that reaches the tunnel device any other way (to another interface or address, from a
//!   local process, ...) is dropped.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT},
    helpers::bpf_fib_lookup,
    programs::TcContext,
};
use egress_common::{
    config::Config,
    counters::DropReason,
    endpoint::{NODE_F_ADDRESS, NODE_F_ONLINK, NODE_F_PEER},
    proto::IPPROTO_UDP,
};
use network_types::eth::EthHdr;

use crate::{
    maps::{LookupCopy, EGW_NODES4},
    parse::{ptr_at, Packet4},
    NEXT,
};

const AF_INET: u8 = 2;

/// A pod packet to the tunnel port of a cluster node's address (or an egress IP) is an attempt
/// to use the tunnel: selected pod or not, it is dropped.
#[inline(always)]
pub fn check_pod_packet(cfg: &Config, p: &Packet4) -> Result<(), DropReason> {
    if p.proto != IPPROTO_UDP || p.dport != cfg.tunnel_port {
        return Ok(());
    }
    match EGW_NODES4.lookup_copy(p.daddr) {
        Some(n) if n.flags & NODE_F_ADDRESS != 0 => Err(DropReason::TunnelFromPod),
        _ => Ok(()),
    }
}

/// On the underlay: a tunnel packet to this node (UDP to the tunnel port of its underlay
/// address) passes, marked, only from a peer node, with the peer's MAC when it is on-link.
/// `Ok(None)`: not a tunnel packet on the underlay (the caller goes on).
///
/// A later fragment has no port: one that claims a peer's source is held to the same source
/// check, so nothing can be added to a tunnel datagram in reassembly.
#[inline(always)]
pub fn underlay_gate(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
) -> Result<Option<i32>, DropReason> {
    if p.proto != IPPROTO_UDP || p.daddr != cfg.node_ip4 {
        return Ok(None);
    }
    let later_fragment = p.is_later_fragment();
    if !later_fragment && p.dport != cfg.tunnel_port {
        return Ok(None);
    }
    // SAFETY: reading a field of our own context.
    if unsafe { (*ctx.skb.skb).ifindex } != cfg.underlay_ifindex {
        // Not on the underlay: never marked, so dropped after decapsulation.
        return Ok(None);
    }
    let peer = EGW_NODES4
        .lookup_copy(p.saddr)
        .filter(|n| n.flags & NODE_F_PEER != 0);
    let Some(n) = peer else {
        if later_fragment {
            return Ok(None);
        }
        return Err(DropReason::UnknownNode);
    };
    if n.flags & NODE_F_ONLINK != 0 {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY: bounds checked by ptr_at.
        let src = unsafe { (*eth).src_addr };
        // The agent's copy of the neighbour table first; the table itself when it differs
        // (a peer that has just resolved us: its MAC is in the kernel's table, learned from
        // its ARP request, a moment before the agent copies it).
        if src != n.mac && neighbour_mac(ctx, cfg, p.saddr) != Some(src) {
            return Err(DropReason::TunnelMacMismatch);
        }
    }
    // SAFETY: tc programs may write the mark of their own skb.
    unsafe { (*ctx.skb.skb).mark |= cfg.trust_mark };
    Ok(Some(NEXT))
}

/// The MAC the kernel's neighbour table holds for `peer` (network byte order) on the
/// underlay: a FIB lookup towards it, which answers with the next hop's MAC when the peer is
/// on-link and its neighbour entry valid. `None` when the route does not lead straight to the
/// peer over the underlay, or the entry is not resolved (or the interface does not forward:
/// the helper answers only then, and a Kubernetes node always forwards).
#[inline(always)]
fn neighbour_mac(ctx: &TcContext, cfg: &Config, peer: u32) -> Option<[u8; 6]> {
    // SAFETY: zeroed is a valid bpf_fib_lookup.
    let mut f: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    f.ifindex = cfg.underlay_ifindex;
    f.__bindgen_anon_3.ipv4_src = cfg.node_ip4;
    f.__bindgen_anon_4.ipv4_dst = peer;
    // SAFETY: the helper reads and writes `f`, of the size given.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut f,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    // SAFETY: the helper filled the IPv4 arms.
    let direct = unsafe { f.__bindgen_anon_4.ipv4_dst == peer };
    (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) && f.ifindex == cfg.underlay_ifindex && direct)
        .then_some(f.dmac)
}

/// After decapsulation: the packet must carry the underlay's mark; it is cleared, so that
/// nothing after us mistakes it for one of its own.
#[inline(always)]
pub fn take_mark(ctx: &TcContext, cfg: &Config) -> Result<(), DropReason> {
    let skb = ctx.skb.skb;
    // SAFETY: reading and writing the mark of our own context.
    unsafe {
        if (*skb).mark & cfg.trust_mark != cfg.trust_mark || cfg.trust_mark == 0 {
            return Err(DropReason::TunnelUntrusted);
        }
        (*skb).mark &= !cfg.trust_mark;
    }
    Ok(())
}

/// On the underlay's egress: a datagram to the tunnel port of a cluster node's address leaves
/// only if it is one of ours (marked when redirected into the tunnel device: the mark
/// survives the encapsulation, which happens in this namespace) or comes from a socket of
/// this node. A pod's datagram that reached the port through a Service or a NodePort (DNAT,
/// then the node's masquerade) is forwarded, not ours: its peer would take it for this
/// node's, so it is dropped (`tunnel_not_ours`). The mark is cleared on the way out.
#[inline(always)]
pub fn check_outgoing(ctx: &TcContext, cfg: &Config, p: &Packet4) -> Result<(), DropReason> {
    if p.proto != IPPROTO_UDP || p.dport != cfg.tunnel_port {
        return Ok(());
    }
    match EGW_NODES4.lookup_copy(p.daddr) {
        Some(n) if n.flags & NODE_F_ADDRESS != 0 => {}
        _ => return Ok(()),
    }
    let skb = ctx.skb.skb;
    // SAFETY: reading and writing fields of our own context.
    unsafe {
        if (*skb).mark & cfg.trust_mark != 0 {
            (*skb).mark &= !cfg.trust_mark;
            return Ok(());
        }
        if !(*skb).__bindgen_anon_2.sk.is_null() {
            // A local socket: the node's own process (a host-network pod is the node here).
            return Ok(());
        }
    }
    Err(DropReason::TunnelNotOurs)
}

/// Whether `addr` is the underlay address of a peer node.
#[inline(always)]
pub fn is_peer(addr: u32) -> bool {
    EGW_NODES4
        .lookup_copy(addr)
        .is_some_and(|n| n.flags & NODE_F_PEER != 0)
}
