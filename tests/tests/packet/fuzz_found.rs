//! What the fuzzer (`tests/fuzz/`) found, one test per failure, named after the behaviour
//! (all fixed). A hole found and not fixed at once would be an ignored test here, with its
//! reason; the fuzzer would know it by that name and fail on it only with
//! `EGRESS_FUZZ_STRICT=1` until it is fixed.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::{
    nat::{CT_ESTABLISHED, CT_NEW},
    program_names::{FROM_POD, FROM_WIRE},
};
use egress_tests::packet::*;
use etherparse::PacketBuilder;

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

/// A packet on the uplink carrying a pod's own forward tuple (source the pod, destination the
/// remote) matches no reply and must leave the flow's state alone. `egw_from_wire` finds the
/// forward entry by the packet's tuple and refreshes it (`nat::reverse_lookup` touches before
/// it checked `NAT_F_REVERSE`): a RST made the flow reset (its port may go to another flow
/// 100 ms later; the collector ends it after 10 s idle), a plain packet ESTABLISHED.
#[test]
fn a_packet_on_the_uplink_with_a_pods_own_tuple_leaves_its_flow_alone() {
    let mut dp = datapath(GATEWAY);
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &tcp_segment(POD_A, INTERNET, 62000, 25, "S"),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    let fwd = key(POD_A, INTERNET, 62000, 25, 6);
    let before = nat_entry(&mut dp, fwd).expect("forward entry");
    assert_eq!(before.state, CT_NEW);
    for flags in ["R", "A"] {
        let forged = tcp_segment(POD_A, INTERNET, 62000, 25, flags);
        assert_eq!(
            run(&dp, FROM_WIRE, &forged, UPLINK_IF),
            (TCX_NEXT, forged.clone())
        );
        assert_eq!(
            nat_entry(&mut dp, fwd),
            Some(before),
            "{flags}: the forward entry changed"
        );
    }
    // Control: the real answer, on the egress tuple, establishes the flow.
    let rev = key(INTERNET, EGRESS, 25, sport(&out), 6);
    let synack = tcp_segment(INTERNET, EGRESS, 25, sport(&out), "SA");
    assert_eq!(run(&dp, FROM_WIRE, &synack, UPLINK_IF).0, TC_ACT_REDIRECT);
    assert_eq!(
        nat_entry(&mut dp, rev).expect("reverse").state,
        CT_ESTABLISHED
    );
}

/// An ICMP error whose frame holds bytes past its IPv4 total length (a link-layer trailer)
/// comes out with a valid ICMP checksum. The reverse translation rewrites the quoted TCP
/// checksum where the buffer holds it, in the trailer here (a 28-byte quote ends before the
/// TCP checksum), and adds that change to the ICMP checksum, which covers only the total
/// length: the pod's stack drops the error as corrupt (a fragmentation-needed lost: PMTU
/// discovery stalls). The same when a short total length cuts the quote (seed
/// 0x656777313366757a, round 0 packet 2884).
#[test]
fn an_icmp_error_with_bytes_past_its_total_length_keeps_a_valid_checksum() {
    let dp = datapath(GATEWAY);
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &tcp_segment(POD_A, INTERNET, 62000, 25, "S"),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    let quote = &out[L3..L3 + 28];
    let b = PacketBuilder::ethernet2(HOST_MAC, POD_MAC)
        .ipv4(INTERNET.octets(), EGRESS.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Host,
        ));
    let mut err = Vec::new();
    b.write(&mut err, quote).expect("build");
    // Control: without a trailer the error comes out whole.
    let (rc, back) = run(&dp, FROM_WIRE, &err, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(dst_ip(&back), POD_A);
    assert_checksums(&back);
    // With one: the same, and the trailer as it was.
    let trailer = [0xa5u8; 12];
    err.extend_from_slice(&trailer);
    let (rc, back) = run(&dp, FROM_WIRE, &err, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(dst_ip(&back), POD_A);
    assert_checksums(&back);
    assert_eq!(
        back[back.len() - trailer.len()..],
        trailer,
        "trailer rewritten"
    );
}

/// A SYN whose TCP header claims options past the IPv4 total length (a header length that
/// overruns the datagram; the bytes there are a link trailer, no part of the packet) goes to
/// the gateway as it came: clamping rewrote an MSS found there and counted it in the TCP
/// checksum, which covers only the total length (seed 0x1, round 5 packet 2738).
#[test]
fn an_mss_option_past_the_total_length_is_left_alone() {
    let dp = datapath(WORKER);
    let syn = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
    // Control: the MSS inside the datagram is clamped to what the tunnel carries.
    let (rc, out) = run(&dp, FROM_POD, &syn, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(tcp_mss(&out), Some(1410));
    assert_checksums(&out);
    // The same SYN with a total length that ends before the options: IPv4 and TCP headers
    // (20 bytes, checksum fixed), the options after it.
    let mut cut = syn.clone();
    let tcp = l4(&cut);
    cut[L3 + 2..L3 + 4].copy_from_slice(&40u16.to_be_bytes());
    let ttl = cut[L3 + 8];
    let mut cut = with_ttl(cut, ttl);
    cut[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&cut[L3 + 12..L3 + 20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let mut s = sum(&pseudo) + sum(&cut[tcp..tcp + 20]);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    cut[tcp + 16..tcp + 18].copy_from_slice(&(!(s as u16)).to_be_bytes());
    assert_checksums(&cut);
    let (rc, out) = run(&dp, FROM_POD, &cut, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(
        out[tcp + 20..],
        cut[tcp + 20..],
        "bytes past the datagram rewritten"
    );
    assert_checksums(&out);
}
