//! An upgrade from the previous release (issue 14's upgrade test): agents of an earlier build
//! of this repository (`egress_tests::previous`: that commit's own agent binary, its own eBPF
//! object embedded, built by `cargo xtask build-previous`) run with connections open and are
//! restarted with this build, node by node, the workers first, as a DaemonSet's rolling update
//! goes.
//!
//! Between the two builds the programs differ and one entry grew: `NatEntry4`, the value of
//! the gateway's NAT table (`EGW_NAT4`) and of the fragments' (`EGW_FRAG4`), went from 24 to
//! 32 bytes; every other map kept its layout. What the test holds the upgrade to:
//!
//! - Every hook of every node runs this build's program: new program ids, and the
//!   instructions of this build's object (`bpf_prog_info.tag` equal to a load of it here);
//!   none of the previous release's programs is left attached or loaded anywhere.
//! - A map that fits is kept as it is (same map id), and what lives in it survives: the
//!   worker's pod keeps its connection across the worker's upgrade (answers come back
//!   through the tunnel only to flows in the worker's flow table), and an internet client
//!   keeps its connection to the gateway's selected pod through a NodePort across the
//!   gateway's upgrade (the gateway's flow table says the pod answers a peer: without it,
//!   the answers would be translated to the egress IP and lost).
//! - The NAT table does not fit: it is replaced, with a warning naming it, no program uses
//!   the old one and it is freed. The connections it translated are reset cleanly, which
//!   here means: nothing of an old connection reaches its pod any more (the server's next
//!   segment is refused by the gateway host with a reset, and neither a packet nor a byte of
//!   it arrives in the pod); the pod's next segment leaves as the egress IP, translated
//!   afresh, and the server's reset reaches the pod (ConnectionReset, never a hang); new
//!   connections leave as the egress IP; `inspect` of the new agent reads the new maps.
//!
//! A downgrade is not tested.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use egress_common::{map_names, nat::NatEntry4};
use egress_tests::{
    agent::{time_scale, Agent},
    attack::Capture,
    config::{write_config, ConfigSpec},
    lab::{exec, in_netns, require_root, Lab, LabSpec, INTERNET_HOST},
    net::eventually,
    previous::{self, Previous},
    progs::{self, MapInfo, Prog},
};

const W1_POD: &str = "pod-worker1-0";
const GW_POD: &str = "pod-gateway-0";
const WORKERS: [&str; 2] = ["worker1", "worker2"];
const SMTP: u16 = 25;
/// The gateway's NodePort to its pod's port `POD_PORT`.
const NODE_PORT: u16 = 30025;
const POD_PORT: u16 = 2525;

fn wait() -> Duration {
    Duration::from_secs(30) * time_scale()
}

/// A TCP server whose accepted connections the test takes over: it plays the server's side
/// itself (what is sent, and when).
struct Held {
    conns: mpsc::Receiver<(TcpStream, SocketAddr)>,
}

impl Held {
    fn start(ns: &str, ip: Ipv4Addr, port: u16) -> Held {
        let addr = SocketAddrV4::new(ip, port);
        let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let Ok(peer) = s.peer_addr() else { continue };
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                if tx.send((s, peer)).is_err() {
                    break;
                }
            }
        });
        Held { conns: rx }
    }

    /// The next accepted connection and its peer.
    fn next(&self, what: &str) -> (TcpStream, SocketAddr) {
        self.conns
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what}: no connection reached the server"))
    }

    /// The peers of connections accepted and not taken (none expected).
    fn unexpected(&self) -> Vec<SocketAddr> {
        self.conns.try_iter().map(|(_, p)| p).collect()
    }
}

/// A connection open through the datapath: both of its ends.
struct Flow {
    what: String,
    client: TcpStream,
    server: TcpStream,
}

