//! Upgrades, crashes and uninstall (issue 14 points 3 to 5): what runs on a node after an agent
//! starts, restarts with another object, is killed between two start-up steps, or is removed.
//!
//! What runs where is read from the kernel: the TCX programs on every interface of a node
//! (`BPF_PROG_QUERY`), their ids and maps, and the pinned maps' shapes (`egress_tests::progs`).

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use egress_common::{counters::DROP_SLOTS, flow::FlowEntry4, map_names, nat::NatKey4};
use egress_tests::{
    agent::{agent_binary, start_all, start_all_with_env, time_scale, Agent},
    config::{write_config, ConfigSpec},
    lab::{command_in, exec, in_netns, require_root, Lab, LabSpec, Underlay, INTERNET_HOST},
    net::{eventually, tcp_roundtrip, TcpEcho},
    progs::{self, Prog},
};

const W1_POD: &str = "pod-worker1-0";
const GW_POD: &str = "pod-gateway-0";
/// `egress_common::config::CFG_F_READY`.
const CFG_F_READY: u32 = 1;

/// Both selected pods (on worker1 and on the gateway), with top-level YAML `extra`.
fn spec(extra: &str) -> ConfigSpec<'_> {
    ConfigSpec {
        selected: &[W1_POD, GW_POD],
        extra,
        ..ConfigSpec::default()
    }
}

fn wait() -> Duration {
    Duration::from_secs(30) * time_scale()
}

/// Waits until `node` carries exactly the expected programs, none of them in `old`.
fn wait_programs(
    lab: &Lab,
    agent: &Agent,
    uplink_reply: bool,
    old: &BTreeSet<u32>,
) -> BTreeMap<String, Prog> {
    let mut last = String::new();
    let got = eventually(wait(), || {
        match progs::programs_if_complete(lab, &agent.node, uplink_reply) {
            Ok(p) if p.values().all(|p| !old.contains(&p.id)) => Some(p),
            Ok(p) => {
                last = format!("old programs still attached: {p:?}");
                None
            }
            Err(e) => {
                last = e;
                None
            }
        }
    });
    got.unwrap_or_else(|| panic!("{last}; log of {}:\n{}", agent.node, agent.log()))
}

fn ids(progs: &BTreeMap<String, Prog>) -> BTreeSet<u32> {
    progs.values().map(|p| p.id).collect()
}

/// A TCP connection from `pod` to the echo server that stays open; returns it and the
/// source the server saw.
fn open_flow(lab: &Lab, server: &TcpEcho, pod: &str) -> (TcpStream, SocketAddr) {
    let to = server.addr;
    let mut s = in_netns(&lab.pod(pod).ns, || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))
    })
    .unwrap_or_else(|e| panic!("{pod}: connect: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    roundtrip(&mut s, pod);
    (s, server.next_peer())
}

/// One message through an open connection, echoed.
fn roundtrip(s: &mut TcpStream, what: &str) {
    let msg = b"RCPT TO:<b@example.org>";
    s.write_all(msg)
        .unwrap_or_else(|e| panic!("{what}: send on the open connection: {e}"));
    let mut got = [0u8; 23];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: the open connection broke: {e}"));
    assert_eq!(&got, msg, "{what}");
}

/// A new connection from `pod` leaves as `source`.
fn check_new_connection(lab: &Lab, server: &TcpEcho, pod: &str, source: IpAddr) {
    let echo = tcp_roundtrip(&lab.pod(pod).ns, server.addr, b"EHLO")
        .unwrap_or_else(|e| panic!("{pod}: new connection: {e}"));
    assert_eq!(echo, b"EHLO");
    assert_eq!(server.next_peer().ip(), source, "{pod}: source address");
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

/// The flags of the node configuration pinned under `pin_root` (`None`: no configuration).
fn config_flags(pin_root: &Path) -> Option<u32> {
    let v = progs::pinned_get(&pin_root.join("maps").join(map_names::CONFIG), &[0; 4], 40)?;
    Some(u32::from_ne_bytes(v[..4].try_into().expect("4 bytes")))
}

fn map_path(agent: &Agent, name: &str) -> PathBuf {
    agent.pin_root.join("maps").join(name)
}

/// Pins left over from an interrupted migration.
fn old_pins(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.pin_root.join("maps"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("@old"))
        .collect()
}

/// The log lines written since the last start (after the last "datapath loaded" line's
/// predecessor start: everything after the `n`th byte).
fn log_since(agent: &Agent, from: usize) -> String {
    agent.log().get(from..).unwrap_or("").to_owned()
}

/// The forward NAT mappings `inspect nat` lists, as comparable text.
fn nat_rows(agent: &Agent) -> BTreeSet<String> {
    let v = agent.inspect("nat").expect("inspect nat");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut r = r.clone();
            // What moves with traffic.
            if let Some(o) = r.as_object_mut() {
                o.retain(|k, _| !k.contains("seen") && !k.contains("age") && !k.contains("state"));
            }
            r.to_string()
        })
        .collect()
}

