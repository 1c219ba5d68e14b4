//! Connection tracking of NAT flows: the state a packet moves a flow to, the coarse last-seen
//! refresh, and when a flow is over so that its port may serve a new connection.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use egress_common::{
    nat::{NatEntry4, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET, NAT_F_POD_ACKED},
    proto::IPPROTO_TCP,
};
use network_types::tcp::TcpHdr;

use crate::parse::{ptr_at, Packet4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Window scaling is not tracked: a FIN from the peer is held to the pod's window as if
/// scaled by the largest factor (RFC 7323: 14), a bound the peer's real data never passes.
const MAX_WSCALE: u32 = 14;

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

/// What the pod's TCP packet `p` says it expects from the peer (see `NatEntry4::ack`):
/// `(ack, window, NAT_F_POD_ACKED or 0)`. `None`: not TCP, or neither SYN nor ACK.
#[inline(always)]
pub fn pod_expects(ctx: &TcContext, p: &Packet4) -> Option<(u32, u16, u8)> {
    if p.proto != IPPROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_ACK) == 0 {
        return None;
    }
    let h = ptr_at::<TcpHdr>(ctx, p.l4_off).ok()?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        Some(if p.tcp_flags & TCP_ACK != 0 {
            (
                u32::from_be((*h).ack_seq),
                u16::from_be((*h).window),
                NAT_F_POD_ACKED,
            )
        } else {
            (u32::from_be((*h).seq).wrapping_add(1), 0, 0)
        })
    }
}

/// Records `pod_expects` of the pod's packet `p` in its forward entry `e`, when it changed.
#[inline(always)]
pub fn track_pod(ctx: &TcContext, e: *mut NatEntry4, p: &Packet4) {
    let Some((ack, window, acked)) = pod_expects(ctx, p) else {
        return;
    };
    // SAFETY: as in `touch`.
    unsafe {
        let flags = ((*e).flags & !NAT_F_POD_ACKED) | acked;
        if (*e).ack != ack || (*e).window != window || (*e).flags != flags {
            (*e).ack = ack;
            (*e).window = window;
            (*e).flags = flags;
        }
    }
}

/// Whether the peer's RST or FIN `p` may change the state of the flow whose forward entry is
/// `f` (what the pod expects, see `track_pod`). A RST: only with exactly the sequence number
/// the pod expects next (RFC 5961 3.2: an off-path sender must guess all 32 bits; one merely in
/// the window makes the pod send a challenge ACK, and the peer's answer to that carries the
/// exact number), or, before the pod acknowledged anything, one acknowledging its SYN. A
/// FIN: within the pod's receive window. The packet itself is never dropped for this: the
/// pod's own TCP judges it too. Without a forward entry (gone) the flow ends anyway: yes.
#[inline(always)]
pub fn peer_may_close(ctx: &TcContext, p: &Packet4, f: Option<&NatEntry4>) -> bool {
    let Some(f) = f else {
        return true;
    };
    let Ok(h) = ptr_at::<TcpHdr>(ctx, p.l4_off) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let (seq, ack) = unsafe { (u32::from_be((*h).seq), u32::from_be((*h).ack_seq)) };
    if f.flags & NAT_F_POD_ACKED == 0 {
        // SYN-SENT: a RST is valid when it acknowledges the SYN (RFC 9293 3.10.7.3).
        return p.tcp_flags & TCP_RST != 0 && p.tcp_flags & TCP_ACK != 0 && ack == f.ack;
    }
    if p.tcp_flags & TCP_RST != 0 {
        return seq == f.ack;
    }
    seq.wrapping_sub(f.ack) <= u32::from(f.window) << MAX_WSCALE
}
