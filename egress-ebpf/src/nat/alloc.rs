//! Port allocation for a new flow: the pod's own port when it lies in the NAT range and is
//! free, else random ports in the range. A port is free when no flow holds its reverse tuple
//! (the reverse entry is inserted first, with BPF_NOEXIST, so a taken port is never
//! overwritten) and no host socket owns it.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::TcContext,
};
use egress_common::{
    config::Config,
    counters::{DropReason, NAT_STAT_ALLOCATIONS, NAT_STAT_PORT_RETRIES},
    nat::{NatEntry4, NatKey4, CT_NEW, NAT_F_REVERSE},
    proto::{IPPROTO_TCP, IPPROTO_UDP},
};

use super::{handover, Mapping, SnatTarget};
use crate::{
    conntrack::{is_new_syn, next_state, now, pod_expects},
    counters::count_nat,
    maps::{LookupCopy, EGW_NAT4},
    parse::Packet4,
};

/// Random port tries after the pod's own port is taken.
const PORT_RETRIES: u32 = 32;
const EEXIST: i32 = 17;
/// What a full (non-LRU, preallocated) hash map answers to an insert.
const E2BIG: i32 = 7;

/// Why the NAT map refused an insert that was not a collision.
#[inline(always)]
fn refused(e: i32) -> DropReason {
    if e == -E2BIG {
        DropReason::NatTableFull
    } else {
        DropReason::NatInsertFailed
    }
}

/// Allocates a mapping for the forward flow `key` of `p` and writes both of its entries.
#[inline(always)]
pub fn allocate(
    ctx: &TcContext,
    cfg: &Config,
    p: &Packet4,
    key: &NatKey4,
    t: &SnatTarget,
) -> Result<Mapping, DropReason> {
    let min = u32::from(cfg.nat_port_min);
    let max = u32::from(cfg.nat_port_max);
    if min == 0 || max < min {
        return Err(DropReason::NoGatewayConfig);
    }
    let now = now();
    let state = next_state(CT_NEW, p, false);
    let entry = |addr, port, flags| NatEntry4 {
        addr,
        port,
        flags,
        state,
        node_ip4: t.node_ip,
        policy_id: t.policy_id,
        last_seen_ns: now,
        ..NatEntry4::default()
    };
    let rval = entry(p.saddr, p.sport, NAT_F_REVERSE);
    let (ack, window, acked) = pod_expects(ctx, p).unwrap_or_default();
    let syn = is_new_syn(p);
    let span = max - min + 1;
    let mut cand = u32::from(u16::from_be(p.sport));
    let mut i = 0;
    while i <= PORT_RETRIES {
        if i > 0 || cand < min || cand > max {
            // SAFETY: helper without arguments.
            cand = min
                + unsafe { bpf_get_prandom_u32() }
                    .checked_rem(span)
                    .unwrap_or(0);
        }
        i += 1;
        let port = (cand as u16).to_be();
        let rkey = key.reply_to(t.egress_ip, port);
        if host_socket_owns(ctx, &rkey) {
            count_nat(NAT_STAT_PORT_RETRIES);
            continue;
        }
        let fval = NatEntry4 {
            ack,
            window,
            ..entry(t.egress_ip, port, acked)
        };
        if let Some(m) = insert_pair(key, &rkey, &rval, &fval, syn, now)? {
            return Ok(m);
        }
        count_nat(NAT_STAT_PORT_RETRIES);
    }
    Err(DropReason::NatExhausted)
}

/// Writes a new flow's entries: the reverse one first (BPF_NOEXIST: a port in use is never
/// overwritten; a SYN may take over a closed flow's port), then the forward one, and rolls the
/// reverse one back if that fails. `Ok(None)`: the port is taken, try another.
#[inline(always)]
fn insert_pair(
    key: &NatKey4,
    rkey: &NatKey4,
    rval: &NatEntry4,
    fval: &NatEntry4,
    syn: bool,
    now: u64,
) -> Result<Option<Mapping>, DropReason> {
    match EGW_NAT4.insert(*rkey, *rval, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            if !(syn && handover::take_over(rkey, rval, now)) {
                return Ok(None);
            }
        }
        Err(e) => return Err(refused(e)),
    }
    match EGW_NAT4.insert(*key, *fval, BPF_NOEXIST as u64) {
        Ok(()) => {
            count_nat(NAT_STAT_ALLOCATIONS);
            Ok(Some(Mapping {
                addr: fval.addr,
                port: fval.port,
            }))
        }
        Err(e) => {
            let _ = EGW_NAT4.remove(*rkey);
            // Another CPU created the flow's mapping first: use it.
            match (e == -EEXIST).then(|| EGW_NAT4.lookup_copy(*key)).flatten() {
                Some(v) => Ok(Some(Mapping {
                    addr: v.addr,
                    port: v.port,
                })),
                None => Err(refused(e)),
            }
        }
    }
}

/// Whether a host socket owns the reply tuple `rkey` (then the port is not free).
#[inline(always)]
fn host_socket_owns(ctx: &TcContext, rkey: &NatKey4) -> bool {
    // SAFETY: zeroed is a valid bpf_sock_tuple.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the ipv4 arm of the union.
    unsafe {
        let t = &mut tuple.__bindgen_anon_1.ipv4;
        t.saddr = rkey.saddr;
        t.daddr = rkey.daddr;
        t.sport = rkey.sport;
        t.dport = rkey.dport;
    }
    let size = 12u32;
    let skb = ctx.skb.skb.cast();
    // SAFETY: helper calls with a valid tuple; every returned socket is released.
    unsafe {
        let sk = match rkey.proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0),
            _ => return false,
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
    }
    true
}
