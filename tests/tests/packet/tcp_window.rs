//! A RST or FIN from the internet ends a translated flow only if it fits what the pod expects
//! (issue 13 point 2): a RST with exactly the sequence number the pod acknowledged last (RFC
//! 5961), or, before the pod acknowledged anything, one acknowledging its SYN; a FIN within
//! the pod's window. A blind sender who guesses the egress port cannot end an idle session
//! (6 h become 10 s) nor hand its port to another pod. The packet still reaches the pod, whose
//! own TCP judges it.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_agent::datapath::Datapath;
use egress_common::{
    nat::{CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_RESET, NAT_F_POD_ACKED},
    program_names::{FROM_POD, FROM_WIRE},
};
use egress_tests::packet::*;

const PORT: u16 = 62000;

fn from_pod(dp: &Datapath, flags: &str) {
    let (rc, out) = run(
        dp,
        FROM_POD,
        &tcp_segment(POD_A, INTERNET, PORT, 25, flags),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT, "pod {flags}");
    assert_eq!(sport(&out), PORT);
}

/// A segment from the internet host to the flow's egress port with `flags`, `seq`, `ack`.
fn from_internet(dp: &Datapath, flags: &str, seq: u32, ack: u32) {
    let pkt = tcp_segment_at(
        INTERNET,
        EGRESS,
        25,
        PORT,
        flags,
        seq,
        ack,
        (HOST_MAC, POD_MAC),
    );
    let (rc, out) = run(dp, FROM_WIRE, &pkt, UPLINK_IF);
    assert_eq!(
        rc, TC_ACT_REDIRECT,
        "{flags} seq {seq} still reaches the pod"
    );
    assert_eq!(dst_ip(&out), POD_A);
}

/// The flow's (forward, reverse) states.
fn states(dp: &mut Datapath) -> (u8, u8) {
    let f = nat_entry(dp, key(POD_A, INTERNET, PORT, 25, 6)).expect("forward");
    let r = nat_entry(dp, key(INTERNET, EGRESS, 25, PORT, 6)).expect("reverse");
    (f.state, r.state)
}

/// An established flow: SYN, SYN-ACK, the pod's ACK.
fn established() -> Node {
    let mut dp = datapath(GATEWAY);
    from_pod(&dp, "S");
    from_internet(&dp, "SA", PEER_ISN, POD_ISN + 1);
    from_pod(&dp, "A");
    assert_eq!(states(&mut dp), (CT_NEW, CT_ESTABLISHED));
    let f = nat_entry(&mut dp, key(POD_A, INTERNET, PORT, 25, 6)).expect("forward");
    assert_eq!(
        (f.ack, f.flags & NAT_F_POD_ACKED),
        (PEER_ISN + 1, NAT_F_POD_ACKED)
    );
    dp
}

#[test]
fn a_blind_rst_from_the_internet_leaves_the_flow_established() {
    let mut dp = established();
    let expected = PEER_ISN + 1;
    // Guesses: far off, and in the window but not exact (the pod answers that with a
    // challenge ACK; the peer's answer to it would carry the exact number).
    for seq in [0x1234_5678, expected + 1000, expected.wrapping_sub(1)] {
        from_internet(&dp, "R", seq, 0);
        from_internet(&dp, "RA", seq, POD_ISN + 1);
        assert_eq!(states(&mut dp), (CT_NEW, CT_ESTABLISHED), "seq {seq}");
    }
    // Control: the peer's own RST, with the number the pod expects, resets the flow.
    from_internet(&dp, "R", expected, 0);
    assert_eq!(states(&mut dp).1, CT_RESET);
}

#[test]
fn a_blind_fin_outside_the_pods_window_changes_nothing() {
    let mut dp = established();
    let expected = PEER_ISN + 1;
    from_internet(&dp, "FA", expected.wrapping_add(1 << 31), POD_ISN + 1);
    from_internet(&dp, "FA", expected.wrapping_sub(100), POD_ISN + 1);
    assert_eq!(states(&mut dp), (CT_NEW, CT_ESTABLISHED));
    // Control: the peer's FIN after its data (in the window) half-closes its direction.
    from_internet(&dp, "FA", expected + 1200, POD_ISN + 1);
    assert_eq!(states(&mut dp).1, CT_CLOSING);
}

#[test]
fn a_blind_rst_cannot_hand_the_port_to_another_pod() {
    let mut dp = established();
    let ep = egress_common::endpoint::Endpoint {
        ifindex: POD_B_IF,
        policy_id: POLICY,
        flags: egress_common::endpoint::EP_F_SELECTED,
        deliver_ifindex: 0,
    };
    dp.maps()
        .put_endpoint(egress_agent::datapath::ip4(POD_B), ep)
        .expect("endpoint");
    from_internet(&dp, "RA", 0x0bad_5eed, POD_ISN + 1);
    std::thread::sleep(std::time::Duration::from_millis(150));
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &tcp_segment(POD_B, INTERNET, PORT, 25, "S"),
        POD_B_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_ne!(sport(&out), PORT, "pod A's live flow keeps its port");
    let r = nat_entry(&mut dp, key(INTERNET, EGRESS, 25, PORT, 6)).expect("reverse");
    assert_eq!(egress_agent::datapath::ip4_from(r.addr), POD_A);
}

#[test]
fn before_the_pods_ack_only_a_rst_acknowledging_its_syn_counts() {
    let mut dp = datapath(GATEWAY);
    from_pod(&dp, "S");
    let f = nat_entry(&mut dp, key(POD_A, INTERNET, PORT, 25, 6)).expect("forward");
    assert_eq!((f.ack, f.flags & NAT_F_POD_ACKED), (POD_ISN + 1, 0));
    from_internet(&dp, "R", PEER_ISN, 0);
    from_internet(&dp, "RA", PEER_ISN, POD_ISN + 77);
    assert_eq!(states(&mut dp), (CT_NEW, CT_NEW));
    // Control: connection refused, as a host answers a SYN to a closed port.
    from_internet(&dp, "RA", 0, POD_ISN + 1);
    assert_eq!(states(&mut dp).1, CT_RESET);
}

/// The pod's RST is its own to send: it ends the flow whatever its numbers.
#[test]
fn the_pods_own_rst_ends_the_flow() {
    let mut dp = established();
    from_pod(&dp, "R");
    assert_eq!(states(&mut dp).0, CT_RESET);
}
