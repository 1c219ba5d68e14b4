//! The adversary's tests (after issue 11 and issue 12 point 2): attacks on the tunnel's trust
//! and on what leaves as the egress IP, tried in the lab with the agents running, each with
//! its control case. An attack that is stopped is an ordinary test; one that gets through is
//! a test of the behaviour we want, `#[ignore = "hole: ..."]`, so that it documents the hole
//! (run it with `--ignored` to see it fail) without failing CI.
//!
//! Holes (ignored):
//! - pods reach another node's tunnel port through a Service-like DNAT in their node
//!   (`egw_from_pod` sees the Service address, the node masquerades the datagram to its own
//!   InternalIP, out of its underlay with its own MAC, and the peer's gate trusts it): an
//!   unselected pod makes the gateway send as the egress IP; a pod on the gateway node injects
//!   answers into a worker's selected pod's open flows; the same through another node's
//!   NodePort (DNAT and masquerade there);
//! - a pod (CAP_NET_RAW) sends with the egress IP as its source address, on the normal path;
//! - with the egress IP on the gateway's own address (the default), the gateway node's
//!   unselected pods leave as the egress IP through the CNI's masquerade;
//! - a selected pod evicts its neighbours' flows from `EGW_FLOWS4` (LRU, shared by a node's
//!   pods; the gateway's `EGW_NAT4` is no longer an LRU and holds, see its test);
//! - (minor) a pod's forged ARP for a peer's address wakes the agent's reconciler each time.
//!
//! Stopped: fragmented spoofed VXLAN from the internet (only a later fragment; a trusted first
//! fragment completed by a spoofed one; a spoofed first fragment completed by a trusted one);
//! pods with `SO_MARK` set to the trust mark sending VXLAN to broadcast addresses and the pods'
//! gateway address; a pod spoofing the egress IP on the gateway node; a pod's forged ARP does
//! not change the MAC the gate checks. And the captures the attacks rely on are checked too.

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
        bound_udp, mac_of, recv_any, send_raw_ipv4, send_spoofed_udp, send_udp, vxlan_ipv4,
        Capture, Inner,
    },
    config::{mail_policy_id, write_config, ConfigSpec},
    lab::{exec, in_netns, require_root, Lab, LabSpec, Underlay, INTERNET_HOST},
    net::{udp_roundtrip, UdpEcho},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const VXLAN_PORT: u16 = egress_common::config::VXLAN_PORT;
/// Where pods listen in these tests.
const POD_PORT: u16 = 5353;
/// A fake DNS server's answer.
const FAKE_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 66), 53);
/// A Service address (ClusterIP) the attacker's DNAT hangs on.
const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53);
const SETTLE: Duration = Duration::from_millis(800);
/// The tunnel's trust mark (the default `tunnel.trustMark`).
const TRUST_MARK: u32 = 0x1000;

struct Bed {
    lab: Lab,
    agents: BTreeMap<String, Agent>,
    vni: u32,
    echo: UdpEcho,
    egress: Ipv4Addr,
}

/// A lab with two pods per node and the agents running; `selected` pods are the policy's.
fn bed(underlay: Underlay, selected: &[&str]) -> Bed {
    bed_with(underlay, selected, None)
}

/// `bed` with the policy's egress IP (default: the gateway's public address).
fn bed_with(underlay: Underlay, selected: &[&str], egress_ip: Option<Ipv4Addr>) -> Bed {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 2,
        underlay,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected,
            egress_ip,
            ..ConfigSpec::default()
        },
    );
    let agents = start_all(&lab, &cfg);
    let vni = mail_policy_id(&agents["gateway"]) as u32;
    let echo = UdpEcho::start(&lab.internet().ns, INTERNET_HOST, 53);
    let egress = egress_ip.unwrap_or(lab.gateway().external_ip);
    let b = Bed {
        lab,
        agents,
        vni,
        echo,
        egress,
    };
    for p in selected {
        b.control(p);
    }
    b
}

impl Bed {
    fn egress(&self) -> Ipv4Addr {
        self.egress
    }

