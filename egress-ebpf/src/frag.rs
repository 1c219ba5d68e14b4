//! IP fragments of translated datagrams, both ways. Only a datagram's first fragment carries
//! the ports: it is translated like any packet of its flow, and the flow is remembered under
//! the datagram's `{source, destination, IP id, proto}` (`EGW_FRAG4`, LRU) for the later
//! fragments, which only need the address. An entry lives as long as the kernel waits to
//! reassemble a datagram (`FRAG_TTL_NS`), and a first fragment that is not ours clears the
//! entry of its key: IP ids repeat, and a stale entry must never divert the later fragments
//! of another datagram (the gateway host's own fragmented answers) to a pod. A reply's entry
//! is the flow's reverse entry (`NAT_F_REVERSE`), and only such an entry moves a later
//! fragment arriving on the uplink: one with the key of a pod's own datagram is forged.

use egress_common::nat::NatEntry4;

use crate::{
    conntrack::now,
    maps::{LookupCopy, EGW_FRAG4},
    parse::Packet4,
};

/// How long a datagram's fragments may trail its first one: Linux's default reassembly
/// timeout (`net.ipv4.ipfrag_time`, 30 s).
const FRAG_TTL_NS: u64 = 30_000_000_000;

/// For the first fragment of a datagram, translated by `e` (only its address, port, node and
/// policy matter): remembers the flow for the datagram's later fragments. Nothing for an
/// unfragmented packet. `e` is made only then: a flow entry on the stack costs every
/// program that calls this (the verifier's 512-byte limit).
#[inline(always)]
pub fn remember(p: &Packet4, e: impl FnOnce() -> NatEntry4) {
    if p.is_fragment() {
        let e = NatEntry4 {
            last_seen_ns: now(),
            ..e()
        };
        let _ = EGW_FRAG4.insert(p.frag_key(), e, 0);
    }
}

/// For the first fragment of a datagram that is not ours: forgets whatever an earlier
/// datagram with the same key left. Nothing for any other packet.
#[inline(always)]
pub fn forget(p: &Packet4) {
    if p.is_fragment() && !p.is_later_fragment() {
        let _ = EGW_FRAG4.remove(p.frag_key());
    }
}

/// The flow of a later fragment, left by its datagram's first fragment within the
/// reassembly timeout.
#[inline(always)]
pub fn flow_of(p: &Packet4) -> Option<NatEntry4> {
    EGW_FRAG4
        .lookup_copy(p.frag_key())
        .filter(|e| now().saturating_sub(e.last_seen_ns) < FRAG_TTL_NS)
}
