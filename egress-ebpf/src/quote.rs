//! The packet an ICMP error quotes: its IPv4 header and the first L4 bytes, as the flow's
//! original packet carried them. Read by the gateway (reverse translation of errors from the
//! internet) and by the source node (is the error about a flow the pod opened).

use aya_ebpf::programs::TcContext;
use egress_common::{
    counters::DropReason,
    nat::NatKey4,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    csum::word,
    parse::{load_exact, Packet4, ICMP_ECHO, ICMP_HLEN, ICMP_ID, IP_HLEN},
};

/// The quoted packet of an ICMP error.
pub struct Quoted {
    /// The quoted IPv4 header (without options).
    pub ip: [u8; IP_HLEN],
    /// Offset of the quoted IPv4 header, and of its L4 header, in the packet.
    pub ip_off: usize,
    pub l4_off: usize,
    /// Offset of the quoted source port (or echo identifier).
    pub port_off: usize,
    /// The quoted packet's flow key as it was sent (ICMP echo: the identifier as the source
    /// port, destination port 0).
    pub key: NatKey4,
}

/// Reads the packet quoted by the ICMP error `p`. `Ok(None)`: it quotes a packet that no flow
/// of ours can have sent (not TCP, UDP or an echo request).
#[inline(always)]
pub fn quoted(ctx: &TcContext, p: &Packet4) -> Result<Option<Quoted>, DropReason> {
    let ip_off = p.l4_off + ICMP_HLEN;
    let mut h = [0u8; IP_HLEN];
    load_exact(ctx, ip_off, &mut h)?;
    if h[0] >> 4 != 4 || h[0] & 0xf < 5 {
        return Err(DropReason::Malformed);
    }
    let l4_off = ip_off + usize::from(h[0] & 0xf) * 4;
    let proto = h[9];
    let mut l4 = [0u8; 8];
    load_exact(ctx, l4_off, &mut l4)?;
    let (sport, dport, port_off) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (word(&l4, 0), word(&l4, 2), l4_off),
        IPPROTO_ICMP if l4[0] == ICMP_ECHO => (word(&l4, ICMP_ID), 0, l4_off + ICMP_ID),
        _ => return Ok(None),
    };
    let key = NatKey4 {
        saddr: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        daddr: u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
        sport,
        dport,
        proto,
        kind: 0,
        _pad: [0; 2],
    };
    Ok(Some(Quoted {
        ip: h,
        ip_off,
        l4_off,
        port_off,
        key,
    }))
}