    /// The selected pod `pod` reaches the internet host as the egress IP, and back.
    fn control(&self, pod: &str) {
        let ns = &self.lab.pod(pod).ns;
        let reply = udp_roundtrip(ns, self.echo.addr, b"control")
            .unwrap_or_else(|e| panic!("{pod}: the legitimate path: {e}"));
        assert_eq!(reply, b"control");
        assert_eq!(
            self.echo.next_peer().ip(),
            std::net::IpAddr::V4(self.egress()),
            "{pod} leaves as"
        );
    }

    fn drops(&self, reasons: &[&str]) -> u64 {
        self.agents
            .values()
            .map(|a| reasons.iter().map(|r| a.drops(r)).sum::<u64>())
            .sum()
    }

    fn egw0_mac(&self, node: &str) -> [u8; 6] {
        mac_of(&self.lab.node(node).ns, "egw0")
    }

    /// Everything that leaves as the egress IP (on the internet host), but the attacker's own
    /// spoofed datagrams to the tunnel port.
    fn egress_capture(&self) -> Capture {
        Capture::start(
            &self.lab.internet().ns,
            "eth0",
            &format!(
                "src host {} and not udp dst port {VXLAN_PORT}",
                self.egress()
            ),
        )
    }

    /// Every UDP datagram into `pod`.
    fn pod_capture(&self, pod: &str) -> Capture {
        let p = self.lab.pod(pod);
        Capture::start(&p.ns, "eth0", &format!("udp and dst host {}", p.ip))
    }
}

/// Loads nftables `rules` into namespace `ns`.
fn nft(ns: &str, rules: &str) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "egw-adversary-{}-{}.nft",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, rules).expect("write rules");
    let r = exec(ns, &["nft", "-f", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    r.unwrap_or_else(|e| panic!("nft in {ns}: {e:#}"));
}

/// A Service in node `ns`, as kube-proxy programs one whose endpoint is `to` (a Service
/// without selector and a hand-written EndpointSlice, or one selecting hostNetwork pods with
/// targetPort 4789), plus the masquerade of pod traffic to any address outside the pod
/// network whatever the interface (Calico's natOutgoing, flannel's `! -d 10.244.0.0/16`).
fn service_to(ns: &str, to: SocketAddrV4) {
    dnat(ns, SERVICE, to);
}

/// DNAT of UDP to `from` into `to` in node `ns`, and the masquerade of everything it forwards
/// (kube-proxy masquerades NodePort traffic with `externalTrafficPolicy: Cluster`; Calico and
/// flannel masquerade pod traffic to any address outside the pod network).
fn dnat(ns: &str, from: SocketAddrV4, to: SocketAddrV4) {
    nft(
        ns,
        &format!(
            "table ip attack_svc {{\n\
               chain prerouting {{\n\
                 type nat hook prerouting priority dstnat; policy accept;\n\
                 ip daddr {} udp dport {} dnat to {to}\n\
               }}\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 ct status dnat masquerade\n\
                 ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade\n\
               }}\n\
             }}\n",
            from.ip(),
            from.port()
        ),
    );
}

fn pod_socket(ns: &str) -> UdpSocket {
    bound_udp(ns, POD_PORT, Duration::from_millis(500))
}

// --- pods to the tunnel through a Service (DNAT) -------------------------------------------

/// An unselected pod on worker1 sends a VXLAN datagram to a Service address whose endpoint
/// is the gateway's tunnel port. `egw_from_pod` sees the Service address and port, so
/// `tunnel_from_pod` does not apply; the node DNATs it to the gateway's InternalIP and
/// masquerades it to its own InternalIP, out of its underlay interface with its own MAC: the
/// gateway's gate sees a peer node, marks it, and the inner packet (with the selected pod's
/// source) is translated and leaves as the egress IP.
fn pod_through_service_to_gateway(underlay: Underlay) {
    let b = bed(underlay, &["pod-worker1-0"]);
    let gw = b.lab.gateway();
    let w1 = b.lab.node("worker1");
    let attacker = b.lab.pod("pod-worker1-1");
    let victim = SocketAddrV4::new(b.lab.pod("pod-worker1-0").ip, POD_PORT);
    let frame = vxlan_ipv4(
        b.vni,
        b.egw0_mac("gateway"),
        Inner::Udp,
        victim,
        b.echo.addr,
    );

    // Control: straight to the gateway's tunnel port, the pod's veth drops it.
    let before = b.drops(&["tunnel_from_pod"]);
    let w = b.egress_capture();
    send_udp(
        &attacker.ns,
        SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT),
        &frame,
    );
    let out = w.stop(SETTLE);
    assert!(out.is_empty(), "straight to the tunnel port: {out:?}");
    assert_eq!(b.drops(&["tunnel_from_pod"]), before + 1);

    // The attack: through the Service. Dropped where it leaves worker1's underlay.
    service_to(&w1.ns, SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT));
    let not_ours = b.agents["worker1"].drops("tunnel_not_ours");
    let w = b.egress_capture();
    send_udp(&attacker.ns, SERVICE, &frame);
    let out = w.stop(SETTLE);
    let got = b.echo.peer_within(Duration::ZERO);
    assert!(
        out.is_empty() && got.is_none(),
        "an unselected pod made the egress IP send a packet in a selected pod's name, through \
         a Service to the gateway's tunnel port: {out:?} (the internet host got one from \
         {got:?})"
    );
    assert_eq!(b.agents["worker1"].drops("tunnel_not_ours"), not_ours + 1);
    b.control("pod-worker1-0");
}

