//! What a flow leaves behind: the NAT entries of a pod that is gone (a new pod with its
//! address must never get the old flows' answers), and a claim entry left by an agent
//! stopped mid-pass (collected after about a second, not kept for good).

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent,
    config::{self, ConfigSpec},
    fake_api::{self, FakeApi},
    lab::{in_netns, require_root, Lab, LabSpec, INTERNET_HOST},
    net::eventually,
};
use serde_json::{json, Value};

const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const POD: &str = "pod-worker1-0";
const SERVER_PORT: u16 = 5300;
const POD_PORT: u16 = 40000;

fn write_config(lab: &Lab, only_pods: Option<&[&str]>, extra: &str) -> std::path::PathBuf {
    config::write_config(
        lab,
        &ConfigSpec {
            selected: &[POD, "pod-gateway-0"],
            only_pods,
            extra,
            ..ConfigSpec::default()
        },
    )
}

fn start_agents(lab: &Lab, config: &Path) -> Vec<Agent> {
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

fn udp_in(ns: &str, addr: SocketAddrV4) -> UdpSocket {
    let s = in_netns(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s
}

/// What `sock` receives within its timeout.
fn recv(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

/// The NAT map's entries, as bpftool prints them with BTF (`key`/`value` objects).
fn nat_entries(pin_root: &Path) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_root.join("maps/EGW_NAT4"))
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {out:?}");
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool json");
    // With BTF, `-j` prints the raw bytes and the fields under "formatted".
    all.into_iter()
        .map(|e| e.get("formatted").cloned().unwrap_or(e))
        .collect()
}

/// A raw (network byte order) address as bpftool prints a u32 field.
fn raw(ip: Ipv4Addr) -> u64 {
    u64::from(u32::from_ne_bytes(ip.octets()))
}

/// Entries whose pod side is `pod`: forward keys from it, reverse values to it.
fn entries_of(entries: &[Value], pod: Ipv4Addr) -> Vec<Value> {
    entries
        .iter()
        .filter(|e| {
            e["key"]["kind"] == 0
                && (e["key"]["saddr"] == raw(pod)
                    || (e["value"]["flags"].as_u64().unwrap_or(0) & 1 != 0
                        && e["value"]["addr"] == raw(pod)))
        })
        .cloned()
        .collect()
}

fn claims(entries: &[Value]) -> usize {
    entries.iter().filter(|e| e["key"]["kind"] == 1).count()
}

/// Bytes of a value in host order, as `bpftool map update ... hex` wants them.
fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The time of day (seconds) of the last log line containing `what` (the log's lines start
/// with an RFC 3339 UTC time).
fn last_line_time(log: &str, what: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(what))?;
    let clock = line.get(11..26)?; // HH:MM:SS.ffffff
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the datapath's and the agent's stamps).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Puts a claim entry for the reverse key `{remote, egress, remote port, nat port, UDP}`
/// stamped `stamp_ns` (0: none, what the datapath's claims carry; an agent's carry the time
/// it took them).
fn inject_claim(pin_root: &Path, remote: SocketAddrV4, egress: SocketAddrV4, stamp_ns: u64) {
    let mut key = Vec::new();
    key.extend(remote.ip().octets());
    key.extend(egress.ip().octets());
    key.extend(remote.port().to_be_bytes());
    key.extend(egress.port().to_be_bytes());
    key.extend([17, 1, 0, 0]); // proto UDP, kind NAT_KEY_CLAIM, padding
    let mut value = vec![0u8; size_of::<egress_common::nat::NatEntry4>()];
    let at = std::mem::offset_of!(egress_common::nat::NatEntry4, last_seen_ns);
    value[at..at + 8].copy_from_slice(&stamp_ns.to_ne_bytes());
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(pin_root.join("maps/EGW_NAT4"))
        .arg("key")
        .args(["hex"])
        .args(hex(&key))
        .arg("value")
        .args(["hex"])
        .args(hex(&value))
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool map update: {out:?}");
}

/// The pod opens a UDP flow to the internet host; returns the pod's socket, the server's, and
/// the address the server saw (the egress IP and NAT port).
fn open_flow(lab: &Lab, pod: &str) -> (UdpSocket, UdpSocket, SocketAddrV4) {
    let server = udp_in(
        &lab.internet().ns,
        SocketAddrV4::new(INTERNET_HOST, SERVER_PORT),
    );
    let pod = udp_in(
        &lab.pod(pod).ns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, POD_PORT),
    );
    pod.send_to(b"query", SocketAddrV4::new(INTERNET_HOST, SERVER_PORT))
        .expect("send");
    let (msg, from) = recv(&server).expect("the server hears the pod");
    assert_eq!(msg, b"query");
    let SocketAddr::V4(from) = from else {
        panic!("{from}")
    };
    assert_eq!(*from.ip(), GATEWAY_IP, "the pod leaves with the egress IP");
    (pod, server, from)
}

