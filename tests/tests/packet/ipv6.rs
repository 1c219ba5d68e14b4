//! IPv6 from pods (issue 15 point 4): until the gateway translates IPv6, a selected pod's IPv6
//! packet to a destination its policy refuses is answered at once with an ICMPv6 destination
//! unreachable (administratively prohibited), never passed on to leave from the node's own
//! address; everything else IPv6 (unselected pods, other destinations, neighbour discovery,
//! link-local, multicast) is left alone.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use std::net::Ipv6Addr;

use aya::maps::lpm_trie::Key;
use egress_agent::datapath::Datapath;
use egress_common::{
    policy::{PolicyKey6, PolicyValue6, ACTION_EXCLUDED, ACTION_REFUSE, POLICY_ID_BITS},
    program_names::FROM_POD,
};
use egress_tests::packet::*;
use etherparse::PacketBuilder;

const POD_A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 2);
const POD_B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x244, 1, 0, 0, 0, 3);
/// The internet host (a mail server's AAAA).
const MX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0x10);
/// Outside the policy's IPv6 destinations.
const ELSEWHERE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x9999, 0, 0, 0, 0, 1);
const IPPROTO_ICMPV6: u8 = 58;

/// Programs `prefix` of the test policy with `action`, as the reconciler would.
fn policy6(dp: &mut Datapath, prefix: Ipv6Addr, len: u32, action: u16) {
    let key = Key::new(
        POLICY_ID_BITS + len,
        PolicyKey6 {
            policy_id_be: POLICY.to_be(),
            dst: prefix.octets(),
        },
    );
    let v = PolicyValue6 {
        action,
        ..Default::default()
    };
    dp.maps().put_policy6(&key, v).expect("policy6");
}

/// The gateway's datapath with the policy refusing IPv6 to 2001:db8:5100::/48.
fn refusing() -> Node {
    let mut dp = datapath(WORKER);
    policy6(
        &mut dp,
        Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0),
        48,
        ACTION_REFUSE,
    );
    dp
}

fn syn6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(40000, 25, 7000, 64240)
        .syn()
        .write(&mut out, &[])
        .expect("build");
    out
}

/// A TCP segment of an established flow (ACK).
fn ack6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(40000, 25, 7001, 64240)
        .ack(9001)
        .write(&mut out, b"MAIL FROM")
        .expect("build");
    out
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(40000, 53)
        .write(&mut out, b"query")
        .expect("build");
    out
}

/// An ICMPv6 message of `typ` (the rest of its header zero) with `body`.
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, typ: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![typ, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(body);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(src.octets(), dst.octets(), 255)
        .write(&mut out, IPPROTO_ICMPV6.into(), &msg)
        .expect("build");
    let c = icmp6_checksum(&src.octets(), &dst.octets(), &msg);
    out[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&c.to_be_bytes());
    out
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) between `src` and `dst`.
fn icmp6_checksum(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    l4_checksum6(src, dst, IPPROTO_ICMPV6, msg)
}

