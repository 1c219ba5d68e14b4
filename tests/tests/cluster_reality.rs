//! A real cluster is less kind than the lab (issue 12), with the policy users ship,
//! `destinationCIDRs: [0.0.0.0/0]`: kubelet probes from the node, node addresses and
//! link-local services (a cloud's metadata address) keep the normal path; only the internet
//! goes through the gateway. Connections opened towards a selected pod (a NodePort client from
//! the internet) are answered from the address the client connected to.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use egress_tests::{
    agent::{ready_condition, start_all, time_scale, Agent},
    attack::Capture,
    config::{write_config, ConfigSpec},
    lab::{exec, require_root, Cni, Lab, LabSpec, Underlay, INTERNET_HOST},
    net::{
        bulk_download, bulk_upload, eventually, tcp_roundtrip, udp_roundtrip, BulkServer, TcpEcho,
        UdpEcho,
    },
};

const SELECTED: [&str; 3] = ["pod-gateway-0", "pod-worker1-0", "pod-worker2-0"];
const EVERYWHERE: [&str; 1] = ["0.0.0.0/0"];
/// A link-local service on the node, as clouds serve instance metadata.
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn lab(underlay: Underlay, cni: Cni) -> (Lab, BTreeMap<String, Agent>) {
    require_root();
    let lab = Lab::up(&LabSpec {
        underlay,
        cni,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &SELECTED,
            destinations: Some(&EVERYWHERE),
            ..ConfigSpec::default()
        },
    );
    let agents = start_all(&lab, &cfg);
    (lab, agents)
}

fn probes_and_node_traffic_keep_the_normal_path(underlay: Underlay, cni: Cni) {
    let (lab, agents) = lab(underlay, cni);
    let egress = lab.gateway().external_ip;
    // Control: the internet is reached through the gateway, as the egress IP.
    let inet = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 8025);
    for p in SELECTED {
        tcp_roundtrip(&lab.pod(p).ns, inet.addr, b"mail")
            .unwrap_or_else(|e| panic!("{p} to the internet: {e}"));
        assert_eq!(inet.next_peer().ip(), IpAddr::V4(egress), "{p}");
    }

    // Kubelet's probes: every node connects to its own pod and to the others'.
    let servers: Vec<TcpEcho> = SELECTED
        .iter()
        .map(|p| TcpEcho::start(&lab.pod(p).ns, lab.pod(p).ip, 8080))
        .collect();
    for node in lab.nodes() {
        for (p, s) in SELECTED.iter().zip(&servers) {
            let r = tcp_roundtrip(&node.ns, s.addr, b"GET /healthz");
            assert_eq!(
                r.as_deref().ok(),
                Some(&b"GET /healthz"[..]),
                "a probe from {} to {p}: {r:?}",
                node.name
            );
            let peer = s.next_peer().ip();
            // (The gateway node's own address is the egress IP: nothing to tell there.)
            if node.name != "gateway" {
                assert_ne!(
                    peer,
                    IpAddr::V4(egress),
                    "{p} saw its prober as the egress IP"
                );
            }
        }
    }

    // Selected pods reaching node addresses and link-local services keep the normal path:
    // they arrive with another address than the egress IP, and no node counts a packet of the
    // policy (towards the gateway or translated) meanwhile.
    let before = tx_packets(&agents);
    assert!(before > 0, "the internet control counted its packets");
    let node_servers: Vec<(String, TcpEcho)> = lab
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), TcpEcho::start(&n.ns, n.external_ip, 10250)))
        .collect();
    for p in SELECTED {
        let pod = lab.pod(p);
        for (name, s) in &node_servers {
            tcp_roundtrip(&pod.ns, s.addr, b"node")
                .unwrap_or_else(|e| panic!("{p} to node {name}: {e}"));
            let peer = s.next_peer().ip();
            // The gateway node's address is also the egress IP: a pod on the gateway (whose
            // node masquerades it to that address) or a packet to the gateway cannot be told
            // apart by the source it arrives with; the workers' pods to the workers can.
            if pod.node != "gateway" && name != "gateway" {
                assert_ne!(
                    peer,
                    IpAddr::V4(egress),
                    "{p} to {name} went via the gateway"
                );
            }
        }
    }

    // A link-local service on the pod's node (instance metadata): reached directly, with the
    // pod's own address.
    for p in SELECTED {
        let pod = lab.pod(p);
        let ns = &lab.node(&pod.node).ns;
        exec(
            ns,
            &["ip", "addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
        )
        .expect("metadata address");
        let s = TcpEcho::start(ns, METADATA, 80);
        let r = tcp_roundtrip(&pod.ns, SocketAddrV4::new(METADATA, 80), b"meta");
        assert_eq!(r.as_deref().ok(), Some(&b"meta"[..]), "{p}: {r:?}");
        assert_eq!(s.next_peer().ip(), IpAddr::V4(pod.ip), "{p}");
        drop(s);
        exec(
            ns,
            &["ip", "addr", "del", &format!("{METADATA}/32"), "dev", "lo"],
        )
        .expect("metadata address");
    }
    assert_eq!(
        tx_packets(&agents),
        before,
        "node and link-local traffic went through the gateway"
    );
}

