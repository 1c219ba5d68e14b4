//! ICMP through the gateway: echo translated by its identifier both ways, and ICMP errors
//! from the internet reverse-translated with the header they quote.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use std::net::Ipv4Addr;

use egress_agent::datapath::Datapath;
use egress_common::{
    nat::{CT_ESTABLISHED, CT_NEW},
    program_names::{FROM_POD, FROM_WIRE},
};
use egress_tests::packet::*;
use etherparse::PacketBuilder;

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
    assert_eq!(rc, TCX_NEXT);
    assert_eq!(out, err);
}

/// Issue 13 point 1: an ICMP error about a TCP flow refreshes it but never changes its state
/// (an unreachable answer to a SYN must not make the flow ESTABLISHED: 6 h instead of 60 s).
#[test]
fn an_icmp_error_about_a_tcp_flow_does_not_change_its_state() {
    let mut dp = datapath(GATEWAY);
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &tcp_syn(POD_A, INTERNET, 40000, 25, 1460),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    let nat_port = sport(&out);
    let fwd = key(POD_A, INTERNET, 40000, 25, 6);
    let rev = key(INTERNET, EGRESS, 25, nat_port, 6);
    let state = |dp: &mut Datapath, k| nat_entry(dp, k).expect("entry").state;
    assert_eq!((state(&mut dp, fwd), state(&mut dp, rev)), (CT_NEW, CT_NEW));
    // The error is reverse-translated and reaches the pod...
    let (rc, back) = run(&dp, FROM_WIRE, &port_unreachable_about(&out), UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(dst_ip(&back), POD_A);
    // ... and both entries stay NEW (expiring by the SYN timeout).
    assert_eq!((state(&mut dp, fwd), state(&mut dp, rev)), (CT_NEW, CT_NEW));
    // Control: the real SYN-ACK does establish the flow.
    let mut synack = tcp_data(INTERNET, EGRESS, 25, nat_port, b"");
    let tcp = l4(&synack);
    synack[tcp + 13] = 0x12; // SYN|ACK
    let (rc, _) = run(&dp, FROM_WIRE, &synack, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(state(&mut dp, rev), CT_ESTABLISHED);
}
