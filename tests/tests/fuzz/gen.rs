//! Packets: valid ones of the world's flows and of none (TCP, UDP, ICMP echo, ICMP errors
//! quoting a flow, fragments, VXLAN frames, a pod's and the internet's), mutated in headers,
//! lengths, options and flags, and random bytes. Only the seeded PRNG decides: a seed gives
//! the same packets on every run, whatever the datapath answers.

use std::net::Ipv4Addr;

use egress_common::{
    config::DEFAULT_TRUST_MARK,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use egress_tests::packet::{
    EGRESS, GATEWAY, HOST_MAC, INTERNET, PEER_ISN, POD_A, POD_A_IF, POD_B, POD_B_IF, POD_ISN,
    POD_MAC, PORT_MAX, PORT_MIN, UPLINK_IF, WORKER,
};
use rand::{seq::IndexedRandom, Rng};
use rand_chacha::ChaCha8Rng;

use crate::{
    wire::{
        fix_ip_csum, fix_l4_csum, parse, quote, Parse, ICMP_DEST_UNREACH, ICMP_ECHO,
        ICMP_ECHOREPLY, ICMP_PARAMETERPROB, ICMP_TIME_EXCEEDED, IP_DF, IP_MF, L3,
    },
    world::{
        pod_if, Flow, Role, INBOUND_PEER_PORT, INBOUND_POD_PORT, INTERNET2, POD_FLOWS,
        REMOTE_FLOWS, REMOTE_POD, TUNNEL_PORT,
    },
};

pub type Prng = ChaCha8Rng;

/// One packet for one program: the bytes and the `__sk_buff` fields that matter.
#[derive(Clone, Debug)]
pub struct Input {
    pub pkt: Vec<u8>,
    pub ingress: u32,
    pub mark: u32,
    /// How it was made (for the failure report).
    pub how: String,
}

// --- builders -------------------------------------------------------------------------------

/// Ethernet + IPv4 (20-byte header) + `l4`, header checksum and L4 checksum set.
#[expect(clippy::too_many_arguments, reason = "an IPv4 header's fields")]
pub fn ip(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    id: u16,
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(L3 + 20 + l4.len());
    v.extend_from_slice(&macs.1);
    v.extend_from_slice(&macs.0);
    v.extend_from_slice(&0x0800u16.to_be_bytes());
    v.extend_from_slice(&[0x45, 0]);
    v.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&frag.to_be_bytes());
    v.extend_from_slice(&[ttl, proto, 0, 0]);
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(l4);
    fix_ip_csum(&mut v, L3);
    fix_l4_csum(&mut v, false);
    v
}

#[expect(clippy::too_many_arguments, reason = "a TCP header's fields")]
pub fn tcp(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ack.to_be_bytes());
    v.push((((20 + opts.len()) / 4) as u8) << 4);
    v.push(flags);
    v.extend_from_slice(&window.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&opts);
    v.extend_from_slice(payload);
    v
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

pub fn icmp(typ: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![typ, code, 0, 0];
    v.extend_from_slice(&rest);
    v.extend_from_slice(payload);
    v
}

fn echo(id: u16, seq: u16) -> [u8; 4] {
    let mut r = [0u8; 4];
    r[..2].copy_from_slice(&id.to_be_bytes());
    r[2..].copy_from_slice(&seq.to_be_bytes());
    r
}