#[test]
fn pods_reach_the_tunnel_through_a_service_shared() {
    pod_through_service_to_gateway(Underlay::Shared);
}

#[test]
fn pods_reach_the_tunnel_through_a_service_private() {
    pod_through_service_to_gateway(Underlay::Private);
}

/// The same through another node: an unselected pod of worker1 sends to a NodePort of
/// worker2 (not the tunnel port, so neither `egw_from_pod` nor worker2's gate looks at it),
/// worker2 DNATs it to the gateway's tunnel port and masquerades it to its own InternalIP: the
/// gateway trusts it as worker2's, and translates an inner packet of worker2's selected pod.
fn pod_through_nodeport_to_gateway(underlay: Underlay) {
    let b = bed(underlay, &["pod-worker2-0"]);
    let gw = b.lab.gateway();
    let w2 = b.lab.node("worker2");
    let attacker = b.lab.pod("pod-worker1-1");
    let victim = SocketAddrV4::new(b.lab.pod("pod-worker2-0").ip, POD_PORT);
    let frame = vxlan_ipv4(
        b.vni,
        b.egw0_mac("gateway"),
        Inner::Udp,
        victim,
        b.echo.addr,
    );
    let nodeport = SocketAddrV4::new(w2.underlay_ip, 30053);
    dnat(
        &w2.ns,
        nodeport,
        SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT),
    );
    let not_ours = b.agents["worker2"].drops("tunnel_not_ours");
    let w = b.egress_capture();
    send_udp(&attacker.ns, nodeport, &frame);
    let out = w.stop(SETTLE);
    let got = b.echo.peer_within(Duration::ZERO);
    assert!(
        out.is_empty() && got.is_none(),
        "an unselected pod of worker1 made the egress IP send in the name of worker2's \
         selected pod, through a NodePort of worker2: {out:?} (the internet host got one \
         from {got:?})"
    );
    assert_eq!(b.agents["worker2"].drops("tunnel_not_ours"), not_ours + 1);
    b.control("pod-worker2-0");
}

#[test]
fn pods_reach_the_tunnel_through_another_nodes_nodeport_shared() {
    pod_through_nodeport_to_gateway(Underlay::Shared);
}

#[test]
fn pods_reach_the_tunnel_through_another_nodes_nodeport_private() {
    pod_through_nodeport_to_gateway(Underlay::Private);
}

