//! The tunnel is no open door (issue 11), tried as an attacker would, on both lab layouts
//! (one shared network; a private underlay besides the public uplink):
//!
//! - VXLAN spoofed from the internet host with every node's address as outer source, to every
//!   node address, for every selected pod, and every VNI;
//! - VXLAN from pods (selected or not, an ordinary UDP socket) to every node address;
//! - injection into pods through the tunnel from cluster nodes: wrong VNI, wrong gateway, no
//!   flow, unselected pod, a pod on the gateway node;
//! - unsolicited packets from the internet to the egress IP on every NAT port in use;
//! - frames that are not IPv4 through the tunnel.
//!
//! Every attack is checked at both ends (nothing leaves as the egress IP: a capture on the
//! internet host; nothing is delivered: captures in the pods) and on the drop counters, and
//! every test has its control: the legitimate packet, or the well-formed forgery sent the
//! trusted way, gets through.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use egress_tests::{
    agent::{start_all, Agent},
    attack::{
        bound_udp, mac_of, recv_any, send_spoofed_udp, send_udp, vxlan_ipv4, vxlan_payload,
        Capture, Inner,
    },
    config::{mail_policy_id, write_config, ConfigSpec},
    lab::{exec, require_root, Cni, Lab, LabSpec, Underlay, EXTRA_EGRESS_IP, INTERNET_HOST},
    net::{udp_roundtrip, UdpEcho},
};

const VXLAN_PORT: u16 = egress_common::config::VXLAN_PORT;
/// The selected pods, one per node; `pod-<node>-1` are not selected.
const SELECTED: [&str; 3] = ["pod-gateway-0", "pod-worker1-0", "pod-worker2-0"];
/// A fake DNS server's answer, the classic injection.
const FAKE_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 66), 53);
/// Where pods listen in these tests.
const POD_PORT: u16 = 5353;
const SETTLE: Duration = Duration::from_millis(800);

struct Bed {
    lab: Lab,
    agents: BTreeMap<String, Agent>,
    vni: u32,
    echo: UdpEcho,
}

fn bed(underlay: Underlay, cni: Cni) -> Bed {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 2,
        underlay,
        cni,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &SELECTED,
            ..ConfigSpec::default()
        },
    );
    let agents = start_all(&lab, &cfg);
    let vni = mail_policy_id(&agents["gateway"]) as u32;
    assert_tunnel_protected(&lab, &agents["gateway"], underlay);
    let echo = UdpEcho::start(&lab.internet().ns, INTERNET_HOST, 53);
    let b = Bed {
        lab,
        agents,
        vni,
        echo,
    };
    b.control();
    b
}

/// The gateway says its tunnel is protected, and why: a private underlay, or (one shared
/// network) peers on its own segment, whose MACs are checked. In the status and in /metrics.
fn assert_tunnel_protected(lab: &Lab, gw: &Agent, underlay: Underlay) {
    let path = gw.state_dir.join("policies.json");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("status file")).expect("json");
    let c = st["mail"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "TunnelProtected"))
        .unwrap_or_else(|| panic!("no TunnelProtected condition: {st:#}"));
    let reason = match underlay {
        Underlay::Shared => "OnLinkPeers",
        Underlay::Private => "PrivateUnderlay",
    };
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&"True".into(), &reason.into()),
        "{c:#}"
    );
    let m = exec(
        &lab.gateway().ns,
        &["curl", "-sf", "http://127.0.0.1:9479/metrics"],
    )
    .expect("scrape the gateway agent");
    assert!(m.contains("\negress_tunnel_protected 1\n"), "{m}");
}

impl Bed {
    /// The egress IP: the gateway's public address.
    fn egress(&self) -> Ipv4Addr {
        self.lab.gateway().external_ip
    }

    /// Every selected pod reaches the internet host as the egress IP, and the reply comes
    /// back: the legitimate path works.
    fn control(&self) {
        for p in SELECTED {
            let ns = &self.lab.pod(p).ns;
            let reply = udp_roundtrip(ns, self.echo.addr, b"control")
                .unwrap_or_else(|e| panic!("{p}: the legitimate path: {e}"));
            assert_eq!(reply, b"control");
            let seen = self.echo.next_peer();
            assert_eq!(
                seen.ip(),
                std::net::IpAddr::V4(self.egress()),
                "{p} leaves as"
            );
        }
    }