/// The eBPF object of this build (what the agent embeds), as `cargo xtask build-ebpf` leaves it.
fn object_file() -> PathBuf {
    let bin = agent_binary();
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let obj = target.join("bpfel-unknown-none/release/egress");
    assert!(
        obj.exists(),
        "{}: run `cargo xtask build-ebpf` first",
        obj.display()
    );
    obj
}

#[test]
fn an_upgrade_replaces_every_program_the_tunnels_included_and_flows_survive() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &[W1_POD, GW_POD],
            ..ConfigSpec::default()
        },
    );
    let mut agents = start_all(&lab, &cfg);
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let gw_ip = IpAddr::V4(lab.gateway().external_ip);
    let mut flows: Vec<(String, TcpStream, SocketAddr)> = [W1_POD, GW_POD]
        .into_iter()
        .map(|pod| {
            let (s, peer) = open_flow(&lab, &server, pod);
            assert_eq!(peer.ip(), gw_ip, "{pod} leaves as the egress IP");
            (pod.to_owned(), s, peer)
        })
        .collect();
    let mut before = BTreeMap::new();
    for a in agents.values() {
        wait_ready(a);
        before.insert(
            a.node.clone(),
            wait_programs(&lab, a, false, &BTreeSet::new()),
        );
    }
    let old: BTreeSet<u32> = before.values().flat_map(ids).collect();
    let nat_before = nat_rows(&agents["gateway"]);
    assert!(!nat_before.is_empty(), "the flows are translated");

    // The new build: the agent loads it from a file (EGRESS_EBPF_OBJECT_FILE).
    let upgrade = lab.dir().join("upgrade.bpf.o");
    std::fs::copy(object_file(), &upgrade).expect("copy the object");
    let upgrade = upgrade.to_string_lossy().into_owned();
    for a in agents.values_mut() {
        a.env = vec![("EGRESS_EBPF_OBJECT_FILE".into(), upgrade.clone())];
        a.restart().expect("restart with the new object");
    }
    for a in agents.values() {
        let after = wait_programs(&lab, a, false, &old);
        // The tunnel's program is the new one too (it used to stay the old one).
        assert!(
            !old.contains(&after["egw0/ingress"].id),
            "{}: egw0 kept its program",
            a.node
        );
        wait_ready(a);
    }
    // Nothing holds the old programs any more: none of them runs anywhere.
    let gone = eventually(wait(), || {
        old.iter().all(|id| !progs::prog_alive(*id)).then_some(())
    });
    assert!(
        gone.is_some(),
        "old programs still loaded: {:?}",
        old.iter()
            .filter(|id| progs::prog_alive(**id))
            .collect::<Vec<_>>()
    );
    // The maps were reused: the flows go on, as the same source, no new connection.
    for (pod, s, _) in &mut flows {
        roundtrip(s, pod);
    }
    assert!(
        server.peers_so_far().is_empty(),
        "the open connections must not have been replaced"
    );
    let nat_after = nat_rows(&agents["gateway"]);
    assert!(
        nat_before.is_subset(&nat_after),
        "NAT entries lost across the upgrade: before {nat_before:#?}, after {nat_after:#?}"
    );
    for a in agents.values() {
        let log = a.log();
        assert!(
            !log.contains("migrated") && !log.contains("does not fit"),
            "{}: the same layout must be reused as it is:\n{log}",
            a.node
        );
    }
    check_new_connection(&lab, &server, W1_POD, gw_ip);
}

