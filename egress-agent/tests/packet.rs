//! Packet tests: each tc program runs with BPF_PROG_TEST_RUN on hand-built packets; the
//! tests assert on the verdict, the bytes that come out and the map contents.
//!
//! They need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message without it.

mod common;

use std::net::Ipv4Addr;

use common::*;
use egress_agent::datapath::{ip4, ip4_from, Datapath};
use egress_common::{
    endpoint::{Endpoint, EP_F_SELECTED},
    nat::{NatEntry4, NatKey4, CT_NEW, NAT_F_REVERSE},
    program_names::{FROM_POD, FROM_WIRE},
};
use etherparse::PacketBuilder;

fn drops(dp: &Datapath, reason: &str) -> u64 {
    *dp.drops()
        .expect("drops")
        .by_name()
        .get(reason)
        .expect("reason")
}

fn nat_entry(dp: &mut Datapath, key: NatKey4) -> Option<NatEntry4> {
    dp.maps()
        .nat_entries()
        .expect("nat")
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
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
    assert_eq!(out, with_ttl(pkt, 63), "one hop less, nothing else changed");
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
fn from_pod_ttl_is_decremented_once_on_the_way_into_the_tunnel() {
    let dp = datapath(WORKER);
    let pkt = with_ttl(udp(POD_A, INTERNET, 40000, 53, b"q"), 7);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out[L3 + 8], 6);
    assert_checksums(&out);
}

#[test]
fn from_pod_expiring_ttl_is_answered_with_time_exceeded() {
    for node in [WORKER, GATEWAY] {
        let dp = datapath(node);
        let pkt = with_ttl(udp(POD_A, INTERNET, 40000, 53, b"traceroute"), 1);
        let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
        assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
        assert_eq!(&out[0..6], &POD_MAC);
        assert_eq!(src_ip(&out), node, "from the node the pod routes through");
        assert_eq!(dst_ip(&out), POD_A);
        assert_eq!((out[34], out[35]), (11, 0), "time exceeded in transit");
        assert_eq!(
            &out[42..70],
            &pkt[L3..L3 + 28],
            "quotes the original header"
        );
        assert_checksums(&out);
        assert_eq!(drops(&dp, "ttl_exceeded"), 1);
        assert_eq!(
            nat_entry(&mut { dp }, key(POD_A, INTERNET, 40000, 53, 17)),
            None,
            "no NAT state for a packet that went nowhere"
        );
    }
}