    /// Sum of drop counters over every node.
    fn drops(&self, reasons: &[&str]) -> u64 {
        self.agents
            .values()
            .map(|a| reasons.iter().map(|r| a.drops(r)).sum::<u64>())
            .sum()
    }

    /// Every address of every node, and the extra egress address on the gateway.
    fn node_addresses(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .lab
            .nodes()
            .iter()
            .flat_map(|n| [n.underlay_ip, n.external_ip])
            .collect();
        v.push(EXTRA_EGRESS_IP);
        v.sort();
        v.dedup();
        v
    }

    /// The MAC of `node`'s tunnel device (what a forged inner frame is addressed to).
    fn egw0_mac(&self, node: &str) -> [u8; 6] {
        mac_of(&self.lab.node(node).ns, "egw0")
    }

    /// Captures of everything that leaves as the egress IP (on the internet host) and of every
    /// UDP datagram into any pod (not what the pods send themselves).
    fn watch(&self) -> Watch {
        let internet = Capture::start(
            &self.lab.internet().ns,
            "eth0",
            // The attacker's own spoofed tunnel datagrams leave from there too: not those.
            &format!(
                "src host {} and not udp dst port {VXLAN_PORT}",
                self.egress()
            ),
        );
        let pods = self
            .lab
            .pods()
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Capture::start(&p.ns, "eth0", &format!("udp and dst host {}", p.ip)),
                )
            })
            .collect();
        Watch { internet, pods }
    }
}

/// What reached the internet as the egress IP and what reached the pods during an attack.
struct Watch {
    internet: Capture,
    pods: Vec<(String, Capture)>,
}

impl Watch {
    /// Stops the captures and asserts that nothing got through.
    fn assert_nothing_got_through(self, what: &str) {
        let out = self.internet.stop(SETTLE);
        assert!(
            out.is_empty(),
            "{what}: {} packet(s) left as the egress IP: {out:?}",
            out.len()
        );
        for (pod, c) in self.pods {
            let got = c.stop(Duration::ZERO);
            assert!(got.is_empty(), "{what}: delivered into {pod}: {got:?}");
        }
    }
}

// --- spoofed from the internet ----------------------------------------------------------

