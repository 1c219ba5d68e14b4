//! Connection tracking of NAT flows: the state a packet moves a flow to, the coarse last-seen
//! refresh, and when a flow is over so that its port may serve a new connection.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use egress_common::{
    nat::{NatEntry4, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET},
    proto::IPPROTO_TCP,
};

use crate::parse::{Packet4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// A flow closed by FINs in both directions gives its port to a new connection after being
/// idle this long (its last ACK has arrived by then).
const CLOSED_REUSE_NS: u64 = 1_000_000_000;
/// A reset flow's port waits this long: the RST may still be on its way to the remote (taking
/// another CPU's path), and a SYN on the same tuple overtaking it meets a live connection
/// there, which costs the new connection a SYN retransmission (a second). A pod's SYN on a
/// tuple it closed less than this ago gets a fresh port for the same reason.
pub const RESET_REUSE_NS: u64 = 100_000_000;
/// `last_seen_ns` is refreshed at most this often (fewer writes to shared cache lines).
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// The coarse monotonic clock the entries' `last_seen_ns` use.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Conntrack state implied by a packet's TCP flags (non-TCP: established after any reply).
/// `reply`: the packet travels from the remote to the pod.
#[inline(always)]
pub fn next_state(cur: u8, p: &Packet4, reply: bool) -> u8 {
    if p.proto != IPPROTO_TCP {
        return if reply { CT_ESTABLISHED } else { cur };
    }
    if p.tcp_flags & TCP_RST != 0 {
        CT_RESET
    } else if p.tcp_flags & TCP_FIN != 0 {
        if cur < CT_CLOSING {
            CT_CLOSING
        } else {
            cur
        }
    } else if reply && cur == CT_NEW {
        CT_ESTABLISHED
    } else if !reply && p.tcp_flags & TCP_SYN != 0 && cur > CT_ESTABLISHED {
        // A new SYN on a closed tuple starts over.
        CT_NEW
    } else {
        cur
    }
}

/// Refreshes an entry's `last_seen_ns` and state.
#[inline(always)]
pub fn touch(e: *mut NatEntry4, p: &Packet4, reply: bool) {
    // SAFETY: `e` comes from a map lookup in this program run; racing writers only store
    // whole aligned integers, which is what expiry needs.
    unsafe {
        let state = next_state((*e).state, p, reply);
        if state != (*e).state {
            (*e).state = state;
            (*e).last_seen_ns = now();
            return;
        }
    }
    refresh(e);
}

/// Refreshes an entry's `last_seen_ns` only: what an ICMP error about a flow may do (it says
/// nothing about the flow's state: an unreachable answer to a SYN does not establish it).
#[inline(always)]
pub fn refresh(e: *mut NatEntry4) {
    // SAFETY: as in `touch`.
    unsafe {
        let now = now();
        if now.saturating_sub((*e).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*e).last_seen_ns = now;
        }
    }
}

/// A TCP SYN without ACK: a pod opening a connection.
#[inline(always)]
pub fn is_new_syn(p: &Packet4) -> bool {
    p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a flow in `state`, last seen at `last`, was closed (FIN or RST) less than
/// `RESET_REUSE_NS` ago.
#[inline(always)]
pub fn just_closed(state: u8, last: u64) -> bool {
    state > CT_ESTABLISHED && now().saturating_sub(last) < RESET_REUSE_NS
}

/// Whether the flow that owns reverse entry `rev` is over, so that its port may serve a new
/// connection to the same remote: reset in either direction, or closed by FINs in both, and
/// quiet since. A flow whose forward entry is gone sends nothing any more.
#[inline(always)]
pub fn closed(rev: &NatEntry4, fwd: Option<&NatEntry4>, now: u64) -> bool {
    let (fstate, flast) = match fwd {
        Some(f) => (f.state, f.last_seen_ns),
        None => (CT_CLOSING, 0),
    };
    let last = if flast > rev.last_seen_ns {
        flast
    } else {
        rev.last_seen_ns
    };
    let quiet = now.saturating_sub(last);
    if rev.state == CT_RESET || fstate == CT_RESET {
        return quiet >= RESET_REUSE_NS;
    }
    rev.state == CT_CLOSING && fstate == CT_CLOSING && quiet >= CLOSED_REUSE_NS
}
