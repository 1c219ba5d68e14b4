//! Reading packets as bytes, independently of the datapath's code: the Ethernet + IPv4 + L4
//! layout, what the datapath's parser accepts, and checksums.

use std::{net::Ipv4Addr, ops::Range};

use egress_common::{
    nat::{FragKey4, NatKey4},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

pub const L3: usize = 14;
pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFMASK: u16 = 0x1fff;
pub const TCP_SYN: u8 = 0x02;

pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub fn addr(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

/// An address as the maps store it.
pub fn raw(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// A packet as the datapath's `parse4` reads it: Ethernet, an IPv4 header of `ihl` bytes
/// whose fixed 20 bytes are in the buffer, and (not for later fragments) the first bytes of
/// the L4 header, bounded by the buffer (not by the total length).
#[derive(Clone, Copy, Debug)]
pub struct Parsed {
    pub ihl: usize,
    pub tot_len: usize,
    /// Flags and offset, host order.
    pub frag: u16,
    pub id: u16,
    pub ttl: u8,
    pub proto: u8,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    /// Offset of the L4 header.
    pub l4: usize,
    /// Host order. ICMP echo request: the identifier as `sport`; echo reply as `dport`.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub tcp_hlen: usize,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// What `parse4` makes of a packet.
#[derive(Clone, Copy, Debug)]
pub enum Parse {
    NotIpv4,
    Malformed,
    Ok(Parsed),
}

impl Parsed {
    pub fn later_fragment(&self) -> bool {
        self.frag & IP_OFFMASK != 0
    }

    pub fn fragment(&self) -> bool {
        self.frag & (IP_MF | IP_OFFMASK) != 0
    }

    pub fn icmp_error(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && !self.later_fragment()
            && matches!(
                self.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
            )
    }

    pub fn echo_request(&self) -> bool {
        self.proto == IPPROTO_ICMP && !self.later_fragment() && self.icmp_type == ICMP_ECHO
    }

    /// The NAT key, as `Packet4::nat_key`.
    pub fn key(&self) -> NatKey4 {
        NatKey4 {
            saddr: raw(self.saddr),
            daddr: raw(self.daddr),
            sport: self.sport.to_be(),
            dport: self.dport.to_be(),
            proto: self.proto,
            kind: 0,
            _pad: [0; 2],
        }
    }

    pub fn frag_key(&self) -> FragKey4 {
        FragKey4 {
            saddr: raw(self.saddr),
            daddr: raw(self.daddr),
            id: self.id.to_be(),
            proto: self.proto,
            _pad: 0,
        }
    }

    /// Where the pod-side "port" of this packet sits: the source port (or an echo request's
    /// identifier) for `src`, the destination port (an echo reply's identifier) otherwise.
    pub fn port_at(&self, src: bool) -> Option<usize> {
        if self.later_fragment() {
            return None;
        }
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => Some(self.l4 + if src { 0 } else { 2 }),
            IPPROTO_ICMP => Some(self.l4 + 4),
            _ => None,
        }
    }

    /// Offset of the L4 checksum.
    pub fn l4_csum_at(&self) -> Option<usize> {
        match self.proto {
            IPPROTO_TCP => Some(self.l4 + 16),
            IPPROTO_UDP => Some(self.l4 + 6),
            IPPROTO_ICMP => Some(self.l4 + 2),
            _ => None,
        }
    }
}

/// `parse4`, read off the datapath's rules (and written again here).
pub fn parse(b: &[u8]) -> Parse {
    if b.len() < L3 || be16(b, 12) != 0x0800 {
        return Parse::NotIpv4;
    }
    if b.len() < L3 + 20 {
        return Parse::Malformed;
    }
    let (version, ihl) = (b[L3] >> 4, usize::from(b[L3] & 0xf) * 4);
    let tot_len = usize::from(be16(b, L3 + 2));
    if version != 4 || ihl < 20 || tot_len < ihl {
        return Parse::Malformed;
    }
    let mut p = Parsed {
        ihl,
        tot_len,
        frag: be16(b, L3 + 6),
        id: be16(b, L3 + 4),
        ttl: b[L3 + 8],
        proto: b[L3 + 9],
        saddr: addr(b, L3 + 12),
        daddr: addr(b, L3 + 16),
        l4: L3 + ihl,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        tcp_hlen: 0,
        icmp_type: 0,
        icmp_code: 0,
    };
    if p.later_fragment() {
        return Parse::Ok(p);
    }
    let need = match p.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        _ => 0,
    };
    if need > 0 && b.len() < p.l4 + need {
        return Parse::Malformed;
    }
    match p.proto {
        IPPROTO_TCP => {
            p.sport = be16(b, p.l4);
            p.dport = be16(b, p.l4 + 2);
            p.tcp_hlen = usize::from(b[p.l4 + 12] >> 4) * 4;
            p.tcp_flags = b[p.l4 + 13];
            if p.tcp_hlen < 20 {
                return Parse::Malformed;
            }
        }
        IPPROTO_UDP => {
            p.sport = be16(b, p.l4);
            p.dport = be16(b, p.l4 + 2);
        }
        IPPROTO_ICMP => {
            p.icmp_type = b[p.l4];
            p.icmp_code = b[p.l4 + 1];
            let id = be16(b, p.l4 + 4);
            if p.icmp_type == ICMP_ECHO {
                p.sport = id;
            } else if p.icmp_type == ICMP_ECHOREPLY {
                p.dport = id;
            }
        }
        _ => {}
    }
    Parse::Ok(p)
}

/// The packet an ICMP error quotes, as the datapath's `quoted` reads it.
#[derive(Clone, Copy, Debug)]
pub struct Quote {
    /// Offset of the quoted IPv4 header and of its L4 header.
    pub ip: usize,
    pub l4: usize,
    pub proto: u8,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    /// Host order; echo: the identifier as `sport`, `dport` 0.
    pub sport: u16,
    pub dport: u16,
    /// Offset of the quoted source port (or echo identifier).
    pub port_at: usize,
}

/// What `quoted` makes of an ICMP error: `Err` where the datapath drops (`Malformed`), `None`
/// for a quote no flow can have sent.
pub fn quote(b: &[u8], p: &Parsed) -> Result<Option<Quote>, ()> {
    let ip = p.l4 + 8;
    if b.len() < ip + 20 {
        return Err(());
    }
    if b[ip] >> 4 != 4 || b[ip] & 0xf < 5 {
        return Err(());
    }
    let ihl = usize::from(b[ip] & 0xf) * 4;
    let l4 = ip + ihl;
    if b.len() < l4 + 8 {
        return Err(());
    }
    let proto = b[ip + 9];
    let (sport, dport, port_at) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (be16(b, l4), be16(b, l4 + 2), l4),
        IPPROTO_ICMP if b[l4] == ICMP_ECHO => (be16(b, l4 + 4), 0, l4 + 4),
        _ => return Ok(None),
    };
    Ok(Some(Quote {
        ip,
        l4,
        proto,
        saddr: addr(b, ip + 12),
        daddr: addr(b, ip + 16),
        sport,
        dport,
        port_at,
    }))
}

impl Quote {
    /// The key of the reverse entry an error about this quoted packet is matched against.
    pub fn reverse_key(&self) -> NatKey4 {
        NatKey4 {
            saddr: raw(self.daddr),
            daddr: raw(self.saddr),
            sport: self.dport.to_be(),
            dport: self.sport.to_be(),
            proto: self.proto,
            kind: 0,
            _pad: [0; 2],
        }
    }
}

/// RFC 1071 sum, not folded.
pub fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Whether the IPv4 header checksum is valid; `None` when the header is not all there.
pub fn ip_csum_ok(b: &[u8], at: usize) -> Option<bool> {
    let ihl = usize::from(*b.get(at)? & 0xf) * 4;
    if ihl < 20 || b.len() < at + ihl {
        return None;
    }
    Some(fold(sum(&b[at..at + ihl])) == 0xffff)
}

/// Sets the IPv4 header checksum (when the header is there).
pub fn fix_ip_csum(b: &mut [u8], at: usize) {
    let Some(&vihl) = b.get(at) else { return };
    let ihl = usize::from(vihl & 0xf) * 4;
    if ihl < 20 || b.len() < at + ihl {
        return;
    }
    b[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&b[at..at + ihl]));
    b[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// The L4 segment a whole (unfragmented) packet's checksum covers, within the total length
/// and the buffer; `None` when that cannot be judged from this packet alone.
fn segment(b: &[u8], p: &Parsed) -> Option<Range<usize>> {
    if p.fragment() || L3 + p.tot_len > b.len() {
        return None;
    }
    let need = match p.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        _ => return None,
    };
    let end = L3 + p.tot_len;
    (end >= p.l4 + need).then_some(p.l4..end)
}

/// Whether the L4 checksum (TCP, UDP with the pseudo header; ICMP) is valid; a UDP datagram
/// without one (zero) counts as valid. `None`: not judgeable (fragment, truncated, other
/// protocol).
pub fn l4_csum_ok(b: &[u8], p: &Parsed) -> Option<bool> {
    let seg = segment(b, p)?;
    let s = &b[seg.clone()];
    match p.proto {
        IPPROTO_ICMP => Some(fold(sum(s)) == 0xffff),
        IPPROTO_UDP if be16(s, 6) == 0 => Some(true),
        proto => Some(fold(pseudo(b, proto, seg.len()) + sum(s)) == 0xffff),
    }
}

fn pseudo(b: &[u8], proto: u8, len: usize) -> u32 {
    sum(&b[L3 + 12..L3 + 20]) + u32::from(proto) + len as u32
}

/// Sets the L4 checksum of an unfragmented packet (UDP: `keep_zero` leaves a zero one).
pub fn fix_l4_csum(b: &mut [u8], keep_zero: bool) {
    let Parse::Ok(p) = parse(b) else { return };
    let Some(seg) = segment(b, &p) else { return };
    let at = match p.proto {
        IPPROTO_TCP => seg.start + 16,
        IPPROTO_UDP => seg.start + 6,
        _ => seg.start + 2,
    };
    if p.proto == IPPROTO_UDP && keep_zero && be16(b, at) == 0 {
        return;
    }
    b[at..at + 2].copy_from_slice(&[0, 0]);
    let s = sum(&b[seg.clone()])
        + if p.proto == IPPROTO_ICMP {
            0
        } else {
            pseudo(b, p.proto, seg.len())
        };
    let mut c = !fold(s);
    if p.proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The first offset where `a` and `b` differ outside `allowed`, if any (lengths equal).
pub fn diff_outside(a: &[u8], b: &[u8], allowed: &[Range<usize>]) -> Option<usize> {
    (0..a.len().min(b.len())).find(|&i| a[i] != b[i] && !allowed.iter().any(|r| r.contains(&i)))
}

/// The offset of the MSS option's value in a TCP header, as the datapath's `clamp_mss` walks
/// the options (at most 12 steps, within the IPv4 total length).
pub fn mss_at(b: &[u8], p: &Parsed) -> Option<usize> {
    // Within the header and the datagram.
    let end = (p.l4 + p.tcp_hlen).min(L3 + p.tot_len);
    let mut off = p.l4 + 20;
    for _ in 0..12 {
        if off + 1 >= end || off + 1 >= b.len() {
            return None;
        }
        match b[off] {
            0 => return None,
            1 => off += 1,
            kind => {
                let len = usize::from(b[off + 1]);
                if len < 2 {
                    return None;
                }
                if kind == 2 && len == 4 && off + 4 <= end {
                    return (off + 4 <= b.len()).then_some(off + 2);
                }
                off += len;
            }
        }
    }
    None
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The oracle's own reading of packets, against etherparse's.
#[cfg(test)]
mod tests {
    use egress_tests::packet::{tcp_syn, udp, INTERNET, POD_A};

    use super::*;

    #[test]
    fn the_oracle_reads_what_etherparse_builds() {
        let syn = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
        let Parse::Ok(p) = parse(&syn) else {
            panic!("a SYN")
        };
        assert_eq!(
            (p.saddr, p.daddr, p.sport, p.dport),
            (POD_A, INTERNET, 40000, 25)
        );
        assert_eq!(
            (p.proto, p.tcp_flags & TCP_SYN, p.tcp_hlen),
            (6, TCP_SYN, 28)
        );
        assert_eq!(
            (ip_csum_ok(&syn, L3), l4_csum_ok(&syn, &p)),
            (Some(true), Some(true))
        );
        assert_eq!(mss_at(&syn, &p).map(|at| be16(&syn, at)), Some(1460));
        // A changed byte breaks the checksum, fixing it mends it.
        let mut bad = syn.clone();
        bad[p.l4 + 4] ^= 1;
        assert_eq!(l4_csum_ok(&bad, &p), Some(false));
        fix_l4_csum(&mut bad, false);
        assert_eq!(l4_csum_ok(&bad, &p), Some(true));
        // A fragment's L4 checksum cannot be judged alone; a zero UDP checksum is none.
        let mut d = udp(POD_A, INTERNET, 1, 2, b"x");
        d[L3 + 6] = 0x20;
        let Parse::Ok(f) = parse(&d) else { panic!() };
        assert_eq!(l4_csum_ok(&d, &f), None);
        d[L3 + 6] = 0;
        d[L3 + 20 + 6..L3 + 20 + 8].copy_from_slice(&[0, 0]);
        let Parse::Ok(z) = parse(&d) else { panic!() };
        assert_eq!(l4_csum_ok(&d, &z), Some(true));
    }

    #[test]
    fn the_oracle_parses_as_the_datapath_does() {
        let syn = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
        assert!(
            matches!(parse(&syn[..L3 + 20 + 19]), Parse::Malformed),
            "short TCP header"
        );
        let mut other = syn.clone();
        other[L3 + 9] = 47; // GRE: no L4 header read, none needed
        assert!(matches!(parse(&other[..L3 + 20]), Parse::Ok(_)));
        let mut v6 = syn.clone();
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(parse(&v6), Parse::NotIpv4));
        let mut ihl = syn;
        ihl[L3] = 0x44;
        assert!(matches!(parse(&ihl), Parse::Malformed));
        assert_eq!(diff_outside(b"abcd", b"abXd", &[2..3, 9..9]), None);
        assert_eq!(diff_outside(b"abcd", b"aXXd", &[2..3, 9..9]), Some(1));
    }
}