/// A pod on the gateway node injects, through a Service whose endpoint is worker1's tunnel
/// port, a packet into a selected pod of worker1: the outer source becomes the gateway's
/// InternalIP, the policy's gateway. An unsolicited packet is still dropped (the flow check);
/// an answer to the flow the victim opened (the tuple is all the attacker needs: a DNS query's
/// port, say) is delivered.
fn pod_on_gateway_injects_through_service(underlay: Underlay) {
    let b = bed(underlay, &["pod-worker1-0"]);
    let gw = b.lab.gateway();
    let w1 = b.lab.node("worker1");
    let attacker = b.lab.pod("pod-gateway-1");
    let sel = b.lab.pod("pod-worker1-0");
    let me = SocketAddrV4::new(sel.ip, POD_PORT);
    let m1 = b.egw0_mac("worker1");
    let sock = pod_socket(&sel.ns);
    sock.send_to(b"query", b.echo.addr).expect("send");
    assert_eq!(recv_any(&sock).as_deref(), Some(&b"query"[..]));
    b.echo.next_peer();

    service_to(&gw.ns, SocketAddrV4::new(w1.underlay_ip, VXLAN_PORT));
    // Both leave the gateway's underlay as its own datagrams would, and are dropped there.
    let before = b.agents["gateway"].drops("tunnel_not_ours");
    let c = b.pod_capture("pod-worker1-0");
    send_udp(
        &attacker.ns,
        SERVICE,
        &vxlan_ipv4(b.vni, m1, Inner::Udp, FAKE_DNS, me),
    );
    let got = c.stop(SETTLE);
    assert!(got.is_empty(), "unsolicited: {got:?}");
    assert_eq!(b.agents["gateway"].drops("tunnel_not_ours"), before + 1);
    assert_eq!(recv_any(&sock), None);

    // The forged answer to the open flow.
    let c = b.pod_capture("pod-worker1-0");
    send_udp(
        &attacker.ns,
        SERVICE,
        &vxlan_ipv4(b.vni, m1, Inner::Udp, b.echo.addr, me),
    );
    let got = c.stop(SETTLE);
    assert!(
        got.is_empty() && recv_any(&sock).is_none(),
        "a pod on the gateway node injected an answer into another node's pod through the \
         tunnel: {got:?}"
    );
    assert_eq!(b.agents["gateway"].drops("tunnel_not_ours"), before + 2);
}

#[test]
fn pod_on_gateway_injects_through_a_service_shared() {
    pod_on_gateway_injects_through_service(Underlay::Shared);
}

#[test]
fn pod_on_gateway_injects_through_a_service_private() {
    pod_on_gateway_injects_through_service(Underlay::Private);
}

// --- a pod with the egress IP as its source ------------------------------------------------

/// An unselected pod of worker1 sends UDP to the internet host with the egress IP as its
/// source (a raw socket: CAP_NET_RAW, which container runtimes grant by default). It is not
/// selected, so the normal path; the node's masquerade only rewrites pod sources, rp_filter is
/// off (as Calico and Cilium need it), and the packet leaves as the egress IP. Control: the
/// same from a pod of the gateway node is dropped by the gateway's kernel (a martian: a local
/// source address arriving from outside).
fn pod_spoofs_the_egress_ip(underlay: Underlay) {
    let b = bed(underlay, &["pod-worker1-0"]);
    let dst = SocketAddrV4::new(INTERNET_HOST, 53);
    let src = SocketAddrV4::new(b.egress(), 25);
    let w = b.egress_capture();
    send_spoofed_udp(&b.lab.pod("pod-gateway-1").ns, src, dst, b"spoofed");
    let out = w.stop(SETTLE);
    assert!(out.is_empty(), "from the gateway node's pod: {out:?}");
    assert_eq!(b.echo.peer_within(Duration::ZERO), None);

    let spoofed = b.agents["worker1"].drops("spoofed");
    let w = b.egress_capture();
    for pod in ["pod-worker1-1", "pod-worker1-0"] {
        send_spoofed_udp(&b.lab.pod(pod).ns, src, dst, b"spoofed");
    }
    let out = w.stop(SETTLE);
    assert!(
        out.is_empty(),
        "pods sent as the egress IP without the gateway: {out:?}"
    );
    assert_eq!(
        b.agents["worker1"].drops("spoofed"),
        spoofed + 2,
        "dropped at the pods' veths"
    );
    b.control("pod-worker1-0");
}

#[test]
fn pods_spoofing_the_egress_ip_never_leave_shared() {
    pod_spoofs_the_egress_ip(Underlay::Shared);
}

#[test]
fn pods_spoofing_the_egress_ip_never_leave_private() {
    pod_spoofs_the_egress_ip(Underlay::Private);
}

// --- the gateway node's other pods ---------------------------------------------------------