/// Packets of every policy sent towards the gateway or translated, over all nodes.
fn tx_packets(agents: &BTreeMap<String, Agent>) -> u64 {
    agents
        .values()
        .map(|a| {
            let c = a.inspect("counters").expect("inspect counters");
            c["policies"]
                .as_object()
                .map(|ps| {
                    ps.values()
                        .filter_map(|p| p["tx_packets"].as_u64())
                        .sum::<u64>()
                })
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn probes_node_addresses_and_link_local_keep_the_normal_path_shared() {
    probes_and_node_traffic_keep_the_normal_path(Underlay::Shared, Cni::Routed);
}

#[test]
fn probes_node_addresses_and_link_local_keep_the_normal_path_private() {
    probes_and_node_traffic_keep_the_normal_path(Underlay::Private, Cni::Routed);
}

#[test]
fn probes_node_addresses_and_link_local_keep_the_normal_path_bridge() {
    probes_and_node_traffic_keep_the_normal_path(Underlay::Shared, Cni::Bridge);
}

/// A NodePort (externalTrafficPolicy Local: the client's address kept) on `node`: its
/// ExternalIP's `port` DNATed to `pod`:`pod_port`, TCP and UDP, as kube-proxy does.
fn node_port(lab: &Lab, node: &str, port: u16, pod: Ipv4Addr, pod_port: u16) {
    let n = lab.node(node);
    let rule = |proto: &str| {
        format!(
            "add rule ip nodeport prerouting ip daddr {} {proto} dport {port} dnat to {pod}:{pod_port}",
            n.external_ip
        )
    };
    for cmd in [
        "add table ip nodeport".to_owned(),
        "add chain ip nodeport prerouting { type nat hook prerouting priority dstnat; }".to_owned(),
        rule("tcp"),
        rule("udp"),
    ] {
        let args: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        exec(&n.ns, &args).unwrap_or_else(|e| panic!("{node}: nft {cmd}: {e}"));
    }
}

/// An internet client connects to a selected pod through a NodePort on a worker and on the
/// gateway: the pod's answers keep the normal path (un-DNATed by the node), so the client
/// hears back from the address it connected to; with the egress IP as their source it would
/// hear nothing. The pod's own connections still leave as the egress IP.
fn inbound_connections_are_answered_from_the_address_the_client_connected_to(
    underlay: Underlay,
    cni: Cni,
) {
    let (lab, agents) = lab(underlay, cni);
    let egress = lab.gateway().external_ip;
    let inet = &lab.internet().ns;
    let out = TcpEcho::start(inet, INTERNET_HOST, 8025);
    for (node, pod) in [("worker1", "pod-worker1-0"), ("gateway", "pod-gateway-0")] {
        let pod_ip = lab.pod(pod).ip;
        let tcp = TcpEcho::start(&lab.pod(pod).ns, pod_ip, 2525);
        let udp = UdpEcho::start(&lab.pod(pod).ns, pod_ip, 5353);
        node_port(&lab, node, 30025, pod_ip, 2525);
        node_port(&lab, node, 30053, pod_ip, 5353);
        let external = lab.node(node).external_ip;
        let before = tx_packets(&agents);
        for i in 0..3 {
            let r = tcp_roundtrip(inet, SocketAddrV4::new(external, 30025), b"EHLO client");
            assert_eq!(
                r.as_deref().ok(),
                Some(&b"EHLO client"[..]),
                "TCP {i} to {pod} through {node}'s NodePort: {r:?}"
            );
            assert_eq!(tcp.next_peer().ip(), IpAddr::V4(INTERNET_HOST), "{pod}");
            let r = udp_roundtrip(inet, SocketAddrV4::new(external, 30053), b"query");
            assert_eq!(
                r.as_deref().ok(),
                Some(&b"query"[..]),
                "UDP {i} to {pod} through {node}'s NodePort: {r:?}"
            );
            assert_eq!(udp.next_peer().ip(), IpAddr::V4(INTERNET_HOST), "{pod}");
        }
        assert_eq!(
            tx_packets(&agents),
            before,
            "{pod}'s answers went through the gateway"
        );
        // Control: the pod's own connection to the internet leaves as the egress IP.
        tcp_roundtrip(&lab.pod(pod).ns, out.addr, b"mail").expect("the pod's own connection");
        assert_eq!(out.next_peer().ip(), IpAddr::V4(egress), "{pod}");
        assert!(
            tx_packets(&agents) > before,
            "{pod}: the control went through the gateway"
        );
    }
}

#[test]
fn inbound_connections_are_answered_from_the_node_port_shared() {
    inbound_connections_are_answered_from_the_address_the_client_connected_to(
        Underlay::Shared,
        Cni::Routed,
    );
}

#[test]
fn inbound_connections_are_answered_from_the_node_port_private() {
    inbound_connections_are_answered_from_the_address_the_client_connected_to(
        Underlay::Private,
        Cni::Routed,
    );
}

#[test]
fn inbound_connections_are_answered_from_the_node_port_bridge() {
    inbound_connections_are_answered_from_the_address_the_client_connected_to(
        Underlay::Shared,
        Cni::Bridge,
    );
}

/// The path MTU a pod's connected UDP socket has learned for `to`, after sending one
/// `len`-byte datagram with DF (IP_PMTUDISC_DO) and giving the ICMP answer time to come back.
fn learned_path_mtu(ns: &str, to: SocketAddrV4, len: usize) -> i32 {
    use std::os::fd::AsRawFd;
    egress_tests::lab::in_netns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let fd = s.as_raw_fd();
        let set = libc::IP_PMTUDISC_DO;
        // SAFETY: a valid socket and an int option.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const set).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        s.connect(to).expect("connect");
        let _ = s.send(&vec![0x5a; len]);
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.send(&vec![0x5a; len]);
        let mut mtu: libc::c_int = 0;
        let mut l = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, an int buffer and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU,
                (&raw mut mtu).cast(),
                &raw mut l,
            )
        };
        assert_eq!(rc, 0, "IP_MTU");
        mtu
    })
}

