//! Agents on a dual-stack lab (`LabSpec::ipv6`): the IPv4 egress path is exactly what it is on
//! an IPv4-only lab, and IPv6 traffic outside any policy keeps its normal path.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use egress_tests::{
    agent::start_all,
    config::{write_config, ConfigSpec},
    lab::{
        command_in, exec, in_netns, require_root, Cni, Lab, LabSpec, Underlay, INTERNET_HOST,
        INTERNET_HOST6,
    },
    net::{eventually, tcp_roundtrip, udp_roundtrip, TcpEcho, UdpEcho},
};

fn ipv4_egress_on_dual_stack(cni: Cni, underlay: Underlay) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        underlay,
        ipv6: true,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &["pod-worker1-0", "pod-gateway-0"],
            ..ConfigSpec::default()
        },
    );
    let _agents = start_all(&lab, &cfg);
    let inet = &lab.internet().ns;
    let udp = UdpEcho::start(inet, INTERNET_HOST, 53);
    let gateway = IpAddr::V4(lab.gateway().external_ip);
    for pod in ["pod-worker1-0", "pod-gateway-0", "pod-worker2-0"] {
        let p = lab.pod(pod);
        let echo = udp_roundtrip(&p.ns, udp.addr, b"dns?")
            .unwrap_or_else(|e| panic!("{pod}: udp over IPv4: {e}"));
        assert_eq!(echo, b"dns?");
        let want = if pod == "pod-worker2-0" {
            IpAddr::V4(lab.node(&p.node).external_ip)
        } else {
            gateway
        };
        assert_eq!(
            udp.next_peer().ip(),
            want,
            "{pod}: IPv4 UDP leaves from {want} (the gateway's address if selected, else its \
             node's)"
        );
    }
    // An unselected pod's IPv6 (no policy names it) keeps the node's path: neighbour
    // discovery through its veth and the CNI's masquerade are untouched by the agents.
    let tcp6 = TcpEcho::start(inet, INTERNET_HOST6, 25);
    let p = lab.pod("pod-worker2-0");
    let echo = tcp_roundtrip(&p.ns, tcp6.addr, b"EHLO")
        .unwrap_or_else(|e| panic!("{}: tcp over IPv6: {e}", p.name));
    assert_eq!(echo, b"EHLO");
    let node6 = lab.node(&p.node).external_ip6.expect("dual-stack node");
    assert_eq!(tcp6.next_peer().ip(), IpAddr::V6(node6));
    exec(
        &p.ns,
        &["ping", "-c", "1", "-W", "2", &INTERNET_HOST6.to_string()],
    )
    .unwrap_or_else(|e| panic!("{}: ping6: {e:#}", p.name));
}

#[test]
fn ipv4_egress_on_dual_stack_lab() {
    ipv4_egress_on_dual_stack(Cni::Routed, Underlay::Shared);
}

#[test]
fn ipv4_egress_on_dual_stack_lab_bridge_private() {
    ipv4_egress_on_dual_stack(Cni::Bridge, Underlay::Private);
}

/// Every address of the internet segment, both families (the policy's destinations), and the
/// cluster's IPv6 pod range among the cluster CIDRs (never refused).
const DESTINATIONS: &[&str] = &["198.51.100.0/24", "2001:db8:5100::/64"];
const CLUSTER_CIDRS: &str = "clusterCidrs: [10.244.0.0/16, 10.96.0.0/12, \"2001:db8:244::/48\"]\n";

/// A TCP connect from `ns` to `to`: how long it took and how it ended.
fn connect_timed(ns: &str, to: SocketAddr) -> (Duration, std::io::Result<()>) {
    in_netns(ns, move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop);
        (t.elapsed(), r)
    })
}

