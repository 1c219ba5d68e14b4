//! Packet tests of tunnel trust: pods never reach a node's tunnel port, the underlay lets a
//! tunnel packet on only from a peer node (with its MAC when on-link) and marks it, and the
//! tunnel device takes only marked IPv4 packets. Each attack has its control case.

use std::net::Ipv4Addr;

use egress_agent::datapath::{ip4, Datapath};
use egress_common::{
    config::{CFG_F_GATEWAY, DEFAULT_TRUST_MARK, VXLAN_PORT},
    endpoint::{NodeInfo, NODE_F_ADDRESS, NODE_F_ONLINK, NODE_F_PEER},
    program_names::{FROM_POD, FROM_TUNNEL, FROM_WIRE},
};
use egress_tests::packet::*;
use etherparse::PacketBuilder;

/// An address that is no node's InternalIP but is an egress IP.
const EXTRA_EGRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// A VXLAN datagram from `src` to `dst`'s tunnel port, Ethernet source `mac`.
fn vxlan_from(src: Ipv4Addr, dst: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let inner = udp(POD_A, INTERNET, 5353, 53, b"inner");
    let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    payload.extend_from_slice(&inner);
    let b = PacketBuilder::ethernet2(mac, HOST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, VXLAN_PORT);
    let mut v = Vec::new();
    b.write(&mut v, &payload).expect("build");
    v
}

fn set_node(dp: &mut Datapath, ip: Ipv4Addr, flags: u32, mac: [u8; 6]) {
    dp.maps()
        .put_node(
            ip4(ip),
            NodeInfo {
                flags,
                mac,
                _pad: [0; 6],
            },
        )
        .expect("node");
}

// --- egw_from_pod: the tunnel port of every node address is out of reach ----------------

#[test]
fn pods_cannot_reach_the_tunnel_port_of_any_node_address_selected_or_not() {
    let mut dp = datapath(WORKER);
    set_node(&mut dp, EXTRA_EGRESS, NODE_F_ADDRESS, [0; 6]);
    let before = drops(&dp, "tunnel_from_pod");
    let mut n = 0;
    for (pod, ifindex) in [(POD_A, POD_A_IF), (POD_B, POD_B_IF)] {
        for node in [GATEWAY, WORKER, EXTRA_EGRESS] {
            let pkt = udp(pod, node, 40000, VXLAN_PORT, b"vxlan?");
            let (v, _) = run(&dp, FROM_POD, &pkt, ifindex);
            assert_eq!(v, TC_ACT_SHOT, "{pod} -> {node}:{VXLAN_PORT}");
            n += 1;
        }
    }
    assert_eq!(drops(&dp, "tunnel_from_pod"), before + n);

    // Controls: the same port elsewhere, and other ports of the nodes, keep their paths.
    let pkt = udp(POD_B, INTERNET, 40000, VXLAN_PORT, b"vxlan?");
    assert_eq!(run(&dp, FROM_POD, &pkt, POD_B_IF), (TCX_NEXT, pkt.clone()));
    let pkt = udp(POD_B, GATEWAY, 40000, 53, b"dns");
    assert_eq!(run(&dp, FROM_POD, &pkt, POD_B_IF), (TCX_NEXT, pkt.clone()));
    let pkt = udp(POD_A, INTERNET, 40000, VXLAN_PORT, b"vxlan?");
    assert_eq!(run(&dp, FROM_POD, &pkt, POD_A_IF).0, TC_ACT_REDIRECT);
    assert_eq!(drops(&dp, "tunnel_from_pod"), before + n);
}

// --- egw_from_wire on the underlay: the tunnel's gate -----------------------------------

#[test]
fn the_underlay_marks_a_peers_tunnel_packet_and_leaves_it_as_it_is() {
    let dp = datapath(GATEWAY);
    let pkt = vxlan_from(WORKER, GATEWAY, POD_MAC);
    let (v, out, mark) = run_marked(&dp, FROM_WIRE, &pkt, UNDERLAY_IF, 0x4000);
    assert_eq!(v, TCX_NEXT);
    assert_eq!(out, pkt);
    assert_eq!(
        mark,
        0x4000 | DEFAULT_TRUST_MARK,
        "other mark bits are kept"
    );
}

