//! The gateway's two actions: translate a pod's packet and send it to the internet, and hand a
//! reverse-translated reply to its pod (on this node, or through the tunnel to its node).

use aya_ebpf::programs::TcContext;
use egress_common::{config::Config, counters::DropReason, nat::NatEntry4, policy::PolicyValue};

use crate::{
    counters::{count_rx, count_tx},
    frag,
    l3::{self, Side},
    maps::{LookupCopy, EGW_ENDPOINTS4},
    nat::{self, rewrite::rewrite, SnatTarget},
    parse::{Packet4, IP_DF},
    tcp::{self, TCPIP_HLEN},
    tunnel::{redirect_neigh, redirect_to_tunnel},
    NEXT,
};

/// The link a translated packet leaves by: the uplink, or the interface that holds the
/// policy's egress IP when that is another one (a second NIC).
#[derive(Clone, Copy)]
pub struct Exit {
    pub ifindex: u32,
    /// 0: unknown (not checked).
    pub mtu: u32,
}

impl Exit {
    #[inline(always)]
    pub fn of(cfg: &Config, pol: &PolicyValue) -> Exit {
        if pol.egress_ifindex != 0 {
            Exit {
                ifindex: pol.egress_ifindex,
                mtu: pol.egress_mtu.into(),
            }
        } else {
            Exit {
                ifindex: cfg.uplink_ifindex,
                mtu: cfg.uplink_mtu.into(),
            }
        }
    }
}

/// Whether `p` fits the link it leaves by (its MTU unknown: yes). `Ok(false)`: too big with
/// DF set, to be answered with fragmentation-needed; too big and fragmentable is a counted
/// drop (a tc program cannot fragment).
#[inline(always)]
pub fn fits(ctx: &TcContext, p: &Packet4, exit: Exit) -> Result<bool, DropReason> {
    if exit.mtu == 0 || l3::wire_l3_len(ctx, p) <= exit.mtu {
        return Ok(true);
    }
    if p.frag_off & IP_DF == 0 {
        return Err(DropReason::UplinkTooBig);
    }
    Ok(false)
}

/// Translates the source of a pod's packet for `t` and sends it out of `exit`, one hop (TTL)
/// on. A packet of no translated flow is sent only if `opens()` says it may open one; else it
/// is left to the stack (`NEXT`).
#[inline(always)]
pub fn snat_and_send(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    t: &SnatTarget,
    exit: Exit,
    opens: impl FnOnce() -> Result<bool, DropReason>,
) -> Result<i32, DropReason> {
    if p.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    if p.is_later_fragment() {
        // No ports here: the datagram's first fragment was translated and left its mapping.
        let Some(e) = frag::flow_of(p) else {
            return Err(DropReason::Fragment);
        };
        l3::forward_as(ctx, p, Side::Src, e.addr)?;
    } else {
        let Some(m) = nat::snat_mapping(ctx, cfg, p, t, opens)? else {
            return Ok(NEXT);
        };
        // What the internet may send back must fit the uplink.
        if exit.mtu > TCPIP_HLEN {
            tcp::clamp_mss(ctx, p, (exit.mtu - TCPIP_HLEN) as u16)?;
        }
        let e = NatEntry4 {
            addr: m.addr,
            port: m.port,
            node_ip4: t.node_ip,
            policy_id: t.policy_id,
            ..NatEntry4::default()
        };
        frag::remember(p, &e);
        rewrite(ctx, p, Side::Src, m.addr, m.port)?;
    }
    count_tx(t.policy_id, ctx.len());
    // The kernel's route lookup (from the egress IP, out of that link: policy routing
    // applies) picks the next hop.
    redirect_neigh(exit.ifindex)
}

/// Hands a reverse-translated packet (flow `e`) to the pod, on this node or through the
/// tunnel; `clamp`: lower the MSS of a SYN-ACK to what the tunnel carries.
#[inline(always)]
pub fn deliver(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    e: &NatEntry4,
    clamp: bool,
) -> Result<i32, DropReason> {
    count_rx(e.policy_id, ctx.len());
    // The pod's segments leave through the uplink (and the tunnel, when it is elsewhere).
    let uplink_mss = match cfg.uplink_mtu as u32 {
        0 => u32::MAX,
        mtu => mtu.saturating_sub(TCPIP_HLEN),
    };
    if e.node_ip4 == cfg.node_ip4 {
        let Some(ep) = EGW_ENDPOINTS4.lookup_copy(e.addr) else {
            return Err(DropReason::UnknownTunnelEndpoint);
        };
        if clamp && uplink_mss != u32::MAX {
            tcp::clamp_mss(ctx, p, uplink_mss as u16)?;
        }
        return redirect_neigh(ep.delivery_ifindex());
    }
    if clamp {
        let mss = uplink_mss.min(cfg.tunnel_mtu - TCPIP_HLEN);
        tcp::clamp_mss(ctx, p, mss as u16)?;
    }
    redirect_to_tunnel(ctx, cfg, e.node_ip4, e.policy_id)
}
