//! The lab itself, without any agent: it reproduces the problem this project solves, and it
//! cleans up after itself. Needs root; without it every test fails saying so.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::Command,
    time::Duration,
};

use egress_tests::{
    lab::{
        self, exec, require_root, Cni, Lab, LabSpec, Underlay, CNI_BRIDGE, EXTRA_EGRESS_IP,
        EXTRA_EGRESS_IP6, INTERNET_HOST, INTERNET_HOST6, ROUTED_GATEWAY6, RUN_DIR,
    },
    net::{tcp_roundtrip, udp_roundtrip, TcpEcho, UdpEcho},
};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run `ip netns list`");
    String::from_utf8(out.stdout).expect("utf-8 netns list")
}

/// The problem: a pod reaching the internet is seen with its node's address.
fn pod_reaches_internet_with_node_ip_on(cni: Cni) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        ..LabSpec::default()
    })
    .expect("lab up");
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 2525);
    for (pod, node_ip) in [
        ("pod-worker1-0", "192.0.2.11"),
        ("pod-gateway-0", "192.0.2.10"),
    ] {
        let p = lab.pod(pod);
        let echo = tcp_roundtrip(&p.ns, server.addr, b"EHLO lab\r\n")
            .unwrap_or_else(|e| panic!("{pod} -> internet host: {e}"));
        assert_eq!(echo, b"EHLO lab\r\n", "{pod}: echo");
        let peer = server.next_peer().ip();
        assert_eq!(
            peer,
            node_ip.parse::<IpAddr>().expect("ip"),
            "{pod} must be seen with its node's underlay address (CNI masquerade)"
        );
        assert_eq!(peer, IpAddr::V4(lab.node(&p.node).external_ip));
    }
}

#[test]
fn pod_reaches_internet_with_node_ip() {
    pod_reaches_internet_with_node_ip_on(Cni::Routed);
}

/// The flannel-like shape: pods on `cni0` (the gateway of their /24), no route per pod; the
/// problem is the same, and pods reach each other across nodes.
#[test]
fn pod_reaches_internet_with_node_ip_bridge() {
    pod_reaches_internet_with_node_ip_on(Cni::Bridge);
}

#[test]
fn the_bridge_shape_is_flannels() {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni: Cni::Bridge,
        pods_per_node: 2,
        ..LabSpec::default()
    })
    .expect("lab up");
    let w1 = lab.node("worker1");
    let pod = lab.pod("pod-worker1-0");
    let routes = exec(&w1.ns, &["ip", "-4", "route", "show"]).expect("routes");
    assert!(
        routes.contains(&format!("10.244.1.0/24 dev {CNI_BRIDGE}")),
        "{routes}"
    );
    assert!(
        !routes.contains(&pod.ip.to_string()),
        "no route names a pod: {routes}"
    );
    let port = exec(&w1.ns, &["ip", "-o", "link", "show", &pod.host_veth]).expect("veth");
    assert!(port.contains(&format!("master {CNI_BRIDGE}")), "{port}");
    let default = exec(&pod.ns, &["ip", "-4", "route", "show", "default"]).expect("route");
    assert!(default.contains("via 10.244.1.1"), "{default}");
    // Pods of one node talk over the bridge, pods of two nodes through the nodes.
    for (port, from, to) in [
        (8080, "pod-worker1-1", "pod-worker1-0"),
        (8081, "pod-worker2-0", "pod-worker1-0"),
    ] {
        let dst = lab.pod(to);
        let server = TcpEcho::start(&dst.ns, dst.ip, port);
        let echo = tcp_roundtrip(&lab.pod(from).ns, server.addr, b"hi")
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
        assert_eq!(echo, b"hi");
        assert_eq!(server.next_peer().ip(), IpAddr::V4(lab.pod(from).ip));
    }
}