/// A pod of `node` opens a flow, is deleted, and a new pod gets its address.
fn new_pod_with_a_deleted_pods_address(node: &str) {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let all: Vec<&str> = lab.pods().iter().map(|p| p.name.as_str()).collect();
    let name = format!("pod-{node}-0");
    let cfg = write_config(&lab, None, "");
    let agents = start_agents(&lab, &cfg);
    let gateway = &agents[0];
    assert_eq!(gateway.node, "gateway");
    let own = agents
        .iter()
        .find(|a| a.node == node)
        .expect("the pod's agent");
    let pod_ip = lab.pod(&name).ip;
    let (pod, server, egress) = open_flow(&lab, &name);

    // Control: while the pod lives, the answer reaches it.
    server.send_to(b"answer 1", egress).expect("send");
    let got = recv(&pod).map(|(m, _)| m);
    assert_eq!(
        got.as_deref(),
        Some(&b"answer 1"[..]),
        "the pod gets its answer"
    );
    assert!(
        !entries_of(&nat_entries(&gateway.pin_root), pod_ip).is_empty(),
        "the gateway holds the pod's flow"
    );

    // The pod is deleted (gone from the source), then a new pod gets its address.
    let others: Vec<&str> = all.iter().copied().filter(|p| *p != name).collect();
    write_config(&lab, Some(&others), "");
    let flushed = eventually(Duration::from_secs(5), || {
        entries_of(&nat_entries(&gateway.pin_root), pod_ip)
            .is_empty()
            .then_some(())
    });
    let left = entries_of(&nat_entries(&gateway.pin_root), pod_ip);
    assert!(
        flushed.is_some(),
        "the gateway keeps the deleted pod's NAT entries: {left:#?}\n{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("flows of departed pods flushed"),
        "{}",
        gateway.log()
    );
    // Counted once the pass is over.
    let counted = eventually(Duration::from_secs(5), || {
        let metrics = egress_tests::lab::exec(
            &gateway.ns,
            &["curl", "-sf", "http://127.0.0.1:9479/metrics"],
        )
        .ok()?;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("egress_departed_pod_entries_flushed_total ") && !l.ends_with(" 0")
            })
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "egress_departed_pod_entries_flushed_total stays 0"
    );
    let forgot = eventually(Duration::from_secs(5), || {
        own.log()
            .contains("flows of departed pods flushed")
            .then_some(())
    });
    assert!(
        forgot.is_some(),
        "the pod's node forgets the flows it sent: {}",
        own.log()
    );
    write_config(&lab, Some(&all), "");
    eventually(Duration::from_secs(5), || {
        let eps = own.inspect("endpoints").ok()?;
        eps.as_array()?
            .iter()
            .any(|e| e["ip"] == pod_ip.to_string() && e["selected"] == true)
            .then_some(())
    })
    .expect("the new pod is programmed");

    // The old flow's answer: the new pod (the same socket, the same address) must not get it.
    server.send_to(b"answer 2", egress).expect("send");
    let got = recv(&pod);
    assert!(
        got.is_none(),
        "the new pod got the deleted pod's answer: {got:?}"
    );
    // Control: the new pod's own flow works, answers included.
    pod.send_to(b"query 2", SocketAddrV4::new(INTERNET_HOST, SERVER_PORT))
        .expect("send");
    let (_, from) = recv(&server).expect("the server hears the new pod");
    server.send_to(b"answer 3", from).expect("send");
    let got = recv(&pod).map(|(m, _)| m);
    assert_eq!(got.as_deref(), Some(&b"answer 3"[..]));
    gateway.assert_nat_consistent();
}

