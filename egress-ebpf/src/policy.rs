//! Policy decisions: is this packet's destination routed through a gateway, and can its flow
//! be translated.

use aya_ebpf::btf_maps::lpm_trie::Key;
use egress_common::{
    counters::DropReason,
    policy::{PolicyKey4, PolicyValue, ACTION_VIA_GATEWAY, POLICY_ID_BITS},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    maps::EGW_POLICY4,
    parse::{Packet4, ICMP_ECHO},
};

/// The policy's verdict for `daddr`, if the destination goes through a gateway.
#[inline(always)]
pub fn via_gateway(policy_id: u32, daddr: u32) -> Option<PolicyValue> {
    let key = Key::new(
        POLICY_ID_BITS + 32,
        PolicyKey4 {
            policy_id_be: policy_id.to_be(),
            dst: daddr,
        },
    );
    let v = *EGW_POLICY4.get(&key)?;
    (v.action == ACTION_VIA_GATEWAY).then_some(v)
}

/// Whether a packet of a selected flow can be translated: TCP, UDP and ICMP echo requests,
/// and later fragments of their datagrams (translated by the first fragment's mapping, see
/// `frag`).
#[inline(always)]
pub fn check_translatable(p: &Packet4) -> Result<(), DropReason> {
    match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => Ok(()),
        // A later fragment has no ICMP header: its datagram's first fragment was checked.
        IPPROTO_ICMP if p.icmp_type == ICMP_ECHO || p.is_later_fragment() => Ok(()),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}