#[test]
fn a_nat_table_grown_by_map_sizes_is_migrated_with_its_flows_and_a_plain_restart_reuses_it() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &spec("mapSizes: { nat: 4096 }\n"));
    let mut agents = start_all(&lab, &cfg);
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let mut flows: Vec<(String, TcpStream)> = [W1_POD, GW_POD]
        .into_iter()
        .map(|pod| (pod.to_owned(), open_flow(&lab, &server, pod).0))
        .collect();
    let gw = agents.get_mut("gateway").expect("gateway agent");
    wait_ready(gw);
    let nat_pin = map_path(gw, map_names::NAT4);
    let small = progs::pinned_map(&nat_pin).expect("pinned NAT map");
    assert_eq!(small.max_entries, 4096);
    let pinned_ids = |a: &Agent| -> BTreeMap<&str, u32> {
        map_names::ALL
            .into_iter()
            .map(|n| (n, progs::pinned_map(&map_path(a, n)).expect("pinned").id))
            .collect()
    };
    let ids_before = pinned_ids(gw);
    let nat_before = nat_rows(gw);

    // Control: a restart with the same sizes reuses every map as it is.
    let programs = wait_programs(&lab, gw, false, &BTreeSet::new());
    let from = gw.log().len();
    gw.restart().expect("restart");
    wait_programs(&lab, gw, false, &ids(&programs));
    wait_ready(gw);
    assert_eq!(
        pinned_ids(gw),
        ids_before,
        "a plain restart reuses every map"
    );
    let log = log_since(gw, from);
    assert!(
        !log.contains("migrated") && !log.contains("does not fit"),
        "a plain restart changes no map:\n{log}"
    );

    // mapSizes.nat doubled: the table is migrated, entries and flows kept.
    write_config(&lab, &spec("mapSizes: { nat: 8192 }\n"));
    let programs = wait_programs(&lab, gw, false, &BTreeSet::new());
    let from = gw.log().len();
    gw.restart().expect("restart");
    let after = wait_programs(&lab, gw, false, &ids(&programs));
    wait_ready(gw);
    let big = progs::pinned_map(&nat_pin).expect("pinned NAT map");
    assert_eq!(
        big.max_entries,
        8192,
        "mapSizes.nat ignored; log:\n{}",
        gw.log()
    );
    assert_ne!(big.id, small.id, "a new map");
    let log = log_since(gw, from);
    let line = log
        .lines()
        .find(|l| l.contains("pinned map EGW_NAT4 migrated (max_entries 4096 -> 8192)"))
        .unwrap_or_else(|| panic!("no migration line:\n{log}"));
    assert!(line.contains("entries copied"), "{line}");
    assert!(old_pins(gw).is_empty(), "old pins left: {:?}", old_pins(gw));
    // Every program of the gateway that uses a NAT table uses the new one.
    for (hook, p) in &after {
        let maps = progs::prog_map_ids(p.id);
        assert!(
            !maps.contains(&small.id),
            "{hook} ({}) still uses the old NAT table",
            p.name
        );
    }
    assert!(
        after
            .values()
            .any(|p| progs::prog_map_ids(p.id).contains(&big.id)),
        "no program uses the new NAT table"
    );
    let freed = eventually(wait(), || (!progs::map_alive(small.id)).then_some(()));
    assert!(freed.is_some(), "the old NAT table is still held");
    let nat_after = nat_rows(gw);
    assert!(
        nat_before.is_subset(&nat_after),
        "NAT entries lost in the migration: before {nat_before:#?}, after {nat_after:#?}"
    );
    for (pod, s) in &mut flows {
        roundtrip(s, pod);
    }
    assert!(
        server.peers_so_far().is_empty(),
        "the open connections must not have been replaced"
    );
    // The other maps were reused.
    let now = pinned_ids(gw);
    for (name, id) in &ids_before {
        if *name != map_names::NAT4 {
            assert_eq!(now[name], *id, "{name} was not reused");
        }
    }
}