/// A narrow uplink past the gateway (MTU 1400 on both ends of the link, as behind PPPoE or a
/// cloud's overlay): a pod's datagram with DF that does not fit is answered with
/// fragmentation-needed naming 1400, from the gateway, to a gateway-local pod directly and
/// to a worker's pod through the tunnel; the pods learn the path MTU. Bulk TCP both ways
/// still arrives intact (the SYN and SYN-ACK clamped at the gateway). Without the check the
/// datagram would die silently at the narrow link and the pods would keep their 1500.
#[test]
fn a_narrow_uplink_past_the_gateway_is_learned_by_the_pods() {
    require_root();
    // The tunnel on its own segment: only the internet side is narrow.
    let lab = Lab::up(&LabSpec {
        underlay: Underlay::Private,
        ..LabSpec::default()
    })
    .expect("lab up");
    let gw = lab.gateway();
    exec(&gw.ns, &["ip", "link", "set", &gw.uplink, "mtu", "1400"]).expect("narrow uplink");
    // The isp's end of the gateway's link: find the interface that reaches the gateway.
    let route = exec(
        &lab.isp().ns,
        &["ip", "-o", "route", "get", &gw.external_ip.to_string()],
    )
    .expect("route");
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("dev")
        .to_owned();
    exec(&lab.isp().ns, &["ip", "link", "set", &dev, "mtu", "1400"]).expect("narrow isp side");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &SELECTED,
            destinations: Some(&EVERYWHERE),
            ..ConfigSpec::default()
        },
    );
    let _agents = start_all(&lab, &cfg);
    let to = SocketAddrV4::new(INTERNET_HOST, 9999);
    for p in ["pod-gateway-0", "pod-worker1-0"] {
        // Control: a datagram that fits teaches nothing.
        assert!(
            learned_path_mtu(&lab.pod(p).ns, to, 1300) > 1400,
            "{p}: control"
        );
        assert_eq!(learned_path_mtu(&lab.pod(p).ns, to, 1420), 1400, "{p}");
    }
    let server = BulkServer::start(&lab.internet().ns, INTERNET_HOST, 9100);
    for p in ["pod-gateway-0", "pod-worker1-0"] {
        let ns = &lab.pod(p).ns;
        let up = bulk_upload(ns, server.addr, 2 << 20, None);
        assert!(
            matches!(up, Ok(true)),
            "{p}: upload through a 1400-byte uplink: {up:?}"
        );
        let down = bulk_download(ns, server.addr, 2 << 20);
        assert!(
            matches!(down, Ok(None)),
            "{p}: download through a 1400-byte uplink: {down:?}"
        );
    }
}

/// The egress IP on a second NIC of the gateway (its own link to the isp, with policy routing
/// from that address, as a cloud's extra interface is set up): translated packets of a
/// gateway-local pod and of a worker's pod leave through that NIC as the egress IP, never
/// through the uplink, and the replies, arriving there, reach the pods. The NIC's own MTU
/// (narrower than the uplink's) is what the pods learn.
#[test]
fn an_egress_ip_on_a_second_nic_is_used_end_to_end() {
    second_nic(false);
}

