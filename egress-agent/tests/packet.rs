//! Packet tests: each tc program runs with BPF_PROG_TEST_RUN on hand-built packets; the
//! tests assert on the verdict, the bytes that come out and the map contents.
//!
//! They need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message without it.

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use egress_agent::datapath::{ip4, ip4_from, policy_key, Datapath, MapSizes};
use egress_common::{
    config::{Config, CFG_F_READY},
    endpoint::{Endpoint, NodeInfo, EP_F_SELECTED, NODE_F_PEER},
    nat::{NatEntry4, NatKey4, NAT_F_REVERSE},
    policy::{PolicyValue, ACTION_EXCLUDED, ACTION_VIA_GATEWAY},
    program_names::{FROM_POD, FROM_WIRE},
};
use etherparse::{PacketBuilder, TcpOptionElement};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const WORKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const EGRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const POD_A_IF: u32 = 5;
const POD_B_IF: u32 = 6;
const TUNNEL_IF: u32 = 100;
const UPLINK_IF: u32 = 200;
const POLICY: u32 = 1;
const PORT_MIN: u16 = 61000;
const PORT_MAX: u16 = 65535;
const TUNNEL_MTU: u32 = 1450;

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("packet tests need root (CAP_BPF, CAP_NET_ADMIN): run them as root");
    }
}

/// A loaded datapath with maps seeded as on a node: `this_node` decides the role.
fn datapath(this_node: Ipv4Addr) -> Datapath {
    require_root();
    let mut dp = Datapath::load(&MapSizes::default(), None).expect("load datapath");
    dp.set_config(&Config {
        flags: CFG_F_READY,
        node_ip4: ip4(this_node),
        tunnel_ifindex: TUNNEL_IF,
        uplink_ifindex: UPLINK_IF,
        tunnel_mtu: TUNNEL_MTU,
        nat_port_min: PORT_MIN,
        nat_port_max: PORT_MAX,
    })
    .expect("config");
    let mut m = dp.maps();
    m.put_endpoint(
        ip4(POD_A),
        Endpoint {
            ifindex: POD_A_IF,
            policy_id: POLICY,
            flags: EP_F_SELECTED,
            _pad: 0,
        },
    )
    .expect("endpoint");
    m.put_endpoint(
        ip4(POD_B),
        Endpoint {
            ifindex: POD_B_IF,
            ..Default::default()
        },
    )
    .expect("endpoint");
    for n in [GATEWAY, WORKER] {
        m.put_node(
            ip4(n),
            NodeInfo {
                flags: NODE_F_PEER,
                _pad: 0,
            },
        )
        .expect("node");
    }
    let via = PolicyValue {
        action: ACTION_VIA_GATEWAY,
        gateway_ip4: ip4(GATEWAY),
        egress_ip4: ip4(EGRESS),
        _pad: 0,
    };
    m.put_policy(&policy_key(POLICY, Ipv4Addr::UNSPECIFIED, 0), via)
        .expect("policy");
    m.put_policy(
        &policy_key(POLICY, Ipv4Addr::new(10, 244, 0, 0), 16),
        PolicyValue {
            action: ACTION_EXCLUDED,
            ..Default::default()
        },
    )
    .expect("policy");
    dp
}

/// Runs `prog` on `pkt` as if it arrived on `ingress_ifindex`.
fn run(dp: &Datapath, prog: &'static str, pkt: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
    // struct __sk_buff: ingress_ifindex at 36, ifindex at 40 (loopback exists everywhere).
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&1u32.to_ne_bytes());
    let mut out = vec![0u8; pkt.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(pkt);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let res = dp
        .program(prog)
        .expect("program")
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, mss: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(mss),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
        ])
        .expect("options");
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

fn tcp_data(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(HOST_MAC, POD_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 5000, 64240)
        .ack(1001);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

fn ping(src: Ipv4Addr, dst: Ipv4Addr, id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC).ipv4(src.octets(), dst.octets(), 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 7)
    } else {
        b.icmpv4_echo_request(id, 7)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"abcdefgh").expect("build");
    v
}

// --- independent header access and checksum verification -------------------------------

const L3: usize = 14;

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
fn src_ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[L3 + 12], b[L3 + 13], b[L3 + 14], b[L3 + 15])
}
fn dst_ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[L3 + 16], b[L3 + 17], b[L3 + 18], b[L3 + 19])
}
fn l4(b: &[u8]) -> usize {
    L3 + usize::from(b[L3] & 0xf) * 4
}
fn sport(b: &[u8]) -> u16 {
    be16(b, l4(b))
}
fn dport(b: &[u8]) -> u16 {
    be16(b, l4(b) + 2)
}