#[test]
fn pinned_maps_of_an_older_layout_are_migrated_or_replaced_with_a_log_line() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &[W1_POD, GW_POD],
            ..ConfigSpec::default()
        },
    );
    // What an older build left pinned on the gateway: drop counters for 13 reasons (the map
    // grew to 14 once), a count in one of them; the flow table with a smaller value.
    let pin = lab.pin_root("gateway");
    progs::mount_bpffs(&pin);
    std::fs::create_dir_all(pin.join("maps")).expect("maps dir");
    let cpus = progs::possible_cpus();
    let drops = progs::create_pinned_map(
        &pin.join("maps").join(map_names::DROPS),
        progs::PERCPU_ARRAY,
        4,
        8,
        13,
    );
    progs::map_put(
        &drops,
        &3u32.to_ne_bytes(),
        &vec![5u64; cpus]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect::<Vec<u8>>(),
    );
    drop(drops);
    let flow_value = size_of::<FlowEntry4>() as u32;
    let flows = progs::create_pinned_map(
        &pin.join("maps").join(map_names::FLOWS4),
        progs::LRU_HASH,
        size_of::<NatKey4>() as u32,
        flow_value - 4,
        1024,
    );
    progs::map_put(&flows, &[7u8; 16], &vec![1u8; flow_value as usize - 4]);
    drop(flows);

    let agents = start_all(&lab, &cfg);
    let gw = &agents["gateway"];
    wait_ready(gw);
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("pinned map EGW_FLOWS4 does not fit this build (value size ")
            && l.contains(&format!("value size {} -> {flow_value}", flow_value - 4))
            && l.contains("replaced")),
        "no warning naming the replaced map and what changed:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "pinned map EGW_DROPS migrated (max_entries 13 -> {DROP_SLOTS}): 13 entries copied"
        )),
        "no migration line for the counters:\n{log}"
    );
    let f = progs::pinned_map(&map_path(gw, map_names::FLOWS4)).expect("flows map");
    assert_eq!(
        f.value_size, flow_value,
        "the flow table has this build's layout"
    );
    let d = progs::pinned_map(&map_path(gw, map_names::DROPS)).expect("drops map");
    assert_eq!(d.max_entries, DROP_SLOTS);
    let kept = progs::pinned_get(
        &map_path(gw, map_names::DROPS),
        &3u32.to_ne_bytes(),
        8 * cpus,
    )
    .expect("drop count");
    assert!(
        kept.chunks(8).all(|c| c == 5u64.to_ne_bytes()),
        "the migrated counter lost its count: {kept:?}"
    );
    assert!(old_pins(gw).is_empty(), "old pins left: {:?}", old_pins(gw));
    // The datapath works on the new maps.
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let gw_ip = IpAddr::V4(lab.gateway().external_ip);
    check_new_connection(&lab, &server, W1_POD, gw_ip);
    check_new_connection(&lab, &server, GW_POD, gw_ip);
    // Control: an agent that found no pinned maps says nothing of the kind.
    let w1 = agents["worker1"].log();
    assert!(
        !w1.contains("migrated") && !w1.contains("does not fit"),
        "worker1 had nothing pinned:\n{w1}"
    );
}

/// The uninstall manifest, `deploy/cleanup.yaml`.
fn cleanup_manifest() -> serde_json::Value {
    serde_norway::from_str(include_str!("../../deploy/cleanup.yaml")).expect("cleanup.yaml")
}

/// The arguments `deploy/cleanup.yaml` runs the agent's image with, on every node.
fn manifest_cleanup_args() -> Vec<String> {
    let m = cleanup_manifest();
    let c = &m["spec"]["template"]["spec"]["initContainers"][0];
    c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string").to_owned())
        .collect()
}

/// The manifest's arguments with `--wait-s` as given.
fn cleanup_args_waiting(secs: &str) -> Vec<String> {
    let mut args = manifest_cleanup_args();
    if let Some(i) = args.iter().position(|a| a == "--wait-s") {
        args.drain(i..i + 2);
    }
    args.extend(["--wait-s".to_owned(), secs.to_owned()]);
    args
}

#[test]
fn the_uninstall_manifest_runs_cleanup_where_the_agent_pins_and_is_never_applied_with_it() {
    let m = cleanup_manifest();
    assert_eq!(m["kind"], "DaemonSet");
    let args = manifest_cleanup_args();
    assert_eq!(
        args.first().map(String::as_str),
        Some("cleanup"),
        "{args:?}"
    );
    // The host's bpffs is where the agent pins (its default pin root).
    let mounts = m["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .clone();
    assert!(
        mounts.iter().any(|v| v["mountPath"]
            .as_str()
            .is_some_and(|p| egress_agent::datapath::DEFAULT_PIN_ROOT.starts_with(p))),
        "{mounts:?}"
    );
    // Tolerates every taint: every node the agent may have run on.
    assert_eq!(
        m["spec"]["template"]["spec"]["tolerations"][0]["operator"],
        "Exists"
    );
    // Applying the deployment must never clean the nodes.
    let k: serde_json::Value =
        serde_norway::from_str(include_str!("../../deploy/kustomization.yaml"))
            .expect("kustomization");
    assert!(
        !k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r == "cleanup.yaml"),
        "cleanup.yaml must not be part of kustomization.yaml"
    );
}