fn spoofed_vxlan_from_the_internet(underlay: Underlay) {
    let b = bed(underlay, Cni::Routed);
    let inet = b.lab.internet().ns.clone();
    let w = b.watch();
    let before = b.drops(&["unknown_node", "tunnel_mac_mismatch", "tunnel_untrusted"]);
    let mut reachable = 0;
    for target in b.lab.nodes() {
        let mac = b.egw0_mac(&target.name);
        let mut dsts = vec![target.underlay_ip, target.external_ip];
        dsts.dedup();
        for dst in dsts {
            for src_node in b.lab.nodes() {
                let mut srcs = vec![src_node.underlay_ip, src_node.external_ip];
                srcs.dedup();
                for src in srcs {
                    for pod in SELECTED {
                        let pod = b.lab.pod(pod);
                        let me = SocketAddrV4::new(pod.ip, POD_PORT);
                        for frame in [
                            vxlan_ipv4(b.vni, mac, Inner::Udp, me, b.echo.addr),
                            vxlan_ipv4(b.vni, mac, Inner::Udp, FAKE_DNS, me),
                        ] {
                            send_spoofed_udp(
                                &inet,
                                SocketAddrV4::new(src, 40000),
                                SocketAddrV4::new(dst, VXLAN_PORT),
                                &frame,
                            );
                            // The private InternalIPs have no route from the internet. Off
                            // the underlay, the kernel drops a datagram claiming to come from
                            // the node's own address (a martian) before it is decapsulated;
                            // on it, our gate sees it first.
                            let own = src_node.name == target.name;
                            if !dst.is_private() && (underlay == Underlay::Shared || !own) {
                                reachable += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    // Every VNI, with a worker's address to the gateway.
    let worker = b.lab.node("worker1");
    let gw = b.lab.gateway();
    let me = SocketAddrV4::new(b.lab.pod("pod-worker1-0").ip, POD_PORT);
    let gw_mac = b.egw0_mac("gateway");
    for vni in (0..=1024).chain([0xff_ffff]) {
        send_spoofed_udp(
            &inet,
            SocketAddrV4::new(worker.underlay_ip, 40000),
            SocketAddrV4::new(gw.external_ip, VXLAN_PORT),
            &vxlan_ipv4(vni, gw_mac, Inner::Udp, me, b.echo.addr),
        );
        reachable += 1;
    }
    w.assert_nothing_got_through("VXLAN spoofed from the internet");
    assert_eq!(b.echo.peer_within(Duration::ZERO), None);
    let after = b.drops(&["unknown_node", "tunnel_mac_mismatch", "tunnel_untrusted"]);
    assert_eq!(
        after - before,
        reachable,
        "every spoofed datagram that reached a node is a counted drop"
    );

    // Control: the same forgery sent the trusted way (by the pod's node, over the underlay)
    // is translated, so the attacks above were well-formed.
    send_udp(
        &worker.ns,
        SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT),
        &vxlan_ipv4(b.vni, gw_mac, Inner::Udp, me, b.echo.addr),
    );
    let p = b.echo.peer_within(Duration::from_secs(5));
    assert_eq!(p.map(|p| p.ip()), Some(std::net::IpAddr::V4(b.egress())));
    b.control();
}

#[test]
fn spoofed_vxlan_from_the_internet_is_never_translated_nor_delivered_shared() {
    spoofed_vxlan_from_the_internet(Underlay::Shared);
}

#[test]
fn spoofed_vxlan_from_the_internet_is_never_translated_nor_delivered_private() {
    spoofed_vxlan_from_the_internet(Underlay::Private);
}

// --- from pods ----------------------------------------------------------------------------

fn vxlan_from_pods(underlay: Underlay) {
    let b = bed(underlay, Cni::Routed);
    let w = b.watch();
    let reasons = ["tunnel_from_pod", "tunnel_untrusted"];
    let before = b.drops(&reasons);
    let before_pod = b.drops(&["tunnel_from_pod"]);
    let mut sent = 0;
    let mut known = 0;
    let macs: BTreeMap<String, [u8; 6]> = b
        .lab
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), b.egw0_mac(&n.name)))
        .collect();
    for pod in b.lab.pods() {
        // An inner packet from the selected pod of the sender's node, and one into it.
        let victim = b.lab.pod(&format!("pod-{}-0", pod.node));
        let v = SocketAddrV4::new(victim.ip, POD_PORT);
        for dst in b.node_addresses() {
            let owner = b
                .lab
                .nodes()
                .iter()
                .find(|n| n.underlay_ip == dst || n.external_ip == dst)
                .map_or("gateway", |n| n.name.as_str());
            for frame in [
                vxlan_ipv4(b.vni, macs[owner], Inner::Udp, v, b.echo.addr),
                vxlan_ipv4(b.vni, macs[owner], Inner::Udp, FAKE_DNS, v),
            ] {
                send_udp(&pod.ns, SocketAddrV4::new(dst, VXLAN_PORT), &frame);
                sent += 1;
                // Addresses the pod's node knows as node addresses: its own and every
                // node's InternalIP and ExternalIP (the extra egress address only on the
                // gateway, where it is a local address).
                if dst != EXTRA_EGRESS_IP || pod.node == "gateway" {
                    known += 1;
                }
            }
        }
    }
    w.assert_nothing_got_through("VXLAN from pods");
    assert_eq!(b.echo.peer_within(Duration::ZERO), None);
    assert_eq!(
        b.drops(&reasons) - before,
        sent,
        "each is dropped: at the pod's veth, or after decapsulation as untrusted"
    );
    assert_eq!(
        b.drops(&["tunnel_from_pod"]) - before_pod,
        known,
        "every datagram to a known node address is dropped at the pod's veth"
    );
    b.control();
}

#[test]
fn pods_never_reach_the_tunnel_selected_or_not_shared() {
    vxlan_from_pods(Underlay::Shared);
}

#[test]
fn pods_never_reach_the_tunnel_selected_or_not_private() {
    vxlan_from_pods(Underlay::Private);
}

// --- injection into pods from cluster nodes -----------------------------------------------

fn pod_socket(ns: &str) -> UdpSocket {
    bound_udp(ns, POD_PORT, Duration::from_millis(300))
}

/// One injection attempt: `frame` sent by node namespace `from` to `to`, dropped on `node`
/// as `reason`.
struct Injection<'a> {
    what: &'a str,
    from: &'a str,
    to: SocketAddrV4,
    frame: Vec<u8>,
    node: &'a str,
    reason: &'a str,
}

fn injection(underlay: Underlay, cni: Cni) {
    let b = bed(underlay, cni);
    let gw = b.lab.gateway();
    let w1 = b.lab.node("worker1");
    let w2 = b.lab.node("worker2");
    let sel = b.lab.pod("pod-worker1-0");
    let unsel = b.lab.pod("pod-worker1-1");
    let gw_pod = b.lab.pod("pod-gateway-0");
    // The selected pod opens a flow to the internet host and gets its answer.
    let sock = pod_socket(&sel.ns);
    sock.send_to(b"query", b.echo.addr).expect("send");
    assert_eq!(
        recv_any(&sock).as_deref(),
        Some(&b"query"[..]),
        "the answer"
    );
    b.echo.next_peer();
    let gw_sock = pod_socket(&gw_pod.ns);
    let unsel_sock = pod_socket(&unsel.ns);

    let me = SocketAddrV4::new(sel.ip, POD_PORT);
    let (m1, mg) = (b.egw0_mac("worker1"), b.egw0_mac("gateway"));
    let to_w1 = SocketAddrV4::new(w1.underlay_ip, VXLAN_PORT);
    let to_gw = SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT);
    let at = |n: &str, r: &str| b.agents[n].drops(r);
    let cases = vec![
        Injection {
            what: "no flow asked for it (fake DNS)",
            from: &gw.ns,
            to: to_w1,
            frame: vxlan_ipv4(b.vni, m1, Inner::Udp, FAKE_DNS, me),
            node: "worker1",
            reason: "tunnel_unsolicited",
        },
        Injection {
            what: "a TCP SYN nobody asked for",
            from: &gw.ns,
            to: to_w1,
            frame: vxlan_ipv4(b.vni, m1, Inner::TcpSyn, b.echo.addr, me),
            node: "worker1",
            reason: "tunnel_unsolicited",
        },
        Injection {
            what: "the flow's answer with another VNI",
            from: &gw.ns,
            to: to_w1,
            frame: vxlan_ipv4(b.vni + 1, m1, Inner::Udp, b.echo.addr, me),
            node: "worker1",
            reason: "tunnel_wrong_vni",
        },
        Injection {
            what: "the flow's answer from a node that is not its gateway",
            from: &w2.ns,
            to: to_w1,
            frame: vxlan_ipv4(b.vni, m1, Inner::Udp, b.echo.addr, me),
            node: "worker1",
            reason: "tunnel_wrong_gateway",
        },
        Injection {
            what: "into a pod no policy selects",
            from: &gw.ns,
            to: to_w1,
            frame: vxlan_ipv4(
                b.vni,
                m1,
                Inner::Udp,
                b.echo.addr,
                SocketAddrV4::new(unsel.ip, POD_PORT),
            ),
            node: "worker1",
            reason: "tunnel_unselected_pod",
        },
        Injection {
            what: "into the gateway's own pod",
            from: &w1.ns,
            to: to_gw,
            frame: vxlan_ipv4(
                b.vni,
                mg,
                Inner::Udp,
                FAKE_DNS,
                SocketAddrV4::new(gw_pod.ip, POD_PORT),
            ),
            node: "gateway",
            reason: "tunnel_unsolicited",
        },
        Injection {
            what: "into the gateway's own pod with another VNI",
            from: &w1.ns,
            to: to_gw,
            frame: vxlan_ipv4(
                b.vni + 7,
                mg,
                Inner::Udp,
                FAKE_DNS,
                SocketAddrV4::new(gw_pod.ip, POD_PORT),
            ),
            node: "gateway",
            reason: "tunnel_wrong_vni",
        },
    ];
    for Injection {
        what,
        from,
        to,
        frame,
        node,
        reason,
    } in cases
    {
        let w = b.watch();
        let before = at(node, reason);
        send_udp(from, to, &frame);
        w.assert_nothing_got_through(what);
        assert_eq!(at(node, reason), before + 1, "{what}: counted as {reason}");
        for s in [&sock, &gw_sock, &unsel_sock] {
            assert_eq!(recv_any(s), None, "{what}: a pod socket received it");
        }
    }

    // Control: the flow's answer from its gateway with its VNI is delivered (the forgeries
    // above were well-formed; a node is trusted, the rest of the world is not).
    send_udp(
        &gw.ns,
        to_w1,
        &vxlan_ipv4(b.vni, m1, Inner::Udp, b.echo.addr, me),
    );
    assert_eq!(recv_any(&sock).as_deref(), Some(&b"forged?"[..]));
    b.control();
}

#[test]
fn nothing_enters_a_pod_through_the_tunnel_unasked_shared() {
    injection(Underlay::Shared, Cni::Routed);
}

#[test]
fn nothing_enters_a_pod_through_the_tunnel_unasked_private() {
    injection(Underlay::Private, Cni::Routed);
}

/// On a flannel-like bridge: the pods behind `cni0`'s ports, the control's answer delivered
/// through the bridge.
#[test]
fn nothing_enters_a_pod_through_the_tunnel_unasked_bridge() {
    injection(Underlay::Shared, Cni::Bridge);
}

// --- unsolicited packets from the internet to the egress IP -------------------------------

fn unsolicited_to_egress(underlay: Underlay) {
    let b = bed(underlay, Cni::Routed);
    // Every selected pod keeps a flow open.
    let socks: Vec<UdpSocket> = SELECTED
        .iter()
        .map(|p| {
            let s = pod_socket(&b.lab.pod(p).ns);
            s.send_to(b"open", b.echo.addr).expect("send");
            assert_eq!(recv_any(&s).as_deref(), Some(&b"open"[..]), "{p}");
            b.echo.next_peer();
            s
        })
        .collect();
    let flows = b.agents["gateway"].inspect("nat").expect("inspect nat");
    let ports: Vec<u16> = flows
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| {
            f["proto"] == "udp"
                && f["pod"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!(":{POD_PORT}")))
        })
        .map(|f| {
            f["egress"]
                .as_str()
                .and_then(|s| s.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("egress port")
        })
        .collect();
    assert_eq!(ports.len(), SELECTED.len(), "a NAT flow per pod: {flows:#}");
    let w = b.watch();
    let inet = b.lab.internet().ns.clone();
    for port in &ports {
        let to = SocketAddrV4::new(b.egress(), *port);
        // From the right host but another port, from another host with the right port.
        send_udp(&inet, to, b"unsolicited");
        for src in [
            SocketAddrV4::new(INTERNET_HOST, 54),
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 99), 53),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 66), 53),
        ] {
            send_spoofed_udp(&inet, src, to, b"unsolicited");
        }
    }
    let out = w.internet.stop(SETTLE);
    // The gateway host may answer with port unreachable from the egress IP; nothing else.
    assert!(
        out.iter().all(|l| l.contains("ICMP")),
        "only the host's own ICMP answers leave as the egress IP: {out:?}"
    );
    for (pod, c) in w.pods {
        let got = c.stop(Duration::ZERO);
        assert!(got.is_empty(), "delivered into {pod}: {got:?}");
    }
    for s in &socks {
        assert_eq!(recv_any(s), None);
    }
    // Control: the real answers still arrive.
    for s in &socks {
        s.send_to(b"again", b.echo.addr).expect("send");
        assert_eq!(recv_any(s).as_deref(), Some(&b"again"[..]));
    }
}

