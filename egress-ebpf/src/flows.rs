//! The source node's record of the flows its pods opened through a gateway (`EGW_FLOWS4`):
//! what may come back to them through the tunnel. `egw_from_pod` records a flow when it
//! sends it into the tunnel; `egw_from_tunnel` delivers a packet to a local pod only if it
//! answers a recorded flow (or is an ICMP error quoting one), see `egress_common::flow`.

use aya_ebpf::programs::TcContext;
use egress_common::{
    counters::DropReason,
    flow::FlowEntry4,
    nat::{NatEntry4, NatKey4},
};

use crate::{
    frag,
    maps::{LookupCopy, EGW_FLOWS4},
    parse::Packet4,
    quote::quoted,
};

/// Records that the pod sent `p` through the tunnel to `gateway` with `policy_id`. A lookup
/// for packets of a known flow; a write only for a new flow or a changed gateway.
#[inline(always)]
pub fn record(p: &Packet4, gateway: u32, policy_id: u32) {
    // A later fragment has no ports; its datagram's first fragment recorded the flow.
    if p.is_later_fragment() {
        return;
    }
    let key = p.nat_key();
    if let Some(f) = EGW_FLOWS4.get_ptr(key) {
        // SAFETY: valid map value pointer, read at once.
        let f = unsafe { *f };
        if f.gateway_ip4 == gateway && f.policy_id == policy_id {
            return;
        }
    }
    let f = FlowEntry4 {
        gateway_ip4: gateway,
        policy_id,
    };
    let _ = EGW_FLOWS4.insert(key, f, 0);
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
        NatKey4 {
            saddr: p.daddr,
            daddr: p.saddr,
            sport: p.dport,
            dport: p.sport,
            proto: p.proto,
            _pad: [0; 3],
        }
    };
    let f = EGW_FLOWS4.lookup_copy(key);
    if let Some(f) = f {
        // The datagram's later fragments follow this one.
        let e = NatEntry4 {
            addr: p.daddr,
            node_ip4: f.gateway_ip4,
            policy_id: f.policy_id,
            ..NatEntry4::default()
        };
        frag::remember(p, &e);
    }
    Ok(f)
}
