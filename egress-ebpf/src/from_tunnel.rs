//! `egw_from_tunnel`, tc ingress on the VXLAN device `egw0`. On a source node: a reply for one
//! of its pods. On the gateway: a selected pod's packet from its node, translated and sent to
//! the internet.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use egress_common::counters::DropReason;

use crate::{
    counters::{count_drop, count_rx},
    gateway::snat_and_send,
    icmp,
    maps::{config, LookupCopy, EGW_ENDPOINTS4, EGW_NODES4, EGW_REMOTE_EP4},
    nat::SnatTarget,
    parse::parse4,
    policy,
    tunnel::{self, redirect_neigh, redirect_to_tunnel},
};

pub fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
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
    if let Some(ep) = EGW_ENDPOINTS4.lookup_copy(p.daddr) {
        count_rx(ep.policy_id, ctx.len());
        return redirect_neigh(ep.ifindex);
    }
    // Gateway: a selected pod of the sending node, to a destination of its policy that this
    // node is the gateway for.
    let Some(rep) = EGW_REMOTE_EP4.lookup_copy(p.saddr) else {
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
    let t = SnatTarget {
        egress_ip: pol.egress_ip4,
        node_ip: remote,
        policy_id: vni,
    };
    snat_and_send(ctx, cfg, &p, &t)
}