/// The same with `gateway.interface: eth2` instead of the address.
#[test]
fn a_gateway_interface_on_a_second_nic_is_used_end_to_end() {
    second_nic(true);
}

fn second_nic(by_interface: bool) {
    require_root();
    let lab = Lab::up(&LabSpec {
        underlay: Underlay::Private,
        ..LabSpec::default()
    })
    .expect("lab up");
    let gw = lab.gateway();
    let isp = &lab.isp().ns;
    let second = Ipv4Addr::new(203, 0, 113, 10);
    let sh = |ns: &str, cmd: &str| {
        let args: Vec<&str> = cmd.split(' ').collect();
        exec(ns, &args).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    };
    sh(
        isp,
        &format!(
            "ip link add gwnic2 type veth peer name eth2 netns {}",
            gw.ns
        ),
    );
    sh(isp, "ip addr add 203.0.113.1/24 dev gwnic2");
    sh(isp, "ip link set gwnic2 mtu 1300 up");
    sh(&gw.ns, &format!("ip addr add {second}/24 dev eth2"));
    sh(&gw.ns, "ip link set eth2 mtu 1300 up");
    sh(
        &gw.ns,
        "ip route add default via 203.0.113.1 dev eth2 table 100",
    );
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &SELECTED,
            destinations: Some(&EVERYWHERE),
            egress_ip: Some(second),
            interface: by_interface.then_some("eth2"),
            ..ConfigSpec::default()
        },
    );
    let agents = start_all(&lab, &cfg);
    let gw_agent = agents.get(&gw.name).expect("the gateway's agent");
    // Without policy routing the kernel sends the egress IP's packets out of the uplink while
    // their replies would come to eth2: the policy is refused, not half-working.
    let t = Duration::from_secs(20) * time_scale();
    let refused = eventually(t, || {
        ready_condition(&gw_agent.state_dir).filter(|(s, _, _)| s == "False")
    });
    let (_, reason, message) =
        refused.unwrap_or_else(|| panic!("not refused; log:\n{}", gw_agent.log()));
    assert_eq!(reason, "EgressIPUnrouted", "{message}");
    assert!(
        message.contains("eth2") && message.contains("eth0"),
        "{message}"
    );
    // The rule the message asks for: the agent sees it and takes the policy.
    sh(&gw.ns, &format!("ip rule add from {second} lookup 100"));
    let ready = eventually(t, || {
        ready_condition(&gw_agent.state_dir).filter(|(s, _, _)| s == "True")
    });
    assert!(ready.is_some(), "not taken; log:\n{}", gw_agent.log());
    let policies = gw_agent.inspect("policies").expect("inspect policies");
    let via = policies
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["action"] == "gateway"))
        .unwrap_or_else(|| panic!("{policies:#}"));
    assert_eq!(
        (
            via["egress_ip"].as_str(),
            via["egress_interface"].as_str(),
            via["egress_mtu"].as_u64()
        ),
        (Some("203.0.113.10"), Some("eth2"), Some(1300)),
        "{via:#}"
    );
    let inet = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 8025);
    let filter = format!("tcp and host {} and port 8025", INTERNET_HOST);
    for p in ["pod-gateway-0", "pod-worker1-0"] {
        let nic2 = Capture::start(&gw.ns, "eth2", &filter);
        let uplink = Capture::start(&gw.ns, &gw.uplink, &filter);
        let r = tcp_roundtrip(&lab.pod(p).ns, inet.addr, b"mail from a second NIC");
        assert_eq!(
            r.as_deref().ok(),
            Some(&b"mail from a second NIC"[..]),
            "{p}: {r:?}"
        );
        assert_eq!(inet.next_peer().ip(), IpAddr::V4(second), "{p}");
        let (nic2, uplink) = (
            nic2.stop(Duration::from_millis(300)),
            uplink.stop(Duration::ZERO),
        );
        let out = format!("{second}.");
        assert!(
            nic2.iter().any(|l| l.contains(&format!("IP {out}"))),
            "{p}: nothing left through eth2 as {second}: {nic2:?}"
        );
        assert!(
            nic2.iter().any(|l| l.contains(&format!("> {out}"))),
            "{p}: no reply arrived on eth2: {nic2:?}"
        );
        assert!(uplink.is_empty(), "{p}: the uplink carried {uplink:?}");
    }
    // The second NIC's MTU, not the uplink's, is the one past the gateway.
    let to = SocketAddrV4::new(INTERNET_HOST, 9999);
    for p in ["pod-gateway-0", "pod-worker1-0"] {
        assert!(
            learned_path_mtu(&lab.pod(p).ns, to, 1200) > 1300,
            "{p}: control"
        );
        assert_eq!(learned_path_mtu(&lab.pod(p).ns, to, 1350), 1300, "{p}");
    }
}
