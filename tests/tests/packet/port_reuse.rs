//! A closed flow's NAT port serves a new connection (as conntrack reuses closed tuples); live
//! and half-closed flows keep theirs.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use std::net::Ipv4Addr;

use egress_agent::datapath::{ip4, ip4_from, Datapath};
use egress_common::{
    endpoint::{Endpoint, EP_F_SELECTED},
    nat::CT_NEW,
    program_names::{FROM_POD, FROM_WIRE},
};
use egress_tests::packet::*;

/// A TCP segment with the given flags (`S`yn, `A`ck, `F`in, `R`st), pod side to internet
/// when `from_pod`, else the internet's reply.
/// Pod `pod` (on `ifindex`) opens a connection from `port` to the internet host's port 25;
/// returns the NAT port it leaves with.
fn syn_from(dp: &Datapath, pod: Ipv4Addr, ifindex: u32, port: u16) -> u16 {
    let (rc, out) = run(
        dp,
        FROM_POD,
        &tcp_segment(pod, INTERNET, port, 25, "S"),
        ifindex,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_checksums(&out);
    sport(&out)
}

/// A gateway datapath where pod B is selected too.
fn gateway_with_two_pods() -> Node {
    let mut dp = datapath(GATEWAY);
    let ep = Endpoint {
        ifindex: POD_B_IF,
        policy_id: POLICY,
        flags: EP_F_SELECTED,
        deliver_ifindex: 0,
    };
    dp.maps().put_endpoint(ip4(POD_B), ep).expect("endpoint");
    dp
}

fn reply(dp: &Datapath, nat_port: u16, flags: &str) {
    let (rc, _) = run(
        dp,
        FROM_WIRE,
        &tcp_segment(INTERNET, EGRESS, 25, nat_port, flags),
        UPLINK_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT, "reply {flags} reverse-translated");
}

#[test]
fn a_reset_flows_port_goes_to_the_next_syn_and_its_pod_gets_another() {
    let mut dp = gateway_with_two_pods();
    assert_eq!(syn_from(&dp, POD_A, POD_A_IF, 62000), 62000);
    reply(&dp, 62000, "SA");
    reply(&dp, 62000, "RA");
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
    // Connection refused: a RST acknowledging the SYN.
    reply(&dp, 62000, "RA");
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
        &tcp_segment(POD_A, INTERNET, 62000, 25, "R"),
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
        &tcp_segment(POD_A, INTERNET, 62000, 25, "FA"),
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
