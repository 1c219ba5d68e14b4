//! Other programs on our hooks (issue 12 point 3): what our programs leave alone goes on to
//! the programs attached after ours (TCX) and to the legacy clsact filters behind the TCX
//! chain, on a pod's veth and on the gateway's uplink, as a CNI's programs, the bandwidth
//! plugin or a host firewall need. What ours take (redirect into the tunnel) ends there.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::Duration,
};

use egress_tests::{
    agent::start_all,
    config::{write_config, ConfigSpec},
    lab::{exec, in_netns, require_root, Lab, LabSpec, INTERNET_HOST},
    neighbours::{LegacyFilter, TcxCounter},
    net::UdpEcho,
};

const N: u64 = 20;

fn send(ns: &str, to: SocketAddrV4, n: u64) {
    in_netns(ns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..n {
            s.send_to(b"hello", to).expect("send");
        }
    });
}

#[test]
fn later_tcx_programs_and_legacy_filters_see_what_ours_leave_alone() {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 2,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &["pod-worker1-0"],
            ..ConfigSpec::default()
        },
    );
    let _agents = start_all(&lab, &cfg);
    let echo = UdpEcho::start(&lab.internet().ns, INTERNET_HOST, 53);
    let w1 = lab.node("worker1");
    let gw = lab.gateway();
    let selected = lab.pod("pod-worker1-0");
    let unselected = lab.pod("pod-worker1-1");
    let mut hooks = Vec::new();
    for (ns, dev, spare) in [
        (&w1.ns, selected.host_veth.as_str(), "mirsel"),
        (&w1.ns, unselected.host_veth.as_str(), "mirun"),
        (&gw.ns, "eth0", "mirup"),
    ] {
        hooks.push((
            format!("{dev} in {ns}"),
            TcxCounter::attach(ns, dev),
            LegacyFilter::add(ns, dev, spare),
        ));
    }
    let counts = |i: usize| (hooks[i].1.count(), hooks[i].2.count());

    // What ours take: the selected pod to the internet goes into the tunnel, as the egress IP;
    // nothing after ours on its veth sees it.
    let before = counts(0);
    send(&selected.ns, echo.addr, N);
    for _ in 0..N {
        let p = echo.next_peer();
        assert_eq!(p.ip(), std::net::IpAddr::V4(gw.external_ip));
    }
    let after = counts(0);
    assert!(
        after.0 - before.0 < N && after.1 - before.1 < N,
        "redirected packets went on to later programs: {before:?} -> {after:?}"
    );

    // What ours leave alone, on the selected pod's veth (a destination outside its policy),
    // the unselected pod's, and the gateway's uplink (the host's own traffic): every packet
    // reaches the TCX program after ours and the legacy filter.
    let node_addr = SocketAddrV4::new(lab.node("worker2").external_ip, 9);
    type Traffic<'a> = Box<dyn Fn() + 'a>;
    let cases: [(usize, &str, Traffic); 3] = [
        (
            0,
            "selected pod, not a policy destination",
            Box::new(|| send(&selected.ns, node_addr, N)),
        ),
        (
            1,
            "unselected pod",
            Box::new(|| send(&unselected.ns, echo.addr, N)),
        ),
        (
            2,
            "the gateway host's own traffic",
            Box::new(|| {
                exec(
                    &lab.internet().ns,
                    &[
                        "ping",
                        "-c",
                        &N.to_string(),
                        "-i",
                        "0.01",
                        "-q",
                        &gw.external_ip.to_string(),
                    ],
                )
                .expect("ping the gateway");
            }),
        ),
    ];
    for (i, what, traffic) in cases {
        let before = counts(i);
        traffic();
        std::thread::sleep(Duration::from_millis(200));
        let after = counts(i);
        assert!(
            after.0 - before.0 >= N,
            "{what}: the TCX program after ours on {} saw {} of {N}",
            hooks[i].0,
            after.0 - before.0
        );
        assert!(
            after.1 - before.1 >= N,
            "{what}: the legacy filter on {} saw {} of {N}",
            hooks[i].0,
            after.1 - before.1
        );
    }
}
