//! The gateway's NAT table under pressure (issue 13): held at capacity by churn from pods on
//! every node while long-lived TCP connections keep transferring. Every long-lived connection
//! survives, and no two live flows ever share an egress tuple, checked over the whole table
//! again and again while the churn runs.
//!
//! Lab tests: they need root and fail with a clear message without it.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use egress_agent::datapath::open_pinned_map;
use egress_common::{
    map_names,
    nat::{NatEntry4, NatKey4, NAT_F_REVERSE},
};
use egress_tests::{
    agent::start_all,
    config::{write_config, ConfigSpec},
    lab::{in_netns, require_root, Lab, LabSpec, INTERNET_HOST},
    net::{TcpEcho, UdpEcho},
};

/// NAT entries on the gateway: 256 flows.
const NAT_ENTRIES: u32 = 512;
/// How long the churn runs.
const CHURN: Duration = Duration::from_secs(8);

/// What is wrong with the table: split flows (a forward entry whose reverse entry does not
/// map back to it) and egress tuples shared by two forward entries. The listing is not a
/// snapshot (flows change while it runs), so each finding is read again by key before it
/// counts.
fn violations(pin_root: &Path) -> Vec<String> {
    let map = open_pinned_map(pin_root, map_names::NAT4).expect("pinned NAT map");
    let m: BpfHashMap<&MapData, NatKey4, NatEntry4> = (&map).try_into().expect("hash map");
    let get = |k: &NatKey4| match m.get(k, 0) {
        Ok(v) => Some(v),
        Err(MapError::KeyNotFound) => None,
        Err(e) => panic!("lookup: {e}"),
    };
    let entries: Vec<(NatKey4, NatEntry4)> = m.iter().filter_map(Result::ok).collect();
    let mut out = Vec::new();
    let mut tuples: HashMap<(u32, u16, u32, u16, u8), NatKey4> = HashMap::new();
    for (k, v) in &entries {
        if k.is_claim() || v.flags & NAT_F_REVERSE != 0 {
            continue;
        }
        let rkey = k.reply_to(v.addr, v.port);
        let paired =
            |r: Option<NatEntry4>| r.is_some_and(|r| r.addr == k.saddr && r.port == k.sport);
        // Still this mapping, and still without its reverse entry: split.
        if !paired(get(&rkey)) && get(k) == Some(*v) && !paired(get(&rkey)) {
            out.push(format!("split: {k:?} -> {v:?}"));
        }
        let tuple = (v.addr, v.port, k.daddr, k.dport, k.proto);
        if let Some(other) = tuples.insert(tuple, *k) {
            let both = get(k).is_some_and(|a| a.addr == v.addr && a.port == v.port)
                && get(&other).is_some_and(|b| b.addr == v.addr && b.port == v.port);
            if both {
                out.push(format!(
                    "shared egress tuple {tuple:?}: {k:?} and {other:?}"
                ));
            }
        }
    }
    out
}

#[test]
fn a_nat_table_at_capacity_keeps_long_lived_flows_and_never_shares_an_egress_tuple() {
    require_root();
    let lab = Lab::up(&LabSpec {
        pods_per_node: 2,
        ..LabSpec::default()
    })
    .expect("lab up");
    let pods: Vec<String> = lab.pods().iter().map(|p| p.name.clone()).collect();
    let selected: Vec<&str> = pods.iter().map(String::as_str).collect();
    let extra = format!("mapSizes: {{ nat: {NAT_ENTRIES} }}\n");
    let cfg = write_config(
        &lab,
        &ConfigSpec {
            selected: &selected,
            extra: &extra,
            ..ConfigSpec::default()
        },
    );
    let agents = start_all(&lab, &cfg);
    let gw = &agents["gateway"];
    let tcp = TcpEcho::start(&lab.internet().ns, INTERNET_HOST, 2525);
    let udp = UdpEcho::start(&lab.internet().ns, INTERNET_HOST, 53);

    // Long-lived connections: the first pod of every node.
    let long: Vec<_> = lab
        .pods()
        .iter()
        .filter(|p| p.name.ends_with("-0"))
        .collect();
    let mut streams = Vec::new();
    for p in &long {
        let to = tcp.addr;
        let s = in_netns(&p.ns, move || TcpStream::connect(to)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let peer = tcp.next_peer();
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(lab.gateway().underlay_ip),
            "{} leaves as the egress IP",
            p.name
        );
        streams.push((p.name.clone(), s));
    }

    // Churn: the second pod of every node opens new flows as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = lab
        .pods()
        .iter()
        .filter(|p| p.name.ends_with("-1"))
        .map(|p| {
            let (ns, stop, to) = (p.ns.clone(), stop.clone(), udp.addr);
            std::thread::spawn(move || {
                in_netns(&ns, || {
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // A new socket, a new source port: a new flow.
                        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                        let _ = s.send_to(b"churn", to);
                        sent += 1;
                        if sent.is_multiple_of(32) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    sent
                })
            })
        })
        .collect();

    // Meanwhile: the long-lived connections transfer, and the table is checked.
    let start = Instant::now();
    let mut checks = 0;
    let mut round = 0u32;
    while start.elapsed() < CHURN {
        for (name, s) in &mut streams {
            let msg = format!("{name} {round:08}");
            s.write_all(msg.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: write in round {round}: {e}"));
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got)
                .unwrap_or_else(|e| panic!("{name}: no echo in round {round}: {e}"));
            assert_eq!(got, msg.as_bytes(), "{name}");
        }
        round += 1;
        if round.is_multiple_of(10) {
            let v = violations(&gw.pin_root);
            assert!(
                v.is_empty(),
                "after {:?}:\n{}",
                start.elapsed(),
                v.join("\n")
            );
            checks += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = churners
        .into_iter()
        .map(|t| t.join().expect("churn thread"))
        .sum();
    let v = violations(&gw.pin_root);
    assert!(v.is_empty(), "after the churn:\n{}", v.join("\n"));

    // Not a friendly lab: the churn opened far more flows than the table holds, the table
    // was full (new flows refused) and the agent evicted.
    let full = gw.drops("nat_table_full");
    eprintln!(
        "{sent} churn flows, {round} rounds on {} connections, {checks} table checks, \
         {full} refused as nat_table_full",
        streams.len()
    );
    assert!(sent > u64::from(NAT_ENTRIES) * 4, "only {sent} churn flows");
    assert!(full > 0, "the table never filled");
    assert!(gw.log().contains("evicted="), "no eviction pass");
    assert!(checks >= 5, "only {checks} table checks");
}