/// Inside the cluster nothing is masqueraded: host-gw routes carry pod IPs between nodes.
#[test]
fn cross_node_pod_to_pod() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let dst = lab.pod("pod-worker2-0");
    let server = TcpEcho::start(&dst.ns, dst.ip, 8080);
    let src = lab.pod("pod-worker1-0");
    let echo = tcp_roundtrip(&src.ns, server.addr, b"hi").expect("pod to pod across nodes");
    assert_eq!(echo, b"hi");
    assert_eq!(
        server.next_peer().ip(),
        IpAddr::V4(src.ip),
        "pod-to-pod keeps the source pod IP"
    );
    // And UDP, from the gateway node's pod.
    let udp = UdpEcho::start(&dst.ns, dst.ip, 8081);
    let gw_pod = lab.pod("pod-gateway-0");
    assert_eq!(
        udp_roundtrip(&gw_pod.ns, udp.addr, b"u").expect("udp pod to pod"),
        b"u"
    );
    assert_eq!(udp.next_peer().ip(), IpAddr::V4(gw_pod.ip));
}

/// Two labs at once (brought up concurrently) do not see each other, and leave nothing.
#[test]
fn two_labs_side_by_side() {
    require_root();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Lab::up(&LabSpec::default()).expect("lab a"));
        let b = s.spawn(|| Lab::up(&LabSpec::default()).expect("lab b"));
        (a.join().expect("lab a"), b.join().expect("lab b"))
    });
    assert_ne!(a.id(), b.id());
    let (na, nb) = (a.namespaces(), b.namespaces());
    assert!(
        na.iter().all(|n| !nb.contains(n)),
        "namespaces overlap: {na:?} {nb:?}"
    );
    for l in [&a, &b] {
        let server = TcpEcho::start(&l.internet().ns, INTERNET_HOST, 2526);
        let echo = tcp_roundtrip(&l.pod("pod-worker1-0").ns, server.addr, b"x")
            .unwrap_or_else(|e| panic!("lab {}: round trip: {e}", l.id()));
        assert_eq!(echo, b"x");
        assert_eq!(server.next_peer().ip().to_string(), "192.0.2.11");
    }
    let (ida, idb) = (a.id().to_owned(), b.id().to_owned());
    drop(a);
    drop(b);
    let list = netns_list();
    assert!(
        !list.contains(&format!("-{ida}-")) && !list.contains(&format!("-{idb}-")),
        "namespaces left behind:\n{list}"
    );
    assert!(!Path::new(RUN_DIR).join(&ida).exists());
    assert!(!Path::new(RUN_DIR).join(&idb).exists());
}

/// A kept lab (as after a crash) is found and removed by `down`, processes included.
#[test]
fn down_removes_leaked_lab() {
    require_root();
    let l = Lab::up(&LabSpec {
        workers: 1,
        ..Default::default()
    })
    .expect("lab");
    let id = l.id().to_owned();
    let expected = l.namespaces();
    let meta = Path::new(RUN_DIR).join(&id).join("lab.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).expect("lab.json"))
            .expect("lab.json parses");
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["nodes"][1]["underlay_ip"], "192.0.2.11");
    let mut leftover = lab::spawn(&l.pod("pod-worker1-0").ns, &["sleep", "600"]).expect("spawn");
    l.keep();

    let list = netns_list();
    assert!(expected.iter().all(|n| list.contains(n.as_str())), "{list}");
    let status = lab::status().expect("status");
    assert!(status.contains(&format!("lab {id}")), "{status}");

    let mut removed = lab::down(Some(&id)).expect("down");
    removed.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(removed, expected);
    assert!(!netns_list().contains(&format!("-{id}-")));
    assert!(!Path::new(RUN_DIR).join(&id).exists());
    let st = leftover.wait().expect("wait for leftover process");
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "down kills what runs inside"
    );
    // A second down finds nothing and is not an error.
    assert!(lab::down(Some(&id)).expect("down again").is_empty());
}

