//! End to end: the real agent on every lab node, the real VXLAN tunnel and tc programs, real
//! TCP, UDP and ICMP between pods and the internet host.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent,
    config::{self, mail_policy_id, ConfigSpec},
    lab::{exec, require_root, Cni, Lab, LabSpec, EXTRA_EGRESS_IP, INTERNET_HOST},
    net::{
        bulk_download, bulk_upload, eventually, tcp_roundtrip, udp_error, udp_roundtrip,
        BulkServer, TcpEcho, UdpEcho,
    },
};

const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// Writes the agents' configuration (see `ConfigSpec`): the `selected` pods are the mail
/// policy's.
fn write_config(lab: &Lab, selected: &[&str], egress_ip: Option<Ipv4Addr>) -> PathBuf {
    config::write_config(
        lab,
        &ConfigSpec {
            selected,
            egress_ip,
            ..ConfigSpec::default()
        },
    )
}

fn start_agents(lab: &Lab, config: &std::path::Path) -> Vec<Agent> {
    let agents: Vec<Agent> = lab
        .nodes()
        .iter()
        .map(|n| Agent::start(lab, &n.name, config).expect("start agent"))
        .collect();
    for a in &agents {
        let pods = lab.pods().iter().filter(|p| p.node == a.node).count();
        a.wait_endpoints(pods, Duration::from_secs(20))
            .expect("agent programs its pods");
    }
    agents
}

/// The source address the internet host sees for a TCP connection from `pod`.
fn tcp_source(lab: &Lab, server: &TcpEcho, pod: &str) -> IpAddr {
    let echo = tcp_roundtrip(&lab.pod(pod).ns, server.addr, b"MAIL FROM:<a@example.org>")
        .unwrap_or_else(|e| panic!("{pod}: tcp: {e}"));
    assert_eq!(echo, b"MAIL FROM:<a@example.org>");
    server.next_peer().ip()
}

fn udp_source(lab: &Lab, server: &UdpEcho, pod: &str) -> IpAddr {
    let echo = udp_roundtrip(&lab.pod(pod).ns, server.addr, b"dns?")
        .unwrap_or_else(|e| panic!("{pod}: udp: {e}"));
    assert_eq!(echo, b"dns?");
    server.next_peer().ip()
}

fn check_egress(spec: LabSpec) {
    require_root();
    let lab = Lab::up(&spec).expect("lab up");
    let cfg = write_config(&lab, &["pod-worker1-0", "pod-gateway-0"], None);
    let agents = start_agents(&lab, &cfg);
    // The kernel matrix reads this line (TCX links, or legacy tc filters below 6.6).
    eprintln!(
        "agent attach mode: {}",
        agents[0].tc_mode().unwrap_or_else(|| "unknown".into())
    );
    let inet = &lab.internet().ns;
    let tcp = TcpEcho::start(inet, INTERNET_HOST, 25);
    let udp = UdpEcho::start(inet, INTERNET_HOST, 53);
    let gw = IpAddr::V4(GATEWAY_IP);
    for pod in ["pod-worker1-0", "pod-gateway-0"] {
        assert_eq!(
            tcp_source(&lab, &tcp, pod),
            gw,
            "{pod} TCP leaves with the egress IP"
        );
        assert_eq!(
            udp_source(&lab, &udp, pod),
            gw,
            "{pod} UDP leaves with the egress IP"
        );
        exec(
            &lab.pod(pod).ns,
            &["ping", "-c", "2", "-W", "2", "198.51.100.10"],
        )
        .unwrap_or_else(|e| panic!("{pod}: ping: {e}"));
    }
    // The unselected pod keeps its normal path.
    let w2 = IpAddr::V4(lab.node("worker2").external_ip);
    assert_eq!(tcp_source(&lab, &tcp, "pod-worker2-0"), w2);
    assert_eq!(udp_source(&lab, &udp, "pod-worker2-0"), w2);
    // The gateway translated TCP, UDP and ICMP flows of both pods.
    let nat = agents[0].inspect("nat").expect("inspect nat");
    let flows = nat.as_array().expect("array");
    for proto in ["tcp", "udp", "icmp"] {
        for pod in ["10.244.1.2", "10.244.0.2"] {
            assert!(
                flows.iter().any(|f| f["proto"] == proto
                    && f["pod"].as_str().unwrap_or("").starts_with(pod)
                    && f["egress"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("192.0.2.10:")),
                "no {proto} flow of {pod} in {nat:#}"
            );
        }
    }
    agents[0].assert_nat_consistent();
    // The pinned maps carry BTF: bpftool prints field names.
    let dump = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(agents[0].pin_root.join("maps/EGW_NAT4"))
        .output()
        .expect("bpftool");
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"saddr\"", "\"last_seen_ns\"", "\"node_ip4\""] {
        assert!(dump.contains(field), "bpftool dump lacks {field}: {dump}");
    }
}