#[test]
fn a_new_pod_with_a_deleted_pods_address_never_gets_its_flows_answers() {
    new_pod_with_a_deleted_pods_address("worker1");
}

#[test]
fn a_new_pod_with_a_deleted_pods_address_never_gets_its_flows_answers_on_the_gateway() {
    new_pod_with_a_deleted_pods_address("gateway");
}

#[test]
fn a_claim_left_behind_is_collected_within_two_seconds_and_frees_its_flow() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    // UDP flows expire after 2 s idle; the agents collect every second (the lab's agents run
    // with --gc-interval-s 1).
    let extra = "nat:\n  timeouts:\n    udp: 2\n";
    let cfg = write_config(&lab, None, extra);
    let agents = start_agents(&lab, &cfg);
    let gateway = &agents[0];
    let pod_ip = lab.pod(POD).ip;
    let (_pod, _server, egress) = open_flow(&lab, POD);
    let remote = SocketAddrV4::new(INTERNET_HOST, SERVER_PORT);

    // What a pass interrupted between taking and releasing the flow's claim leaves.
    inject_claim(&gateway.pin_root, remote, egress, 0);
    assert_eq!(claims(&nat_entries(&gateway.pin_root)), 1, "injected");
    let start = Instant::now();
    let gone = eventually(Duration::from_secs(5), || {
        (claims(&nat_entries(&gateway.pin_root)) == 0).then(|| start.elapsed())
    });
    let took =
        gone.unwrap_or_else(|| panic!("the claim is still there after 5 s:\n{}", gateway.log()));
    assert!(
        took >= Duration::from_millis(900),
        "a claim is not collected at first sight (it may be held): {took:?}"
    );
    assert!(took <= Duration::from_millis(2500), "took {took:?}");
    assert!(gateway.log().contains("left behind"), "{}", gateway.log());
    let metrics = egress_tests::lab::exec(
        &gateway.ns,
        &["curl", "-sf", "http://127.0.0.1:9479/metrics"],
    )
    .expect("metrics");
    assert!(
        metrics.contains("egress_nat_claims_collected_total 1"),
        "{metrics}"
    );
    // The flow it blocked expires as its timeout says.
    let expired = eventually(Duration::from_secs(5), || {
        entries_of(&nat_entries(&gateway.pin_root), pod_ip)
            .is_empty()
            .then_some(())
    });
    assert!(
        expired.is_some(),
        "the flow outlives its timeout: {:#?}",
        entries_of(&nat_entries(&gateway.pin_root), pod_ip)
    );
    gateway.assert_nat_consistent();
}

/// The "mail" policy's condition `type_` in the agent's status file: (status, reason, message).
fn condition(state_dir: &Path, type_: &str) -> Option<(String, String, String)> {
    let text = std::fs::read_to_string(state_dir.join("policies.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let c = v["mail"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str().unwrap_or("").to_owned(),
    ))
}

fn sysctl(ns: &str, setting: &str) {
    egress_tests::lab::exec(ns, &["sysctl", "-qw", setting])
        .unwrap_or_else(|e| panic!("sysctl {setting} in {ns}: {e}"));
}