/// The secondary egress IP on the gateway's uplink is reachable from the internet side.
#[test]
fn extra_egress_ip_reaches_internet() {
    require_root();
    let lab = Lab::up(&LabSpec {
        workers: 1,
        pods_per_node: 0,
        extra_egress_ip: true,
        ..Default::default()
    })
    .expect("lab");
    let server = UdpEcho::start(&lab.internet().ns, INTERNET_HOST, 5353);
    let echo = lab::in_netns(&lab.gateway().ns, || {
        let s = UdpSocket::bind((EXTRA_EGRESS_IP, 0)).expect("bind extra egress ip");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.send_to(b"from-egress-ip", server.addr).expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("echo back to the extra egress ip");
        assert_eq!(from, SocketAddr::V4(server.addr));
        buf[..n].to_vec()
    });
    assert_eq!(echo, b"from-egress-ip");
    assert_eq!(server.next_peer().ip(), IpAddr::V4(EXTRA_EGRESS_IP));
}

/// `offloads_off` really turns checksum offload off, and the lab still works.
#[test]
fn offloads_off_lab_works() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        workers: 1,
        pods_per_node: 0,
        offloads_off: true,
        ..Default::default()
    })
    .expect("lab");
    let pod = lab.add_pod("worker1", "late").expect("add pod");
    assert_eq!(pod.ip.to_string(), "10.244.1.2");
    assert!(
        lab.add_pod("worker1", "late").is_err(),
        "duplicate pod name"
    );
    assert!(lab.add_pod("worker1", "isp").is_err(), "name of a lab role");
    assert!(lab.add_pod("nope", "p").is_err(), "unknown node");
    let node = lab.node("worker1");
    for (ns, dev) in [(&node.ns, pod.host_veth.as_str()), (&pod.ns, "eth0")] {
        let k = exec(ns, &["ethtool", "-k", dev]).expect("ethtool -k");
        for feature in ["rx-checksumming: off", "tx-checksumming: off"] {
            assert!(k.contains(feature), "{dev} in {ns}: want {feature}:\n{k}");
        }
    }
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 2527);
    let big = vec![0x5a; 100_000];
    assert_eq!(
        tcp_roundtrip(&pod.ns, server.addr, &big).expect("bulk round trip"),
        big
    );
    assert_eq!(server.next_peer().ip().to_string(), "192.0.2.11");
}

/// The private-underlay layout: node to node and pod to pod over the private segment `eth1`,
/// the internet only through the public uplink, and no way from the internet into the
/// private segment.
#[test]
fn private_underlay_carries_node_traffic_and_is_unreachable_from_the_internet() {
    require_root();
    let lab = Lab::up(&LabSpec {
        underlay: Underlay::Private,
        ..Default::default()
    })
    .expect("lab");
    let gw = lab.gateway();
    let w1 = lab.node("worker1");
    assert_eq!(gw.underlay_ip.to_string(), "10.0.0.10");
    assert_eq!(gw.external_ip.to_string(), "192.0.2.10");
    assert_eq!(w1.underlay_dev, "eth1");
    // Node to node over the private segment.
    let route =
        exec(&w1.ns, &["ip", "route", "get", &gw.underlay_ip.to_string()]).expect("route get");
    assert!(route.contains("dev eth1"), "{route}");
    exec(
        &w1.ns,
        &["ping", "-c", "1", "-W", "2", &gw.underlay_ip.to_string()],
    )
    .expect("node to node over eth1");
    // Pod to pod across nodes goes over the private segment, unmasqueraded.
    let route = exec(&w1.ns, &["ip", "route", "get", "10.244.0.2"]).expect("route get");
    assert!(route.contains("via 10.0.0.10 dev eth1"), "{route}");
    let server = TcpEcho::start(
        &lab.pod("pod-gateway-0").ns,
        lab.pod("pod-gateway-0").ip,
        2528,
    );
    tcp_roundtrip(&lab.pod("pod-worker1-0").ns, server.addr, b"pod to pod").expect("pod to pod");
    assert_eq!(
        server.next_peer().ip(),
        IpAddr::V4(lab.pod("pod-worker1-0").ip)
    );
    // A pod reaches the internet through the public uplink, masqueraded to the ExternalIP.
    let inet = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 2529);
    tcp_roundtrip(&lab.pod("pod-worker1-0").ns, inet.addr, b"out").expect("to the internet");
    assert_eq!(inet.next_peer().ip(), IpAddr::V4(w1.external_ip));
    // The internet cannot reach the private segment: no route at the isp.
    assert!(
        exec(
            &lab.internet().ns,
            &["ping", "-c", "1", "-W", "1", &gw.underlay_ip.to_string()]
        )
        .is_err(),
        "the private segment must be unreachable from the internet"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir().join("lab.json")).expect("lab.json"),
    )
    .expect("lab.json parses");
    assert_eq!(json["nodes"][1]["underlay_ip"], "10.0.0.11");
    assert_eq!(json["nodes"][1]["external_ip"], "192.0.2.11");
    assert!(json["lan"].is_string(), "{json}");
}