#[test]
fn selected_pods_leave_with_the_egress_ip_and_others_do_not() {
    check_egress(LabSpec::default());
}

/// The same on a flannel-like bridge: pods found behind the ports of `cni0`, replies delivered
/// through the bridge.
#[test]
fn selected_pods_leave_with_the_egress_ip_and_others_do_not_bridge() {
    check_egress(LabSpec {
        cni: Cni::Bridge,
        ..LabSpec::default()
    });
}

#[test]
fn egress_works_with_checksum_offloads_off() {
    check_egress(LabSpec {
        offloads_off: true,
        ..Default::default()
    });
}

#[test]
fn extra_address_on_the_uplink_as_egress_ip() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &["pod-worker1-0"], Some(EXTRA_EGRESS_IP));
    let _agents = start_agents(&lab, &cfg);
    let tcp = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    assert_eq!(
        tcp_source(&lab, &tcp, "pod-worker1-0"),
        IpAddr::V4(EXTRA_EGRESS_IP)
    );
}

/// How long until `agent` programs the endpoint `ip` as selected (or not).
fn time_until_selected(agent: &Agent, ip: Ipv4Addr, selected: bool) -> Option<Duration> {
    let start = Instant::now();
    eventually(Duration::from_secs(5), || {
        let eps = agent.inspect("endpoints").ok()?;
        let ep = eps.as_array()?.iter().find(|e| e["ip"] == ip.to_string())?;
        (ep["selected"] == selected).then(|| start.elapsed())
    })
}

#[test]
fn relabelling_a_pod_in_the_config_moves_it_onto_the_gateway_and_off_again() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &[], None);
    let agents = start_agents(&lab, &cfg);
    let worker1 = agents
        .iter()
        .find(|a| a.node == "worker1")
        .expect("worker1 agent");
    let pod_ip = lab.pod("pod-worker1-0").ip;
    let tcp = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let w1 = IpAddr::V4(lab.node("worker1").external_ip);
    let gw = IpAddr::V4(GATEWAY_IP);
    assert_eq!(tcp_source(&lab, &tcp, "pod-worker1-0"), w1);

    write_config(&lab, &["pod-worker1-0"], None);
    let took = time_until_selected(worker1, pod_ip, true).expect("pod selected after relabel");
    assert!(
        took < Duration::from_secs(1),
        "relabel took {took:?} to reach the datapath"
    );
    let moved = eventually(Duration::from_secs(5), || {
        (tcp_source(&lab, &tcp, "pod-worker1-0") == gw).then_some(())
    });
    assert!(moved.is_some(), "pod did not move onto the gateway");
    assert!(
        worker1.log().contains("trigger=Config"),
        "the log says why it reconciled:\n{}",
        worker1.log()
    );

    write_config(&lab, &[], None);
    let took = time_until_selected(worker1, pod_ip, false).expect("pod deselected");
    assert!(
        took < Duration::from_secs(1),
        "relabel took {took:?} to reach the datapath"
    );
    let back = eventually(Duration::from_secs(5), || {
        (tcp_source(&lab, &tcp, "pod-worker1-0") == w1).then_some(())
    });
    assert!(back.is_some(), "pod did not move off the gateway");
}

const MB: u64 = 1024 * 1024;

