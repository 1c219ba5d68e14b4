//! Packets too big for the tunnel: with DF, egw_from_pod answers ICMP fragmentation-needed
//! to the pod; without DF, it tunnels them (the kernel fragments). Packets too big for a
//! narrow uplink past the gateway (issue 12): with DF, answered the same way; without, a
//! counted drop; a gateway-local pod's SYN, and the SYN-ACK back to it, clamped to the uplink.
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_agent::datapath::policy_key;
use egress_common::{
    config::Config,
    policy::PolicyValue,
    program_names::{FROM_POD, FROM_WIRE},
};
use egress_tests::packet::*;
use etherparse::{PacketBuilder, TcpOptionElement};

/// The IPv4 header of `pkt` without DF, its checksum fixed.
fn without_df(mut pkt: Vec<u8>) -> Vec<u8> {
    pkt[L3 + 6] &= !0x40;
    let ttl = pkt[L3 + 8];
    with_ttl(pkt, ttl)
}

#[test]
fn from_pod_oversize_df_packet_is_answered_with_frag_needed() {
    let dp = datapath(WORKER);
    let pkt = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1472]);
    assert_eq!(be16(&pkt, L3 + 2), 1500);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(&out[0..6], &POD_MAC, "addressed to the pod's MAC");
    assert_eq!(src_ip(&out), WORKER);
    assert_eq!(dst_ip(&out), POD_A);
    assert_eq!(out[L3 + 9], 1, "ICMP");
    assert_eq!((out[34], out[35]), (3, 4), "dest unreachable / frag needed");
    assert_eq!(u32::from(be16(&out, 34 + 6)), TUNNEL_MTU);
    assert_eq!(
        &out[42..70],
        &pkt[L3..L3 + 28],
        "quotes the original header"
    );
    assert_checksums(&out);
    assert_eq!(drops(&dp, "frag_needed"), 1);
}

#[test]
fn from_pod_oversize_without_df_is_tunnelled() {
    let dp = datapath(WORKER);
    let pkt = without_df(udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1472]));
    let (rc, _) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, "frag_needed"), 0);
}

const NARROW_UPLINK: u16 = 1400;

/// The gateway with a 1400-byte uplink.
fn narrow_gateway() -> Node {
    let mut dp = datapath(GATEWAY);
    let cfg = dp.config().expect("config");
    dp.set_config(&Config {
        uplink_mtu: NARROW_UPLINK,
        ..cfg
    })
    .expect("config");
    dp
}

#[test]
fn a_gateway_local_pods_oversize_df_packet_is_answered_with_the_uplink_mtu() {
    let dp = narrow_gateway();
    let pkt = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1400]);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!((src_ip(&out), dst_ip(&out)), (GATEWAY, POD_A));
    assert_eq!((out[34], out[35]), (3, 4), "dest unreachable / frag needed");
    assert_eq!(be16(&out, 34 + 6), NARROW_UPLINK);
    assert_checksums(&out);
    assert_eq!(drops(&dp, "frag_needed"), 1);

    // Without DF: a tc program cannot fragment it, a counted drop.
    let (rc, _) = run(&dp, FROM_POD, &without_df(pkt), POD_A_IF);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "uplink_too_big"), 1);

    // Control: a packet the uplink takes is translated.
    let fits = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1372]);
    assert_eq!(be16(&fits, L3 + 2), NARROW_UPLINK);
    let (rc, out) = run(&dp, FROM_POD, &fits, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(src_ip(&out), EGRESS);
    assert_eq!(drops(&dp, "frag_needed"), 1);
}

#[test]
fn a_gateway_local_pods_syn_and_its_syn_ack_are_clamped_to_the_uplink() {
    let mut dp = narrow_gateway();
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &tcp_syn(POD_A, INTERNET, 40000, 25, 1460),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(tcp_mss(&out), Some(NARROW_UPLINK - 40));
    assert_checksums(&out);

    // The server's SYN-ACK to the egress port, back to the pod.
    let port = sport(&out);
    let b = PacketBuilder::ethernet2(HOST_MAC, POD_MAC)
        .ipv4(INTERNET.octets(), EGRESS.octets(), 64)
        .tcp(25, port, 9000, 64240)
        .syn()
        .ack(1001)
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
        .expect("options");
    let mut syn_ack = Vec::new();
    b.write(&mut syn_ack, &[]).expect("build");
    let (rc, back) = run(&dp, FROM_WIRE, &syn_ack, UPLINK_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "to the local pod");
    assert_eq!(dst_ip(&back), POD_A);
    assert_eq!(tcp_mss(&back), Some(NARROW_UPLINK - 40));
    assert_checksums(&back);

    // Control: with the uplink's MTU unknown (0), nothing is clamped on this node.
    let cfg = dp.config().expect("config");
    dp.set_config(&Config {
        uplink_mtu: 0,
        ..cfg
    })
    .expect("config");
    let (_, out) = run(
        &dp,
        FROM_POD,
        &tcp_syn(POD_A, INTERNET, 40001, 25, 1460),
        POD_A_IF,
    );
    assert_eq!(tcp_mss(&out), Some(1460));
}

/// The egress IP on a second NIC (the policy names its interface and MTU): that MTU, not the
/// uplink's, decides; a worker pod's packet arriving through the tunnel is held to it too.
#[test]
fn an_egress_interface_of_its_own_has_its_own_mtu() {
    const NIC2_MTU: u16 = 1300;
    let mut dp = narrow_gateway();
    let key = policy_key(POLICY, std::net::Ipv4Addr::UNSPECIFIED, 0);
    let via = dp
        .maps()
        .policies()
        .expect("policies")
        .into_iter()
        .find(|(k, _)| k.data() == key.data() && k.prefix_len() == key.prefix_len())
        .map(|(_, v)| v)
        .expect("the policy");
    dp.maps()
        .put_policy(
            &key,
            PolicyValue {
                egress_ifindex: UPLINK_IF + 1,
                egress_mtu: NIC2_MTU,
                ..via
            },
        )
        .expect("policy");
    // 1350 bytes: under the uplink's 1400, over the second NIC's 1300.
    let pkt = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1322]);
    let (rc, out) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!((out[34], out[35]), (3, 4), "dest unreachable / frag needed");
    assert_eq!(be16(&out, 34 + 6), NIC2_MTU);
    assert_eq!(drops(&dp, "frag_needed"), 1);

    // A SYN is clamped to it.
    let (rc, out) = run(
        &dp,
        FROM_POD,
        &tcp_syn(POD_A, INTERNET, 40000, 25, 1460),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(tcp_mss(&out), Some(NIC2_MTU - 40));

    // Control: what fits it is translated.
    let fits = udp(POD_A, INTERNET, 40001, 9000, &[0x5a; 1272]);
    let (rc, out) = run(&dp, FROM_POD, &fits, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(src_ip(&out), EGRESS);
    assert_eq!(drops(&dp, "frag_needed"), 1);
}
