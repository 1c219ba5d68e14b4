//! egw_from_wire on the gateway: replies of translated flows are reverse-translated; anything
//! else is the host's.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::program_names::{FROM_POD, FROM_WIRE};
use egress_tests::packet::*;

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
    assert_eq!(rc, TCX_NEXT);
    assert_eq!(out, pkt);
}