/// An unselected pod of the gateway node reaches the internet host on the normal path: the
/// node's (CNI's) masquerade gives it the node's address. When the egress IP is that address
/// (the default, and the README's reference deployment), every pod of the gateway node leaves
/// as the egress IP, selected or not.
fn unselected_gateway_pod(egress_ip: Option<Ipv4Addr>) {
    let b = bed_with(Underlay::Shared, &["pod-worker1-0"], egress_ip);
    for pod in ["pod-gateway-0", "pod-gateway-1", "pod-worker1-1"] {
        let reply = udp_roundtrip(&b.lab.pod(pod).ns, b.echo.addr, b"normal").expect("reply");
        assert_eq!(reply, b"normal");
        let seen = b.echo.next_peer();
        assert_ne!(
            seen.ip(),
            std::net::IpAddr::V4(b.egress()),
            "{pod}, not selected, left as the egress IP"
        );
    }
}

#[test]
#[ignore = "hole: with the egress IP on the gateway's own address (the default), the gateway \
            node's unselected pods leave as the egress IP through the CNI's masquerade"]
fn unselected_pods_of_the_gateway_node_never_leave_as_the_egress_ip_default() {
    unselected_gateway_pod(None);
}

/// Control: a dedicated egress IP (a second address on the gateway's uplink).
#[test]
fn unselected_pods_of_the_gateway_node_never_leave_as_a_dedicated_egress_ip() {
    unselected_gateway_pod(Some(egress_tests::lab::EXTRA_EGRESS_IP));
}

// --- the flow table and the NAT table ------------------------------------------------------