/// RFC 1071 sum of `data` (odd length padded), not complemented.
fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}
fn folds_to_ffff(mut s: u32) -> bool {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// Asserts that the IPv4 header checksum and the TCP/UDP/ICMP checksum of `b` are valid.
fn assert_checksums(b: &[u8]) {
    let ihl = usize::from(b[L3] & 0xf) * 4;
    assert!(
        folds_to_ffff(sum(&b[L3..L3 + ihl])),
        "bad IPv4 header checksum"
    );
    let tot = usize::from(be16(b, L3 + 2));
    let seg = &b[L3 + ihl..L3 + tot];
    let proto = b[L3 + 9];
    match proto {
        6 | 17 => {
            if proto == 17 && be16(seg, 6) == 0 {
                return;
            }
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&b[L3 + 12..L3 + 20]);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            assert!(
                folds_to_ffff(sum(&pseudo) + sum(seg)),
                "bad L4 checksum (proto {proto})"
            );
        }
        1 => assert!(folds_to_ffff(sum(seg)), "bad ICMP checksum"),
        _ => {}
    }
}

fn tcp_mss(b: &[u8]) -> Option<u16> {
    let off = l4(b);
    let hlen = usize::from(b[off + 12] >> 4) * 4;
    let mut i = off + 20;
    while i < off + hlen {
        match b[i] {
            0 => return None,
            1 => i += 1,
            2 => return Some(be16(b, i + 2)),
            _ => i += usize::from(b[i + 1]),
        }
    }
    None
}

fn drops(dp: &Datapath, reason: &str) -> u64 {
    *dp.drops().expect("drops").get(reason).expect("reason")
}

fn nat_entry(dp: &mut Datapath, key: NatKey4) -> Option<NatEntry4> {
    dp.maps()
        .nat_entries()
        .expect("nat")
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn key(s: Ipv4Addr, d: Ipv4Addr, sp: u16, dp: u16, proto: u8) -> NatKey4 {
    NatKey4 {
        saddr: ip4(s),
        daddr: ip4(d),
        sport: sp.to_be(),
        dport: dp.to_be(),
        proto,
        _pad: [0; 3],
    }
}

// --- source node: egw_from_pod --------------------------------------------------------

#[test]
fn from_pod_unselected_pod_passes_untouched() {
    let dp = datapath(WORKER);
    let pkt = udp(POD_B, INTERNET, 40000, 53, b"hello");
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_B_IF);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, pkt);
}

#[test]
fn from_pod_selected_ip_on_another_veth_is_dropped_as_spoofed() {
    let dp = datapath(WORKER);
    let pkt = udp(POD_A, INTERNET, 40000, 53, b"hello");
    let (rc, _) = run(&dp, FROM_POD, &pkt, POD_B_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "spoofed"), 1);
}

#[test]
fn from_pod_cluster_destination_is_excluded() {
    let dp = datapath(WORKER);
    let pkt = udp(POD_A, Ipv4Addr::new(10, 244, 2, 7), 40000, 53, b"hello");
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, pkt);
}

#[test]
fn from_pod_selected_syn_is_tunnelled_with_mss_clamped() {
    let dp = datapath(WORKER);
    let pkt = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(tcp_mss(&out), Some((TUNNEL_MTU - 40) as u16));
    assert_eq!(src_ip(&out), POD_A, "the source node does not translate");
    assert_checksums(&out);
    let stats = dp.policy_stats().expect("stats");
    assert_eq!(stats.get(&POLICY).map(|s| s.tx_packets), Some(1));
}

#[test]
fn from_pod_small_mss_is_left_alone() {
    let dp = datapath(WORKER);
    let pkt = tcp_syn(POD_A, INTERNET, 40000, 25, 1200);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out, pkt);
}

#[test]
fn from_pod_oversize_df_packet_is_answered_with_frag_needed() {
    let dp = datapath(WORKER);
    let pkt = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1472]);
    assert_eq!(be16(&pkt, L3 + 2), 1500);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(&out[0..6], &POD_MAC, "addressed to the pod's MAC");
    assert_eq!(src_ip(&out), WORKER);
    assert_eq!(dst_ip(&out), POD_A);
    assert_eq!(out[L3 + 9], 1, "ICMP");
    assert_eq!((out[34], out[35]), (3, 4), "dest unreachable / frag needed");
    assert_eq!(u32::from(be16(&out, 34 + 6)), TUNNEL_MTU);
    assert_eq!(
        &out[42..70],
        &pkt[L3..L3 + 28],
        "quotes the original header"
    );
    assert_checksums(&out);
    assert_eq!(drops(&dp, "frag_needed"), 1);
}

