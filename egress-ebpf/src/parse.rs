//! Header parsing: bounds-checked access and the copied-out header fields every program
//! decides on. Fields are copied into locals because the rewrite helpers invalidate packet
//! pointers.

use core::mem::{offset_of, size_of};

use aya_ebpf::programs::TcContext;
use egress_common::{
    counters::DropReason,
    nat::{FragKey4, NatKey4},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const ETH_HLEN: usize = EthHdr::LEN;
pub const ETH_P_IP: u16 = 0x0800;
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, check);
pub const IP_DST_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, dst_addr);
pub const TCP_CSUM: usize = offset_of!(TcpHdr, check);
pub const UDP_CSUM: usize = offset_of!(UdpHdr, check);
pub const ICMP_CSUM: usize = 2;
pub const ICMP_ID: usize = 4;
/// IPv4 header without options, ICMP header.
pub const IP_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;

pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_EXC_TTL: u8 = 0;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 "don't fragment" and "more fragments" bits, offset mask (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFMASK: u16 = 0x1fff;

/// Bounds-checked pointer for writing a `T` at `off` bytes into the packet (direct packet
/// access; the verifier makes a cloned skb's data private first).
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &TcContext, off: usize) -> Result<*mut T, DropReason> {
    ptr_at::<T>(ctx, off).map(|p| p.cast_mut())
}

/// Bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*const T, DropReason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(DropReason::Malformed);
    }
    Ok((start + off) as *const T)
}

/// The IPv4 header fields the programs use, and the L4 ports (or ICMP identifier).
#[derive(Clone, Copy)]
pub struct Packet4 {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Network byte order. ICMP echo: the identifier.
    pub sport: u16,
    /// Network byte order. ICMP: 0.
    pub dport: u16,
    /// Host byte order.
    pub tot_len: u16,
    /// Host byte order, flags and offset.
    pub frag_off: u16,
    /// IP identification, network byte order.
    pub id: u16,
    pub ttl: u8,
    /// Offset of the L4 header from the start of the packet.
    pub l4_off: usize,
    /// TCP header length in bytes (TCP only).
    pub tcp_hlen: usize,
}

impl Packet4 {
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag_off & (IP_MF | IP_OFFMASK) != 0
    }

    /// A fragment other than the first: no L4 header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frag_off & IP_OFFMASK != 0
    }

    /// The key of this packet's datagram in the fragment map.
    #[inline(always)]
    pub fn frag_key(&self) -> FragKey4 {
        FragKey4 {
            saddr: self.saddr,
            daddr: self.daddr,
            id: self.id,
            proto: self.proto,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && matches!(
                self.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
            )
    }

    /// The NAT key of this packet, as it appears on the wire.
    #[inline(always)]
    pub fn nat_key(&self) -> NatKey4 {
        NatKey4 {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            kind: 0,
            _pad: [0; 2],
        }
    }
}

/// Makes sure the first `want` bytes (or the whole packet if shorter) are in the linear area.
/// Pulling is a helper call that may copy the header of a cloned skb, so it happens only
/// when the linear area really is shorter.
#[inline(always)]
fn ensure_linear(ctx: &TcContext, want: usize) {
    let len = ctx.len() as usize;
    let n = if len < want { len } else { want };
    if ctx.data() + n > ctx.data_end() {
        let _ = ctx.pull_data(n as u32);
    }
}

/// Parses Ethernet + IPv4 + the first L4 bytes. `Ok(None)`: not IPv4 (left alone).
/// Protocols other than TCP, UDP and ICMP come back with zero ports; callers decide.
#[inline(always)]
pub fn parse4(ctx: &TcContext) -> Result<Option<Packet4>, DropReason> {
    ensure_linear(ctx, ETH_HLEN + 60 + 20);
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type } as u16) != ETH_P_IP {
        return Ok(None);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, IP_OFF)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.version() != 4 || ip.ihl() < 5 {
        return Err(DropReason::Malformed);
    }
    let ihl_len = usize::from(ip.ihl()) * 4;
    let tot_len = ip.total_len();
    if usize::from(tot_len) < ihl_len {
        return Err(DropReason::Malformed);
    }
    let mut p = Packet4 {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto as u8,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        sport: 0,
        dport: 0,
        tot_len,
        frag_off: u16::from_be_bytes(ip.frag_off),
        id: u16::from_ne_bytes(ip.id),
        ttl: ip.ttl,
        l4_off: IP_OFF + ihl_len,
        tcp_hlen: 0,
    };
    // Non-first fragments carry no L4 header.
    if p.frag_off & IP_OFFMASK != 0 {
        return Ok(Some(p));
    }
    match p.proto {
        IPPROTO_TCP => {
            let th: *const [u8; 20] = ptr_at(ctx, p.l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let th = unsafe { &*th };
            p.sport = u16::from_ne_bytes([th[0], th[1]]);
            p.dport = u16::from_ne_bytes([th[2], th[3]]);
            p.tcp_hlen = usize::from(th[12] >> 4) * 4;
            p.tcp_flags = th[13];
            if p.tcp_hlen < 20 {
                return Err(DropReason::Malformed);
            }
        }
        IPPROTO_UDP => {
            let uh: *const [u8; 8] = ptr_at(ctx, p.l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let uh = unsafe { &*uh };
            p.sport = u16::from_ne_bytes([uh[0], uh[1]]);
            p.dport = u16::from_ne_bytes([uh[2], uh[3]]);
        }
        IPPROTO_ICMP => {
            let ih: *const [u8; 8] = ptr_at(ctx, p.l4_off)?;
            // SAFETY: bounds checked by ptr_at.
            let ih = unsafe { &*ih };
            p.icmp_type = ih[0];
            p.icmp_code = ih[1];
            // Echo flows use the identifier as the pod-side "port": the request carries it
            // as the source port, the reply as the destination port, so that the reply's
            // key is the request's key reversed, as for TCP and UDP.
            let id = u16::from_ne_bytes([ih[4], ih[5]]);
            if p.icmp_type == ICMP_ECHO {
                p.sport = id;
            } else if p.icmp_type == ICMP_ECHOREPLY {
                p.dport = id;
            }
        }
        _ => {}
    }
    Ok(Some(p))
}

/// Copies exactly `N` packet bytes at `off` into `buf` (`bpf_skb_load_bytes`; works on
/// non-linear data too). Fails if the packet is shorter.
#[inline(always)]
pub fn load_exact<const N: usize>(
    ctx: &TcContext,
    off: usize,
    buf: &mut [u8; N],
) -> Result<(), DropReason> {
    // SAFETY: the helper writes exactly N bytes into buf or fails.
    let ret = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            buf.as_mut_ptr().cast(),
            N as u32,
        )
    };
    if ret < 0 {
        return Err(DropReason::Malformed);
    }
    Ok(())
}
