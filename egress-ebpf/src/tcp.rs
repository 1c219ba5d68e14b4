//! TCP MSS clamping for flows that cross the tunnel.

use aya_ebpf::programs::TcContext;
use egress_common::{counters::DropReason, proto::IPPROTO_TCP};

use crate::parse::{Packet4, IP_OFF, TCP_CSUM, TCP_SYN};

/// IPv4 + TCP header bytes that an MSS excludes.
pub const TCPIP_HLEN: u32 = 40;

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Options are at most 40 bytes; a NOP or an option takes at least one byte each, but real
/// SYNs carry a handful, the MSS first (Linux, Windows, macOS). Bounded for the verifier: each
/// option more costs `egw_from_pod` about 20k verified instructions, and Debian 6.1's
/// verifier stops at a million (12 options took it past, with IPv6 refusal; 8 leave it
/// 80k below the 603k here that passed there). An MSS after the 8th option is not clamped.
const MAX_OPTIONS: u32 = 8;

/// If `p` is a SYN (or SYN-ACK) whose MSS option (within the datagram) exceeds `max_mss`,
/// lowers it and fixes the checksum. Other packets are untouched.
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext, p: &Packet4, max_mss: u16) -> Result<(), DropReason> {
    if p.proto != IPPROTO_TCP || p.tcp_flags & TCP_SYN == 0 {
        return Ok(());
    }
    // A TCP header that overruns the datagram (its length past the IPv4 total length, the
    // bytes there a link trailer) is no segment to fix: left alone, as it came. (A bound on
    // the header's end instead of this one branch costs the verifier a tenth more states
    // in the option loop, which Debian 6.1's million-instruction limit does not allow.)
    let end = p.l4_off + p.tcp_hlen;
    if end > IP_OFF + usize::from(p.tot_len) {
        return Ok(());
    }
    let mut off = p.l4_off + 20;
    let mut i = 0;
    while i < MAX_OPTIONS && off + 1 < end {
        i += 1;
        let kind: u8 = ctx.load(off).map_err(|_| DropReason::Malformed)?;
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            off += 1;
            continue;
        }
        let len: u8 = ctx.load(off + 1).map_err(|_| DropReason::Malformed)?;
        if len < 2 {
            return Err(DropReason::Malformed);
        }
        if kind == TCPOPT_MSS && len == 4 && off + 4 <= end {
            let raw: u16 = ctx.load(off + 2).map_err(|_| DropReason::Malformed)?;
            if u16::from_be(raw) <= max_mss {
                return Ok(());
            }
            let new = max_mss.to_be();
            // The checksum sums 16-bit words from the start of the TCP header: a value at an
            // odd offset straddles two words, which equals summing it byte-swapped.
            let (from, to) = if (off - p.l4_off).is_multiple_of(2) {
                (raw, new)
            } else {
                (raw.swap_bytes(), new.swap_bytes())
            };
            ctx.l4_csum_replace(p.l4_off + TCP_CSUM, from.into(), to.into(), 2)
                .map_err(|_| DropReason::Rewrite)?;
            ctx.store(off + 2, &new, 0)
                .map_err(|_| DropReason::Rewrite)?;
            return Ok(());
        }
        off += usize::from(len);
    }
    Ok(())
}