/// Runs `egress-agent cleanup` on `agent`'s node (its pins, its namespace), with the arguments
/// of `deploy/cleanup.yaml`.
fn cleanup(agent: &Agent) -> String {
    let out = command_in(&agent.ns, agent_binary())
        .expect("node namespace")
        .args(manifest_cleanup_args())
        .arg("--pin-root")
        .arg(&agent.pin_root)
        .output()
        .expect("egress-agent cleanup");
    assert!(out.status.success(), "cleanup: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the gateway's agent after every start-up step in turn and checks that the next start
/// repairs everything: the programs on every hook (the tunnel's included) from that start,
/// the node configuration ready only once everything is attached, `/readyz`, the NAT table of
/// the configured size, no half-done migration, and (on an upgrade) the flows.
#[test]
fn a_start_killed_after_any_step_is_repaired_by_the_next() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &spec("mapSizes: { nat: 4096 }\n"));
    let mut agents = start_all(&lab, &cfg);
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let gw_ip = IpAddr::V4(lab.gateway().external_ip);
    let steps = egress_agent::fault::STEPS;
    let ready_at = steps
        .iter()
        .position(|s| *s == "ready")
        .expect("a ready step");
    let gw = agents.get_mut("gateway").expect("gateway agent");
    wait_ready(gw);

    // A first start (the node cleaned before each): the configuration is not ready before
    // every program is attached.
    for (i, step) in steps.iter().enumerate() {
        gw.kill();
        cleanup(gw);
        gw.env = vec![("EGRESS_TEST_CRASH_AFTER".into(), (*step).into())];
        let from = gw.log().len();
        gw.restart().expect("start");
        let died = eventually(wait(), || (!gw.running()).then_some(()));
        assert!(
            died.is_some() && log_since(gw, from).contains(&format!("after step {step}")),
            "the agent did not die after {step}:\n{}",
            log_since(gw, from)
        );
        let ready = config_flags(&gw.pin_root).is_some_and(|f| f & CFG_F_READY != 0);
        assert_eq!(
            ready,
            i >= ready_at,
            "killed after {step}: the datapath must be ready only after every attachment"
        );
        if *step == "config" {
            assert!(
                !progs::tcx_programs(&gw.ns).contains_key("egw0/ingress"),
                "nothing attached to egw0 before the tunnel step"
            );
        }
        gw.env.clear();
        gw.restart().expect("restart");
        wait_ready(gw);
        wait_programs(&lab, gw, false, &BTreeSet::new());
        assert!(
            config_flags(&gw.pin_root).is_some_and(|f| f & CFG_F_READY != 0),
            "after {step}: repaired but not ready"
        );
        check_new_connection(&lab, &server, W1_POD, gw_ip);
    }

    // An upgrade that migrates the NAT table at every start, with flows alive.
    let mut flows: Vec<(String, TcpStream)> = [W1_POD, GW_POD]
        .into_iter()
        .map(|pod| (pod.to_owned(), open_flow(&lab, &server, pod).0))
        .collect();
    for (i, step) in steps.iter().enumerate() {
        let size = if i % 2 == 0 { 8192 } else { 4096 };
        let extra = format!("mapSizes: {{ nat: {size} }}\n");
        write_config(&lab, &spec(&extra));
        let before = ids(&wait_programs(&lab, gw, false, &BTreeSet::new()));
        gw.env = vec![("EGRESS_TEST_CRASH_AFTER".into(), (*step).into())];
        let from = gw.log().len();
        gw.restart().expect("start");
        let died = eventually(wait(), || (!gw.running()).then_some(()));
        assert!(
            died.is_some() && log_since(gw, from).contains(&format!("after step {step}")),
            "the agent did not die after {step}:\n{}",
            log_since(gw, from)
        );
        gw.env.clear();
        gw.restart().expect("restart");
        wait_ready(gw);
        wait_programs(&lab, gw, false, &before);
        let nat = progs::pinned_map(&map_path(gw, map_names::NAT4)).expect("NAT map");
        assert_eq!(nat.max_entries, size, "after {step}: the NAT table's size");
        assert!(old_pins(gw).is_empty(), "after {step}: {:?}", old_pins(gw));
        for (pod, s) in &mut flows {
            roundtrip(s, &format!("{pod}, killed after {step}"));
        }
    }
    assert!(
        server.peers_so_far().is_empty(),
        "the open connections must not have been replaced"
    );
}