#[test]
fn from_pod_oversize_without_df_is_tunnelled() {
    let dp = datapath(WORKER);
    let mut pkt = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1472]);
    // Clear DF and fix the header checksum.
    pkt[L3 + 6] &= !0x40;
    pkt[L3 + 10] = 0;
    pkt[L3 + 11] = 0;
    let c = !{
        let mut s = sum(&pkt[L3..L3 + 20]);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    pkt[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
    let (rc, _) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, "frag_needed"), 0);
}

// --- gateway: SNAT (a pod on the gateway node goes through the same engine) -------------

#[test]
fn snat_tcp_keeps_free_port_in_range_and_writes_both_entries() {
    let mut dp = datapath(GATEWAY);
    let pkt = tcp_syn(POD_A, INTERNET, 62000, 25, 1460);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(src_ip(&out), EGRESS);
    assert_eq!(sport(&out), 62000, "free port in range is kept");
    assert_eq!(tcp_mss(&out), Some(1460), "no clamping without a tunnel");
    assert_checksums(&out);
    let fwd = nat_entry(&mut dp, key(POD_A, INTERNET, 62000, 25, 6)).expect("forward entry");
    assert_eq!(ip4_from(fwd.addr), EGRESS);
    assert_eq!(u16::from_be(fwd.port), 62000);
    let rev = nat_entry(&mut dp, key(INTERNET, EGRESS, 25, 62000, 6)).expect("reverse entry");
    assert_eq!(ip4_from(rev.addr), POD_A);
    assert_eq!(rev.flags & NAT_F_REVERSE, NAT_F_REVERSE);
    assert_eq!(ip4_from(rev.node_ip4), GATEWAY);
}

#[test]
fn snat_port_outside_range_gets_a_random_port_in_range() {
    let dp = datapath(GATEWAY);
    let pkt = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert!((PORT_MIN..=PORT_MAX).contains(&sport(&out)));
    assert_checksums(&out);
}

#[test]
fn snat_taken_port_is_never_overwritten() {
    let mut dp = datapath(GATEWAY);
    let other = NatEntry4 {
        addr: ip4(Ipv4Addr::new(10, 244, 2, 9)),
        port: 62000u16.to_be(),
        flags: NAT_F_REVERSE,
        node_ip4: ip4(Ipv4Addr::new(192, 0, 2, 12)),
        policy_id: POLICY,
        ..Default::default()
    };
    let taken = key(INTERNET, EGRESS, 25, 62000, 6);
    dp.maps().put_nat(taken, other).expect("seed");
    let pkt = tcp_syn(POD_A, INTERNET, 62000, 25, 1460);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_ne!(sport(&out), 62000);
    assert!((PORT_MIN..=PORT_MAX).contains(&sport(&out)));
    assert_eq!(
        nat_entry(&mut dp, taken),
        Some(other),
        "other flow untouched"
    );
    assert_checksums(&out);
    let nat = dp.nat_stats().expect("NAT statistics");
    assert_eq!(nat.allocations, 1);
    assert!(
        nat.port_retries >= 1,
        "the taken port counts as a retry: {nat:?}"
    );
}

#[test]
fn snat_exhaustion_is_a_counted_drop() {
    let mut dp = datapath(GATEWAY);
    let mut cfg = dp.config().expect("config");
    cfg.nat_port_min = 62000;
    cfg.nat_port_max = 62000;
    dp.set_config(&cfg).expect("config");
    let taken = key(INTERNET, EGRESS, 25, 62000, 6);
    dp.maps()
        .put_nat(taken, NatEntry4::default())
        .expect("seed");
    let pkt = tcp_syn(POD_A, INTERNET, 62000, 25, 1460);
    let (rc, _) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "nat_exhausted"), 1);
    assert_eq!(nat_entry(&mut dp, taken), Some(NatEntry4::default()));
    let nat = dp.nat_stats().expect("NAT statistics");
    assert_eq!(nat.allocations, 0);
    assert!(nat.port_retries > 1, "every try was counted: {nat:?}");
}

#[test]
fn snat_udp_zero_checksum_stays_zero() {
    let dp = datapath(GATEWAY);
    let mut pkt = udp(POD_A, INTERNET, 62001, 53, b"query");
    let c = l4(&pkt) + 6;
    pkt[c] = 0;
    pkt[c + 1] = 0;
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(src_ip(&out), EGRESS);
    assert_eq!(be16(&out, l4(&out) + 6), 0);
    assert_checksums(&out);
}

