//! IP fragments of translated datagrams, both ways. Only a datagram's first fragment carries
//! the ports: it is translated like any packet of its flow, and the flow is remembered under
//! the datagram's `{source, destination, IP id, proto}` (`EGW_FRAG4`, LRU) for the later
//! fragments, which only need the address.

use egress_common::nat::NatEntry4;

use crate::{
    maps::{LookupCopy, EGW_FRAG4},
    parse::Packet4,
};

/// For the first fragment of a datagram, translated by `e`: remembers the flow for the
/// datagram's later fragments. Nothing for an unfragmented packet.
#[inline(always)]
pub fn remember(p: &Packet4, e: &NatEntry4) {
    if p.is_fragment() {
        let _ = EGW_FRAG4.insert(p.frag_key(), *e, 0);
    }
}

/// The flow of a later fragment, left by its datagram's first fragment.
#[inline(always)]
pub fn flow_of(p: &Packet4) -> Option<NatEntry4> {
    EGW_FRAG4.lookup_copy(p.frag_key())
}