fn fifty_megabytes_each_way(cni: Cni) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(&lab, &["pod-worker1-0"], None);
    let agents = start_agents(&lab, &cfg);
    let server = BulkServer::start(&lab.internet().ns, INTERNET_HOST, 5001);
    let pod = &lab.pod("pod-worker1-0").ns;
    assert!(
        bulk_upload(pod, server.addr, 50 * MB, None).expect("upload"),
        "upload corrupted"
    );
    assert_eq!(
        bulk_download(pod, server.addr, 50 * MB).expect("download"),
        None,
        "download corrupted"
    );
    // MSS clamping made the segments fit: nothing needed a frag-needed answer.
    let c = agents[1].inspect("counters").expect("counters");
    assert_eq!(c["drops"]["frag_needed"], 0, "{c:#}");
    let id = mail_policy_id(&agents[1]);
    assert!(
        c["policies"][id.to_string()]["tx_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 50 * MB,
        "{c:#}"
    );
    // `inspect policies` shows the same traffic beside the policy's prefixes.
    let p = agents[1].inspect("policies").expect("inspect policies");
    let row = p
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["destination"] == "198.51.100.0/24"))
        .unwrap_or_else(|| panic!("the policy prefix is listed: {p:#}"));
    assert_eq!(row["action"], "gateway");
    assert_eq!(row["name"], "mail");
    assert_eq!(row["gateway"], GATEWAY_IP.to_string());
    let table = agents[1]
        .inspect_text("policies", false)
        .expect("inspect policies");
    let line = table
        .lines()
        .find(|l| l.starts_with("mail "))
        .unwrap_or_else(|| panic!("no status line for mail:\n{table}"));
    for want in ["True", "Active", "gateway", "192.0.2.10"] {
        assert!(line.contains(want), "{want} in {line:?}\n{table}");
    }
    assert!(row["tx_bytes"].as_u64().unwrap_or(0) > 50 * MB, "{row:#}");
    // And so does /metrics on that node (the source node counts what it tunnels), labelled
    // with the policy's name.
    let m = exec(
        &agents[1].ns,
        &["curl", "-sf", "http://127.0.0.1:9479/metrics"],
    )
    .expect("scrape the gateway agent");
    let bytes = m
        .lines()
        .find(|l| {
            l.starts_with("egress_policy_bytes_total{")
                && l.contains("policy=\"mail\"")
                && l.contains("direction=\"tx\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no tx bytes for policy mail in:\n{m}"));
    assert!(bytes > 50 * MB, "{bytes}");
    assert!(m.contains("egress_datapath_up 1"), "{m}");
    // The gateway translated both transfers.
    let gw = agents
        .iter()
        .find(|a| a.node == "gateway")
        .expect("gateway agent");
    let m = exec(&gw.ns, &["curl", "-sf", "http://127.0.0.1:9479/metrics"])
        .expect("scrape the gateway agent");
    let allocations = m
        .lines()
        .find_map(|l| l.strip_prefix("egress_nat_allocations_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(allocations >= Some(2), "two transfers, two mappings:\n{m}");
    assert!(m.contains("egress_nat_port_retries_total "), "{m}");
    assert!(
        m.contains("\negress_nat_entries "),
        "counted by the NAT collection: {m}"
    );
    assert!(
        m.contains("egress_drops_total{reason=\"frag_needed\"} 0"),
        "{m}"
    );
    let ready = exec(
        &agents[1].ns,
        &["curl", "-sf", "http://127.0.0.1:9479/readyz"],
    );
    assert_eq!(ready.expect("readyz").trim(), "ready");
}

#[test]
fn fifty_megabytes_each_way_arrive_intact_through_the_tunnel() {
    fifty_megabytes_each_way(Cni::Routed);
}

#[test]
fn fifty_megabytes_each_way_arrive_intact_through_the_tunnel_bridge() {
    fifty_megabytes_each_way(Cni::Bridge);
}

#[test]
fn a_transfer_survives_sigkill_and_restart_of_every_agent() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &["pod-worker1-0"], None);
    let mut agents = start_agents(&lab, &cfg);
    let server = BulkServer::start(&lab.internet().ns, INTERNET_HOST, 5002);
    let ns = lab.pod("pod-worker1-0").ns.clone();
    let addr = server.addr;
    // ~8 MB paced over ~4 s, so that the restarts happen mid-transfer.
    let upload =
        std::thread::spawn(move || bulk_upload(&ns, addr, 8 * MB, Some(Duration::from_millis(30))));
    std::thread::sleep(Duration::from_millis(800));
    for a in &mut agents {
        a.kill();
    }
    std::thread::sleep(Duration::from_millis(500));
    for a in &mut agents {
        a.restart().expect("restart");
    }
    assert!(
        upload.join().expect("thread").expect("upload"),
        "transfer corrupted across the restart"
    );
    for a in &agents {
        let restarted = eventually(Duration::from_secs(20), || {
            (a.log().matches("datapath loaded").count() >= 2).then_some(())
        });
        assert!(
            restarted.is_some(),
            "agent on {} restarted; log:\n{}",
            a.node,
            a.log()
        );
    }
}