/// A restart sweeps what is no longer wanted: the links of a pod that left while the agent
/// was down, those of an interface that is gone, and the reply program on the uplink of a
/// node that is no longer a gateway.
#[test]
fn a_restart_sweeps_links_that_are_no_longer_wanted() {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 3,
        underlay: Underlay::Private,
        ..LabSpec::default()
    })
    .expect("lab up");
    let all: Vec<String> = lab.pods().iter().map(|p| p.name.clone()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &[W1_POD, GW_POD],
            ..ConfigSpec::default()
        },
    );
    let mut agents = start_all(&lab, &cfg);
    let gw = agents.get_mut("gateway").expect("gateway agent");
    wait_ready(gw);
    // Control: the gateway's uplink carries the reply program, every pod veth its two.
    let before = wait_programs(&lab, gw, true, &BTreeSet::new());
    let uplink = lab.gateway().uplink.clone();
    assert_eq!(before[&format!("{uplink}/ingress")].name, "egw_from_wire");
    let links = gw.pin_root.join("links");
    let pin = |p: &str, i: &str| links.join(format!("{p}@{i}"));
    assert!(pin("egw_from_wire", &uplink).exists());

    gw.kill();
    // While the agent is down: a pod leaves the configuration, another's veth goes, and the
    // policy no longer has a gateway (no node carries its label).
    let left = lab.pod("pod-gateway-1").clone();
    let unplugged = lab.pod("pod-gateway-2").clone();
    lab.unplug_pod(&unplugged.name).expect("unplug");
    let keep: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| *p != left.name && *p != unplugged.name)
        .collect();
    let path = write_config(
        &lab,
        &ConfigSpec {
            selected: &[W1_POD, GW_POD],
            only_pods: Some(&keep),
            ..ConfigSpec::default()
        },
    );
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace("labels: { egress-gateway: \"true\" }", "labels: {}");
    std::fs::write(&path, text).expect("config without a gateway");
    gw.restart().expect("restart");

    let swept = eventually(wait(), || {
        let p = progs::tcx_programs(&gw.ns);
        let clean = !p.contains_key(&format!("{uplink}/ingress"))
            && !p.contains_key(&format!("{}/ingress", left.host_veth))
            && !p.contains_key(&format!("{}/egress", left.host_veth))
            && !pin("egw_from_wire", &uplink).exists()
            && !pin("egw_from_pod", &left.host_veth).exists()
            && !pin("egw_to_pod", &unplugged.host_veth).exists()
            && !pin("egw_from_pod", &unplugged.host_veth).exists();
        clean.then_some(p)
    });
    let p = swept.unwrap_or_else(|| {
        panic!(
            "not swept: programs {:#?}, links {:?}; log:\n{}",
            progs::tcx_programs(&gw.ns),
            std::fs::read_dir(gw.pin_root.join("links"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            gw.log()
        )
    });
    // What is still wanted is still there.
    assert_eq!(
        p[&format!("{}/ingress", lab.pod(GW_POD).host_veth)][0].name,
        "egw_from_pod",
        "{p:#?}"
    );
    assert!(
        gw.log().contains("swept"),
        "the sweep is logged:\n{}",
        gw.log()
    );
}

/// Legacy filters of ours on veths that are no longer wanted are swept too (a run in legacy
/// mode, then a restart in TCX mode after the pod left).
#[test]
fn a_restart_sweeps_legacy_filters_that_are_no_longer_wanted() {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 2,
        ..LabSpec::default()
    })
    .expect("lab up");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &[GW_POD],
            ..ConfigSpec::default()
        },
    );
    let mut agents = start_all_with_env(&lab, &cfg, &[("EGRESS_FORCE_LEGACY_TC", "1")]);
    let gw = agents.get_mut("gateway").expect("gateway agent");
    let left = lab.pod("pod-gateway-1").clone();
    let ns = gw.ns.clone();
    let ours = |dev: &str| {
        exec(&ns, &["tc", "filter", "show", "dev", dev, "ingress"])
            .unwrap_or_default()
            .contains("egw_from_pod")
    };
    assert!(ours(&left.host_veth), "control: our filter is there");
    gw.kill();
    let keep: Vec<String> = lab
        .pods()
        .iter()
        .filter(|p| p.name != left.name)
        .map(|p| p.name.clone())
        .collect();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    write_config(
        &lab,
        &ConfigSpec {
            selected: &[GW_POD],
            only_pods: Some(&keep),
            ..ConfigSpec::default()
        },
    );
    gw.env.clear();
    gw.restart().expect("restart in TCX mode");
    wait_ready(gw);
    let gone = eventually(wait(), || (!ours(&left.host_veth)).then_some(()));
    assert!(
        gone.is_some(),
        "our legacy filter stayed on {}; log:\n{}",
        left.host_veth,
        gw.log()
    );
    assert!(
        !ours(&lab.pod(GW_POD).host_veth),
        "the wanted veth moved to TCX (no filter of ours left)"
    );
}