/// Issue 15 point 4: the gateway does not translate IPv6 yet, and a selected pod's IPv6 to a
/// policy destination must not leave from its node's own address (SPF fails there): it is
/// refused at once (a connect with a reset, ping6 with ICMPv6 administratively prohibited), so
/// that a mail server falls back to IPv4 at once. Controls: the same pod's IPv4 leaves as the egress IP; an unselected pod's
/// IPv6 and pod-to-pod IPv6 are untouched; `ipv6: pass` lets it leave (from the node).
fn selected_ipv6_is_refused_at_once(cni: Cni) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        ipv6: true,
        ..LabSpec::default()
    })
    .expect("lab up");
    let selected = ["pod-worker1-0", "pod-gateway-0"];
    let spec = |ipv6| ConfigSpec {
        selected: &selected,
        destinations: Some(DESTINATIONS),
        extra: CLUSTER_CIDRS,
        ipv6,
        ..ConfigSpec::default()
    };
    let cfg = write_config(&lab, &spec(None));
    let agents = start_all(&lab, &cfg);
    let inet = &lab.internet().ns;
    let mx6 = TcpEcho::start(inet, INTERNET_HOST6, 25);
    let mx4 = TcpEcho::start(inet, INTERNET_HOST, 25);
    let to6 = SocketAddr::from(mx6.addr);

    for pod in selected {
        let p = lab.pod(pod);
        let (took, r) = connect_timed(&p.ns, to6);
        let e = r.expect_err(&format!("{pod}: IPv6 connect refused"));
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{pod}: the SYN is answered with a reset: {e}"
        );
        assert!(
            took < Duration::from_secs(1),
            "{pod}: refused at once, not after {took:?}"
        );
        // ping6 hears the same answer.
        let out = command_in(&p.ns, "ping")
            .expect("ping")
            .args(["-c", "1", "-W", "2", &INTERNET_HOST6.to_string()])
            .output()
            .expect("run ping");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains("Administratively prohibited"),
            "{pod}: ping6: {text}"
        );
        // Control: its IPv4 leaves as the egress IP.
        let echo =
            tcp_roundtrip(&p.ns, mx4.addr, b"EHLO").unwrap_or_else(|e| panic!("{pod}: IPv4: {e}"));
        assert_eq!(echo, b"EHLO");
        assert_eq!(mx4.next_peer().ip(), IpAddr::V4(lab.gateway().external_ip));
    }
    assert!(
        mx6.peers_so_far().is_empty(),
        "nothing of a selected pod's IPv6 reached the server"
    );
    assert!(agents["worker1"].drops("ipv6_refused") >= 2);
    assert!(agents["gateway"].drops("ipv6_refused") >= 2);

    // Controls: an unselected pod's IPv6 leaves from its node, and pod-to-pod IPv6 (the
    // cluster's range) is untouched, from a selected pod too.
    let other = lab.pod("pod-worker2-0");
    let echo = tcp_roundtrip(&other.ns, mx6.addr, b"EHLO").expect("unselected pod's IPv6");
    assert_eq!(echo, b"EHLO");
    let node6 = lab.node(&other.node).external_ip6.expect("dual-stack node");
    assert_eq!(mx6.next_peer().ip(), IpAddr::V6(node6));
    let peer6 = other.ip6.expect("dual-stack pod");
    let in_cluster = TcpEcho::start(&other.ns, peer6, 8025);
    let echo = tcp_roundtrip(&lab.pod("pod-worker1-0").ns, in_cluster.addr, b"hi")
        .expect("pod to pod over IPv6");
    assert_eq!(echo, b"hi");

    // `ipv6: pass`: the operator's choice; the pod's IPv6 then leaves from its node.
    write_config(&lab, &spec(Some("pass")));
    let p = lab.pod("pod-worker1-0");
    let got = eventually(Duration::from_secs(10), || {
        tcp_roundtrip(&p.ns, mx6.addr, b"EHLO").ok()
    });
    assert_eq!(
        got.as_deref(),
        Some(&b"EHLO"[..]),
        "ipv6: pass lets it through"
    );
    let node6 = lab.node(&p.node).external_ip6.expect("dual-stack node");
    assert_eq!(mx6.next_peer().ip(), IpAddr::V6(node6));
}

#[test]
fn a_selected_pods_ipv6_is_refused_at_once_and_its_ipv4_leaves_as_the_egress_ip() {
    selected_ipv6_is_refused_at_once(Cni::Routed);
}

#[test]
fn a_selected_pods_ipv6_is_refused_at_once_bridge() {
    selected_ipv6_is_refused_at_once(Cni::Bridge);
}
