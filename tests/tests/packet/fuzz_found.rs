//! What the fuzzer (`tests/fuzz/`) found, one test per failure, named after the behaviour.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::program_names::{FROM_POD, FROM_WIRE};
use egress_tests::packet::*;

/// A later fragment on the uplink that carries a pod's own datagram key (source the pod,
/// destination the remote: not a reply, something only a sender on the uplink's link can
/// forge) is the host's business: the fragment entry that key has was left by the pod's own
/// datagram going out (or by an answer the pod sent to a peer), not by a reply. Before the
/// fix it was "reverse-translated" by that entry: to the egress IP, or to 0.0.0.0 through the
/// tunnel (seed 0x656777313366757a, round 0 packet 2495).
#[test]
fn a_later_fragment_on_the_uplink_is_translated_only_by_a_replys_first_fragment() {
    let dp = datapath(GATEWAY);
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 5) as u8).collect();
    // The pod's fragmented datagram goes out: its first fragment leaves an entry under the
    // datagram's key {pod, remote, id, UDP}.
    let (f1, f2) = fragment(&udp(POD_A, INTERNET, 40000, 53, &big), 0x4203, 1480);
    assert_eq!(run(&dp, FROM_POD, &f1, POD_A_IF).0, TC_ACT_REDIRECT);
    // The same later fragment arriving on the uplink.
    let (rc, out) = run(&dp, FROM_WIRE, &f2, UPLINK_IF);
    assert_eq!(rc, TCX_NEXT, "translated as a reply");
    assert_eq!(out, f2);
    // Control: the pod's own later fragment still leaves translated.
    let (rc, out) = run(&dp, FROM_POD, &f2, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(src_ip(&out), EGRESS);
}

/// The same for the entry a pod's answer to a peer leaves (a flow the peer opened: its
/// datagram keeps the normal path, and its later fragments follow).
#[test]
fn a_later_fragment_on_the_uplink_never_follows_a_pods_answer_to_a_peer() {
    let dp = datapath(GATEWAY);
    // The peer opens a flow to the pod; the pod answers with a fragmented datagram.
    let open = udp(INTERNET, POD_A, 5353, 8080, b"hello");
    assert_eq!(
        run(&dp, egress_common::program_names::TO_POD, &open, POD_A_IF).0,
        TCX_NEXT
    );
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 11) as u8).collect();
    let (f1, f2) = fragment(&udp(POD_A, INTERNET, 8080, 5353, &big), 0x4201, 1480);
    assert_eq!(run(&dp, FROM_POD, &f1, POD_A_IF), (TCX_NEXT, f1.clone()));
    let (rc, out) = run(&dp, FROM_WIRE, &f2, UPLINK_IF);
    assert_eq!(rc, TCX_NEXT, "sent to 0.0.0.0 through the tunnel");
    assert_eq!(out, f2);
    // Control: the pod's later fragment keeps its normal path.
    assert_eq!(run(&dp, FROM_POD, &f2, POD_A_IF), (TCX_NEXT, f2.clone()));
}