/// `ping` from `ns` to `to` (either family), one echo, two seconds.
fn ping(ns: &str, to: impl ToString) -> anyhow::Result<String> {
    exec(ns, &["ping", "-c", "1", "-W", "2", &to.to_string()])
}

fn ip6(what: &str, a: Option<Ipv6Addr>) -> Ipv6Addr {
    a.unwrap_or_else(|| panic!("{what}: no IPv6 address on a dual-stack lab"))
}

/// Dual-stack: a pod reaches the internet host over IPv6 (ping6, TCP), seen with its node's
/// IPv6 address (the CNI's masquerade: the leak of issue 15 before the gateway handles IPv6);
/// pods reach each other across nodes over IPv6 by host-gw routes on the underlay, without
/// masquerade; IPv4 works as on an IPv4-only lab.
fn dual_stack_on(cni: Cni, underlay: Underlay) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        underlay,
        ipv6: true,
        ..LabSpec::default()
    })
    .expect("lab up");
    let inet = lab.internet();
    assert_eq!(inet.ip6, Some(INTERNET_HOST6));
    let tcp6 = TcpEcho::start(&inet.ns, INTERNET_HOST6, 2525);
    let tcp4 = TcpEcho::start(&inet.ns, INTERNET_HOST, 2525);
    // pod-gateway-0 also shows that the gateway's extra egress address (on by default) is
    // not its masquerade address.
    for pod in ["pod-worker1-0", "pod-gateway-0"] {
        let p = lab.pod(pod);
        let node = lab.node(&p.node);
        ping(&p.ns, INTERNET_HOST6).unwrap_or_else(|e| panic!("{pod}: ping6: {e:#}"));
        let echo = tcp_roundtrip(&p.ns, tcp6.addr, b"EHLO lab\r\n")
            .unwrap_or_else(|e| panic!("{pod} -> internet host over IPv6: {e}"));
        assert_eq!(echo, b"EHLO lab\r\n", "{pod}: echo over IPv6");
        assert_eq!(
            tcp6.next_peer().ip(),
            IpAddr::V6(ip6(&node.name, node.external_ip6)),
            "{pod}: its IPv6 is seen from its node's IPv6 address (CNI masquerade)"
        );
        // The IPv4 control, in the same lab.
        let echo = tcp_roundtrip(&p.ns, tcp4.addr, b"EHLO lab\r\n")
            .unwrap_or_else(|e| panic!("{pod} -> internet host over IPv4: {e}"));
        assert_eq!(echo, b"EHLO lab\r\n", "{pod}: echo over IPv4");
        assert_eq!(tcp4.next_peer().ip(), IpAddr::V4(node.external_ip));
        ping(&p.ns, INTERNET_HOST).unwrap_or_else(|e| panic!("{pod}: ping: {e:#}"));
    }
    // Pod to pod across nodes, over IPv6: the pod's own address arrives.
    let dst = lab.pod("pod-worker2-0");
    let dst6 = ip6(&dst.name, dst.ip6);
    let tcp = TcpEcho::start(&dst.ns, dst6, 8080);
    let udp = UdpEcho::start(&dst.ns, dst6, 8081);
    for from in ["pod-worker1-0", "pod-gateway-0"] {
        let src = lab.pod(from);
        let src6 = IpAddr::V6(ip6(from, src.ip6));
        let echo = tcp_roundtrip(&src.ns, tcp.addr, b"hi")
            .unwrap_or_else(|e| panic!("{from} -> {}: tcp over IPv6: {e}", dst.name));
        assert_eq!(echo, b"hi");
        assert_eq!(
            tcp.next_peer().ip(),
            src6,
            "pod-to-pod keeps the pod's IPv6"
        );
        let echo = udp_roundtrip(&src.ns, udp.addr, b"u")
            .unwrap_or_else(|e| panic!("{from} -> {}: udp over IPv6: {e}", dst.name));
        assert_eq!(echo, b"u");
        assert_eq!(
            udp.next_peer().ip(),
            src6,
            "pod-to-pod keeps the pod's IPv6"
        );
    }
    ping(&dst.ns, ip6("pod-worker1-0", lab.pod("pod-worker1-0").ip6)).expect("ping6 pod to pod");
    // Host-gw over the underlay: the route to the other node's pods names its IPv6 InternalIP.
    let (w1, w2) = (lab.node("worker1"), lab.node("worker2"));
    let route = exec(&w1.ns, &["ip", "-6", "route", "get", &dst6.to_string()]).expect("route");
    let via = format!(
        "via {} dev {}",
        ip6("worker2", w2.underlay_ip6),
        w1.underlay_dev
    );
    assert!(route.contains(&via), "want {via}: {route}");
    if underlay == Underlay::Private {
        // The private segment stays private over IPv6 too.
        let gw = ip6("gateway", lab.gateway().underlay_ip6);
        assert!(
            exec(&inet.ns, &["ping", "-c", "1", "-W", "1", &gw.to_string()]).is_err(),
            "the private segment must be unreachable from the internet"
        );
    }
}

