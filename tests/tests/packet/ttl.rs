//! TTL: one hop less on the way into the tunnel and on the gateway both ways; a TTL that
//! runs out is answered with ICMP time exceeded (or dropped from the wire), with no NAT state.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::program_names::{FROM_POD, FROM_WIRE};
use egress_tests::packet::*;

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
        let mut dp = datapath(node);
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
            nat_entry(&mut dp, key(POD_A, INTERNET, 40000, 53, 17)),
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