#[test]
fn the_underlay_drops_a_tunnel_packet_from_a_host_that_is_not_a_peer() {
    let mut dp = datapath(GATEWAY);
    // An address of a node that is not a peer (this node's own) is no better.
    set_node(&mut dp, GATEWAY, NODE_F_ADDRESS, [0; 6]);
    let before = drops(&dp, "unknown_node");
    for src in [INTERNET, GATEWAY, POD_A] {
        let (v, _, mark) = run_marked(&dp, FROM_WIRE, &vxlan_from(src, GATEWAY, POD_MAC), 1, 0);
        assert_eq!(v, TC_ACT_SHOT, "from {src}");
        assert_eq!(mark, 0);
    }
    assert_eq!(drops(&dp, "unknown_node"), before + 3);
    // Control: the peer.
    let (v, _, mark) = run_marked(&dp, FROM_WIRE, &vxlan_from(WORKER, GATEWAY, POD_MAC), 1, 0);
    assert_eq!((v, mark), (TCX_NEXT, DEFAULT_TRUST_MARK));
}

#[test]
fn the_underlay_checks_an_on_link_peers_mac() {
    let mut dp = datapath(GATEWAY);
    let router_mac = [0x02, 0, 0, 0, 0, 0x99];
    set_node(
        &mut dp,
        WORKER,
        NODE_F_PEER | NODE_F_ADDRESS | NODE_F_ONLINK,
        POD_MAC,
    );
    let before = drops(&dp, "tunnel_mac_mismatch");
    let spoofed = vxlan_from(WORKER, GATEWAY, router_mac);
    let (v, _, mark) = run_marked(&dp, FROM_WIRE, &spoofed, UNDERLAY_IF, 0);
    assert_eq!((v, mark), (TC_ACT_SHOT, 0), "spoofed from beyond a router");
    assert_eq!(drops(&dp, "tunnel_mac_mismatch"), before + 1);
    // Control: the peer's own MAC.
    let real = vxlan_from(WORKER, GATEWAY, POD_MAC);
    let (v, _, mark) = run_marked(&dp, FROM_WIRE, &real, UNDERLAY_IF, 0);
    assert_eq!((v, mark), (TCX_NEXT, DEFAULT_TRUST_MARK));
    // A peer whose MAC the agent has not written yet, and that the kernel's neighbour table
    // does not hold either (the FIB lookup's slow path): nothing passes.
    set_node(
        &mut dp,
        WORKER,
        NODE_F_PEER | NODE_F_ADDRESS | NODE_F_ONLINK,
        [0; 6],
    );
    let (v, _, _) = run_marked(&dp, FROM_WIRE, &real, UNDERLAY_IF, 0);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "tunnel_mac_mismatch"), before + 2);
}

#[test]
fn a_later_fragment_claiming_a_peer_is_held_to_its_mac() {
    let mut dp = datapath(GATEWAY);
    set_node(
        &mut dp,
        WORKER,
        NODE_F_PEER | NODE_F_ADDRESS | NODE_F_ONLINK,
        POD_MAC,
    );
    let later = |mac: [u8; 6], src: Ipv4Addr| {
        let mut pkt = vxlan_from(src, GATEWAY, mac);
        // Fragment offset 185 (1480 bytes), MF clear, header checksum recomputed.
        pkt[L3 + 6..L3 + 8].copy_from_slice(&185u16.to_be_bytes());
        with_ttl(pkt, 64)
    };
    let before = drops(&dp, "tunnel_mac_mismatch");
    let (v, _, _) = run_marked(
        &dp,
        FROM_WIRE,
        &later([0x02, 0, 0, 0, 0, 0x99], WORKER),
        1,
        0,
    );
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "tunnel_mac_mismatch"), before + 1);
    // Controls: the peer's own later fragment passes, and one from any other host is not a
    // tunnel packet's business (the host reassembles it or not).
    for src in [WORKER, INTERNET] {
        let pkt = later(POD_MAC, src);
        let (v, out, _) = run_marked(&dp, FROM_WIRE, &pkt, 1, 0);
        assert_eq!((v, out), (TCX_NEXT, pkt), "from {src}");
    }
}

#[test]
fn a_node_that_is_no_gateway_leaves_replies_on_its_uplink_alone() {
    let mut dp = datapath(GATEWAY);
    let syn = tcp_syn(POD_A, INTERNET, 40000, 25, 1460);
    let (v, out) = run(&dp, FROM_POD, &syn, POD_A_IF);
    assert_eq!(v, TC_ACT_REDIRECT);
    let reply = tcp_data(INTERNET, EGRESS, 25, sport(&out), b"220");
    // Control: on the gateway the reply is reverse-translated.
    let (v, out) = run(&dp, FROM_WIRE, &reply, UPLINK_IF);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(dst_ip(&out), POD_A);
    // The same node without the gateway role: untouched.
    let mut cfg = dp.config().expect("config");
    cfg.flags &= !CFG_F_GATEWAY;
    dp.set_config(&cfg).expect("config");
    assert_eq!(run(&dp, FROM_WIRE, &reply, UPLINK_IF), (TCX_NEXT, reply));
}