#[test]
fn gateway_decrements_ttl_both_ways() {
    let dp = datapath(GATEWAY);
    let pkt = with_ttl(tcp_syn(POD_A, INTERNET, 40000, 25, 1460), 9);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(out[L3 + 8], 8);
    assert_checksums(&out);
    let reply = with_ttl(tcp_data(INTERNET, EGRESS, 25, sport(&out), b"220"), 50);
    let (rc, back) = run(&dp, FROM_WIRE, &reply, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(back[L3 + 8], 49);
    assert_checksums(&back);
    let dying = with_ttl(tcp_data(INTERNET, EGRESS, 25, sport(&out), b"x"), 1);
    let (rc, _) = run(&dp, FROM_WIRE, &dying, UPLINK_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "ttl_exceeded"), 1);
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

// --- a closed flow's port serves a new connection (as conntrack reuses closed tuples) ---

/// A TCP segment with the given flags (`S`yn, `A`ck, `F`in, `R`st), pod side to internet
/// when `from_pod`, else the internet's reply.
fn tcp_flags(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let macs = if src == INTERNET {
        (HOST_MAC, POD_MAC)
    } else {
        (POD_MAC, HOST_MAC)
    };
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 7000, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(9000),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => panic!("flag {f}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// Pod `pod` (on `ifindex`) opens a connection from `port` to the internet host's port 25;
/// returns the NAT port it leaves with.
fn syn_from(dp: &Datapath, pod: Ipv4Addr, ifindex: u32, port: u16) -> u16 {
    let (rc, out) = run(
        dp,
        FROM_POD,
        &tcp_flags(pod, INTERNET, port, 25, "S"),
        ifindex,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_checksums(&out);
    sport(&out)
}

/// A gateway datapath where pod B is selected too.
fn gateway_with_two_pods() -> Datapath {
    let mut dp = datapath(GATEWAY);
    let ep = Endpoint {
        ifindex: POD_B_IF,
        policy_id: POLICY,
        flags: EP_F_SELECTED,
        _pad: 0,
    };
    dp.maps().put_endpoint(ip4(POD_B), ep).expect("endpoint");
    dp
}

fn reply(dp: &Datapath, nat_port: u16, flags: &str) {
    let (rc, _) = run(
        dp,
        FROM_WIRE,
        &tcp_flags(INTERNET, EGRESS, 25, nat_port, flags),
        UPLINK_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT, "reply {flags} reverse-translated");
}

#[test]
fn a_reset_flows_port_goes_to_the_next_syn_and_its_pod_gets_another() {
    let mut dp = gateway_with_two_pods();
    assert_eq!(syn_from(&dp, POD_A, POD_A_IF, 62000), 62000);
    reply(&dp, 62000, "SA");
    reply(&dp, 62000, "R");
    // Pod B asks for the same port to the same remote: not while the reset may still be in
    // flight (B gets another port), then the reset flow hands it over.
    let early = syn_from(&dp, POD_B, POD_B_IF, 62000);
    assert_ne!(early, 62000);
    std::thread::sleep(std::time::Duration::from_millis(150));
    dp.maps()
        .del_nat(key(POD_B, INTERNET, 62000, 25, 6))
        .expect("del");
    dp.maps()
        .del_nat(key(INTERNET, EGRESS, 25, early, 6))
        .expect("del");
    assert_eq!(syn_from(&dp, POD_B, POD_B_IF, 62000), 62000);
    let rev = nat_entry(&mut dp, key(INTERNET, EGRESS, 25, 62000, 6)).expect("reverse");
    assert_eq!(ip4_from(rev.addr), POD_B, "replies now reach pod B");
    assert_eq!(nat_entry(&mut dp, key(POD_A, INTERNET, 62000, 25, 6)), None);
    // Pod A reusing its old tuple gets a port of its own; B's flow is untouched.
    let a = syn_from(&dp, POD_A, POD_A_IF, 62000);
    assert_ne!(a, 62000);
    let rev = nat_entry(&mut dp, key(INTERNET, EGRESS, 25, 62000, 6)).expect("reverse");
    assert_eq!(ip4_from(rev.addr), POD_B);
}

#[test]
fn a_pod_reusing_its_own_closed_tuple_keeps_its_port() {
    let mut dp = datapath(GATEWAY);
    assert_eq!(syn_from(&dp, POD_A, POD_A_IF, 62000), 62000);
    reply(&dp, 62000, "R");
    assert_eq!(syn_from(&dp, POD_A, POD_A_IF, 62000), 62000);
    let rev = nat_entry(&mut dp, key(INTERNET, EGRESS, 25, 62000, 6)).expect("reverse");
    assert_eq!(ip4_from(rev.addr), POD_A);
    assert_eq!(rev.state, CT_NEW, "the reverse entry starts over");
}

#[test]
fn a_pod_reopening_the_tuple_it_just_reset_gets_a_fresh_port() {
    let mut dp = datapath(GATEWAY);
    assert_eq!(syn_from(&dp, POD_A, POD_A_IF, 62000), 62000);
    reply(&dp, 62000, "SA");
    let (rc, _) = run(
        &dp,
        FROM_POD,
        &tcp_flags(POD_A, INTERNET, 62000, 25, "R"),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    // The pod's RST may not have reached the remote yet: a SYN on the same tuple right away
    // leaves with another port, so that it cannot meet the old connection there.
    let fresh = syn_from(&dp, POD_A, POD_A_IF, 62000);
    assert_ne!(fresh, 62000);
    let old = nat_entry(&mut dp, key(INTERNET, EGRESS, 25, 62000, 6)).expect("old reverse");
    assert_eq!(
        ip4_from(old.addr),
        POD_A,
        "late packets of the old flow still map back"
    );
    let fwd = nat_entry(&mut dp, key(POD_A, INTERNET, 62000, 25, 6)).expect("forward");
    assert_eq!(u16::from_be(fwd.port), fresh);
}

#[test]
fn live_and_half_closed_flows_keep_their_ports() {
    let mut dp = gateway_with_two_pods();
    // Established: never handed over.
    assert_eq!(syn_from(&dp, POD_A, POD_A_IF, 62000), 62000);
    reply(&dp, 62000, "SA");
    assert_ne!(syn_from(&dp, POD_B, POD_B_IF, 62000), 62000);
    // Half closed (the pod sent FIN; the remote may still be sending): kept.
    let (rc, _) = run(
        &dp,
        FROM_POD,
        &tcp_flags(POD_A, INTERNET, 62000, 25, "FA"),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_ne!(syn_from(&dp, POD_B, POD_B_IF, 62000), 62000);
    // Closed both ways: kept for a second (the last ACK), then handed over.
    reply(&dp, 62000, "FA");
    assert_ne!(syn_from(&dp, POD_B, POD_B_IF, 62000), 62000);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // (B's earlier attempts hold a mapping of their own for B's tuple; let it go, as expiry
    // would, so that B asks for port 62000 again.)
    dp.maps()
        .del_nat(key(POD_B, INTERNET, 62000, 25, 6))
        .expect("del");
    assert_eq!(syn_from(&dp, POD_B, POD_B_IF, 62000), 62000);
}

// --- fragments of translated replies ----------------------------------------------------

/// Splits an Ethernet + IPv4 (20-byte header) packet into two fragments of datagram `id` at
/// payload offset `at` (a multiple of 8), with valid header checksums.
fn fragment(pkt: &[u8], id: u16, at: usize) -> (Vec<u8>, Vec<u8>) {
    let (hdr, payload) = pkt.split_at(L3 + 20);
    let part = |bytes: &[u8], off: usize, more: bool| {
        let mut v = hdr.to_vec();
        v.extend_from_slice(bytes);
        v[L3 + 2..L3 + 4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
        v[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
        let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        v[L3 + 6..L3 + 8].copy_from_slice(&fo.to_be_bytes());
        let ttl = v[L3 + 8];
        with_ttl(v, ttl)
    };
    (
        part(&payload[..at], 0, true),
        part(&payload[at..], at, false),
    )
}

/// The datagram of two fragments made by `fragment`, as the receiver reassembles it.
fn reassemble(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut whole = first.to_vec();
    whole.extend_from_slice(&second[L3 + 20..]);
    let tot = (whole.len() - L3) as u16;
    whole[L3 + 2..L3 + 4].copy_from_slice(&tot.to_be_bytes());
    whole[L3 + 6..L3 + 8].copy_from_slice(&[0, 0]);
    let ttl = whole[L3 + 8];
    with_ttl(whole, ttl)
}

#[test]
fn fragments_of_a_reply_are_all_reverse_translated() {
    let dp = datapath(GATEWAY);
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &udp(POD_A, INTERNET, 40000, 53, b"q?"),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    let nat_port = sport(&out);
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let reply = udp(INTERNET, EGRESS, 53, nat_port, &big);
    let (f1, f2) = fragment(&reply, 0x4242, 1480);

    let (rc, o1) = run(&dp, FROM_WIRE, &f1, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "first fragment");
    assert_eq!(dst_ip(&o1), POD_A);
    assert_eq!(dport(&o1), 40000);
    let (rc, o2) = run(&dp, FROM_WIRE, &f2, UPLINK_IF);
    assert_eq!(
        rc, TC_ACT_REDIRECT,
        "later fragment, found by the datagram's id"
    );
    assert_eq!(dst_ip(&o2), POD_A);
    assert_eq!(o2[L3 + 8], o1[L3 + 8], "same TTL");

    // Reassembled, the datagram is the original with the pod as destination, checksums valid.
    let whole = reassemble(&o1, &o2);
    assert_checksums(&whole);
    assert_eq!(&whole[whole.len() - big.len()..], &big[..]);

    // A later fragment of a datagram whose start did not pass is the host's.
    let (_, stray) = fragment(&reply, 0x4243, 1480);
    let (rc, out) = run(&dp, FROM_WIRE, &stray, UPLINK_IF);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, stray);
}

#[test]
fn fragments_a_pod_sends_are_all_translated() {
    let dp = datapath(GATEWAY);
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
    let dgram = udp(POD_A, INTERNET, 40000, 53, &big);
    let (f1, f2) = fragment(&dgram, 0x5151, 1480);

    // A later fragment before the first: nothing to translate it by, a counted drop.
    let (rc, _) = run(&dp, FROM_POD, &f2, POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "fragment"), 1);

    let (rc, o1) = run(&dp, FROM_POD, &f1, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "first fragment");
    assert_eq!(src_ip(&o1), EGRESS);
    let nat_port = sport(&o1);
    let (rc, o2) = run(&dp, FROM_POD, &f2, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "later fragment");
    assert_eq!(src_ip(&o2), EGRESS);
    assert_eq!(o2[L3 + 8], o1[L3 + 8], "same TTL");

    let whole = reassemble(&o1, &o2);
    assert_checksums(&whole);
    assert_eq!(sport(&whole), nat_port);
    assert_eq!(&whole[whole.len() - big.len()..], &big[..]);
}