/// `victim` (selected, worker1) subscribes to a server on the internet host that answers
/// later, `attacker` (selected) then opens `flows` new flows of its own (its own source
/// address: no spoofing, a raw socket only for speed), and the server's late answer, which
/// must reach the victim, is checked. Control: the same late answer before the flood arrives.
/// Returns the bed, for what the flood did to the tables.
fn flood(attacker: &str, flows: u32, ttl: u8) -> Bed {
    let b = bed(Underlay::Shared, &["pod-worker1-0", attacker]);
    let victim = b.lab.pod("pod-worker1-0");
    let attacker = b.lab.pod(attacker);
    let server = in_netns(&b.lab.internet().ns, || {
        let s = UdpSocket::bind((INTERNET_HOST, 7000)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    });
    let sock = pod_socket(&victim.ns);
    sock.send_to(b"subscribe", SocketAddrV4::new(INTERNET_HOST, 7000))
        .expect("send");
    let mut buf = [0u8; 64];
    let (_, nat) = server.recv_from(&mut buf).expect("the subscription");
    // Control: a late answer arrives.
    server.send_to(b"late-1", nat).expect("answer");
    assert_eq!(recv_any(&sock).as_deref(), Some(&b"late-1"[..]));

    let unsolicited = b.agents["worker1"].drops("tunnel_unsolicited");
    let a_ip = attacker.ip;
    in_netns(&attacker.ns, move || {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket");
        s.set_header_included_v4(true).expect("IP_HDRINCL");
        let to = SockAddr::from(SocketAddrV4::new(INTERNET_HOST, 0));
        for i in 0..flows {
            // At most 4000 flows per remote port: the gateway has 4536 egress ports per
            // remote address and port (`nat.portRange`).
            let sport = 20_000 + (i % 4000) as u16;
            let dport = 1000 + (i / 4000) as u16;
            let mut pkt = Vec::new();
            etherparse::PacketBuilder::ipv4(a_ip.octets(), INTERNET_HOST.octets(), ttl)
                .udp(sport, dport)
                .write(&mut pkt, b"x")
                .expect("build");
            s.send_to(&pkt, &to).expect("send");
            // Paced: a burst overflows the receiving CPU's backlog, and the kernel drops
            // the rest before any program sees it.
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let nat_entries = b.agents["gateway"]
        .inspect("nat")
        .map(|v| v.as_array().map_or(0, Vec::len))
        .unwrap_or(0);
    let victim_nat = b.agents["gateway"]
        .inspect("nat")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|rows| {
            rows.iter()
                .any(|r| r["pod"].as_str() == Some(&format!("{}:{POD_PORT}", victim.ip)))
        });
    server.send_to(b"late-2", nat).expect("answer");
    let got = recv_any(&sock);
    let dropped = b.agents["worker1"].drops("tunnel_unsolicited") - unsolicited;
    eprintln!(
        "after {flows} flows: gateway NAT rows {nat_entries}, victim's NAT entry there: \
         {victim_nat}, answers dropped on worker1 as unsolicited: {dropped}"
    );
    assert_eq!(
        got.as_deref(),
        Some(&b"late-2"[..]),
        "the victim's flow was evicted (its NAT entry on the gateway still there: \
         {victim_nat}; dropped on worker1 as unsolicited: {dropped})"
    );
    // And the victim's next datagram leaves with the same egress address and port: its
    // mapping survived (a new one would break the flow for the server, a TCP connection
    // mid-stream).
    sock.send_to(b"again", SocketAddrV4::new(INTERNET_HOST, 7000))
        .expect("send");
    let (_, seen) = server.recv_from(&mut buf).expect("the next datagram");
    assert_eq!(seen, nat, "the victim's mapping changed under the flood");
    b
}

/// A selected pod of the same node opens more flows than `EGW_FLOWS4` (65536, LRU, shared by
/// the node's pods) holds. With TTL 2: its node records each flow and tunnels it, the gateway
/// answers time-exceeded instead of translating it, so the gateway's NAT table is untouched
/// and only the source node's flow table is flooded.
#[test]
#[ignore = "hole: a selected pod evicts its node's other pods' flows from EGW_FLOWS4 (LRU, \
            shared, 65536) by opening many flows; their answers are then dropped as unsolicited"]
fn a_selected_pod_cannot_evict_its_neighbours_flows() {
    let _ = flood("pod-worker1-1", 300_000, 2);
}

/// A selected pod of another node opens more flows than the gateway's NAT table (262144
/// entries, two per flow, shared by every node's pods) holds. The table is not an LRU: when
/// full it refuses new flows (counted), and the agent evicts the flooding pod's own flows
/// first; the victim's flow keeps its mapping.
#[test]
fn a_selected_pod_cannot_evict_other_nodes_nat_entries() {
    let b = flood("pod-worker2-0", 300_000, 64);
    // Not a friendly lab: the flood did fill the table.
    assert!(
        b.agents["gateway"].drops("nat_table_full") > 0,
        "the flood never filled the gateway's NAT table"
    );
}

// --- fragmented spoofed VXLAN from the internet --------------------------------------------

/// The IPv4 header of a fragment (checksum left to the kernel, IP_HDRINCL fills it in).
fn fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    offset: usize,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    let off = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&[64, 17, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(data);
    h
}

/// The outer UDP datagram (header and VXLAN payload, checksum 0) of a tunnel packet from
/// `src`, in two fragments cut at byte 48 of the IP payload.
fn two_fragments(src: Ipv4Addr, dst: Ipv4Addr, id: u16, vxlan: &[u8]) -> [Vec<u8>; 2] {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&VXLAN_PORT.to_be_bytes());
    udp.extend_from_slice(&((8 + vxlan.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(vxlan);
    assert!(udp.len() > 48);
    [
        fragment(src, dst, id, 0, true, &udp[..48]),
        fragment(src, dst, id, 48, false, &udp[48..]),
    ]
}

/// One network (the internet reaches the InternalIPs): tunnel datagrams to the gateway in
/// fragments, with worker1's address as outer source and an inner packet of its selected pod
/// to the internet host. Neither a spoofed first fragment nor a spoofed later one gets through
/// the gate (MAC check on both), so no datagram is completed by a forged part. Control: both
/// fragments from worker1 itself are reassembled, decapsulated and translated.
#[test]
fn fragmented_spoofed_vxlan_never_completes_a_tunnel_datagram() {
    let b = bed(Underlay::Shared, &["pod-worker1-0"]);
    let gw = b.lab.gateway();
    let w1 = b.lab.node("worker1");
    let inet = b.lab.internet().ns.clone();
    let me = SocketAddrV4::new(b.lab.pod("pod-worker1-0").ip, POD_PORT);
    // An inner packet long enough to span both fragments.
    let mut padded = Vec::new();
    etherparse::PacketBuilder::ipv4(me.ip().octets(), b.echo.addr.ip().octets(), 64)
        .udp(me.port(), b.echo.addr.port())
        .write(&mut padded, &[b'f'; 64])
        .expect("build");
    let vxlan = egress_tests::attack::vxlan_payload(b.vni, b.egw0_mac("gateway"), 0x0800, &padded);
    let (src, dst) = (w1.underlay_ip, gw.underlay_ip);
    let reasons = ["tunnel_mac_mismatch", "unknown_node", "tunnel_untrusted"];

    let cases: [(&str, [&str; 2], u64); 4] = [
        ("both fragments spoofed", [&inet, &inet], 2),
        ("only the later fragment, spoofed", ["", &inet], 1),
        (
            "a trusted first fragment, a spoofed later one",
            [&w1.ns, &inet],
            1,
        ),
        (
            "a spoofed first fragment, a trusted later one",
            [&inet, &w1.ns],
            1,
        ),
    ];
    for (i, (what, senders, dropped)) in cases.into_iter().enumerate() {
        let frags = two_fragments(src, dst, 0x4000 + i as u16, &vxlan);
        let before = b.drops(&reasons);
        let w = b.egress_capture();
        for (from, f) in senders.iter().zip(&frags) {
            if !from.is_empty() {
                send_raw_ipv4(from, dst, f);
            }
        }
        let out = w.stop(SETTLE);
        assert!(out.is_empty(), "{what}: left as the egress IP: {out:?}");
        assert_eq!(b.echo.peer_within(Duration::ZERO), None, "{what}");
        assert_eq!(
            b.drops(&reasons) - before,
            dropped,
            "{what}: each spoofed fragment is a counted drop at the gate"
        );
    }

    // Control: both fragments from worker1.
    let frags = two_fragments(src, dst, 0x4100, &vxlan);
    for f in &frags {
        send_raw_ipv4(&w1.ns, dst, f);
    }
    let p = b.echo.peer_within(Duration::from_secs(5));
    assert_eq!(p.map(|p| p.ip()), Some(std::net::IpAddr::V4(b.egress())));
    b.control("pod-worker1-0");
}

// --- pods with the trust mark, to broadcast and gateway addresses --------------------------

/// A pod (CAP_NET_ADMIN in its own namespace) sets `SO_MARK` to the trust mark and sends
/// VXLAN to addresses its node delivers locally but that are not node addresses: the limited
/// and the subnet broadcast of the node's networks, the pods' gateway 169.254.1.1. The mark is
/// scrubbed when the packet leaves the pod's namespace, so nothing is trusted after
/// decapsulation. Control: the same frame from the pod's node, over the underlay, is
/// translated.
fn marked_pod_to_broadcast(underlay: Underlay) {
    let b = bed(underlay, &["pod-worker1-0"]);
    let w1 = b.lab.node("worker1");
    let gw = b.lab.gateway();
    let attacker = b.lab.pod("pod-worker1-1");
    let me = SocketAddrV4::new(b.lab.pod("pod-worker1-0").ip, POD_PORT);
    let frame = vxlan_ipv4(b.vni, b.egw0_mac("worker1"), Inner::Udp, me, b.echo.addr);
    let gw_frame = vxlan_ipv4(b.vni, b.egw0_mac("gateway"), Inner::Udp, me, b.echo.addr);
    let mut dsts = vec![
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(192, 0, 2, 255),
        Ipv4Addr::new(169, 254, 1, 1),
    ];
    if underlay == Underlay::Private {
        dsts.push(Ipv4Addr::new(10, 0, 0, 255));
    }
    let before = b.drops(&["tunnel_untrusted", "tunnel_from_pod"]);
    let w = b.egress_capture();
    let c = b.pod_capture("pod-worker1-0");
    for dst in &dsts {
        for f in [&frame, &gw_frame] {
            let to = SocketAddrV4::new(*dst, VXLAN_PORT);
            let f = f.clone();
            in_netns(&attacker.ns, move || {
                let s =
                    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
                s.set_mark(TRUST_MARK).expect("SO_MARK");
                s.set_broadcast(true).expect("SO_BROADCAST");
                s.send_to(&f, &SockAddr::from(to)).expect("send");
            });
        }
    }
    let out = w.stop(SETTLE);
    assert!(out.is_empty(), "left as the egress IP: {out:?}");
    let got = c.stop(Duration::ZERO);
    assert!(got.is_empty(), "delivered into the selected pod: {got:?}");
    assert_eq!(b.echo.peer_within(Duration::ZERO), None);
    let dropped = b.drops(&["tunnel_untrusted", "tunnel_from_pod"]) - before;
    eprintln!("marked datagrams to broadcast addresses: {dropped} counted drop(s)");
    assert!(
        dropped >= 2,
        "the broadcasts were decapsulated by the node and dropped as untrusted"
    );

    // Control: the node itself, over the underlay.
    send_udp(
        &w1.ns,
        SocketAddrV4::new(gw.underlay_ip, VXLAN_PORT),
        &gw_frame,
    );
    let p = b.echo.peer_within(Duration::from_secs(5));
    assert_eq!(p.map(|p| p.ip()), Some(std::net::IpAddr::V4(b.egress())));
}

#[test]
fn marked_pod_datagrams_to_local_broadcasts_are_untrusted_shared() {
    marked_pod_to_broadcast(Underlay::Shared);
}

#[test]
fn marked_pod_datagrams_to_local_broadcasts_are_untrusted_private() {
    marked_pod_to_broadcast(Underlay::Private);
}

// --- neighbour events --------------------------------------------------------------------

/// Sends `n` ARP requests from pod namespace `ns` (its `eth0`) for the pods' gateway
/// 169.254.1.1, claiming to come from `sip`, each with another source MAC.
fn arp_from_pod(ns: &str, sip: Ipv4Addr, n: u8) {
    in_netns(ns, move || {
        // SAFETY: plain syscalls with checked results; the buffers outlive them.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ARP as u16).to_be()),
            );
            assert!(fd >= 0, "packet socket");
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex > 0, "eth0");
            for i in 0..n {
                let sha = [0x02, 0xa7, 0x7a, 0xc4, 0, i];
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&sha);
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&sha);
                f.extend_from_slice(&sip.octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&[169, 254, 1, 1]);
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                sa.sll_family = libc::AF_PACKET as u16;
                sa.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
                sa.sll_ifindex = ifindex as i32;
                sa.sll_halen = 6;
                sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
                let r = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert!(r >= 0, "send arp");
                std::thread::sleep(Duration::from_millis(10));
            }
            libc::close(fd);
        }
    });
}