#[test]
fn dual_stack_routed_shared() {
    dual_stack_on(Cni::Routed, Underlay::Shared);
}

#[test]
fn dual_stack_routed_private() {
    dual_stack_on(Cni::Routed, Underlay::Private);
}

#[test]
fn dual_stack_bridge_shared() {
    dual_stack_on(Cni::Bridge, Underlay::Shared);
}

#[test]
fn dual_stack_bridge_private() {
    dual_stack_on(Cni::Bridge, Underlay::Private);
}

/// The IPv6 plan mirrors the IPv4 one, in the fields, `lab.json` and `describe`; the routed
/// shape's pods route via Calico's link-local gateway; pods added later and pods plugged
/// again get IPv6 too; the extra egress address works from the gateway.
#[test]
fn dual_stack_address_plan() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        workers: 1,
        underlay: Underlay::Private,
        ipv6: true,
        ..LabSpec::default()
    })
    .expect("lab up");
    let (gw, w1) = (lab.gateway().clone(), lab.node("worker1").clone());
    let plan = [
        (gw.external_ip6, "2001:db8:200::10"),
        (gw.underlay_ip6, "2001:db8:a00::10"),
        (w1.external_ip6, "2001:db8:200::11"),
        (w1.underlay_ip6, "2001:db8:a00::11"),
        (lab.pod("pod-gateway-0").ip6, "2001:db8:244::2"),
        (lab.pod("pod-worker1-0").ip6, "2001:db8:244:1::2"),
        (lab.isp().ip6, "2001:db8:200::1"),
        (lab.internet().ip6, "2001:db8:5100::10"),
    ];
    for (got, want) in plan {
        assert_eq!(got.map(|a| a.to_string()).as_deref(), Some(want));
    }
    assert_eq!(w1.pod_cidr6().as_deref(), Some("2001:db8:244:1::/64"));
    assert_eq!(gw.pod_cidr6().as_deref(), Some("2001:db8:244::/64"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir().join("lab.json")).expect("lab.json"),
    )
    .expect("lab.json parses");
    assert_eq!(json["ipv6"], true);
    assert_eq!(json["nodes"][1]["external_ip6"], "2001:db8:200::11");
    assert_eq!(json["nodes"][1]["underlay_ip6"], "2001:db8:a00::11");
    assert_eq!(json["pods"][1]["ip6"], "2001:db8:244:1::2");
    assert_eq!(json["internet"]["ip6"], "2001:db8:5100::10");
    let describe = lab.describe();
    for want in [
        "2001:db8:200::11",
        "2001:db8:a00::11",
        "2001:db8:244:1::/64",
        "2001:db8:244:1::2",
        "2001:db8:5100::10",
    ] {
        assert!(
            describe.contains(want),
            "describe lacks {want}:\n{describe}"
        );
    }
    // The routed shape: the pod's /128 and its default via the node veth's link-local.
    let pod = lab.pod("pod-worker1-0").clone();
    let default = exec(&pod.ns, &["ip", "-6", "route", "show", "default"]).expect("route");
    assert!(
        default.contains(&format!("via {ROUTED_GATEWAY6} dev eth0")),
        "{default}"
    );
    let addrs = exec(&pod.ns, &["ip", "-6", "addr", "show", "dev", "eth0"]).expect("addrs");
    assert!(addrs.contains("2001:db8:244:1::2/128"), "{addrs}");
    // A pod added later, and a pod plugged again (its address after a delay), over IPv6.
    let late = lab.add_pod("worker1", "late").expect("add pod");
    assert_eq!(
        late.ip6.map(|a| a.to_string()).as_deref(),
        Some("2001:db8:244:1::3")
    );
    ping(&late.ns, INTERNET_HOST6).expect("ping6 from a pod added later");
    lab.unplug_pod(&pod.name).expect("unplug");
    assert!(ping(&pod.ns, INTERNET_HOST6).is_err(), "unplugged");
    lab.replug_pod(&pod.name, Duration::from_millis(200))
        .expect("replug");
    ping(&pod.ns, INTERNET_HOST6).expect("ping6 after replug");
    ping(&late.ns, ip6(&pod.name, pod.ip6)).expect("ping6 to the replugged pod");
    // The extra egress address answers from the gateway, and is its own source.
    let server = UdpEcho::start(&lab.internet().ns, INTERNET_HOST6, 5353);
    let from = lab::in_netns(&gw.ns, || {
        let s = UdpSocket::bind((EXTRA_EGRESS_IP6, 0)).expect("bind the extra egress ip6");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.send_to(b"from-egress-ip6", server.addr).expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("echo back to the extra egress ip6");
        assert_eq!(&buf[..n], b"from-egress-ip6");
        from
    });
    assert_eq!(from, SocketAddr::V6(server.addr));
    assert_eq!(server.next_peer().ip(), IpAddr::V6(EXTRA_EGRESS_IP6));
}

/// IPv6 is opt-in: a lab without `ipv6` has no IPv6 address beyond link-local ones, and no
/// IPv6 masquerade, so captures and counters of other tests see what they always did.
#[test]
fn ipv4_lab_has_no_global_ipv6() {
    require_root();
    let lab = Lab::up(&LabSpec {
        workers: 1,
        ..LabSpec::default()
    })
    .expect("lab up");
    assert!(lab
        .nodes()
        .iter()
        .all(|n| n.external_ip6.is_none() && n.underlay_ip6.is_none() && n.pod_cidr6().is_none()));
    assert!(lab.pods().iter().all(|p| p.ip6.is_none()));
    assert!(lab.internet().ip6.is_none() && lab.isp().ip6.is_none());
    for ns in lab.namespaces() {
        let global = exec(&ns, &["ip", "-6", "addr", "show", "scope", "global"]).expect("addrs");
        assert!(global.trim().is_empty(), "{ns}: {global}");
    }
    let tables = exec(&lab.node("worker1").ns, &["nft", "list", "tables"]).expect("nft");
    assert!(!tables.contains("ip6"), "{tables}");
}