/// `egress-agent cleanup` on every node leaves nothing behind: no program on any interface,
/// none of the programs or maps loaded any more, no pins, no egw0. In both attach modes.
#[test]
fn cleanup_leaves_no_program_no_pin_and_no_tunnel_device() {
    require_root();
    for env in [&[][..], &[("EGRESS_FORCE_LEGACY_TC", "1")][..]] {
        let lab = Lab::up(&LabSpec::default()).expect("lab up");
        let cfg = write_config(
            &lab,
            &ConfigSpec {
                selected: &[W1_POD, GW_POD],
                ..ConfigSpec::default()
            },
        );
        let mut agents = start_all_with_env(&lab, &cfg, env);
        let mut prog_ids = BTreeSet::new();
        let mut map_ids = BTreeSet::new();
        for a in agents.values() {
            wait_ready(a);
            for name in map_names::ALL {
                map_ids.insert(progs::pinned_map(&map_path(a, name)).expect("pinned").id);
            }
            if env.is_empty() {
                prog_ids.extend(ids(&wait_programs(&lab, a, false, &BTreeSet::new())));
            } else {
                // Control: our filters are there.
                let f =
                    exec(&a.ns, &["tc", "filter", "show", "dev", "egw0", "ingress"]).expect("tc");
                assert!(f.contains("egw_from_tunnel"), "{f}");
            }
        }
        assert!(map_ids.iter().all(|id| progs::map_alive(*id)), "control");
        for a in agents.values_mut() {
            a.kill();
            let out = cleanup(a);
            assert!(out.contains("deleted egw0"), "{}: {out}", a.node);
        }
        for a in agents.values() {
            let n = lab.node(&a.node);
            let p = progs::tcx_programs(&n.ns);
            assert!(p.is_empty(), "{}: programs left: {p:#?}", a.node);
            for dev in progs::interfaces(&n.ns).keys() {
                for dir in ["ingress", "egress"] {
                    let f =
                        exec(&n.ns, &["tc", "filter", "show", "dev", dev, dir]).unwrap_or_default();
                    assert!(!f.contains("egw_"), "{}: {dev} {dir}: {f}", a.node);
                }
            }
            assert!(
                !progs::interfaces(&n.ns).contains_key("egw0"),
                "{}: egw0 left",
                a.node
            );
            for sub in ["maps", "links"] {
                assert!(
                    !a.pin_root.join(sub).exists(),
                    "{}: {} left",
                    a.node,
                    a.pin_root.join(sub).display()
                );
            }
        }
        let freed = eventually(wait(), || {
            (prog_ids.iter().all(|id| !progs::prog_alive(*id))
                && map_ids.iter().all(|id| !progs::map_alive(*id)))
            .then_some(())
        });
        assert!(
            freed.is_some(),
            "still loaded: programs {:?}, maps {:?}",
            prog_ids
                .iter()
                .filter(|id| progs::prog_alive(**id))
                .collect::<Vec<_>>(),
            map_ids
                .iter()
                .filter(|id| progs::map_alive(**id))
                .collect::<Vec<_>>()
        );
    }
}

