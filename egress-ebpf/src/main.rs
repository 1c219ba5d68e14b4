//! tc programs of the egress gateway. Entry points only; the work is in the modules.
//!
//! - `egw_from_pod`    tc ingress on each pod's host-side veth (source node).
//! - `egw_from_tunnel` tc ingress on the VXLAN device (gateway: SNAT; source node: replies).
//! - `egw_from_wire`   tc ingress on the uplink (gateway: reverse NAT of replies).
#![no_std]
#![no_main]

mod counters;
mod csum;
mod icmp;
mod maps;
mod nat;
mod parse;
mod policy;
mod tcp;
mod tunnel;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use egress_common::{
    config::Config,
    counters::DropReason,
    endpoint::{Endpoint, EP_F_SELECTED},
    nat::{NatEntry4, NAT_F_REVERSE},
};

use crate::{
    counters::{count_drop, count_rx, count_tx},
    maps::{config, EGW_ENDPOINTS4, EGW_NODES4, EGW_REMOTE_EP4},
    parse::{parse4, Packet4, IPPROTO_ICMP, IP_DF},
    tunnel::{redirect_neigh, redirect_to_tunnel},
};

/// IPv4 + TCP header bytes that an MSS excludes.
const TCPIP_HLEN: u32 = 40;

#[inline(always)]
fn verdict(r: Result<i32, DropReason>) -> i32 {
    match r {
        Ok(v) => v,
        Err(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

#[classifier]
pub fn egw_from_pod(ctx: TcContext) -> i32 {
    verdict(try_from_pod(&ctx))
}

#[classifier]
pub fn egw_from_tunnel(ctx: TcContext) -> i32 {
    verdict(try_from_tunnel(&ctx))
}

#[classifier]
pub fn egw_from_wire(ctx: TcContext) -> i32 {
    verdict(try_from_wire(&ctx))
}

#[inline(always)]
fn local_endpoint(addr: u32) -> Option<Endpoint> {
    // SAFETY: copied out at once.
    EGW_ENDPOINTS4.get_ptr(addr).map(|e| unsafe { *e })
}

/// Size of the largest IPv4 packet this skb becomes on the wire (GSO: one segment).
#[inline(always)]
fn wire_l3_len(ctx: &TcContext, p: &Packet4) -> u32 {
    // SAFETY: reading a field of our own context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return u32::from(p.tot_len);
    }
    let l4_hlen = if p.tcp_hlen > 0 { p.tcp_hlen } else { 8 };
    gso_size + (p.l4_off - parse::IP_OFF + l4_hlen) as u32
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(p) = parse4(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    let Some(ep) = local_endpoint(p.saddr) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: reading a field of our own context.
    if ep.ifindex != unsafe { (*ctx.skb.skb).ingress_ifindex } {
        return Err(DropReason::Spoofed);
    }
    if ep.flags & EP_F_SELECTED == 0 {
        return Ok(TC_ACT_OK);
    }
    let Some(pol) = policy::via_gateway(ep.policy_id, p.daddr) else {
        return Ok(TC_ACT_OK);
    };
    policy::check_translatable(&p)?;
    // This node routes the packet (as the kernel would, one hop): time-exceeded comes from here
    // (about the first fragment only, as routers do).
    if p.ttl <= 1 {
        if p.is_later_fragment() {
            return Err(DropReason::TtlExceeded);
        }
        count_drop(DropReason::TtlExceeded);
        return icmp::send_time_exceeded(ctx, cfg, &p);
    }
    if pol.gateway_ip4 == cfg.node_ip4 {
        return snat_and_send(ctx, cfg, &p, pol.egress_ip4, cfg.node_ip4, ep.policy_id);
    }
    if wire_l3_len(ctx, &p) > cfg.tunnel_mtu && p.frag_off & IP_DF != 0 {
        count_drop(DropReason::FragNeeded);
        return icmp::send_frag_needed(ctx, cfg, &p, cfg.tunnel_mtu);
    }
    nat::dec_ttl(ctx, &p)?;
    tcp::clamp_mss(ctx, &p, (cfg.tunnel_mtu - TCPIP_HLEN) as u16)?;
    count_tx(ep.policy_id, ctx.len());
    redirect_to_tunnel(ctx, cfg.tunnel_ifindex, pol.gateway_ip4, ep.policy_id)
}

/// Gateway: translate the source and send the packet to the internet, one hop (TTL) on.
#[inline(always)]
fn snat_and_send(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    egress_ip: u32,
    node_ip: u32,
    policy_id: u32,
) -> Result<i32, DropReason> {
    if p.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    if p.is_later_fragment() {
        // No ports here: the datagram's first fragment was translated and left its mapping.
        let Some(e) = nat::fragment_flow(p) else {
            return Err(DropReason::Fragment);
        };
        nat::snat_addr_hop(ctx, p, e.addr)?;
    } else {
        let m = nat::snat_mapping(ctx, cfg, p, egress_ip, node_ip, policy_id)?;
        let e = NatEntry4 {
            addr: m.addr,
            port: m.port,
            node_ip4: node_ip,
            policy_id,
            ..NatEntry4::default()
        };
        nat::remember_fragments(p, &e);
        nat::snat_hop(ctx, p, m)?;
    }
    count_tx(policy_id, ctx.len());
    redirect_neigh(cfg.uplink_ifindex)
}

fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(p) = parse4(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    let (remote, vni) = tunnel::tunnel_source(ctx)?;
    if EGW_NODES4.get_ptr(remote).is_none() {
        return Err(DropReason::UnknownNode);
    }
    // Source node: a reply for one of our pods.
    if let Some(ep) = local_endpoint(p.daddr) {
        count_rx(ep.policy_id, ctx.len());
        return redirect_neigh(ep.ifindex);
    }
    // Gateway: a selected pod of the sending node, to a destination of its policy that this
    // node is the gateway for.
    // SAFETY: copied out at once.
    let Some(rep) = EGW_REMOTE_EP4.get_ptr(p.saddr).map(|e| unsafe { *e }) else {
        return Err(DropReason::UnknownTunnelEndpoint);
    };
    if rep.node_ip4 != remote || rep.policy_id != vni {
        return Err(DropReason::UnknownTunnelEndpoint);
    }
    let Some(pol) = policy::via_gateway(vni, p.daddr) else {
        return Err(DropReason::UnknownTunnelEndpoint);
    };
    if pol.gateway_ip4 != cfg.node_ip4 {
        return Err(DropReason::UnknownTunnelEndpoint);
    }
    policy::check_translatable(&p)?;
    // The gateway is the pod's second hop: an expiring TTL is answered through the tunnel.
    if p.ttl <= 1 {
        count_drop(DropReason::TtlExceeded);
        icmp::make_time_exceeded(ctx, cfg, &p)?;
        return redirect_to_tunnel(ctx, cfg.tunnel_ifindex, remote, vni);
    }
    snat_and_send(ctx, cfg, &p, pol.egress_ip4, remote, vni)
}

fn try_from_wire(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(p) = parse4(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    if p.is_icmp_error() {
        return match icmp::reverse_icmp_error(ctx, &p)? {
            Some(e) => deliver(ctx, cfg, &p, &e, false),
            None => Ok(TC_ACT_OK),
        };
    }
    let e = if p.is_later_fragment() {
        nat::fragment_flow(&p)
    } else if p.proto == IPPROTO_ICMP && p.dport == 0 {
        None
    } else {
        nat::reverse_lookup(&p).filter(|e| e.flags & NAT_F_REVERSE != 0)
    };
    let Some(e) = e else {
        return Ok(TC_ACT_OK);
    };
    // The gateway routes the reply: one hop. (ICMP errors above are left as they come.)
    if p.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    if p.is_later_fragment() {
        nat::rnat_addr_hop(ctx, &p, e.addr)?;
    } else {
        nat::remember_fragments(&p, &e);
        nat::rnat_hop(ctx, &p, e.addr, e.port)?;
    }
    deliver(ctx, cfg, &p, &e, !p.is_fragment())
}

/// Gateway: hands a reverse-translated packet to the pod, on this node or through the tunnel.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    e: &NatEntry4,
    clamp: bool,
) -> Result<i32, DropReason> {
    count_rx(e.policy_id, ctx.len());
    if e.node_ip4 == cfg.node_ip4 {
        let Some(ep) = local_endpoint(e.addr) else {
            return Err(DropReason::UnknownTunnelEndpoint);
        };
        return redirect_neigh(ep.ifindex);
    }
    if clamp {
        tcp::clamp_mss(ctx, p, (cfg.tunnel_mtu - TCPIP_HLEN) as u16)?;
    }
    redirect_to_tunnel(ctx, cfg.tunnel_ifindex, e.node_ip4, e.policy_id)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
