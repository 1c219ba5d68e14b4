//! Packets too big for the tunnel: with DF, egw_from_pod answers ICMP fragmentation-needed
//! to the pod; without DF, it tunnels them (the kernel fragments).
//!
//! Packet tests: they need root (CAP_BPF + CAP_NET_ADMIN) and fail with a clear message
//! without it.

use egress_common::program_names::FROM_POD;
use egress_tests::packet::*;

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
    let mut pkt = udp(POD_A, INTERNET, 40000, 9000, &[0x5a; 1472]);
    // Clear DF and fix the header checksum.
    pkt[L3 + 6] &= !0x40;
    pkt[L3 + 10] = 0;
    pkt[L3 + 11] = 0;
    let c = !{
        let mut s = sum(&pkt[L3..L3 + 20]);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    pkt[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
    let (rc, _) = run(&dp, FROM_POD, &pkt, POD_A_IF);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, "frag_needed"), 0);
}
