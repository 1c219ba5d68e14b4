//! `egw_from_wire`, tc ingress on the node's underlay interface (every node) and on the
//! gateway's uplink (the same interface when one network carries both). On the underlay:
//! the tunnel's gate (see `trust`). On a gateway: replies of translated flows (and ICMP errors
//! about them) are reverse-translated and handed to their pods; everything else (the host's
//! own traffic) is left alone.

use aya_ebpf::programs::TcContext;
use egress_common::{
    config::CFG_F_GATEWAY, counters::DropReason, nat::NAT_F_REVERSE, proto::IPPROTO_ICMP,
};

use crate::{
    frag,
    gateway::deliver,
    l3::{self, Side},
    maps::config,
    nat::{self, rewrite::rewrite},
    parse::parse4,
    trust, NEXT,
};

pub fn try_from_wire(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    let Some(p) = parse4(ctx)? else {
        return Ok(NEXT);
    };
    if let Some(verdict) = trust::underlay_gate(ctx, cfg, &p)? {
        return Ok(verdict);
    }
    if cfg.flags & CFG_F_GATEWAY == 0 {
        return Ok(NEXT);
    }
    if p.is_icmp_error() {
        return match nat::icmp::reverse_icmp_error(ctx, &p)? {
            Some(e) => deliver(ctx, cfg, &p, &e, false),
            None => Ok(NEXT),
        };
    }
    let e = if p.is_later_fragment() {
        // Only what a reply's first fragment left (the flow's reverse entry): the same key
        // may hold what a pod's own datagram left going out (a forged one, on this link).
        frag::flow_of(&p).filter(|e| e.flags & NAT_F_REVERSE != 0)
    } else if p.proto == IPPROTO_ICMP && p.dport == 0 {
        None
    } else {
        nat::reverse_lookup(ctx, &p).filter(|e| e.flags & NAT_F_REVERSE != 0)
    };
    let Some(e) = e else {
        frag::forget(&p);
        return Ok(NEXT);
    };
    // The gateway routes the reply: one hop. (ICMP errors above are left as they come.)
    if p.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    if p.is_later_fragment() {
        l3::forward_as(ctx, &p, Side::Dst, e.addr)?;
    } else {
        frag::remember(&p, || e);
        rewrite(ctx, &p, Side::Dst, e.addr, e.port)?;
    }
    deliver(ctx, cfg, &p, &e, !p.is_fragment())
}
