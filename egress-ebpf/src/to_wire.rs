//! `egw_to_wire`, tc egress on the node's underlay: only our own tunnel packets (and the
//! node's own sockets') leave for a cluster node's tunnel port; see `trust::check_outgoing`.

use aya_ebpf::programs::TcContext;
use egress_common::counters::DropReason;

use crate::{maps::config, parse::parse4, trust, NEXT};

pub fn try_to_wire(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    let Some(p) = parse4(ctx)? else {
        return Ok(NEXT);
    };
    trust::check_outgoing(ctx, cfg, &p)?;
    Ok(NEXT)
}