/// The checksum of upper-layer message `msg` (its checksum field zero) over the IPv6 pseudo
/// header.
fn l4_checksum6(src: &[u8; 16], dst: &[u8; 16], next: u8, msg: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    pseudo.extend_from_slice(msg);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let mut s: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Asserts `out` is the administratively-prohibited answer to `pkt`, from its destination to
/// its source, quoting its first 60 bytes (48 of a shorter packet), with a valid checksum.
fn assert_refusal(pkt: &[u8], out: &[u8]) {
    let quote = if pkt.len() >= 14 + 60 { 60 } else { 48 };
    assert_eq!(out.len(), 14 + 40 + 8 + quote, "{out:02x?}");
    assert_eq!(&out[0..6], &pkt[6..12], "to the pod's MAC");
    assert_eq!(&out[6..12], &pkt[0..6], "from the host side");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let ip = &out[14..54];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        8 + quote,
        "payload length"
    );
    assert_eq!(ip[6], IPPROTO_ICMPV6);
    assert_eq!(ip[7], 64, "hop limit");
    assert_eq!(
        &ip[8..24],
        &pkt[14 + 24..14 + 40],
        "from the refused destination"
    );
    assert_eq!(&ip[24..40], &pkt[14 + 8..14 + 24], "to the pod");
    let msg = &out[54..];
    assert_eq!(
        (msg[0], msg[1]),
        (1, 1),
        "destination unreachable, prohibited"
    );
    assert_eq!(&msg[4..8], &[0; 4]);
    assert_eq!(
        &msg[8..],
        &pkt[14..14 + quote],
        "the quote: the packet's first bytes"
    );
    let mut zeroed = msg.to_vec();
    zeroed[2..4].copy_from_slice(&[0, 0]);
    let src: [u8; 16] = ip[8..24].try_into().expect("16");
    let dst: [u8; 16] = ip[24..40].try_into().expect("16");
    assert_eq!(
        u16::from_be_bytes([msg[2], msg[3]]),
        icmp6_checksum(&src, &dst, &zeroed),
        "ICMPv6 checksum"
    );
}

/// Asserts `out` is the RST that refuses SYN `pkt`: from its destination to its source,
/// ports swapped, acknowledging the SYN, with a valid checksum.
fn assert_reset(pkt: &[u8], out: &[u8]) {
    assert_eq!(out.len(), 14 + 40 + 20, "{out:02x?}");
    assert_eq!(&out[0..6], &pkt[6..12]);
    assert_eq!(&out[6..12], &pkt[0..6]);
    let ip = &out[14..54];
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 20, "payload length");
    assert_eq!((ip[6], ip[7]), (6, 64), "TCP, hop limit 64");
    assert_eq!(
        &ip[8..24],
        &pkt[14 + 24..14 + 40],
        "from the refused destination"
    );
    assert_eq!(&ip[24..40], &pkt[14 + 8..14 + 24], "to the pod");
    let (t, o) = (&out[54..74], &pkt[54..]);
    assert_eq!(&t[0..2], &o[2..4], "from the destination port");
    assert_eq!(&t[2..4], &o[0..2], "to the pod's port");
    assert_eq!(&t[4..8], &[0; 4], "sequence number");
    let syn_seq = u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
    assert_eq!(
        u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        syn_seq.wrapping_add(1),
        "acknowledges the SYN"
    );
    assert_eq!((t[12], t[13]), (0x50, 0x14), "20 bytes, RST + ACK");
    let mut zeroed = t.to_vec();
    zeroed[16..18].copy_from_slice(&[0, 0]);
    let src: [u8; 16] = ip[8..24].try_into().expect("16");
    let dst: [u8; 16] = ip[24..40].try_into().expect("16");
    assert_eq!(
        u16::from_be_bytes([t[16], t[17]]),
        l4_checksum6(&src, &dst, 6, &zeroed),
        "TCP checksum"
    );
}