impl Flow {
    /// A line from the server, then one from the client, each checked where it arrives. The
    /// server speaks first: what reaches the client is delivered by the state the datapath
    /// kept, not by a record the client's own next segment would have written anew.
    fn exchange(&mut self, when: &str) {
        let what = format!("{} ({when})", self.what);
        let answer = b"250 2.1.5 Ok\r\n";
        self.server
            .write_all(answer)
            .unwrap_or_else(|e| panic!("{what}: server send: {e}"));
        let mut got = [0u8; 14];
        self.client
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{what}: the client did not get the server's line: {e}"));
        assert_eq!(&got, answer, "{what}");
        let ask = b"RCPT TO:<b@example.org>\r\n";
        self.client
            .write_all(ask)
            .unwrap_or_else(|e| panic!("{what}: client send: {e}"));
        let mut got = [0u8; 25];
        self.server
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{what}: the server did not get the client's line: {e}"));
        assert_eq!(&got, ask, "{what}");
    }
}

fn connect(ns: &str, to: SocketAddrV4, what: &str) -> TcpStream {
    let s = in_netns(ns, || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))
    })
    .unwrap_or_else(|e| panic!("{what}: connect to {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// A connection from `pod` to the internet host's mail port; asserts it leaves as `egress`.
fn outbound(lab: &Lab, server: &Held, pod: &str, egress: Ipv4Addr) -> (Flow, SocketAddr) {
    let client = connect(
        &lab.pod(pod).ns,
        SocketAddrV4::new(INTERNET_HOST, SMTP),
        pod,
    );
    let (server, peer) = server.next(pod);
    assert_eq!(
        peer.ip(),
        IpAddr::V4(egress),
        "{pod} leaves as the egress IP"
    );
    let mut f = Flow {
        what: format!("{pod} to the internet"),
        client,
        server,
    };
    f.exchange("opened");
    (f, peer)
}

/// A NodePort on the gateway (the client's address kept, as with externalTrafficPolicy
/// Local): its address's `NODE_PORT` DNATed to `pod`:`POD_PORT`, as kube-proxy does.
fn node_port(lab: &Lab, pod: Ipv4Addr) {
    let gw = lab.gateway();
    for cmd in [
        "add table ip nodeport".to_owned(),
        "add chain ip nodeport prerouting { type nat hook prerouting priority dstnat; }".to_owned(),
        format!(
            "add rule ip nodeport prerouting ip daddr {} tcp dport {NODE_PORT} dnat to {pod}:{POD_PORT}",
            gw.external_ip
        ),
    ] {
        let args: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        exec(&gw.ns, &args).unwrap_or_else(|e| panic!("gateway: nft {cmd}: {e}"));
    }
}

/// `GET path` from the agent's metrics server inside `ns`: the status code.
fn http_status(ns: &str, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    in_netns(ns, || {
        let mut s = TcpStream::connect("127.0.0.1:9479").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split(' ').nth(1)?.parse().ok()
    })
}

fn wait_ready(agent: &Agent) {
    let ok = eventually(wait(), || {
        (http_status(&agent.ns, "/readyz") == Some(200)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} not ready: /readyz {:?}; log:\n{}",
        agent.node,
        http_status(&agent.ns, "/readyz"),
        agent.log()
    );
}

/// Waits until `agent`'s node carries exactly its programs, none of them in `old`, and checks
/// that each is the program of that name in the object whose tags are `tags`.
fn wait_programs(
    lab: &Lab,
    agent: &Agent,
    old: &BTreeSet<u32>,
    tags: &BTreeMap<String, u64>,
    build: &str,
) -> BTreeMap<String, Prog> {
    let mut last = String::new();
    let got = eventually(wait(), || {
        match progs::programs_if_complete(lab, &agent.node, false) {
            Ok(p) if p.values().all(|p| !old.contains(&p.id)) => Some(p),
            Ok(p) => {
                last = format!("programs of the previous build still attached: {p:#?}");
                None
            }
            Err(e) => {
                last = e;
                None
            }
        }
    });
    let got = got.unwrap_or_else(|| panic!("{last}; log of {}:\n{}", agent.node, agent.log()));
    for (hook, p) in &got {
        assert_eq!(
            previous::prog_tag(p.id),
            tags.get(&p.name).copied(),
            "{}: {hook} runs {} (id {}), not the one of {build}'s object",
            agent.node,
            p.name,
            p.id
        );
    }
    got
}

fn ids(progs: &BTreeMap<String, Prog>) -> BTreeSet<u32> {
    progs.values().map(|p| p.id).collect()
}

fn map_path(agent: &Agent, name: &str) -> PathBuf {
    agent.pin_root.join("maps").join(name)
}

/// Every pinned map of `agent`'s node, by name.
fn pinned_maps(agent: &Agent) -> BTreeMap<&'static str, MapInfo> {
    map_names::ALL
        .into_iter()
        .filter_map(|n| Some((n, progs::pinned_map(&map_path(agent, n))?)))
        .collect()
}

/// Restarts `agent` with this build; returns where its log stood.
fn upgrade(agent: &mut Agent) -> usize {
    let from = agent.log().len();
    agent.bin = None;
    agent
        .restart()
        .unwrap_or_else(|e| panic!("{}: restart with this build: {e}", agent.node));
    from
}

/// After `agent`'s upgrade (its log from `from` on): every map of the previous build's shape
/// was kept as it is (the same map), every other one was named in a log line, the NAT table
/// among them (its entry grew), with a warning that it was replaced.
fn check_maps(agent: &Agent, before: &BTreeMap<&'static str, MapInfo>, from: usize) {
    let after = pinned_maps(agent);
    let log = agent.log().get(from..).unwrap_or("").to_owned();
    for (name, old) in before {
        let new = after
            .get(name)
            .unwrap_or_else(|| panic!("{}: {name} not pinned after the upgrade", agent.node));
        let same_shape = (old.map_type, old.key_size, old.value_size, old.max_entries)
            == (new.map_type, new.key_size, new.value_size, new.max_entries);
        if same_shape {
            assert_eq!(
                old.id, new.id,
                "{}: {name} fits this build and must be kept as it is; log:\n{log}",
                agent.node
            );
        } else {
            assert!(
                log.contains(&format!("pinned map {name} ")),
                "{}: {name} changed ({old:?} -> {new:?}) without a log line naming it:\n{log}",
                agent.node
            );
        }
    }
    let nat = after[map_names::NAT4];
    assert_eq!(
        nat.value_size as usize,
        size_of::<NatEntry4>(),
        "{}: the NAT table has this build's entry",
        agent.node
    );
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&format!(
                "pinned map {} does not fit this build",
                map_names::NAT4
            ))),
        "{}: no warning that the NAT table was replaced:\n{log}",
        agent.node
    );
    assert!(
        !log.contains("ERROR"),
        "{}: errors after the upgrade:\n{log}",
        agent.node
    );
}

