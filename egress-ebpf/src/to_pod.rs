//! `egw_to_pod`, tc egress on a pod's host-side veth: a flow a peer opens towards a selected
//! pod from a destination of its policy is recorded (see `flows`), so that the pod's answers
//! keep the normal path. It never changes or drops a packet: whatever it cannot read is left
//! to the stack.

use aya_ebpf::programs::TcContext;
use egress_common::endpoint::EP_F_SELECTED;

use crate::{
    flows,
    maps::{config, LookupCopy, EGW_ENDPOINTS4},
    parse::parse4,
    policy, NEXT,
};

pub fn try_to_pod(ctx: &TcContext) -> i32 {
    if config().is_none() {
        return NEXT;
    }
    let Ok(Some(p)) = parse4(ctx) else {
        return NEXT;
    };
    let Some(ep) = EGW_ENDPOINTS4.lookup_copy(p.daddr) else {
        return NEXT;
    };
    if ep.flags & EP_F_SELECTED == 0 {
        return NEXT;
    }
    // Only a peer the pod's answers would otherwise be sent through the gateway to.
    if policy::via_gateway(ep.policy_id, p.saddr).is_none() {
        return NEXT;
    }
    flows::opened_by_peer(&p, ep.policy_id);
    NEXT
}
