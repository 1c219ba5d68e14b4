//! The gateway's SNAT engine. Both directions of a flow live in one hash (`EGW_NAT4`): the
//! forward entry (key as the pod's packet leaves) maps to the egress address and port, the
//! reverse entry (key as the reply arrives) maps back to the pod and its node.
//!
//! The map is a plain hash, not an LRU: an LRU evicts entries one at a time, and a flow that
//! lost its reverse entry while keeping its forward one would leave with an egress tuple that
//! a second flow can then be given (its replies reaching the wrong pod). Here only whole flows
//! go: the agent expires idle ones and, when the table fills up, evicts flows forward entry
//! first (`nat_gc`). A full table refuses new flows (`NatTableFull`), never an existing one.
//!
//! Deciding is separate from acting: `snat_mapping` finds a flow's existing mapping or
//! allocates one (`alloc`: the pod's port when free, else random ones; reverse entry first,
//! with BPF_NOEXIST, then the forward entry, rolled back on failure), and a closed flow's port
//! may pass to a new one (`handover`). `rewrite` changes the packet; `icmp` reverse-translates
//! ICMP errors about translated flows.

mod alloc;
mod handover;
pub mod icmp;
pub mod rewrite;

use aya_ebpf::programs::TcContext;
use egress_common::{
    config::Config,
    counters::DropReason,
    nat::{NatEntry4, NatKey4},
    proto::IPPROTO_TCP,
};

use crate::{
    conntrack::{is_new_syn, just_closed, peer_may_close, refresh, touch, track_pod},
    maps::EGW_NAT4,
    parse::{Packet4, TCP_FIN, TCP_RST},
};

/// The source address and port a flow leaves with.
#[derive(Clone, Copy)]
pub struct Mapping {
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
}

/// Where a flow is translated to and on whose behalf: the policy's egress IP, the pod's node
/// (this gateway for its own pods) and the policy.
#[derive(Clone, Copy)]
pub struct SnatTarget {
    pub egress_ip: u32,
    pub node_ip: u32,
    pub policy_id: u32,
}

/// The mapping of the forward flow of `p`: the existing one, or a newly allocated one if
/// `opens()` says the packet may open a flow (`Ok(None)` if not). A packet of a translated flow
/// costs one lookup; only one of no translated flow asks `opens`.
#[inline(always)]
pub fn snat_mapping(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    t: &SnatTarget,
    opens: impl FnOnce() -> Result<bool, DropReason>,
) -> Result<Option<Mapping>, DropReason> {
    let key = p.nat_key();
    if let Some(m) = find_existing(ctx, p, &key, t.egress_ip) {
        return Ok(Some(m));
    }
    if !opens()? {
        return Ok(None);
    }
    alloc::allocate(ctx, cfg, p, &key, t).map(Some)
}

/// The flow's current mapping, refreshed, if it may go on serving this packet. A stale one
/// (the policy's egress IP changed) is removed, and so is the forward entry of a tuple the pod
/// reuses for a new connection whose port it no longer owns or that closed a moment ago.
#[inline(always)]
fn find_existing(ctx: &TcContext, p: &Packet4, key: &NatKey4, egress_ip: u32) -> Option<Mapping> {
    let e = EGW_NAT4.get_ptr_mut(*key)?;
    let syn = is_new_syn(p);
    // SAFETY: valid map value pointer.
    let (addr, port, state, last) =
        unsafe { ((*e).addr, (*e).port, (*e).state, (*e).last_seen_ns) };
    let m = Mapping { addr, port };
    if addr != egress_ip {
        // The policy's egress IP changed: the old mapping is stale, start over (forward entry
        // first: a forward entry never outlives its reverse one).
        let _ = EGW_NAT4.remove(*key);
        let _ = EGW_NAT4.remove(key.reply_to(addr, port));
        return None;
    }
    // A pod may open a new connection on the tuple of one it closed a moment ago. The remote
    // may not have processed that close yet (the last RST can be overtaken on another CPU's
    // path), and a SYN on its live tuple would be lost: such a SYN gets a fresh port; the old
    // reverse entry stays for the old flow's last packets.
    if syn && just_closed(state, last) {
        let _ = EGW_NAT4.remove(*key);
        return None;
    }
    // A new connection on an existing tuple (a closed one reused, or a SYN sent again): its
    // port may have gone to another flow (see `handover`), and the reverse entry must start
    // over with it so that the port is not handed on.
    if !syn || handover::still_owns(p, m) {
        touch(e, p, false);
        track_pod(ctx, e, p);
        return Some(m);
    }
    let _ = EGW_NAT4.remove(*key);
    None
}

/// Looks up the reverse entry of a reply and refreshes it. Returns the entry by value. A RST
/// or FIN from the peer changes the flow's state only if it fits what the pod expects
/// (`conntrack::peer_may_close`): a blind sender cannot end or hand over the pod's flow.
#[inline(always)]
pub fn reverse_lookup(ctx: &TcContext, p: &Packet4) -> Option<NatEntry4> {
    let key = p.nat_key();
    let e = EGW_NAT4.get_ptr_mut(key)?;
    if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_RST | TCP_FIN) != 0 {
        // SAFETY: valid map value pointer.
        let fkey = unsafe { key.forward_of((*e).addr, (*e).port) };
        // SAFETY: as above.
        let f = EGW_NAT4.get_ptr(fkey).map(|f| unsafe { &*f });
        if !peer_may_close(ctx, p, f) {
            refresh(e);
            // SAFETY: as above.
            return Some(unsafe { *e });
        }
    }
    touch(e, p, true);
    // SAFETY: valid map value pointer.
    Some(unsafe { *e })
}