#[test]
fn the_gateway_says_when_its_own_ephemeral_ports_reach_into_the_nat_range() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let gw_ns = lab.gateway().ns.clone();
    // A host tuned for many outgoing connections; the egress IP is the node's own address.
    sysctl(&gw_ns, "net.ipv4.ip_local_port_range=1024 65535");
    let cfg = write_config(&lab, None, "");
    let agents = start_agents(&lab, &cfg);
    let gateway = &agents[0];
    let shared = eventually(Duration::from_secs(5), || {
        condition(&gateway.state_dir, "HostPortsApart").filter(|(s, _, _)| s == "False")
    })
    .unwrap_or_else(|| panic!("no HostPortsApart=False:\n{}", gateway.log()));
    assert_eq!(shared.1, "EphemeralPortsOverlap");
    assert!(
        shared
            .2
            .contains("net.ipv4.ip_local_reserved_ports=\"61000-65535\""),
        "says what to set: {}",
        shared.2
    );
    assert!(
        gateway.log().contains("EphemeralPortsOverlap"),
        "a warning in the log:\n{}",
        gateway.log()
    );
    // Control: done as it says (the NAT range reserved), the next pass is content.
    sysctl(&gw_ns, "net.ipv4.ip_local_reserved_ports=61000-65535");
    write_config(&lab, None, "# touched\n");
    let apart = eventually(Duration::from_secs(5), || {
        condition(&gateway.state_dir, "HostPortsApart").filter(|(s, _, _)| s == "True")
    })
    .unwrap_or_else(|| panic!("no HostPortsApart=True:\n{}", gateway.log()));
    assert_eq!(apart.1, "OutsideEphemeralPorts");
}

#[test]
fn a_claim_a_killed_agent_left_is_collected_at_the_next_pass() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, None, "");
    let mut agents = start_agents(&lab, &cfg);
    let (_pod, _server, egress) = open_flow(&lab, POD);
    let remote = SocketAddrV4::new(INTERNET_HOST, SERVER_PORT);
    let gateway = &mut agents[0];
    // The agent is killed between taking a flow's claim (stamped) and releasing it.
    gateway.kill();
    inject_claim(
        &gateway.pin_root,
        remote,
        egress,
        monotonic_ns() - 5_000_000_000,
    );
    // The check sees it too, and says so.
    let (ok, text) = gateway.nat_check();
    assert!(!ok && text.contains("never released"), "{text}");
    gateway.restart().expect("restart");
    let start = Instant::now();
    let took = eventually(Duration::from_secs(10), || {
        (claims(&nat_entries(&gateway.pin_root)) == 0).then(|| start.elapsed())
    })
    .unwrap_or_else(|| panic!("the claim is still there:\n{}", gateway.log()));
    // The restarted agent's first pass (its datapath loaded, at most a second of waiting for
    // the collection tick) deletes it: no second look needed for a stamped claim.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // At the restarted agent's first collection, right after its first pass: a stamped
    // claim needs no second look a second later.
    let log = gateway.log();
    let started = last_line_time(&log, "reconciled trigger=Start").expect("a first pass");
    let deleted = last_line_time(&log, "left behind").unwrap_or_else(|| panic!("{log}"));
    assert!(
        deleted - started < 0.5,
        "deleted {:.3} s after the first pass:\n{log}",
        deleted - started
    );
    // Control: the flow itself is live and stays (UDP, 60 s).
    assert!(!entries_of(&nat_entries(&gateway.pin_root), lab.pod(POD).ip).is_empty());
    gateway.assert_nat_consistent();
}

