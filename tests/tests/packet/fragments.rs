//! Fragments: of translated replies (later fragments found by the datagram's id) and of
//! datagrams a pod sends (the first fragment's mapping kept for the later ones).
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::program_names::{FROM_POD, FROM_WIRE};
use egress_tests::packet::*;

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
    assert_eq!(rc, TCX_NEXT);
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

/// Issue 13 point 4: a datagram whose first fragment is not ours (the gateway host's own
/// fragmented answer, reusing an IP id a translated datagram had) clears the fragment entry:
/// its later fragments stay the host's and never reach a pod.
#[test]
fn a_stale_fragment_entry_never_diverts_the_hosts_own_fragments() {
    let dp = datapath(GATEWAY);
    let (_, out) = run(
        &dp,
        FROM_POD,
        &udp(POD_A, INTERNET, 40000, 53, b"q?"),
        POD_A_IF,
    );
    let nat_port = sport(&out);
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    // A translated datagram leaves its entry (its later fragment lost on the way).
    let (f1, _) = fragment(&udp(INTERNET, EGRESS, 53, nat_port, &big), 0x7777, 1480);
    assert_eq!(run(&dp, FROM_WIRE, &f1, UPLINK_IF).0, TC_ACT_REDIRECT);
    // The host's own DNS answer, same source, destination and IP id, to a host port.
    let (h1, h2) = fragment(&udp(INTERNET, EGRESS, 53, 33333, &big), 0x7777, 1480);
    let (rc, out) = run(&dp, FROM_WIRE, &h1, UPLINK_IF);
    assert!(
        rc == TCX_NEXT && out == h1,
        "the host's first fragment: {rc}"
    );
    let (rc, out) = run(&dp, FROM_WIRE, &h2, UPLINK_IF);
    assert_eq!(rc, TCX_NEXT, "the host's later fragment went to the pod");
    assert!(out == h2, "the host's later fragment was rewritten");
}
