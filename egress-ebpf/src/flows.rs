//! The node's record of its selected pods' flows to destinations of their policies
//! (`EGW_FLOWS4`), and who opened each, see `egress_common::flow`.
//!
//! - `egw_from_pod` records a flow the pod opens when it sends it to the gateway;
//!   `egw_from_tunnel` delivers a packet to a local pod only if it answers such a flow (or is
//!   an ICMP error quoting one).
//! - `egw_to_pod` records a flow a peer opens towards the pod ([`opened_by_peer`]), and the
//!   pod's answers keep the normal path ([`known`], [`lookup`]): a NodePort, hostPort or LoadBalancer
//!   client gets its replies from the address it connected to.
//!
//! Why our own table and not the kernel's conntrack (`bpf_skb_ct_lookup`): at tc ingress of
//! the pod's veth the packet has not been through conntrack yet, so the kfunc costs a hash
//! lookup of its own on every packet, on top of this one, which the tunnel's source check needs
//! anyway; the kfunc needs nf_conntrack loaded and its module BTF resolved by the loader
//! (aya 0.14 does not resolve kfuncs); and the kernel's table is shared with everything on the
//! node, so its entries' lifetimes are not ours to reason about. Cilium keeps its own table for
//! the same decision (it skips CT_REPLY flows in its egress gateway).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use egress_common::{
    counters::DropReason,
    flow::{FlowEntry4, INBOUND},
    nat::NatEntry4,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    frag,
    maps::{LookupCopy, EGW_FLOWS4},
    parse::{Packet4, ICMP_ECHOREPLY, TCP_ACK, TCP_SYN},
    quote::quoted,
};

/// Who opened the flow of a selected pod's packet to a destination of its policy.
pub enum Opened {
    /// The pod: the packet goes to the gateway. The flow's record, if it has one.
    ByPod(Option<FlowEntry4>),
    /// The peer: the packet is the pod's answer and keeps the normal path.
    ByPeer,
}

/// Who opened the flow of `p`, a selected pod's packet to a destination of its policy, when
/// that is known without the flow table (`None`: ask [`lookup`]).
///
/// A SYN-ACK accepts a connection and an echo reply answers a ping (the peer's, always). An
/// ICMP error is about the flow of the packet it quotes (the pod received it). A later
/// fragment goes where its datagram's first fragment went.
#[inline(always)]
pub fn known(ctx: &TcContext, p: &Packet4) -> Result<Option<Opened>, DropReason> {
    if p.is_later_fragment() {
        return Ok(Some(match frag::flow_of(p) {
            Some(e) if e.node_ip4 == INBOUND => Opened::ByPeer,
            _ => Opened::ByPod(None),
        }));
    }
    match p.proto {
        IPPROTO_TCP if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
            Ok(Some(Opened::ByPeer))
        }
        IPPROTO_ICMP if p.icmp_type == ICMP_ECHOREPLY => Ok(Some(Opened::ByPeer)),
        IPPROTO_ICMP if p.is_icmp_error() => {
            let Some(q) = quoted(ctx, p)? else {
                return Ok(Some(Opened::ByPod(None)));
            };
            // The quoted packet came to the pod: its flow's key is the reverse.
            Ok(Some(match EGW_FLOWS4.lookup_copy(q.key.reversed()) {
                Some(f) if f.is_inbound() => Opened::ByPeer,
                f => Opened::ByPod(f),
            }))
        }
        _ => Ok(None),
    }
}

/// Who opened the flow of `p` (not a later fragment), by the flow table: one lookup, whose
/// record is handed on to [`record`].
#[inline(always)]
pub fn lookup(p: &Packet4) -> Opened {
    match EGW_FLOWS4.lookup_copy(p.nat_key()) {
        Some(f) if f.is_inbound() => {
            // The datagram's later fragments follow this one.
            frag::remember(p, || NatEntry4 {
                node_ip4: INBOUND,
                ..NatEntry4::default()
            });
            Opened::ByPeer
        }
        f => Opened::ByPod(f),
    }
}

/// Records that the pod sent `p` to `gateway` (this node's address when it is the gateway)
/// with `policy_id`; `known` is what [`lookup`] found. A write only for a new flow or a
/// changed gateway.
#[inline(always)]
pub fn record(p: &Packet4, known: Option<FlowEntry4>, gateway: u32, policy_id: u32) {
    // A later fragment has no ports; its datagram's first fragment recorded the flow.
    if p.is_later_fragment() {
        return;
    }
    let f = FlowEntry4 {
        gateway_ip4: gateway,
        policy_id,
    };
    if known == Some(f) {
        return;
    }
    let _ = EGW_FLOWS4.insert(p.nat_key(), f, 0);
}

/// On the way to a selected pod (`p` from a destination of its policy `policy_id`): records a
/// flow the peer opens, a TCP SYN or a UDP datagram of no known flow, so that the pod's answers
/// keep the normal path. Never over a flow the pod opened (the answers of the pod's own flows
/// pass here too, and a peer must not turn a flow of the pod's into its own); a flow the peer
/// opened stays as it is. An echo request needs no record (see [`known`]).
#[inline(always)]
pub fn opened_by_peer(p: &Packet4, policy_id: u32) {
    if p.is_later_fragment() {
        return;
    }
    let opens = match p.proto {
        IPPROTO_TCP => p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        IPPROTO_UDP => true,
        _ => false,
    };
    if !opens {
        return;
    }
    // The flow as the pod's packets carry it.
    let key = p.nat_key().reversed();
    if p.proto == IPPROTO_UDP && EGW_FLOWS4.get_ptr(key).is_some() {
        // Every datagram of a known flow: a lookup, no write.
        return;
    }
    let _ = EGW_FLOWS4.insert(key, FlowEntry4::inbound(policy_id), BPF_NOEXIST as u64);
}

/// The flow a packet from the tunnel answers: its reversed key, the quoted packet of an ICMP
/// error, or (a later fragment) the flow its datagram's first fragment answered.
#[inline(always)]
pub fn answered(ctx: &TcContext, p: &Packet4) -> Result<Option<FlowEntry4>, DropReason> {
    if p.is_later_fragment() {
        return Ok(frag::flow_of(p).map(|e| FlowEntry4 {
            gateway_ip4: e.node_ip4,
            policy_id: e.policy_id,
        }));
    }
    let key = if p.is_icmp_error() {
        let Some(q) = quoted(ctx, p)? else {
            return Ok(None);
        };
        // The error must be about a packet the pod itself sent.
        if q.key.saddr != p.daddr {
            return Ok(None);
        }
        q.key
    } else {
        p.nat_key().reversed()
    };
    let Some(f) = EGW_FLOWS4.lookup_copy(key) else {
        frag::forget(p);
        return Ok(None);
    };
    // The datagram's later fragments follow this one.
    frag::remember(p, || NatEntry4 {
        addr: p.daddr,
        node_ip4: f.gateway_ip4,
        policy_id: f.policy_id,
        ..NatEntry4::default()
    });
    Ok(Some(f))
}
