//! Handing a closed flow's port to a new flow, as conntrack lets a new SYN reuse a closed
//! tuple. Every change of a reverse entry's owner happens under a claim (a short-lived entry
//! in the NAT map under the reverse key's claim key, inserted with BPF_NOEXIST), so two CPUs
//! can never both hand one port to a new flow.

use aya_ebpf::bindings::{BPF_EXIST, BPF_NOEXIST};
use egress_common::nat::{NatEntry4, NatKey4};

use super::Mapping;
use crate::{
    conntrack::{closed, touch},
    maps::EGW_NAT4,
    parse::Packet4,
};

/// Runs `f` while holding the claim on reverse key `rkey`; `None` if another CPU holds it.
#[inline(always)]
fn with_claim<T>(rkey: &NatKey4, f: impl FnOnce() -> T) -> Option<T> {
    let ckey = rkey.claim();
    EGW_NAT4
        .insert(ckey, NatEntry4::default(), BPF_NOEXIST as u64)
        .ok()?;
    let r = f();
    let _ = EGW_NAT4.remove(ckey);
    Some(r)
}

/// Hands the port of reverse key `rkey` to a new flow (reverse value `rval`) if the flow that
/// holds it is over (see `conntrack::closed`). The old flow's forward entry goes; if its pod
/// reuses the tuple, it gets a port of its own.
#[inline(always)]
pub fn take_over(rkey: &NatKey4, rval: &NatEntry4, now: u64) -> bool {
    // References and map value pointers, not copies: this closure is a call of its own (LLVM
    // keeps it out of line), and its frame, rounded up to 32 bytes on older kernels (6.1),
    // adds to the caller's under the verifier's 512-byte limit.
    with_claim(rkey, || {
        let Some(old) = EGW_NAT4.get_ptr(rkey) else {
            return false;
        };
        // SAFETY: a valid map value pointer, read before any write to the map.
        let old = unsafe { &*old };
        let okey = rkey.forward_of(old.addr, old.port);
        // A forward entry that maps elsewhere is not this flow's.
        // SAFETY: as above.
        let ofwd = EGW_NAT4
            .get_ptr(okey)
            .map(|f| unsafe { &*f })
            .filter(|f| f.addr == rkey.daddr && f.port == rkey.dport);
        if !closed(old, ofwd, now) {
            return false;
        }
        if EGW_NAT4.insert(rkey, rval, BPF_EXIST as u64).is_err() {
            return false;
        }
        if ofwd.is_some() {
            let _ = EGW_NAT4.remove(okey);
        }
        true
    })
    .unwrap_or(false)
}

/// For a SYN that reuses the tuple of a closed flow: whether the flow's port is still its
/// own (then the reverse entry starts over with it), or went to another flow meanwhile.
#[inline(always)]
pub fn still_owns(p: &Packet4, m: Mapping) -> bool {
    let rkey = p.nat_key().reply_to(m.addr, m.port);
    with_claim(&rkey, || match EGW_NAT4.get_ptr_mut(rkey) {
        // SAFETY: valid map value pointer.
        Some(r) if unsafe { (*r).addr == p.saddr && (*r).port == p.sport } => {
            touch(r, p, false);
            true
        }
        _ => false,
    })
    .unwrap_or(false)
}