#[test]
fn snat_udp_checksum_is_updated() {
    let dp = datapath(GATEWAY);
    let pkt = udp(POD_A, INTERNET, 40000, 53, b"query");
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_ne!(be16(&out, l4(&out) + 6), 0);
    assert_checksums(&out);
}

#[test]
fn snat_icmp_echo_and_reply_round_trip() {
    let dp = datapath(GATEWAY);
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &ping(POD_A, INTERNET, 0x1234, false),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(src_ip(&out), EGRESS);
    let nat_id = be16(&out, l4(&out) + 4);
    assert!((PORT_MIN..=PORT_MAX).contains(&nat_id));
    assert_checksums(&out);

    let reply = ping(INTERNET, EGRESS, nat_id, true);
    let (rc, back) = run(&dp, FROM_WIRE, &reply, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "to the local pod");
    assert_eq!(dst_ip(&back), POD_A);
    assert_eq!(be16(&back, l4(&back) + 4), 0x1234);
    assert_checksums(&back);
}

#[test]
fn from_wire_reply_is_reverse_translated() {
    let dp = datapath(GATEWAY);
    let (_, out) = run(
        &dp,
        FROM_POD,
        &tcp_syn(POD_A, INTERNET, 40000, 25, 1460),
        POD_A_IF,
    );
    let nat_port = sport(&out);
    let reply = tcp_data(INTERNET, EGRESS, 25, nat_port, b"220 mail ready\r\n");
    let (rc, back) = run(&dp, FROM_WIRE, &reply, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(dst_ip(&back), POD_A);
    assert_eq!(dport(&back), 40000);
    assert_eq!(src_ip(&back), INTERNET);
    assert_checksums(&back);
    assert_eq!(&back[back.len() - 16..], b"220 mail ready\r\n");
    let stats = dp.policy_stats().expect("stats");
    assert_eq!(stats.get(&POLICY).map(|s| s.rx_packets), Some(1));
}

#[test]
fn from_wire_unknown_flow_is_left_to_the_host() {
    let dp = datapath(GATEWAY);
    let pkt = tcp_data(INTERNET, EGRESS, 25, 45678, b"x");
    let (rc, out) = run(&dp, FROM_WIRE, &pkt, UPLINK_IF);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, pkt);
}

/// An ICMP error from the internet host about a translated UDP datagram.
fn port_unreachable_about(quoted: &[u8]) -> Vec<u8> {
    let ihl = usize::from(quoted[L3] & 0xf) * 4;
    let quote = &quoted[L3..L3 + ihl + 8];
    let b = PacketBuilder::ethernet2(HOST_MAC, POD_MAC)
        .ipv4(INTERNET.octets(), EGRESS.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut v = Vec::new();
    b.write(&mut v, quote).expect("build");
    v
}

#[test]
fn from_wire_icmp_error_is_reverse_translated_with_inner_header() {
    let dp = datapath(GATEWAY);
    let (_, out) = run(
        &dp,
        FROM_POD,
        &udp(POD_A, INTERNET, 40000, 9, b"ping"),
        POD_A_IF,
    );
    let err = port_unreachable_about(&out);
    let (rc, back) = run(&dp, FROM_WIRE, &err, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(dst_ip(&back), POD_A);
    assert_checksums(&back);
    let inner = 34 + 8;
    assert_eq!(
        Ipv4Addr::new(
            back[inner + 12],
            back[inner + 13],
            back[inner + 14],
            back[inner + 15]
        ),
        POD_A,
        "quoted source is the pod"
    );
    assert!(
        folds_to_ffff(sum(&back[inner..inner + 20])),
        "quoted IPv4 checksum"
    );
    assert_eq!(
        be16(&back, inner + 20),
        40000,
        "quoted source port is the pod's"
    );
    // The quoted UDP checksum must be the original datagram's (before SNAT).
    let orig = udp(POD_A, INTERNET, 40000, 9, b"ping");
    assert_eq!(be16(&back, inner + 26), be16(&orig, l4(&orig) + 6));
}

#[test]
fn from_wire_icmp_error_for_unknown_flow_passes() {
    let dp = datapath(GATEWAY);
    let quoted = udp(EGRESS, INTERNET, 33333, 9, b"ping");
    let err = port_unreachable_about(&quoted);
    let (rc, out) = run(&dp, FROM_WIRE, &err, UPLINK_IF);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, err);
}

#[test]
fn truncated_tcp_header_is_a_counted_drop() {
    let dp = datapath(WORKER);
    let pkt = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
    let (rc, _) = run(&dp, FROM_POD, &pkt[..14 + 20 + 10], POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "malformed"), 1);
}