#[test]
fn unsolicited_packets_to_the_egress_ip_reach_no_pod_shared() {
    unsolicited_to_egress(Underlay::Shared);
}

#[test]
fn unsolicited_packets_to_the_egress_ip_reach_no_pod_private() {
    unsolicited_to_egress(Underlay::Private);
}

// --- frames that are not IPv4 -------------------------------------------------------------

fn non_ipv4(underlay: Underlay) {
    let b = bed(underlay, Cni::Routed);
    let gw = b.lab.gateway();
    let w1 = b.lab.node("worker1");
    let mac = b.egw0_mac("gateway");
    let to = SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT);
    // An ICMPv6 echo request to all nodes, and an ARP request for the gateway's address.
    let mut v6 = Vec::new();
    etherparse::PacketBuilder::ipv6(
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        255,
    )
    .icmpv6_echo_request(1, 1)
    .write(&mut v6, b"ping6")
    .expect("build");
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&egress_tests::attack::FORGED_MAC);
    arp.extend_from_slice(&[10, 244, 1, 77]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&gw.underlay_ip.octets());
    let before = b.agents["gateway"].drops("tunnel_not_ipv4");
    let w = b.watch();
    send_udp(&w1.ns, to, &vxlan_payload(b.vni, mac, 0x86dd, &v6));
    send_udp(&w1.ns, to, &vxlan_payload(b.vni, [0xff; 6], 0x0806, &arp));
    w.assert_nothing_got_through("non-IPv4 frames");
    assert_eq!(b.agents["gateway"].drops("tunnel_not_ipv4"), before + 2);
    // egw0 has no IPv6 at all, so nothing of IPv6 can be handed to the host there.
    let addrs = exec(&gw.ns, &["ip", "-6", "addr", "show", "dev", "egw0"]).expect("ip");
    assert!(addrs.trim().is_empty(), "egw0 has IPv6 addresses: {addrs}");
    // Control: an IPv4 frame from the same node, in the same way, is translated.
    let me = SocketAddrV4::new(b.lab.pod("pod-worker1-0").ip, POD_PORT);
    send_udp(
        &w1.ns,
        to,
        &vxlan_ipv4(b.vni, mac, Inner::Udp, me, b.echo.addr),
    );
    let p = b.echo.peer_within(Duration::from_secs(5));
    assert_eq!(p.map(|p| p.ip()), Some(std::net::IpAddr::V4(b.egress())));
}

