//! `egw_from_pod`, tc ingress on a pod's host-side veth (source node): a selected pod's packet
//! to a destination of its policy goes to the gateway (through the tunnel, or translated here
//! when this node is the gateway); everything else keeps the normal path, the pod's answers to
//! flows a peer opened towards it included (see `flows`).

use aya_ebpf::programs::TcContext;
use egress_common::{
    config::Config, counters::DropReason, endpoint::EP_F_SELECTED, flow::FlowEntry4,
};

use crate::{
    counters::{count_drop, count_tx},
    flows::{self, Opened},
    gateway::{self, snat_and_send, Exit},
    icmp, ipv6, l3,
    maps::{config, LookupCopy, EGW_ENDPOINTS4},
    nat::SnatTarget,
    parse::{parse4, Packet4, IP_DF},
    policy,
    tcp::{self, TCPIP_HLEN},
    trust,
    tunnel::redirect_to_tunnel,
    NEXT,
};

pub fn try_from_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    let Some(p) = parse4(ctx)? else {
        return ipv6::from_pod6(ctx);
    };
    trust::check_pod_packet(cfg, &p)?;
    // Only the pod behind this veth may send from it, with its own address: any other source
    // (another pod's, the egress IP from a raw socket, ...) is spoofed. The programs run only
    // on the veths of pods the agent knows, and every local pod is in the endpoint map.
    let Some(ep) = EGW_ENDPOINTS4.lookup_copy(p.saddr) else {
        return Err(DropReason::Spoofed);
    };
    // SAFETY: reading a field of our own context.
    if ep.ifindex != unsafe { (*ctx.skb.skb).ingress_ifindex } {
        return Err(DropReason::Spoofed);
    }
    if ep.flags & EP_F_SELECTED == 0 {
        return Ok(NEXT);
    }
    let Some(pol) = policy::via_gateway(ep.policy_id, p.daddr) else {
        return Ok(NEXT);
    };
    // Only flows the pod opens go through the gateway: answers to a peer that connected to the
    // pod leave from the address the peer connected to.
    let known = flows::known(ctx, &p)?;
    if let Some(Opened::ByPeer) = known {
        return Ok(NEXT);
    }
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
        // The link out is this packet's next one: an oversize DF packet is answered here.
        let exit = Exit::of(cfg, &pol);
        if !gateway::fits(ctx, &p, exit)? {
            count_drop(DropReason::FragNeeded);
            return icmp::send_frag_needed(ctx, cfg, &p, exit.mtu);
        }
        let t = SnatTarget {
            egress_ip: pol.egress_ip4,
            node_ip: cfg.node_ip4,
            policy_id: ep.policy_id,
        };
        // A translated flow is one the pod opened: only a packet of no translated flow needs
        // the flow table, and a flow the pod opens is recorded there (so that `egw_to_pod`
        // never takes its answers for a peer's flow).
        return snat_and_send(ctx, cfg, &p, &t, exit, || match flows::lookup(&p) {
            Opened::ByPeer => Ok(false),
            Opened::ByPod(flow) => {
                flows::record(&p, flow, cfg.node_ip4, ep.policy_id);
                Ok(true)
            }
        });
    }
    let flow = match known {
        Some(Opened::ByPod(flow)) => flow,
        _ => match flows::lookup(&p) {
            Opened::ByPeer => return Ok(NEXT),
            Opened::ByPod(flow) => flow,
        },
    };
    to_gateway(ctx, cfg, &p, flow, pol.gateway_ip4, ep.policy_id)
}

/// Sends a selected pod's packet through the tunnel to its policy's gateway, one hop on: an
/// oversize DF packet is answered with fragmentation-needed instead, a SYN's MSS clamped to
/// what the tunnel carries.
#[inline(always)]
fn to_gateway(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    flow: Option<FlowEntry4>,
    gateway: u32,
    policy_id: u32,
) -> Result<i32, DropReason> {
    if l3::wire_l3_len(ctx, p) > cfg.tunnel_mtu && p.frag_off & IP_DF != 0 {
        count_drop(DropReason::FragNeeded);
        return icmp::send_frag_needed(ctx, cfg, p, cfg.tunnel_mtu);
    }
    l3::forward(ctx, p)?;
    tcp::clamp_mss(ctx, p, (cfg.tunnel_mtu - TCPIP_HLEN) as u16)?;
    flows::record(p, flow, gateway, policy_id);
    count_tx(policy_id, ctx.len());
    redirect_to_tunnel(ctx, cfg, gateway, policy_id)
}