/// The hosts that sent the packets of a capture (tcpdump's `-n -r` lines) towards `to`.
fn sources_towards(lines: &[String], to: SocketAddrV4) -> Vec<String> {
    let mark = format!(" > {}.{}:", to.ip(), to.port());
    lines
        .iter()
        .filter(|l| l.contains(&mark))
        .map(|l| {
            let src = l.split(" > ").next().unwrap_or("");
            let src = src.rsplit(' ').next().unwrap_or("");
            // `a.b.c.d.port`: the address.
            src.rsplit_once('.').map_or(src, |(a, _)| a).to_owned()
        })
        .collect()
}

#[test]
fn an_upgrade_from_the_previous_release_keeps_the_flows_it_can_and_resets_the_rest_cleanly() {
    require_root();
    let prev: Previous = previous::find();
    let started = Instant::now();
    let old_tags = previous::object_tags(&prev.object);
    let new_tags = previous::object_tags(&previous::current_object());
    // Programs this build added count as changed.
    let changed: Vec<&String> = new_tags
        .iter()
        .filter(|(n, t)| old_tags.get(*n) != Some(*t))
        .map(|(n, _)| n)
        .collect();
    assert!(
        !changed.is_empty(),
        "no program differs from the previous release's"
    );
    eprintln!("programs that differ from the previous release's: {changed:?}");

    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &[W1_POD, GW_POD],
            ..ConfigSpec::default()
        },
    );
    let egress = lab.gateway().external_ip;

    // The previous release on every node.
    let mut agents: BTreeMap<String, Agent> = lab
        .nodes()
        .iter()
        .map(|n| {
            let a = Agent::start_binary(&lab, &n.name, &cfg, &[], Some(&prev.agent))
                .expect("start the previous release's agent");
            (n.name.clone(), a)
        })
        .collect();
    let mut old_programs = BTreeSet::new();
    let mut old_maps = BTreeMap::new();
    for a in agents.values() {
        let pods = lab.pods().iter().filter(|p| p.node == a.node).count();
        a.wait_endpoints(pods, wait()).expect("programs its pods");
        a.wait_status(wait()).expect("saves its status");
        wait_ready(a);
        let p = wait_programs(&lab, a, &BTreeSet::new(), &old_tags, "the previous release");
        old_programs.extend(ids(&p));
        let maps = pinned_maps(a);
        let nat = maps[map_names::NAT4];
        assert!(
            (nat.value_size as usize) < size_of::<NatEntry4>(),
            "{}: the previous release's NAT entry is {} bytes, this build's {}: the test needs \
             a previous release whose NAT entry is smaller (egress_tests::previous::COMMIT)",
            a.node,
            nat.value_size,
            size_of::<NatEntry4>()
        );
        old_maps.insert(a.node.clone(), maps);
    }

    // Connections open through the previous release's datapath.
    let server = Held::start(&lab.internet().ns, INTERNET_HOST, SMTP);
    let (mut w1, _) = outbound(&lab, &server, W1_POD, egress);
    let (mut gwp, _) = outbound(&lab, &server, GW_POD, egress);
    let gw_pod = lab.pod(GW_POD).clone();
    let pod_server = Held::start(&gw_pod.ns, gw_pod.ip, POD_PORT);
    node_port(&lab, gw_pod.ip);
    let client = connect(
        &lab.internet().ns,
        SocketAddrV4::new(lab.gateway().external_ip, NODE_PORT),
        "internet client",
    );
    let (pod_side, peer) = pod_server.next("NodePort");
    assert_eq!(
        peer.ip(),
        IpAddr::V4(INTERNET_HOST),
        "the client's address is kept"
    );
    let mut inbound = Flow {
        what: format!("internet client to {GW_POD} through the gateway's NodePort"),
        client,
        server: pod_side,
    };
    inbound.exchange("opened");

    // The workers first. Their pod's connection lives in the worker's flow table (kept) and
    // the gateway's NAT table (not touched yet): it goes on.
    for w in WORKERS {
        let a = agents.get_mut(w).expect("worker agent");
        let from = upgrade(a);
        wait_programs(&lab, a, &old_programs, &new_tags, "this build");
        wait_ready(a);
        check_maps(a, &old_maps[w], from);
    }
    w1.exchange("after the workers' upgrade");
    gwp.exchange("after the workers' upgrade");
    inbound.exchange("after the workers' upgrade");
    assert!(
        server.unexpected().is_empty(),
        "the open connections must not have been replaced"
    );
    // This build's worker with the previous release's gateway: a new connection.
    let (mut mixed, _) = outbound(&lab, &server, W1_POD, egress);
    mixed.exchange("new worker, old gateway");
    drop(mixed);

    // Then the gateway: its NAT table is replaced.
    let old_nat = old_maps["gateway"][map_names::NAT4];
    let pod_captures: Vec<(&str, Capture)> = [W1_POD, GW_POD]
        .into_iter()
        .map(|p| {
            let from_server = format!("tcp and src host {INTERNET_HOST} and src port {SMTP}");
            (p, Capture::start(&lab.pod(p).ns, "eth0", &from_server))
        })
        .collect();
    let internet = Capture::start(&lab.internet().ns, "eth0", &format!("tcp port {SMTP}"));
    let gw = agents.get_mut("gateway").expect("gateway agent");
    let from = upgrade(gw);
    let after = wait_programs(&lab, gw, &old_programs, &new_tags, "this build");
    wait_ready(gw);
    check_maps(gw, &old_maps["gateway"], from);
    for (hook, p) in &after {
        assert!(
            !progs::prog_map_ids(p.id).contains(&old_nat.id),
            "{hook} ({}) still uses the previous release's NAT table",
            p.name
        );
    }
    let freed = eventually(wait(), || {
        old_maps
            .values()
            .all(|m| !progs::map_alive(m[map_names::NAT4].id))
            .then_some(())
    });
    assert!(
        freed.is_some(),
        "a previous release's NAT table is still held"
    );

    // What lives in the gateway's flow table (kept) goes on: the inbound connection.
    inbound.exchange("after the gateway's upgrade");

    // The translated connections are reset cleanly. The server's next segment on each is
    // refused by the gateway (no NAT entry: the gateway host has no such socket and resets
    // it), and nothing of it reaches the pod (no byte here, no packet in the captures below).
    for f in [&mut w1, &mut gwp] {
        f.server
            .write_all(b"250 late answer\r\n")
            .unwrap_or_else(|e| panic!("{}: server send: {e}", f.what));
        let mut buf = [0u8; 64];
        let r = f.server.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{}: the server's segment after the NAT table's reset must be refused with a \
             reset, got {r:?}",
            f.what
        );
        f.client
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        let r = f.client.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "{}: nothing of the old connection may reach the pod, got {r:?}",
            f.what
        );
    }
    // The pod's next segment is translated afresh, as the egress IP, and the server's reset
    // reaches the pod.
    for f in [&mut w1, &mut gwp] {
        f.client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        f.client
            .write_all(b"QUIT\r\n")
            .unwrap_or_else(|e| panic!("{}: client send: {e}", f.what));
        let mut buf = [0u8; 64];
        let r = f.client.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{}: the pod's connection must end with a reset, got {r:?}",
            f.what
        );
    }
    // From the server, only its reset reached the pods since the gateway's upgrade (and the
    // capture saw it: it works), never the segment it sent on the old connection.
    for (pod, cap) in pod_captures {
        let seen = cap.stop(Duration::from_millis(300));
        assert!(
            !seen.is_empty() && seen.iter().all(|l| l.contains("Flags [R")),
            "{pod}: from the server, only its reset may reach the pod after the upgrade: \
             {seen:#?}"
        );
    }
    let seen = internet.stop(Duration::from_millis(300));
    let to_server = sources_towards(&seen, SocketAddrV4::new(INTERNET_HOST, SMTP));
    assert!(
        !to_server.is_empty(),
        "the pods' segments never reached the server: {seen:#?}"
    );
    assert!(
        to_server.iter().all(|s| *s == egress.to_string()),
        "the reset connections' segments must leave as the egress IP {egress}: {seen:#?}"
    );
    assert!(
        server.unexpected().is_empty(),
        "no connection was accepted meanwhile"
    );

    // New connections leave as the egress IP, and the new agent's inspect shows them.
    let mut fresh = Vec::new();
    for pod in [W1_POD, GW_POD] {
        let (mut f, peer) = outbound(&lab, &server, pod, egress);
        f.exchange("new, after the upgrade");
        let local = f.client.local_addr().expect("local address");
        fresh.push((pod, local, peer, f));
    }
    let gw = &agents["gateway"];
    let nat = gw.inspect("nat").expect("inspect nat over the new table");
    for (pod, local, peer, _) in &fresh {
        let row = nat.as_array().into_iter().flatten().find(|r| {
            r["pod"] == local.to_string() && r["remote"] == format!("{INTERNET_HOST}:{SMTP}")
        });
        let row = row.unwrap_or_else(|| panic!("{pod}: no NAT row for {local}: {nat:#}"));
        assert_eq!(
            row["egress"],
            peer.to_string(),
            "{pod}: inspect nat shows the address the server saw"
        );
    }
    for a in agents.values() {
        for what in ["endpoints", "policies", "counters"] {
            a.inspect(what)
                .unwrap_or_else(|e| panic!("{}: inspect {what}: {e}", a.node));
        }
    }

    // Nothing of the previous release runs anywhere.
    for a in agents.values() {
        wait_programs(&lab, a, &old_programs, &new_tags, "this build");
    }
    let gone = eventually(wait(), || {
        old_programs
            .iter()
            .all(|id| !progs::prog_alive(*id))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "programs of the previous release still loaded: {:?}",
        old_programs
            .iter()
            .filter(|id| progs::prog_alive(**id))
            .collect::<Vec<_>>()
    );
    eprintln!("upgrade test took {:?}", started.elapsed());
}