#[test]
fn frames_that_are_not_ipv4_never_leave_the_tunnel_shared() {
    non_ipv4(Underlay::Shared);
}

#[test]
fn frames_that_are_not_ipv4_never_leave_the_tunnel_private() {
    non_ipv4(Underlay::Private);
}

// --- the underlay interface -----------------------------------------------------------------

/// `tunnel.interface` names the underlay: `egw0` is bound to it and to the InternalIP, and the
/// tunnel works over it. An interface that does not hold the node's InternalIP is refused
/// with a clear error, and the agent never says it is ready.
#[test]
fn the_tunnel_runs_on_the_interface_named_and_one_without_the_internal_ip_is_refused() {
    require_root();
    let lab = Lab::up(&LabSpec {
        underlay: Underlay::Private,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &SELECTED,
            extra: "tunnel:\n  interface: eth1\n",
            ..ConfigSpec::default()
        },
    );
    let mut agents = start_all(&lab, &cfg);
    for n in lab.nodes() {
        let link = exec(&n.ns, &["ip", "-d", "link", "show", "egw0"]).expect("ip link");
        assert!(
            link.contains(&format!("local {}", n.underlay_ip)) && link.contains("dev eth1"),
            "{}: egw0 is not bound to eth1 and {}: {link}",
            n.name,
            n.underlay_ip
        );
    }
    let echo = UdpEcho::start(&lab.internet().ns, INTERNET_HOST, 53);
    for p in SELECTED {
        let reply = udp_roundtrip(&lab.pod(p).ns, echo.addr, b"over eth1").expect(p);
        assert_eq!(reply, b"over eth1");
        assert_eq!(
            echo.next_peer().ip(),
            std::net::IpAddr::V4(lab.gateway().external_ip)
        );
    }

    // The public uplink does not hold the InternalIP: refused, and never ready.
    for a in agents.values_mut() {
        a.kill();
    }
    let bad = write_config(
        &lab,
        &ConfigSpec {
            selected: &SELECTED,
            extra: "tunnel:\n  interface: eth0\n",
            ..ConfigSpec::default()
        },
    );
    let a = Agent::start(&lab, "worker1", &bad).expect("start agent");
    let says = egress_tests::net::eventually(Duration::from_secs(10), || {
        a.log()
            .contains("tunnel.interface eth0 does not hold the node's InternalIP 10.0.0.11")
            .then_some(())
    });
    assert!(says.is_some(), "no clear error: {}", a.log());
    let ready = exec(
        &lab.node("worker1").ns,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9479/readyz",
        ],
    )
    .expect("curl");
    assert_eq!(
        ready.trim(),
        "503",
        "readyz of an agent that cannot find its underlay"
    );
}