/// Splits an Ethernet + IPv4 (20-byte header) packet into fragments of datagram `id`: the
/// first `at` payload bytes (a multiple of 8) and the rest; returns them both.
pub fn fragments(pkt: &[u8], id: u16, at: usize) -> (Vec<u8>, Vec<u8>) {
    let (hdr, payload) = pkt.split_at(L3 + 20);
    let at = at.min(payload.len()) & !7;
    let part = |bytes: &[u8], off: usize, more: bool| {
        let mut v = hdr.to_vec();
        v.extend_from_slice(bytes);
        v[L3 + 2..L3 + 4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
        v[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
        let fo = (off / 8) as u16 | if more { IP_MF } else { 0 };
        v[L3 + 6..L3 + 8].copy_from_slice(&fo.to_be_bytes());
        fix_ip_csum(&mut v, L3);
        v
    };
    (
        part(&payload[..at], 0, true),
        part(&payload[at..], at, false),
    )
}

/// A VXLAN datagram carrying `inner` (an Ethernet frame) from `src` to `dst`'s tunnel port.
fn vxlan(src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    ip(
        (POD_MAC, HOST_MAC),
        src,
        dst,
        IPPROTO_UDP,
        64,
        0,
        0,
        &udp(40000, TUNNEL_PORT, &payload),
    )
}

// --- what the generators draw from ----------------------------------------------------------

const REMOTES: [Ipv4Addr; 6] = [
    INTERNET,
    INTERNET2,
    Ipv4Addr::new(8, 8, 8, 8),
    Ipv4Addr::new(10, 244, 3, 4),
    Ipv4Addr::new(224, 0, 0, 251),
    Ipv4Addr::new(169, 254, 1, 1),
];

fn any_addr(r: &mut Prng) -> Ipv4Addr {
    match r.random_range(0..12) {
        0 => POD_A,
        1 => POD_B,
        2 => REMOTE_POD,
        3 => GATEWAY,
        4 => WORKER,
        5 => INTERNET,
        6 => INTERNET2,
        7 => Ipv4Addr::new(10, 244, r.random(), r.random()),
        8 => Ipv4Addr::UNSPECIFIED,
        9 => Ipv4Addr::BROADCAST,
        10 => Ipv4Addr::new(127, 0, 0, 1),
        _ => Ipv4Addr::from(r.random::<u32>()),
    }
}

fn any_port(r: &mut Prng) -> u16 {
    let f = Flow::all().collect::<Vec<_>>();
    match r.random_range(0..12) {
        0 => 0,
        1 => 25,
        2 => 53,
        3 => TUNNEL_PORT,
        4 => PORT_MIN,
        5 => PORT_MAX,
        6 => PORT_MIN - 1,
        7 => f.choose(r).expect("flows").nat_port,
        8 => f.choose(r).expect("flows").pod_port,
        9 => r.random_range(PORT_MIN..=PORT_MAX),
        10 => INBOUND_POD_PORT,
        _ => r.random(),
    }
}

fn payload(r: &mut Prng, max: usize) -> Vec<u8> {
    let n = r.random_range(0..=max);
    (0..n).map(|_| r.random()).collect()
}

/// TCP options a SYN may carry: MSS, SACK permitted, window scale, timestamps, NOPs, in a
/// random choice and order.
fn syn_options(r: &mut Prng) -> Vec<u8> {
    let mut o = Vec::new();
    if r.random_bool(0.2) {
        o.push(1);
    }
    if r.random_bool(0.85) {
        let mss: u16 = *[1460u16, 9000, 536, 1410, 1400, 65535, 0]
            .choose(r)
            .expect("mss");
        o.extend_from_slice(&[2, 4]);
        o.extend_from_slice(&mss.to_be_bytes());
    }
    if r.random_bool(0.6) {
        o.extend_from_slice(&[4, 2]);
    }
    if r.random_bool(0.5) {
        o.extend_from_slice(&[1, 3, 3, r.random_range(0..15)]);
    }
    if r.random_bool(0.5) {
        o.extend_from_slice(&[8, 10]);
        o.extend_from_slice(&r.random::<u64>().to_be_bytes());
    }
    o
}

fn pick_flow(r: &mut Prng, proto: u8, remote_too: bool) -> Flow {
    let pool: Vec<&Flow> = POD_FLOWS
        .iter()
        .chain(REMOTE_FLOWS.iter().filter(|_| remote_too))
        .filter(|f| f.proto == proto)
        .collect();
    **pool.choose(r).expect("a flow of the protocol")
}

// --- templates ------------------------------------------------------------------------------

/// A pod's TCP segment: of a seeded flow, or to anywhere.
fn pod_tcp(r: &mut Prng) -> Vec<u8> {
    let (pod, sport, dst, dport) = if r.random_bool(0.6) {
        let f = pick_flow(r, IPPROTO_TCP, false);
        (f.pod, f.pod_port, f.remote, f.remote_port)
    } else {
        let pod = if r.random_bool(0.8) { POD_A } else { POD_B };
        let remote = *REMOTES.choose(r).expect("remote");
        (pod, any_port(r), remote, any_port(r))
    };
    let flags = *[
        TCP_S, TCP_S, TCP_A, TCP_PA, TCP_FA, TCP_R, TCP_RA, TCP_SA, 0, 0xff,
    ]
    .choose(r)
    .expect("flags");
    let flags = if flags == 0xff { r.random() } else { flags };
    let seq = if flags & 2 != 0 { POD_ISN } else { POD_ISN + 1 };
    let ack = if r.random_bool(0.8) {
        PEER_ISN + 1
    } else {
        r.random()
    };
    let opts = if flags & 2 != 0 {
        syn_options(r)
    } else {
        Vec::new()
    };
    let data = if flags & 2 == 0 {
        payload(r, 200)
    } else {
        Vec::new()
    };
    let seg = tcp(sport, dport, seq, ack, flags, r.random(), &opts, &data);
    ip(
        (POD_MAC, HOST_MAC),
        pod,
        dst,
        IPPROTO_TCP,
        ttl(r),
        r.random(),
        df(r),
        &seg,
    )
}

const TCP_S: u8 = 0x02;
const TCP_A: u8 = 0x10;
const TCP_PA: u8 = 0x18;
const TCP_FA: u8 = 0x11;
const TCP_R: u8 = 0x04;
const TCP_RA: u8 = 0x14;
const TCP_SA: u8 = 0x12;

fn ttl(r: &mut Prng) -> u8 {
    *[64u8, 64, 64, 64, 2, 1, 0, 255].choose(r).expect("ttl")
}

fn df(r: &mut Prng) -> u16 {
    if r.random_bool(0.5) {
        IP_DF
    } else {
        0
    }
}

fn pod_udp(r: &mut Prng) -> Vec<u8> {
    let (pod, sport, dst, dport) = if r.random_bool(0.6) {
        let f = pick_flow(r, IPPROTO_UDP, false);
        (f.pod, f.pod_port, f.remote, f.remote_port)
    } else {
        let pod = if r.random_bool(0.8) { POD_A } else { POD_B };
        (pod, any_port(r), any_addr(r), any_port(r))
    };
    // Now and then larger than the tunnel carries (fragmentation needed, with DF).
    let data = if r.random_bool(0.05) {
        vec![0x5a; r.random_range(1400..1600)]
    } else {
        payload(r, 300)
    };
    let mut v = ip(
        (POD_MAC, HOST_MAC),
        pod,
        dst,
        IPPROTO_UDP,
        ttl(r),
        r.random(),
        df(r),
        &udp(sport, dport, &data),
    );
    if r.random_bool(0.2) {
        // No checksum.
        let c = L3 + 20 + 6;
        v[c..c + 2].copy_from_slice(&[0, 0]);
    }
    v
}

fn pod_echo(r: &mut Prng) -> Vec<u8> {
    let id = if r.random_bool(0.6) {
        pick_flow(r, IPPROTO_ICMP, false).pod_port
    } else {
        any_port(r)
    };
    let (typ, dst) = if r.random_bool(0.85) {
        (ICMP_ECHO, *REMOTES.choose(r).expect("remote"))
    } else {
        (ICMP_ECHOREPLY, INTERNET)
    };
    ip(
        (POD_MAC, HOST_MAC),
        if r.random_bool(0.85) { POD_A } else { POD_B },
        dst,
        IPPROTO_ICMP,
        ttl(r),
        r.random(),
        df(r),
        &icmp(typ, 0, echo(id, r.random()), &payload(r, 64)),
    )
}

/// An ICMP error a pod sends about a packet it received (a peer's, or one of a NAT flow).
fn pod_icmp_error(r: &mut Prng) -> Vec<u8> {
    let quoted = if r.random_bool(0.5) {
        ip(
            (HOST_MAC, POD_MAC),
            INTERNET,
            POD_A,
            IPPROTO_UDP,
            60,
            7,
            0,
            &udp(INBOUND_PEER_PORT, INBOUND_POD_PORT, b"hello"),
        )
    } else {
        let f = pick_flow(r, IPPROTO_UDP, false);
        ip(
            (HOST_MAC, POD_MAC),
            f.remote,
            f.pod,
            IPPROTO_UDP,
            60,
            7,
            0,
            &udp(f.remote_port, f.pod_port, b"answer"),
        )
    };
    let q = &quoted[L3..(L3 + 28).min(quoted.len())];
    ip(
        (POD_MAC, HOST_MAC),
        POD_A,
        addr_at(&quoted, L3 + 12),
        IPPROTO_ICMP,
        64,
        r.random(),
        0,
        &icmp(ICMP_DEST_UNREACH, 3, [0; 4], q),
    )
}

fn addr_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

/// Datagram ids of fragments: a few, so that later fragments meet their first ones.
fn frag_id(r: &mut Prng) -> u16 {
    0x4200 + r.random_range(0..4)
}

/// A fragment (first or later) of a pod's UDP datagram.
fn pod_fragment(r: &mut Prng) -> Vec<u8> {
    let f = pick_flow(r, IPPROTO_UDP, false);
    let data = vec![0x33; r.random_range(100..2000)];
    let whole = ip(
        (POD_MAC, HOST_MAC),
        f.pod,
        f.remote,
        IPPROTO_UDP,
        64,
        0,
        0,
        &udp(f.pod_port, f.remote_port, &data),
    );
    let (a, b) = fragments(&whole, frag_id(r), r.random_range(1..100) * 8);
    if r.random_bool(0.5) {
        a
    } else {
        b
    }
}

/// A pod's packet to where no policy sends it through a gateway, or to the tunnel port.
fn pod_elsewhere(r: &mut Prng) -> Vec<u8> {
    let dst = match r.random_range(0..4) {
        0 => Ipv4Addr::new(10, 244, 0, r.random()),
        1 => GATEWAY,
        2 => WORKER,
        _ => EGRESS,
    };
    let dport = if r.random_bool(0.5) {
        TUNNEL_PORT
    } else {
        any_port(r)
    };
    ip(
        (POD_MAC, HOST_MAC),
        if r.random_bool(0.7) { POD_A } else { POD_B },
        dst,
        IPPROTO_UDP,
        ttl(r),
        r.random(),
        0,
        &udp(any_port(r), dport, &payload(r, 64)),
    )
}

/// A reply from the internet to a flow's egress port: TCP, UDP or an echo reply.
fn wire_reply(r: &mut Prng) -> Vec<u8> {
    let proto = *[IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]
        .choose(r)
        .expect("proto");
    let f = pick_flow(r, proto, true);
    let l4 = match proto {
        IPPROTO_TCP => {
            let flags = *[TCP_SA, TCP_A, TCP_PA, TCP_R, TCP_RA, TCP_FA, 0x01]
                .choose(r)
                .expect("flags");
            let seq = match r.random_range(0..3) {
                0 => PEER_ISN,
                1 => PEER_ISN + 1,
                _ => r.random(),
            };
            let opts = if flags & 2 != 0 {
                syn_options(r)
            } else {
                Vec::new()
            };
            tcp(
                f.remote_port,
                f.nat_port,
                seq,
                POD_ISN + 1,
                flags,
                r.random(),
                &opts,
                &payload(r, 100),
            )
        }
        IPPROTO_UDP => udp(f.remote_port, f.nat_port, &payload(r, 300)),
        _ => icmp(
            ICMP_ECHOREPLY,
            0,
            echo(f.nat_port, r.random()),
            &payload(r, 64),
        ),
    };
    ip(
        (HOST_MAC, POD_MAC),
        f.remote,
        EGRESS,
        proto,
        ttl(r),
        r.random(),
        df(r),
        &l4,
    )
}

/// An ICMP error from the internet (or a router on the way) quoting a flow's packet as it
/// left the gateway.
fn wire_icmp_error(r: &mut Prng) -> Vec<u8> {
    let proto = *[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]
        .choose(r)
        .expect("proto");
    let f = pick_flow(r, proto, true);
    let l4 = match proto {
        IPPROTO_TCP => tcp(
            f.nat_port,
            f.remote_port,
            POD_ISN,
            0,
            TCP_S,
            64240,
            &[],
            &[],
        ),
        IPPROTO_UDP => udp(f.nat_port, f.remote_port, b"query"),
        _ => icmp(ICMP_ECHO, 0, echo(f.nat_port, 1), b"abcdefgh"),
    };
    let sent = ip(
        (POD_MAC, HOST_MAC),
        EGRESS,
        f.remote,
        proto,
        63,
        r.random(),
        IP_DF,
        &l4,
    );
    let quoted_len = match r.random_range(0..3) {
        0 => 28,
        1 => sent.len() - L3,
        _ => r.random_range(20..sent.len() - L3),
    };
    let (typ, code, rest) = match r.random_range(0..4) {
        0 => (ICMP_DEST_UNREACH, 4, [0, 0, 0x05, 0x00]),
        1 => (ICMP_DEST_UNREACH, r.random_range(0..16), [0; 4]),
        2 => (ICMP_TIME_EXCEEDED, r.random_range(0..2), [0; 4]),
        _ => (ICMP_PARAMETERPROB, 0, [20, 0, 0, 0]),
    };
    let from = if r.random_bool(0.7) {
        f.remote
    } else {
        Ipv4Addr::new(192, 0, 2, 254)
    };
    ip(
        (HOST_MAC, POD_MAC),
        from,
        EGRESS,
        IPPROTO_ICMP,
        ttl(r),
        r.random(),
        0,
        &icmp(typ, code, rest, &sent[L3..L3 + quoted_len]),
    )
}

/// A fragment (first or later) of a UDP reply datagram to a flow.
fn wire_fragment(r: &mut Prng) -> Vec<u8> {
    let f = pick_flow(r, IPPROTO_UDP, true);
    let data = vec![0x77; r.random_range(100..2500)];
    let whole = ip(
        (HOST_MAC, POD_MAC),
        f.remote,
        EGRESS,
        IPPROTO_UDP,
        64,
        0,
        0,
        &udp(f.remote_port, f.nat_port, &data),
    );
    let (a, b) = fragments(&whole, frag_id(r), r.random_range(1..100) * 8);
    if r.random_bool(0.5) {
        a
    } else {
        b
    }
}

/// The gateway host's own traffic: to its address, on ports no flow has.
fn wire_host(r: &mut Prng) -> Vec<u8> {
    let dport = *[22u16, 80, 123, 4242, PORT_MIN + 7, PORT_MAX]
        .choose(r)
        .expect("port");
    let src = *REMOTES.choose(r).expect("remote");
    let (proto, l4) = match r.random_range(0..3) {
        0 => (
            IPPROTO_TCP,
            tcp(
                r.random(),
                dport,
                r.random(),
                r.random(),
                r.random(),
                r.random(),
                &[],
                &payload(r, 64),
            ),
        ),
        1 => (IPPROTO_UDP, udp(r.random(), dport, &payload(r, 64))),
        _ => (
            IPPROTO_ICMP,
            icmp(
                *[ICMP_ECHO, ICMP_ECHOREPLY, 13, 5].choose(r).expect("type"),
                0,
                echo(r.random(), 1),
                &payload(r, 32),
            ),
        ),
    };
    ip(
        (HOST_MAC, POD_MAC),
        src,
        GATEWAY,
        proto,
        ttl(r),
        r.random(),
        df(r),
        &l4,
    )
}

/// A VXLAN datagram on the underlay, from a peer node or from anyone, maybe fragmented.
fn vxlan_frame(r: &mut Prng, role: Role) -> Vec<u8> {
    let src = *[WORKER, GATEWAY, INTERNET, POD_A]
        .choose(r)
        .expect("outer source");
    let dst = if r.random_bool(0.8) {
        role.node()
    } else {
        *[GATEWAY, WORKER].choose(r).expect("node")
    };
    let inner = tunnel_inner(r);
    let v = vxlan(src, dst, 1, &inner);
    if r.random_bool(0.2) {
        let (a, b) = fragments(&v, frag_id(r), 48);
        if r.random_bool(0.5) {
            a
        } else {
            b
        }
    } else {
        v
    }
}

/// A frame as it comes out of the tunnel: a remote pod's packet for the gateway, or a reply
/// for pod A from the gateway.
fn tunnel_inner(r: &mut Prng) -> Vec<u8> {
    if r.random_bool(0.5) {
        let f = REMOTE_FLOWS.choose(r).expect("remote flow");
        let l4 = match f.proto {
            IPPROTO_TCP => tcp(
                f.pod_port,
                f.remote_port,
                POD_ISN + 1,
                PEER_ISN + 1,
                TCP_A,
                512,
                &[],
                &payload(r, 64),
            ),
            _ => udp(f.pod_port, f.remote_port, &payload(r, 64)),
        };
        ip(
            (POD_MAC, HOST_MAC),
            f.pod,
            f.remote,
            f.proto,
            63,
            r.random(),
            0,
            &l4,
        )
    } else {
        let f = pick_flow(r, IPPROTO_UDP, false);
        ip(
            (HOST_MAC, POD_MAC),
            f.remote,
            f.pod,
            IPPROTO_UDP,
            63,
            r.random(),
            0,
            &udp(f.remote_port, f.pod_port, &payload(r, 64)),
        )
    }
}

/// A peer's packet to a pod (a connection opened towards it), or a reply of a flow.
fn to_pod_packet(r: &mut Prng) -> Vec<u8> {
    let pod = if r.random_bool(0.8) { POD_A } else { POD_B };
    let src = *REMOTES.choose(r).expect("remote");
    let (proto, l4) = match r.random_range(0..3) {
        0 => (
            IPPROTO_TCP,
            tcp(
                INBOUND_PEER_PORT,
                INBOUND_POD_PORT,
                PEER_ISN,
                0,
                *[TCP_S, TCP_SA, TCP_A].choose(r).expect("flags"),
                64240,
                &syn_options(r),
                &[],
            ),
        ),
        1 => (
            IPPROTO_UDP,
            udp(INBOUND_PEER_PORT, any_port(r), &payload(r, 64)),
        ),
        _ => (
            IPPROTO_ICMP,
            icmp(ICMP_ECHO, 0, echo(r.random(), 1), &payload(r, 16)),
        ),
    };
    ip(
        (HOST_MAC, POD_MAC),
        src,
        pod,
        proto,
        ttl(r),
        r.random(),
        0,
        &l4,
    )
}

/// Random bytes: anything, or behind an IPv4 Ethertype, or behind a plausible IPv4 header.
fn random_bytes(r: &mut Prng) -> Vec<u8> {
    let n = r.random_range(14..400);
    let mut v: Vec<u8> = (0..n).map(|_| r.random()).collect();
    match r.random_range(0..3) {
        0 => {}
        1 => v[12..14].copy_from_slice(&[0x08, 0]),
        _ => {
            v[12..14].copy_from_slice(&[0x08, 0]);
            if v.len() > L3 + 20 {
                v[L3] = 0x45;
                let tot = (v.len() - L3) as u16;
                v[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
                v[L3 + 6..L3 + 8].copy_from_slice(&[0, 0]);
                v[L3 + 9] = *[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]
                    .choose(r)
                    .expect("proto");
                let a = any_addr(r).octets();
                let b = any_addr(r).octets();
                v[L3 + 12..L3 + 16].copy_from_slice(&a);
                v[L3 + 16..L3 + 20].copy_from_slice(&b);
                fix_ip_csum(&mut v, L3);
                fix_l4_csum(&mut v, false);
            }
        }
    }
    v
}

/// Not IPv4: ARP, IPv6, a VLAN tag.
fn not_ipv4(r: &mut Prng) -> Vec<u8> {
    let ethertype: u16 = *[0x0806u16, 0x86dd, 0x8100, 0x88cc, 0x0000]
        .choose(r)
        .expect("ethertype");
    let mut v = Vec::new();
    v.extend_from_slice(&POD_MAC);
    v.extend_from_slice(&HOST_MAC);
    v.extend_from_slice(&ethertype.to_be_bytes());
    if ethertype == 0x8100 {
        // A tagged IPv4 packet behind the VLAN header.
        v.extend_from_slice(&[0, 5, 0x08, 0]);
        v.extend_from_slice(&pod_udp(r)[L3..]);
    } else if ethertype == 0x86dd && r.random_bool(0.7) {
        // An IPv6 header: to the internet, multicast or link-local, of a protocol.
        let next = *[58u8, 6, 17, 0].choose(r).expect("next header");
        let body = payload(r, 60);
        v.extend_from_slice(&[0x60, 0, 0, 0]);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(&[next, 64]);
        let addr = |r: &mut Prng| -> [u8; 16] {
            let mut a: [u8; 16] = r.random();
            match r.random_range(0..4) {
                0 => a[..2].copy_from_slice(&[0xff, 0x02]),
                1 => a[..2].copy_from_slice(&[0xfe, 0x80]),
                2 => a = [0; 16],
                _ => a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]),
            }
            a
        };
        let (src, dst) = (addr(r), addr(r));
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend(body);
    } else {
        v.extend(payload(r, 100));
        v.resize(v.len().max(60), 0);
    }
    v
}

// --- which packets each program gets --------------------------------------------------------

/// A template by its weight.
type Template = fn(&mut Prng, Role) -> Vec<u8>;

const POD_SIDE: &[(u32, Template, &str)] = &[
    (25, |r, _| pod_tcp(r), "pod tcp"),
    (15, |r, _| pod_udp(r), "pod udp"),
    (10, |r, _| pod_echo(r), "pod echo"),
    (5, |r, _| pod_icmp_error(r), "pod icmp error"),
    (10, |r, _| pod_fragment(r), "pod fragment"),
    (10, |r, _| pod_elsewhere(r), "pod elsewhere"),
];

const WIRE_SIDE: &[(u32, Template, &str)] = &[
    (25, |r, _| wire_reply(r), "wire reply"),
    (15, |r, _| wire_icmp_error(r), "wire icmp error"),
    (10, |r, _| wire_fragment(r), "wire fragment"),
    (10, |r, _| wire_host(r), "wire host"),
    (10, vxlan_frame, "vxlan"),
];

const OTHER: &[(u32, Template, &str)] = &[
    (10, |r, _| tunnel_inner(r), "tunnel inner"),
    (10, |r, _| to_pod_packet(r), "to pod"),
    (10, |r, _| random_bytes(r), "random bytes"),
    (4, |r, _| not_ipv4(r), "not ipv4"),
];

/// The templates a program gets, with weights: its own side's mostly, the others' too.
fn menu(prog: &str) -> Vec<(u32, Template, &'static str)> {
    use egress_common::program_names::*;
    let scale = |set: &[(u32, Template, &'static str)], f: u32| {
        set.iter()
            .map(move |(w, t, n)| (w * f, *t, *n))
            .collect::<Vec<_>>()
    };
    let (pod, wire, other) = match prog {
        FROM_POD => (8, 1, 2),
        FROM_WIRE => (1, 8, 2),
        TO_WIRE => (1, 6, 2),
        TO_POD => (1, 3, 4),
        _ => (2, 2, 4), // FROM_TUNNEL
    };
    let mut m = scale(POD_SIDE, pod);
    m.extend(scale(WIRE_SIDE, wire));
    m.extend(scale(OTHER, other));
    m
}

/// The next input for `prog` on a node of `role`.
pub fn next(r: &mut Prng, prog: &'static str, role: Role) -> Input {
    use egress_common::program_names::*;
    let menu = menu(prog);
    let total: u32 = menu.iter().map(|(w, _, _)| w).sum();
    let mut pick = r.random_range(0..total);
    let (_, t, name) = *menu
        .iter()
        .find(|(w, _, _)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .expect("a template");
    let mut pkt = t(r, role);
    let mut how = name.to_owned();
    if r.random_bool(0.8) {
        let n = r.random_range(1..=4);
        for _ in 0..n {
            how += ", ";
            how += mutate(r, &mut pkt);
        }
        if r.random_bool(0.7) {
            how += ", checksums fixed";
            fix_checksums(r, &mut pkt);
        }
    }
    pkt.truncate(2000);
    // The kernel's test run takes no frame shorter than its network header (a real device
    // could deliver one; the test harness cannot).
    let least = match (pkt.len() >= L3).then(|| [pkt[12], pkt[13]]) {
        Some([0x08, 0x00]) => L3 + 20,
        Some([0x86, 0xdd]) => L3 + 40,
        _ => L3,
    };
    while pkt.len() < least {
        pkt.push(r.random());
    }
    let (ingress, mark) = match prog {
        FROM_POD => {
            let src = match parse(&pkt) {
                Parse::Ok(p) => p.saddr,
                _ => POD_A,
            };
            let ingress = if r.random_bool(0.85) {
                pod_if(src)
            } else {
                *[POD_A_IF, POD_B_IF, 7, 0].choose(r).expect("ifindex")
            };
            (ingress, 0)
        }
        FROM_TUNNEL => {
            let mark = if r.random_bool(0.85) {
                DEFAULT_TRUST_MARK | if r.random_bool(0.2) { 0x4000 } else { 0 }
            } else {
                r.random()
            };
            (1, mark)
        }
        TO_WIRE => (
            0,
            if r.random_bool(0.3) {
                DEFAULT_TRUST_MARK
            } else {
                0
            },
        ),
        TO_POD => (0, 0),
        _ => (UPLINK_IF, 0),
    };
    Input {
        pkt,
        ingress,
        mark,
        how,
    }
}

// --- mutations ------------------------------------------------------------------------------

/// The header fields of `pkt` as (offset, width), as far as its layout goes.
fn fields(pkt: &[u8]) -> Vec<(usize, usize)> {
    let mut f = vec![(12, 2)];
    if pkt.len() < L3 + 20 {
        return f;
    }
    for fld in [
        (0, 1),
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 2),
        (8, 1),
        (9, 1),
        (10, 2),
        (12, 4),
        (16, 4),
    ] {
        f.push((L3 + fld.0, fld.1));
    }
    let Parse::Ok(p) = parse(pkt) else {
        return f;
    };
    if p.later_fragment() {
        return f;
    }
    let l4: &[(usize, usize)] = match p.proto {
        IPPROTO_TCP => &[
            (0, 2),
            (2, 2),
            (4, 4),
            (8, 4),
            (12, 1),
            (13, 1),
            (14, 2),
            (16, 2),
            (18, 2),
        ],
        IPPROTO_UDP => &[(0, 2), (2, 2), (4, 2), (6, 2)],
        IPPROTO_ICMP => &[(0, 1), (1, 1), (2, 2), (4, 2), (6, 2)],
        _ => &[],
    };
    f.extend(l4.iter().map(|(o, w)| (p.l4 + o, *w)));
    // The packet an ICMP error quotes: its header and ports.
    if p.icmp_error() {
        if let Ok(Some(q)) = quote(pkt, &p) {
            for (o, w) in [(0, 1), (2, 2), (8, 1), (9, 1), (10, 2), (12, 4), (16, 4)] {
                f.push((q.ip + o, w));
            }
            f.push((q.l4, 2));
            f.push((q.l4 + 2, 2));
            f.push((q.port_at, 2));
        }
    }
    f.retain(|(o, w)| o + w <= pkt.len());
    f
}

/// A value for a field of `width` bytes that was `old`.
fn value(r: &mut Prng, width: usize, old: u32) -> u32 {
    let max = if width >= 4 {
        u32::MAX
    } else {
        (1u32 << (8 * width)) - 1
    };
    let v = match r.random_range(0..9) {
        0 => 0,
        1 => max,
        2 => old.wrapping_add(1),
        3 => old.wrapping_sub(1),
        4 if width == 4 => u32::from_be_bytes(any_addr(r).octets()),
        4 | 5 if width == 2 => u32::from(any_port(r)),
        6 if width == 1 => *[1u32, 6, 17, 0, 2, 0x45, 0x46, 0x4f, 0x12, 0x14]
            .choose(r)
            .expect("byte"),
        7 => r.random::<u32>() & 0xff,
        _ => r.random(),
    };
    v & max
}

fn put(pkt: &mut [u8], off: usize, width: usize, v: u32) {
    let b = v.to_be_bytes();
    pkt[off..off + width].copy_from_slice(&b[4 - width..]);
}

fn get(pkt: &[u8], off: usize, width: usize) -> u32 {
    let mut b = [0u8; 4];
    b[4 - width..].copy_from_slice(&pkt[off..off + width]);
    u32::from_be_bytes(b)
}

/// One random mutation of `pkt`; returns its name.
fn mutate(r: &mut Prng, pkt: &mut Vec<u8>) -> &'static str {
    match r.random_range(0..100) {
        0..=39 => {
            let f = fields(pkt);
            let (off, width) = *f.choose(r).expect("a field");
            let old = get(pkt, off, width);
            let v = value(r, width, old);
            put(pkt, off, width, v);
            "header field"
        }
        40..=49 => {
            if pkt.len() > L3 + 1 {
                let n = r.random_range(L3..pkt.len());
                pkt.truncate(n);
            }
            "truncated"
        }
        50..=56 => {
            let extra = payload(r, 64);
            pkt.extend_from_slice(&extra);
            if r.random_bool(0.5) && pkt.len() >= L3 + 4 {
                let tot = (pkt.len() - L3).min(0xffff) as u16;
                pkt[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
                "extended"
            } else {
                "trailing bytes"
            }
        }
        57..=63 => {
            if pkt.len() >= L3 + 4 {
                let v = value(
                    r,
                    2,
                    u32::from(u16::from_be_bytes([pkt[L3 + 2], pkt[L3 + 3]])),
                );
                put(pkt, L3 + 2, 2, v);
            }
            "total length"
        }
        64..=71 => {
            ip_options(r, pkt);
            "IP options"
        }
        72..=79 => {
            tcp_options(r, pkt);
            "TCP options"
        }
        80..=86 => {
            if pkt.len() >= L3 + 8 {
                let fo = match r.random_range(0..5) {
                    0 => IP_MF,
                    1 => IP_MF | r.random_range(1..200),
                    2 => r.random_range(1..200),
                    3 => IP_DF,
                    _ => r.random(),
                };
                put(pkt, L3 + 6, 2, u32::from(fo));
            }
            "fragment bits"
        }
        87..=91 => {
            swap_direction(pkt);
            "direction swapped"
        }
        _ => {
            for _ in 0..r.random_range(1..=8) {
                let i = r.random_range(0..pkt.len());
                pkt[i] ^= 1 << r.random_range(0..8);
            }
            "bits flipped"
        }
    }
}

/// Inserts IPv4 options (NOPs, EOL, record route, random) of 4 to 40 bytes.
fn ip_options(r: &mut Prng, pkt: &mut Vec<u8>) {
    let Parse::Ok(p) = parse(pkt) else { return };
    let words = r.random_range(1..=(15 - p.ihl / 4).max(1));
    if p.ihl / 4 + words > 15 {
        return;
    }
    let mut o = match r.random_range(0..4) {
        0 => vec![1u8; words * 4],
        1 => {
            let mut v = vec![7u8, (words * 4) as u8, 4];
            v.resize(words * 4, 0);
            v
        }
        2 => vec![0u8; words * 4],
        _ => payload(r, words * 4),
    };
    o.resize(words * 4, 0);
    let at = L3 + p.ihl;
    if at > pkt.len() {
        return;
    }
    pkt.splice(at..at, o);
    pkt[L3] = 0x40 | ((p.ihl / 4 + words) as u8);
    let tot = (p.tot_len + words * 4).min(0xffff) as u16;
    pkt[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
}

/// Rewrites or adds TCP options: well-formed, with odd lengths (0, 1, 3, past the end), MSS
/// at an odd offset, or random.
fn tcp_options(r: &mut Prng, pkt: &mut Vec<u8>) {
    let Parse::Ok(p) = parse(pkt) else { return };
    if p.proto != IPPROTO_TCP || p.later_fragment() || pkt.len() < p.l4 + p.tcp_hlen {
        return;
    }
    let mut o = match r.random_range(0..5) {
        0 => syn_options(r),
        1 => vec![2, *[0u8, 1, 3, 5, 40].choose(r).expect("len"), 0x05, 0xb4],
        2 => vec![1, 2, 4, 0x23, 0x28],
        3 => vec![r.random(), r.random(), r.random(), r.random()],
        _ => payload(r, 40),
    };
    o.truncate(40);
    while !o.len().is_multiple_of(4) {
        o.push(1);
    }
    let start = p.l4 + 20;
    let end = p.l4 + p.tcp_hlen;
    pkt.splice(start..end, o.iter().copied());
    let hlen = 20 + o.len();
    pkt[p.l4 + 12] = ((hlen / 4) as u8) << 4 | (pkt[p.l4 + 12] & 0xf);
    let tot = (p.tot_len + hlen).saturating_sub(p.tcp_hlen).min(0xffff) as u16;
    pkt[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
}

/// Swaps the addresses and the ports: the packet as if it came the other way.
fn swap_direction(pkt: &mut [u8]) {
    let Parse::Ok(p) = parse(pkt) else { return };
    let (s, d) = (
        pkt[L3 + 12..L3 + 16].to_vec(),
        pkt[L3 + 16..L3 + 20].to_vec(),
    );
    pkt[L3 + 12..L3 + 16].copy_from_slice(&d);
    pkt[L3 + 16..L3 + 20].copy_from_slice(&s);
    if !p.later_fragment() && matches!(p.proto, IPPROTO_TCP | IPPROTO_UDP) {
        let (a, b) = (
            pkt[p.l4..p.l4 + 2].to_vec(),
            pkt[p.l4 + 2..p.l4 + 4].to_vec(),
        );
        pkt[p.l4..p.l4 + 2].copy_from_slice(&b);
        pkt[p.l4 + 2..p.l4 + 4].copy_from_slice(&a);
    }
}

/// Makes the IPv4 header checksum (and, for a whole packet, the L4 checksum) valid again, so
/// that a mutated packet also exercises the paths a real one takes.
fn fix_checksums(r: &mut Prng, pkt: &mut [u8]) {
    if pkt.len() >= L3 + 20 && pkt[12..14] == [0x08, 0] {
        fix_ip_csum(pkt, L3);
        if let Parse::Ok(p) = parse(pkt) {
            if p.icmp_error() {
                if let Ok(Some(q)) = quote(pkt, &p) {
                    fix_ip_csum(pkt, q.ip);
                }
            }
        }
        fix_l4_csum(pkt, r.random_bool(0.5));
    }
}