fn port_unreachable_reaches_the_pod(cni: Cni) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(&lab, &["pod-worker1-0", "pod-gateway-0"], None);
    let agents = start_agents(&lab, &cfg);
    let closed = std::net::SocketAddrV4::new(INTERNET_HOST, 9);
    for pod in ["pod-worker1-0", "pod-gateway-0"] {
        assert_eq!(
            udp_error(&lab.pod(pod).ns, closed),
            Some(std::io::ErrorKind::ConnectionRefused),
            "{pod}: the reverse-translated ICMP error reaches the socket"
        );
    }
    // Both datagrams went through the gateway's NAT (so the ICMP errors came back through
    // its reverse translation, not through a node's masquerade).
    let nat = agents[0].inspect("nat").expect("inspect nat");
    let to_port_9 = nat
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| f["proto"] == "udp" && f["remote"] == "198.51.100.10:9")
        .count();
    assert_eq!(to_port_9, 2, "{nat:#}");
    agents[0].assert_nat_consistent();
}

#[test]
fn port_unreachable_from_the_internet_reaches_the_pod() {
    port_unreachable_reaches_the_pod(Cni::Routed);
}

#[test]
fn port_unreachable_from_the_internet_reaches_the_pod_bridge() {
    port_unreachable_reaches_the_pod(Cni::Bridge);
}

/// The agent follows pod interfaces by netlink events, not by polling: the pod's veth goes
/// (a CNI's DEL: the endpoint is forgotten) and comes back (a CNI's ADD: the veth first, the
/// pod's address 300 ms later; programmed again), each within a second, while the periodic
/// resync is 30 s away. On routed veths a /32 route going alone changes nothing: the veth's far end
/// still holds the pod's address.
fn a_pod_interface_going_and_coming_back(cni: Cni) {
    require_root();
    let lab = Lab::up(&LabSpec {
        cni,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(&lab, &["pod-worker1-0"], None);
    let agents = start_agents(&lab, &cfg);
    let worker1 = agents
        .iter()
        .find(|a| a.node == "worker1")
        .expect("worker1 agent");
    let pod = lab.pod("pod-worker1-0");
    let node_ns = &lab.node("worker1").ns;
    let has_endpoint = |a: &Agent| {
        a.inspect("endpoints").ok().and_then(|eps| {
            Some(
                eps.as_array()?
                    .iter()
                    .any(|e| e["ip"] == pod.ip.to_string() && e["selected"] == true),
            )
        })
    };
    assert_eq!(has_endpoint(worker1), Some(true));
    if cni == Cni::Routed {
        let route = format!("{}/32", pod.ip);
        exec(
            node_ns,
            &["ip", "route", "del", &route, "dev", &pod.host_veth],
        )
        .expect("route del");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            has_endpoint(worker1),
            Some(true),
            "the veth's far end still holds the pod's address"
        );
        exec(
            node_ns,
            &["ip", "route", "add", &route, "dev", &pod.host_veth],
        )
        .expect("route add");
    }

    lab.unplug_pod("pod-worker1-0").expect("unplug");
    let start = Instant::now();
    let gone = eventually(Duration::from_secs(5), || {
        (has_endpoint(worker1) == Some(false)).then(|| start.elapsed())
    })
    .expect("endpoint forgotten");
    assert!(gone < Duration::from_secs(1), "took {gone:?}");

    // The address comes 300 ms after the veth is up (IPAM in between): no event on the node
    // says so; the reconciler's follow-ups after the link events find it.
    lab.replug_pod("pod-worker1-0", Duration::from_millis(300))
        .expect("replug");
    let start = Instant::now();
    let back = eventually(Duration::from_secs(5), || {
        (has_endpoint(worker1) == Some(true)).then(|| start.elapsed())
    })
    .expect("endpoint programmed again");
    assert!(back < Duration::from_secs(1), "took {back:?}");
    assert!(
        worker1.log().contains("trigger=Netlink"),
        "{}",
        worker1.log()
    );
    let tcp = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    assert_eq!(
        tcp_source(&lab, &tcp, "pod-worker1-0"),
        IpAddr::V4(GATEWAY_IP)
    );
}

#[test]
fn a_pod_interface_going_and_coming_back_is_followed_within_a_second() {
    a_pod_interface_going_and_coming_back(Cni::Routed);
}

#[test]
fn a_pod_interface_going_and_coming_back_is_followed_within_a_second_bridge() {
    a_pod_interface_going_and_coming_back(Cni::Bridge);
}
