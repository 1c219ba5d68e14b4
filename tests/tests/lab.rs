//! The lab itself, without any agent: it reproduces the problem this project solves, and it
//! cleans up after itself. Needs root; without it every test fails saying so.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::Command,
    time::Duration,
};

use egress_tests::{
    lab::{
        self, exec, require_root, Cni, Lab, LabSpec, Underlay, CNI_BRIDGE, EXTRA_EGRESS_IP,
        INTERNET_HOST, RUN_DIR,
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