#[test]
fn a_selected_pods_ipv6_to_a_refused_destination_is_answered_at_once() {
    let dp = refusing();
    // A connect: reset (it fails at once).
    let syn = syn6(POD_A6, MX6);
    let (rc, out) = run(&dp, FROM_POD, &syn, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
    assert_reset(&syn, &out);
    assert_eq!(drops(&dp, "ipv6_refused"), 1);
    // Anything else: administratively prohibited.
    for pkt in [udp6(POD_A6, MX6), ack6(POD_A6, MX6)] {
        let before = drops(&dp, "ipv6_refused");
        let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
        assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
        assert_refusal(&pkt, &out);
        assert_eq!(drops(&dp, "ipv6_refused"), before + 1);
    }
    // An echo request too: ping6 fails at once.
    let ping = icmp6(POD_A6, MX6, 128, &[0, 1, 0, 1, b'p', b'i', b'n', b'g']);
    let (rc, out) = run(&dp, FROM_POD, &ping, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_refusal(&ping, &out);
}

#[test]
fn ipv6_the_policy_does_not_refuse_is_left_alone() {
    let mut dp = refusing();
    // An excluded prefix inside the refused one.
    policy6(
        &mut dp,
        Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 7, 0, 0, 0, 0),
        64,
        ACTION_EXCLUDED,
    );
    let excluded = Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 7, 0, 0, 0, 1);
    let cases = [
        ("an unselected pod", syn6(POD_B6, MX6), POD_B_IF),
        ("another destination", syn6(POD_A6, ELSEWHERE6), POD_A_IF),
        ("an excluded destination", syn6(POD_A6, excluded), POD_A_IF),
    ];
    for (what, pkt, ifindex) in cases {
        let (rc, out) = run(&dp, FROM_POD, &pkt, ifindex);
        assert_eq!(rc, TCX_NEXT, "{what}: normal path");
        assert_eq!(out, pkt, "{what}: untouched");
    }
    assert_eq!(drops(&dp, "ipv6_refused"), 0);
    // Control: the refused destination is refused.
    let (rc, _) = run(&dp, FROM_POD, &syn6(POD_A6, MX6), POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
}

#[test]
fn neighbour_discovery_link_local_and_multicast_are_never_refused() {
    // Everything refused: ::/0.
    let mut dp = datapath(WORKER);
    policy6(&mut dp, Ipv6Addr::UNSPECIFIED, 0, ACTION_REFUSE);
    let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x10);
    let cases = [
        // A unicast neighbour solicitation (reachability check) of a global address.
        ("neighbour solicitation", icmp6(POD_A6, MX6, 135, &[0; 16])),
        ("neighbour advertisement", icmp6(POD_A6, MX6, 136, &[0; 16])),
        ("router solicitation", icmp6(POD_A6, MX6, 133, &[0; 8])),
        ("MLD report", icmp6(POD_A6, MX6, 143, &[0; 8])),
        ("to a link-local address", syn6(POD_A6, link_local)),
        ("from a link-local address", syn6(link_local, MX6)),
        ("to a multicast group", udp6(POD_A6, solicited)),
        (
            "duplicate address detection",
            icmp6(Ipv6Addr::UNSPECIFIED, solicited, 135, &[0; 16]),
        ),
    ];
    for (what, pkt) in cases {
        let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
        assert_eq!(rc, TCX_NEXT, "{what}: normal path");
        assert_eq!(out, pkt, "{what}: untouched");
    }
    assert_eq!(drops(&dp, "ipv6_refused"), 0);
    // Control: with ::/0 refused, an ordinary packet is refused.
    let pkt = udp6(POD_A6, MX6);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_refusal(&pkt, &out);
}

#[test]
fn an_icmpv6_error_a_runt_or_no_source_to_a_refused_destination_is_dropped_unanswered() {
    let dp = refusing();
    // A pod's destination unreachable about something: never an error about an error.
    let err = icmp6(POD_A6, MX6, 1, &[0; 48]);
    let (rc, _) = run(&dp, FROM_POD, &err, POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    // An IPv6 header and nothing after it: nothing to quote.
    let mut runt = Vec::new();
    PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(POD_A6.octets(), MX6.octets(), 64)
        .write(&mut runt, 59.into(), &[])
        .expect("build");
    let (rc, _) = run(&dp, FROM_POD, &runt, POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    // No source address: no one to answer.
    let nobody = udp6(Ipv6Addr::UNSPECIFIED, MX6);
    let (rc, _) = run(&dp, FROM_POD, &nobody, POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "ipv6_refused"), 3);
    // A frame that claims IPv6 but is not: dropped as malformed, not refused.
    let mut bad = syn6(POD_A6, MX6);
    bad[14] = 0x45;
    let (rc, _) = run(&dp, FROM_POD, &bad, POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "malformed"), 1);
}