/// A cleanup started while the agent still runs (a node leaving the agent's selection: its
/// pod terminating while the cleanup's starts) waits until the agent is gone, then removes
/// everything; one that cannot wait refuses and removes nothing.
#[test]
fn cleanup_waits_for_a_running_agent_and_removes_nothing_before() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &spec(""));
    let mut agents = start_all(&lab, &cfg);
    let gw = agents.get_mut("gateway").expect("gateway agent");
    wait_ready(gw);

    // Control: with no time to wait, a cleanup beside a running agent refuses.
    let out = command_in(&gw.ns, agent_binary())
        .expect("node namespace")
        .args(cleanup_args_waiting("0"))
        .arg("--pin-root")
        .arg(&gw.pin_root)
        .output()
        .expect("cleanup");
    assert!(
        !out.status.success(),
        "cleanup beside a running agent: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("an agent still runs"),
        "{out:?}"
    );
    progs::programs_if_complete(&lab, "gateway", false).expect("nothing removed");

    let mut waiting = command_in(&gw.ns, agent_binary())
        .expect("node namespace")
        .args(cleanup_args_waiting("60"))
        .arg("--pin-root")
        .arg(&gw.pin_root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cleanup");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.try_wait().expect("cleanup").is_none(),
        "cleanup must wait while the agent runs"
    );
    progs::programs_if_complete(&lab, "gateway", false).expect("nothing removed while waiting");
    gw.kill();
    let out = waiting.wait_with_output().expect("cleanup");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("waiting for the agent") && said.contains("deleted egw0"),
        "{said}"
    );
    let left = progs::tcx_programs(&gw.ns);
    assert!(left.is_empty(), "programs left: {left:#?}");
    assert!(!gw.pin_root.join("maps").exists() && !gw.pin_root.join("links").exists());
}

/// An upgrade whose NAT entry layout changed: the table cannot be kept, so it is replaced (a
/// warning naming it and what changed), the programs use the new one, new connections work
/// as the egress IP, and a connection that was open is reset cleanly (its next packet is
/// translated afresh or refused: an answer either way, never a hang or a wrong mapping).
#[test]
fn a_nat_table_of_another_layout_is_replaced_and_its_flows_reset_cleanly() {
    require_root();
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let cfg = write_config(&lab, &spec(""));
    let mut agents = start_all(&lab, &cfg);
    let server = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 25);
    let gw_ip = IpAddr::V4(lab.gateway().external_ip);
    let mut flows: Vec<(String, TcpStream)> = [W1_POD, GW_POD]
        .into_iter()
        .map(|pod| (pod.to_owned(), open_flow(&lab, &server, pod).0))
        .collect();
    let gw = agents.get_mut("gateway").expect("gateway agent");
    wait_ready(gw);
    let programs = wait_programs(&lab, gw, false, &BTreeSet::new());
    gw.kill();
    // What the older build left pinned: a NAT table whose entries were 8 bytes smaller (of
    // this build's map type, so that the value size is the one change named).
    let pin = map_path(gw, map_names::NAT4);
    let real = progs::pinned_map(&pin).expect("NAT map");
    std::fs::remove_file(&pin).expect("unpin");
    drop(progs::create_pinned_map(
        &pin,
        real.map_type,
        real.key_size,
        real.value_size - 8,
        real.max_entries,
    ));
    gw.restart().expect("restart");
    let after = wait_programs(&lab, gw, false, &ids(&programs));
    wait_ready(gw);
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&format!(
                "pinned map EGW_NAT4 does not fit this build (value size {} -> {})",
                real.value_size - 8,
                real.value_size
            ))),
        "no warning naming the NAT table and what changed:\n{log}"
    );
    let nat = progs::pinned_map(&pin).expect("NAT map");
    assert_eq!(nat.value_size, real.value_size, "the new layout");
    assert!(
        after
            .values()
            .all(|p| !progs::prog_map_ids(p.id).contains(&real.id)),
        "a program still uses the old table"
    );
    // Open connections: answered either way (kept, or reset), never left hanging.
    for (pod, s) in &mut flows {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(b"RCPT TO:<c@example.org>");
        let mut got = [0u8; 23];
        let r = s.read_exact(&mut got);
        eprintln!("{pod}: the open connection after the reset: {r:?}");
        match r {
            Ok(()) => assert_eq!(&got, b"RCPT TO:<c@example.org>", "{pod}"),
            // Seen here: the server answers the freshly translated packet with a reset.
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                ),
                "{pod}: the open connection is neither kept nor reset after its NAT entry was \
                 lost: {e}"
            ),
        }
    }
    // Whatever the server accepted meanwhile came from the egress IP.
    for p in server.peers_so_far() {
        assert_eq!(p.ip(), gw_ip);
    }
    check_new_connection(&lab, &server, W1_POD, gw_ip);
    check_new_connection(&lab, &server, GW_POD, gw_ip);
    assert!(gw.inspect("nat").is_ok(), "inspect reads the new table");
}
