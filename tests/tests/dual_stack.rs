//! Agents on a dual-stack lab (`LabSpec::ipv6`): the IPv4 egress path is exactly what it is on
//! an IPv4-only lab, and IPv6 traffic outside any policy keeps its normal path.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::net::IpAddr;

use egress_tests::{
    agent::start_all,
    config::{write_config, ConfigSpec},
    lab::{exec, require_root, Cni, Lab, LabSpec, Underlay, INTERNET_HOST, INTERNET_HOST6},
    net::{tcp_roundtrip, udp_roundtrip, TcpEcho, UdpEcho},
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
