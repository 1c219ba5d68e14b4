//! egw_from_pod on a node: which packets it leaves to the host (unselected pods, cluster
//! destinations), which it drops (spoofed sources, malformed headers), and a selected pod's
//! packets tunnelled to the gateway with the TCP MSS clamped to the tunnel.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use std::net::Ipv4Addr;

use egress_common::program_names::FROM_POD;
use egress_tests::packet::*;

#[test]
fn from_pod_unselected_pod_passes_untouched() {
    let dp = datapath(WORKER);
    let pkt = udp(POD_B, INTERNET, 40000, 53, b"hello");
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_B_IF);
    assert_eq!(rc, TCX_NEXT);
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
    assert_eq!(rc, TCX_NEXT);
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
fn truncated_tcp_header_is_a_counted_drop() {
    let dp = datapath(WORKER);
    let pkt = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
    let (rc, _) = run(&dp, FROM_POD, &pkt[..14 + 20 + 10], POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "malformed"), 1);
}

/// Only the pod behind a veth may send from it, with its own address: an address no pod has
/// (the egress IP from a raw socket, say) is as spoofed as another pod's.
#[test]
fn from_pod_an_unknown_source_address_is_dropped_as_spoofed() {
    let dp = datapath(WORKER);
    let before = drops(&dp, "spoofed");
    for src in [EGRESS, Ipv4Addr::new(10, 244, 1, 200)] {
        let (rc, _) = run(
            &dp,
            FROM_POD,
            &udp(src, INTERNET, 25, 25, b"spoof"),
            POD_B_IF,
        );
        assert_eq!(rc, TC_ACT_SHOT, "from {src}");
    }
    assert_eq!(drops(&dp, "spoofed"), before + 2);
    // Control: the pod's own address.
    let pkt = udp(POD_B, INTERNET, 25, 25, b"mine");
    assert_eq!(run(&dp, FROM_POD, &pkt, POD_B_IF), (TCX_NEXT, pkt.clone()));
}