// --- egw_from_tunnel: only marked IPv4 ---------------------------------------------------

#[test]
fn the_tunnel_device_drops_what_did_not_come_through_the_underlays_gate() {
    let dp = datapath(GATEWAY);
    let pkt = udp(POD_A, INTERNET, 5353, 53, b"inner");
    let before = drops(&dp, "tunnel_untrusted");
    // Other mark bits are not the trust bit.
    let (v, _, _) = run_marked(&dp, FROM_TUNNEL, &pkt, 1, 0x4000);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "tunnel_untrusted"), before + 1);
    // Control: marked, it goes on to the tunnel metadata, which a test run has none of: it
    // got past the trust check, and the mark is cleared for whatever runs next.
    let before_key = drops(&dp, "tunnel_key");
    let (v, _, mark) = run_marked(&dp, FROM_TUNNEL, &pkt, 1, 0x4000 | DEFAULT_TRUST_MARK);
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(drops(&dp, "tunnel_key"), before_key + 1);
    assert_eq!(drops(&dp, "tunnel_untrusted"), before + 1);
    assert_eq!(mark, 0x4000);
}

#[test]
fn the_tunnel_device_drops_frames_that_are_not_ipv4() {
    let dp = datapath(GATEWAY);
    let before = drops(&dp, "tunnel_not_ipv4");
    let b = PacketBuilder::ethernet2(POD_MAC, HOST_MAC)
        .ipv6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            255,
        )
        .udp(546, 547);
    let mut v6 = Vec::new();
    b.write(&mut v6, b"dhcpv6").expect("build");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&POD_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    for frame in [v6, arp] {
        let (v, _, _) = run_marked(&dp, FROM_TUNNEL, &frame, 1, DEFAULT_TRUST_MARK);
        assert_eq!(v, TC_ACT_SHOT);
    }
    assert_eq!(drops(&dp, "tunnel_not_ipv4"), before + 2);
}

/// A namespace for one test, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("egwpkt-{tag}-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }
    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        let ok = std::process::Command::new("ip")
            .args(&a)
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip {a:?}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn a_peer_the_agent_has_no_mac_for_yet_passes_when_the_kernel_knows_it() {
    // The underlay: a veth holding the gateway's address, with the worker in its neighbour
    // table (as an ARP request from the worker leaves it), in a namespace of the test's own.
    let ns = Netns::new("fib");
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "ul0"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    ns.ip(&["link", "set", "ul1", "up"]);
    // The FIB lookup answers only where the interface forwards, as a node's always do.
    let ok = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .expect("sysctl")
        .success();
    assert!(ok, "ip_forward in {}", ns.0);
    let mac = "02:00:00:00:00:0a"; // POD_MAC: the source of the test's frames.
    ns.ip(&[
        "neigh",
        "replace",
        "192.0.2.11",
        "lladdr",
        mac,
        "dev",
        "ul0",
        "nud",
        "stale",
    ]);
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.0, "-o", "link", "show", "ul0"])
        .output()
        .expect("ip link show");
    let ul0: u32 = String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .expect("ifindex of ul0");

    let mut dp = datapath(GATEWAY);
    let mut cfg = dp.config().expect("config");
    cfg.underlay_ifindex = ul0;
    dp.set_config(&cfg).expect("config");
    // The agent's copy: on-link, MAC not known yet.
    set_node(
        &mut dp,
        WORKER,
        NODE_F_PEER | NODE_F_ADDRESS | NODE_F_ONLINK,
        [0; 6],
    );
    let run_on_ul0 = |pkt: &[u8]| {
        egress_tests::lab::in_netns(&ns.0, || {
            let mut ctx = skb_ctx(ul0);
            ctx[40..44].copy_from_slice(&ul0.to_ne_bytes());
            let (r, ctx_out) = run_ctx(&dp, FROM_WIRE, pkt, &ctx, 1);
            (
                r.verdict,
                u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4")),
            )
        })
    };
    let before = drops(&dp, "tunnel_mac_mismatch");
    // The kernel's neighbour table has the worker's MAC: its tunnel packet passes, marked.
    assert_eq!(
        run_on_ul0(&vxlan_from(WORKER, GATEWAY, POD_MAC)),
        (TCX_NEXT, DEFAULT_TRUST_MARK)
    );
    // Control: another MAC claiming the worker's address is still refused.
    let (v, mark) = run_on_ul0(&vxlan_from(WORKER, GATEWAY, [0x02, 0, 0, 0, 0, 0x99]));
    assert_eq!((v, mark), (TC_ACT_SHOT, 0));
    assert_eq!(drops(&dp, "tunnel_mac_mismatch"), before + 1);
}
