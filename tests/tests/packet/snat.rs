//! SNAT on the gateway (a pod on the gateway node goes through the same engine as tunnelled
//! packets): port allocation, NAT entries, checksums.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use std::net::Ipv4Addr;

use egress_agent::datapath::{ip4, ip4_from};
use egress_common::{
    nat::{NatEntry4, NAT_F_REVERSE},
    program_names::FROM_POD,
};
use egress_tests::packet::*;

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
