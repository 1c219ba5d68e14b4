//! Only flows a selected pod opens go through the gateway (issue 12): a flow a peer opens
//! towards the pod (a NodePort or LoadBalancer client, with the policy's `0.0.0.0/0`) is
//! recorded by `egw_to_pod`, and the pod's answers keep the normal path, on a source node and
//! on the gateway. A peer can never turn a flow the pod opened into one of its own. Each case
//! has its control: the same packet without the peer's opening goes to the gateway.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use std::net::Ipv4Addr;

use egress_agent::datapath::Datapath;
use egress_common::program_names::{FROM_POD, TO_POD};
use egress_tests::packet::*;
use etherparse::PacketBuilder;

/// Where the pod's packets to the internet go: into the tunnel (worker) or translated and out
/// of the uplink (gateway). Both are a redirect.
const TO_GATEWAY: u32 = TC_ACT_REDIRECT;

/// A TCP segment with the given flags (SYN, ACK).
fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(HOST_MAC, POD_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 7000, 64240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// Runs `pkt` through `egw_to_pod` on pod A's veth: never changed, never dropped.
fn to_pod(dp: &Datapath, pkt: &[u8]) {
    let (rc, out) = run(dp, TO_POD, pkt, POD_A_IF);
    assert_eq!(rc, TCX_NEXT, "egw_to_pod leaves every packet to the stack");
    assert_eq!(out, pkt, "egw_to_pod changes nothing");
}

/// The verdict of `egw_from_pod` on pod A's packet, and whether it left untouched.
fn from_pod(dp: &Datapath, pkt: &[u8]) -> (u32, bool) {
    let (rc, out) = run(dp, FROM_POD, pkt, POD_A_IF);
    (rc, out == pkt)
}

#[test]
fn answers_to_a_tcp_connection_a_peer_opened_keep_the_normal_path() {
    for node in [WORKER, GATEWAY] {
        let dp = datapath(node);
        // Control: before the peer's SYN reached the pod, the pod's segment goes to the gateway.
        let data = tcp(POD_A, INTERNET, 25, 50001, false, true);
        assert_eq!(from_pod(&dp, &data).0, TO_GATEWAY, "{node}: control");

        // A client of a NodePort connects to the pod's port 25.
        to_pod(&dp, &tcp(INTERNET, POD_A, 50000, 25, true, false));
        for (what, pkt) in [
            ("SYN-ACK", tcp(POD_A, INTERNET, 25, 50000, true, true)),
            ("ACK", tcp(POD_A, INTERNET, 25, 50000, false, true)),
            (
                "data",
                tcp_data(POD_A, INTERNET, 25, 50000, b"220 mail ESMTP\r\n"),
            ),
        ] {
            assert_eq!(from_pod(&dp, &pkt), (TCX_NEXT, true), "{node}: {what}");
        }
        // Control: the pod's own connection to the same peer still goes to the gateway.
        let own = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
        assert_eq!(
            from_pod(&dp, &own).0,
            TO_GATEWAY,
            "{node}: the pod's own flow"
        );
    }
}

#[test]
fn a_syn_ack_is_never_sent_to_the_gateway_even_without_a_record() {
    let dp = datapath(WORKER);
    let pkt = tcp(POD_A, INTERNET, 25, 50000, true, true);
    assert_eq!(from_pod(&dp, &pkt), (TCX_NEXT, true));
    // Control: a SYN opens a flow through the gateway.
    assert_eq!(
        from_pod(&dp, &tcp(POD_A, INTERNET, 25, 50000, true, false)).0,
        TO_GATEWAY
    );
}

#[test]
fn answers_to_udp_a_peer_sent_keep_the_normal_path() {
    for node in [WORKER, GATEWAY] {
        let dp = datapath(node);
        to_pod(&dp, &udp(INTERNET, POD_A, 5353, 53, b"query"));
        // A second datagram of the same flow changes nothing.
        to_pod(&dp, &udp(INTERNET, POD_A, 5353, 53, b"query 2"));
        let answer = udp(POD_A, INTERNET, 53, 5353, b"answer");
        assert_eq!(from_pod(&dp, &answer), (TCX_NEXT, true), "{node}");
        // Control: another peer port is another flow, the pod's.
        let other = udp(POD_A, INTERNET, 53, 5354, b"answer");
        assert_eq!(from_pod(&dp, &other).0, TO_GATEWAY, "{node}: control");
    }
}

#[test]
fn a_peer_cannot_turn_a_flow_the_pod_opened_into_its_own() {
    for node in [WORKER, GATEWAY] {
        let dp = datapath(node);
        // UDP: the pod opened the flow; the answer (or a spoof of it) comes back to the pod.
        let query = udp(POD_A, INTERNET, 40000, 53, b"q");
        assert_eq!(
            from_pod(&dp, &query).0,
            TO_GATEWAY,
            "{node}: the pod's query"
        );
        to_pod(&dp, &udp(INTERNET, POD_A, 53, 40000, b"a"));
        assert_eq!(
            from_pod(&dp, &query).0,
            TO_GATEWAY,
            "{node}: UDP stays the pod's"
        );

        // TCP: a SYN with the tuple of the pod's connection (an off-path injection).
        let syn = tcp_syn(POD_A, INTERNET, 40001, 25, 1460);
        assert_eq!(from_pod(&dp, &syn).0, TO_GATEWAY, "{node}: the pod's SYN");
        to_pod(&dp, &tcp(INTERNET, POD_A, 25, 40001, true, false));
        let data = tcp_data(POD_A, INTERNET, 40001, 25, b"MAIL FROM:<a@b>\r\n");
        assert_eq!(
            from_pod(&dp, &data).0,
            TO_GATEWAY,
            "{node}: TCP stays the pod's"
        );
    }
}

#[test]
fn only_peers_the_policy_sends_through_the_gateway_are_recorded() {
    let dp = datapath(WORKER);
    // From a cluster address (excluded by the policy): nothing recorded, and nothing needed.
    let cluster = Ipv4Addr::new(10, 244, 2, 7);
    to_pod(&dp, &tcp(cluster, POD_A, 50000, 25, true, false));
    let answer = tcp(POD_A, cluster, 25, 50000, false, true);
    assert_eq!(from_pod(&dp, &answer), (TCX_NEXT, true));
    // To an unselected pod: no record for the selected one's identical tuple.
    let (rc, _) = run(
        &dp,
        TO_POD,
        &tcp(INTERNET, POD_B, 50000, 25, true, false),
        POD_B_IF,
    );
    assert_eq!(rc, TCX_NEXT);
    let data = tcp(POD_A, INTERNET, 25, 50000, false, true);
    assert_eq!(from_pod(&dp, &data).0, TO_GATEWAY);
    // A mid-stream segment does not open a flow.
    to_pod(&dp, &tcp(INTERNET, POD_A, 50002, 25, false, true));
    let data = tcp(POD_A, INTERNET, 25, 50002, false, true);
    assert_eq!(from_pod(&dp, &data).0, TO_GATEWAY);
}

#[test]
fn echo_replies_keep_the_normal_path_and_requests_go_to_the_gateway() {
    for node in [WORKER, GATEWAY] {
        let dp = datapath(node);
        let reply = ping(POD_A, INTERNET, 0x77, true);
        assert_eq!(
            from_pod(&dp, &reply),
            (TCX_NEXT, true),
            "{node}: echo reply"
        );
        let request = ping(POD_A, INTERNET, 0x77, false);
        assert_eq!(
            from_pod(&dp, &request).0,
            TO_GATEWAY,
            "{node}: echo request"
        );
    }
}

/// An ICMP port unreachable from pod A about `quoted`, a datagram it received.
fn port_unreachable_from_pod(quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv4(POD_A.octets(), INTERNET.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut v = Vec::new();
    b.write(&mut v, &quoted[L3..L3 + 28]).expect("build");
    v
}

#[test]
fn an_icmp_error_about_a_datagram_a_peer_sent_keeps_the_normal_path() {
    let dp = datapath(WORKER);
    let dgram = udp(INTERNET, POD_A, 5353, 9999, b"anyone?");
    to_pod(&dp, &dgram);
    let err = port_unreachable_from_pod(&dgram);
    assert_eq!(from_pod(&dp, &err), (TCX_NEXT, true));
    // Control: an error about a datagram of no peer's flow is not sent out (as before: the
    // pod's errors are never translated).
    let other = udp(INTERNET, POD_A, 5353, 9998, b"anyone?");
    let before = drops(&dp, "unsupported_protocol");
    assert_eq!(
        from_pod(&dp, &port_unreachable_from_pod(&other)).0,
        TC_ACT_SHOT
    );
    assert_eq!(drops(&dp, "unsupported_protocol"), before + 1);
}

#[test]
fn later_fragments_of_an_answer_follow_the_first_one() {
    for node in [WORKER, GATEWAY] {
        let dp = datapath(node);
        to_pod(&dp, &udp(INTERNET, POD_A, 5353, 53, b"query"));
        let big = udp(POD_A, INTERNET, 53, 5353, &[0x5a; 64]);
        let (first, second) = fragment(&big, 0x4242, 32);
        assert_eq!(from_pod(&dp, &first), (TCX_NEXT, true), "{node}: first");
        assert_eq!(from_pod(&dp, &second), (TCX_NEXT, true), "{node}: later");
        // Control: the fragments of a datagram of the pod's own flow go to the gateway.
        let own = udp(POD_A, INTERNET, 40000, 53, &[0x5a; 64]);
        let (first, second) = fragment(&own, 0x4343, 32);
        assert_eq!(from_pod(&dp, &first).0, TO_GATEWAY, "{node}: control first");
        assert_eq!(
            from_pod(&dp, &second).0,
            TO_GATEWAY,
            "{node}: control later"
        );
    }
}

#[test]
fn egw_to_pod_leaves_malformed_and_foreign_packets_alone() {
    let dp = datapath(WORKER);
    let syn = tcp(INTERNET, POD_A, 50000, 25, true, false);
    let (rc, _) = run(&dp, TO_POD, &syn[..L3 + 20 + 6], POD_A_IF);
    assert_eq!(rc, TCX_NEXT, "a truncated segment is the stack's to judge");
    for pkt in [
        ping(INTERNET, POD_A, 1, false),
        udp(INTERNET, Ipv4Addr::new(10, 244, 9, 9), 1, 2, b"x"),
    ] {
        to_pod(&dp, &pkt);
    }
    // Nothing was recorded: the truncated SYN opened nothing.
    let data = tcp(POD_A, INTERNET, 25, 50000, false, true);
    assert_eq!(from_pod(&dp, &data).0, TO_GATEWAY);
}