fn reconciles(lab: &Lab, node: &str) -> u64 {
    let m = exec(
        &lab.node(node).ns,
        &["curl", "-sf", "http://127.0.0.1:9479/metrics"],
    )
    .expect("scrape");
    m.lines()
        .filter(|l| l.starts_with("egress_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A pod of the gateway node sends ARP requests claiming a peer node's address with ever new
/// MACs. The kernel keeps them as neighbour entries on the pod's veth (not the underlay), so
/// the MAC the gate checks is untouched: worker1's tunnel keeps working. And the agent, which
/// watches the peers' MACs, is not made to reconcile once per forged ARP.
#[test]
fn forged_arp_from_a_pod_neither_cuts_a_peer_off_nor_drives_the_agent() {
    let b = bed(Underlay::Shared, &["pod-worker1-0"]);
    let w1 = b.lab.node("worker1");
    std::thread::sleep(Duration::from_secs(1));
    let before = reconciles(&b.lab, "gateway");
    arp_from_pod(&b.lab.pod("pod-gateway-1").ns, w1.underlay_ip, 100);
    std::thread::sleep(Duration::from_secs(1));
    let after = reconciles(&b.lab, "gateway");
    let neigh = exec(
        &b.lab.gateway().ns,
        &["ip", "neigh", "show", &w1.underlay_ip.to_string()],
    )
    .expect("ip neigh");
    eprintln!("gateway's neighbour entries for worker1:\n{neigh}");
    // The tunnel from worker1 still works.
    b.control("pod-worker1-0");
    assert!(
        after - before < 10,
        "100 forged ARPs from a pod made the gateway's agent reconcile {} times",
        after - before
    );
}

// --- the captures themselves ---------------------------------------------------------------

/// The captures the attacks rely on do see what they look for: the legitimate path, caught by
/// the egress capture on the internet host and the pod capture.
#[test]
fn the_captures_see_the_legitimate_path() {
    let b = bed(Underlay::Shared, &["pod-worker1-0"]);
    let w = b.egress_capture();
    let c = b.pod_capture("pod-worker1-0");
    b.control("pod-worker1-0");
    let out = w.stop(SETTLE);
    let got = c.stop(Duration::ZERO);
    eprintln!("egress capture: {out:?}\npod capture: {got:?}");
    assert_eq!(out.len(), 1, "the egress capture: {out:?}");
    assert_eq!(got.len(), 1, "the pod capture: {got:?}");
}
