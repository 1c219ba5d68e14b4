//! `egw_from_tunnel`, tc ingress on the VXLAN device `egw0`. Only packets that arrived on the
//! underlay from a peer node get here marked (see `trust`); anything else is dropped, as is
//! every frame that is not IPv4. On a source node: a reply for one of its pods, delivered only
//! if it answers a flow the pod opened through that gateway. On the gateway: a selected pod's
//! packet from its node, translated and sent to the internet.

use aya_ebpf::programs::TcContext;
use egress_common::{
    counters::DropReason,
    endpoint::{Endpoint, EP_F_SELECTED},
};

use crate::{
    counters::{count_drop, count_rx},
    flows,
    gateway::{self, snat_and_send, Exit},
    icmp,
    maps::{config, LookupCopy, EGW_ENDPOINTS4, EGW_REMOTE_EP4},
    nat::SnatTarget,
    parse::{parse4, Packet4},
    policy, trust,
    tunnel::{self, redirect_neigh, redirect_to_tunnel},
    NEXT,
};

pub fn try_from_tunnel(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    trust::take_mark(ctx, cfg)?;
    let Some(p) = parse4(ctx)? else {
        return Err(DropReason::TunnelNotIpv4);
    };
    let (remote, vni) = tunnel::tunnel_source(ctx)?;
    if !trust::is_peer(remote) {
        return Err(DropReason::UnknownNode);
    }
    // Source node: a reply for one of our pods.
    if let Some(ep) = EGW_ENDPOINTS4.lookup_copy(p.daddr) {
        return to_local_pod(ctx, &p, &ep, remote, vni);
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
        return redirect_to_tunnel(ctx, cfg, remote, vni);
    }
    // An oversize DF packet for the uplink is answered through the tunnel, as the TTL is.
    let exit = Exit::of(cfg, &pol);
    if !gateway::fits(ctx, &p, exit)? {
        count_drop(DropReason::FragNeeded);
        icmp::make_frag_needed(ctx, cfg, &p, exit.mtu)?;
        return redirect_to_tunnel(ctx, cfg, remote, vni);
    }
    let t = SnatTarget {
        egress_ip: pol.egress_ip4,
        node_ip: remote,
        policy_id: vni,
    };
    // The source node decided that the pod opened this flow.
    snat_and_send(ctx, cfg, &p, &t, exit, || Ok(true))
}

/// A packet for local pod `ep` from gateway `remote` with `vni`: delivered only to a selected
/// pod, with its policy's VNI, from the gateway its flow went to, answering that flow.
#[inline(always)]
fn to_local_pod(
    ctx: &TcContext,
    p: &Packet4,
    ep: &Endpoint,
    remote: u32,
    vni: u32,
) -> Result<i32, DropReason> {
    if ep.flags & EP_F_SELECTED == 0 {
        return Err(DropReason::TunnelUnselectedPod);
    }
    if ep.policy_id != vni {
        return Err(DropReason::TunnelWrongVni);
    }
    let Some(f) = flows::answered(ctx, p)? else {
        return Err(DropReason::TunnelUnsolicited);
    };
    if f.gateway_ip4 != remote {
        return Err(DropReason::TunnelWrongGateway);
    }
    if f.policy_id != vni {
        return Err(DropReason::TunnelWrongVni);
    }
    count_rx(ep.policy_id, ctx.len());
    redirect_neigh(ep.delivery_ifindex())
}
