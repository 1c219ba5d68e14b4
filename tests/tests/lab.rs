//! The lab itself: the problem this project solves, reproduced without any agent.

use std::{net::IpAddr, process::Command};

use egress_tests::{
    lab::{self, require_root, Lab, LabSpec, INTERNET_HOST},
    net::{tcp_roundtrip, TcpEcho},
};

#[test]
fn pod_reaches_internet_with_its_node_ip() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 2525);
    for pod in ["pod-worker1-0", "pod-gateway-0"] {
        let p = lab.pod(pod);
        let echo = tcp_roundtrip(&p.ns, server.addr, b"EHLO").expect("tcp round trip");
        assert_eq!(echo, b"EHLO");
        let node = lab.node(&p.node);
        assert_eq!(
            server.next_peer().ip(),
            IpAddr::V4(node.underlay_ip),
            "{pod} is seen with its node's address"
        );
    }
}

#[test]
fn pods_on_different_nodes_reach_each_other_unmasqueraded() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let dst = lab.pod("pod-worker2-0");
    let server = TcpEcho::start(&dst.ns, dst.ip, 8080);
    let src = lab.pod("pod-worker1-0");
    tcp_roundtrip(&src.ns, server.addr, b"hi").expect("pod to pod");
    assert_eq!(server.next_peer().ip(), IpAddr::V4(src.ip));
}

fn netns_list() -> String {
    String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[test]
fn two_labs_run_side_by_side_and_leave_nothing_behind() {
    require_root();
    let a = Lab::up(&LabSpec::default()).expect("lab a");
    let b = Lab::up(&LabSpec::default()).expect("lab b");
    assert_ne!(a.id(), b.id());
    for l in [&a, &b] {
        let server = TcpEcho::start(&l.internet().ns, INTERNET_HOST, 2526);
        tcp_roundtrip(&l.pod("pod-worker1-0").ns, server.addr, b"x").expect("round trip");
    }
    let (ida, idb) = (a.id().to_owned(), b.id().to_owned());
    drop(a);
    drop(b);
    let list = netns_list();
    assert!(!list.contains(&ida) && !list.contains(&idb), "{list}");
}

#[test]
fn down_removes_a_kept_lab() {
    require_root();
    let l = Lab::up(&LabSpec {
        workers: 1,
        ..Default::default()
    })
    .expect("lab");
    let id = l.id().to_owned();
    l.keep();
    assert!(netns_list().contains(&id));
    let removed = lab::down(Some(&id)).expect("down");
    assert!(removed.len() >= 5, "{removed:?}");
    assert!(!netns_list().contains(&id));
}