/// The lab's pods, nodes and the mail policy in a fake API server, `selected` pods labelled
/// `app: mail` with uid `uid`; agents on every node with `--kubernetes`.
fn kubernetes_lab(lab: &Lab, selected: &str, uid: &str) -> (FakeApi, Vec<Agent>) {
    let api = FakeApi::new().expect("fake API server");
    for n in lab.nodes() {
        let labels = if n.name == "gateway" {
            json!({"egress-gateway": "true"})
        } else {
            json!({})
        };
        api.put(fake_api::node(&n.name, n.underlay_ip, labels));
    }
    api.put(fake_api::namespace("mailu", json!({"team": "mail"})));
    for p in lab.pods() {
        let app = if p.name == selected { "mail" } else { "other" };
        let mut obj = fake_api::pod("mailu", &p.name, p.ip, &p.node, app);
        obj["metadata"]["uid"] = json!(format!("{}-{uid}", p.name));
        api.put(obj);
    }
    api.put(fake_api::policy(
        "mail",
        json!({
            "selectors": [{
                "podSelector": {"matchLabels": {"app": "mail"}},
                "namespaceSelector": {"matchLabels": {"team": "mail"}},
            }],
            "destinationCIDRs": ["198.51.100.0/24"],
            "gateway": {"nodeSelector": {"matchLabels": {"egress-gateway": "true"}}},
        }),
    ));
    let settings = lab.dir().join("settings.yaml");
    std::fs::write(&settings, "nat: { portRange: [61000, 65535] }\n").expect("settings");
    let agents: Vec<Agent> = lab
        .nodes()
        .iter()
        .map(|n| {
            let kubeconfig = api.serve_in(&n.ns, &lab.dir()).expect("serve in the node");
            Agent::start_kubernetes(lab, &n.name, &settings, &kubeconfig).expect("agent")
        })
        .collect();
    for a in &agents {
        let pods = lab.pods().iter().filter(|p| p.node == a.node).count();
        a.wait_endpoints(pods, Duration::from_secs(20))
            .expect("agent programs its pods from the API");
    }
    (api, agents)
}

#[test]
fn a_pod_replaced_under_the_same_name_and_address_never_gets_the_old_ones_answers() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let (api, agents) = kubernetes_lab(&lab, POD, "old");
    let gateway = agents.iter().find(|a| a.node == "gateway").expect("gw");
    let worker1 = agents.iter().find(|a| a.node == "worker1").expect("w1");
    let p = lab.pod(POD).clone();
    eventually(Duration::from_secs(5), || {
        let eps = worker1.inspect("endpoints").ok()?;
        eps.as_array()?
            .iter()
            .any(|e| e["ip"] == p.ip.to_string() && e["selected"] == true)
            .then_some(())
    })
    .expect("the pod is selected");
    let (pod, server, egress) = open_flow(&lab, POD);
    // Control: the answer reaches the pod that asked.
    server.send_to(b"answer 1", egress).expect("send");
    assert_eq!(
        recv(&pod).map(|(m, _)| m).as_deref(),
        Some(&b"answer 1"[..])
    );

    // A StatefulSet's pod deleted and created again with the same name, node and address,
    // and the agents saw only the new object (a watch gap and a relist): every map entry
    // stays as it was, only the uid tells the pods apart.
    let mut obj = fake_api::pod("mailu", &p.name, p.ip, &p.node, "mail");
    obj["metadata"]["uid"] = json!(format!("{}-new", p.name));
    api.put(obj);
    let flushed = eventually(Duration::from_secs(5), || {
        (gateway.log().contains("flows of departed pods flushed")
            && worker1.log().contains("flows of departed pods flushed"))
        .then_some(())
    });
    assert!(
        flushed.is_some(),
        "gateway:\n{}\nworker1:\n{}",
        gateway.log(),
        worker1.log()
    );
    assert!(
        entries_of(&nat_entries(&gateway.pin_root), p.ip).is_empty(),
        "the gateway keeps the old pod's NAT entries"
    );
    server.send_to(b"answer 2", egress).expect("send");
    let got = recv(&pod);
    assert!(
        got.is_none(),
        "the new pod got the old one's answer: {got:?}"
    );
    // Control: the new pod's own flow works.
    pod.send_to(b"query 2", SocketAddrV4::new(INTERNET_HOST, SERVER_PORT))
        .expect("send");
    let (_, from) = recv(&server).expect("the server hears the new pod");
    server.send_to(b"answer 3", from).expect("send");
    assert_eq!(
        recv(&pod).map(|(m, _)| m).as_deref(),
        Some(&b"answer 3"[..])
    );
}
