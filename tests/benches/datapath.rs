//! Micro-benchmark of the tc programs (`BPF_PROG_TEST_RUN`) and of the NAT table at scale.
//!
//! ```sh
//! cargo xtask build-ebpf && cargo bench -p egress-tests --bench datapath   # as root
//! ```
//!
//! Human-readable lines go to stderr; one JSON document goes to stdout, or to the file named
//! by `EGRESS_BENCH_JSON`. `EGRESS_BENCH_QUICK=1` shrinks every count (a smoke run, seconds;
//! its figures are not for publishing). `EGRESS_BENCH_ONLY=<substring>` runs only the cases
//! whose name contains it, and no NAT-at-scale part (to profile one path, e.g. with
//! `perf record -a -e cpu-clock`).
//!
//! # How a packet is timed
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs the program N times on *one* skb: every
//! repetition sees the packet as the previous one left it. That is only the intended path when
//! the program leaves the packet as it is (the passthrough paths). Every forwarding path
//! rewrites it (TTL, addresses, ports), so from the second repetition on the program sees a
//! different packet: a translated packet's source is no pod any more (passthrough), a TTL runs
//! out after 63 hops (time exceeded, then passthrough). Hence two methods:
//!
//! - `repeat`: the kernel's average duration over `repeat` repetitions (the packet is checked
//!   to come out unchanged, so every repetition took the same path);
//! - `fresh`: one `BPF_PROG_TEST_RUN` per packet (each on a fresh copy of the packet), timed by
//!   the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`: Δrun_time_ns / Δrun_cnt of
//!   the program: the program alone, one `sched_clock()` pair included), every verdict checked.
//!
//! A case uses `repeat` when the packet comes out unchanged, else `fresh`; the other method
//! is reported beside it (`cross_check_ns`, where both are valid) or, for rewritten packets,
//! what a naive in-place repeat would claim (`in_place_repeat`, not the intended path).
//! Each case's packet is run once first and its verdict and output asserted (translation,
//! TTL, MSS, checksums). Rounds interleave the cases; figures are the median, min and max of
//! the per-round averages.
//!
//! Both methods carry a fixed cost of their own, measured by the `floor`: a program that only
//! returns (`r0 = 0; exit`), run the same ways. The bench keeps run-time statistics enabled
//! throughout (it holds a `BPF_ENABLE_STATS` fd), so `repeat` pays the statistics'
//! `sched_clock()` pair on every repetition too. `net_ns` = median - floor median of the
//! case's method: the program's own cost. `kernel.bpf_stats_enabled` run_time_ns/run_cnt
//! (as the lab reads it) corresponds to `fresh`, floor included.
//!
//! The NAT part loads a gateway with a NAT map of 2^20 entries, fills it from userspace with
//! established flows (forward + reverse entry each) level by level, and at each level times
//! SNAT hits (egw_from_pod, pods on the gateway) and reverse hits (egw_from_wire, replies to
//! pods on a worker) for flows in the table: one flow again and again, and a spread of flows
//! across the table (cache and TLB misses). Then one GC pass of the agent over the full table.
//!
//! # JSON
//!
//! The document is `egress_tests::microbench::Report`:
//!
//! ```text
//! {
//!   "schema": 1,
//!   "env": { "kernel": "6.18.0", "cpu": "<model name>", "cpus": 2,
//!            "bpf_stats_enabled_sysctl": 1,           // system-wide setting at start
//!            "quick": false, "only": null, "rounds": 5, "repeat": 500000,
//!            "fresh_runs": 100000, "scale_runs": 100000, "total_s": 80.1 },
//!   "programs": {                                    // per program: size after the verifier
//!     "egw_from_pod": { "xlated_insns": 1234, "jited_bytes": 5678 }, ... },
//!   "floor": { "program": "r0 = 0; exit ...",
//!              "repeat_ns": { stat }, "fresh_ns": { stat } },  // what each method adds
//!   "cases": [                                       // one per measured path
//!     { "name": "from_pod_worker_tunnel",            // stable identifier
//!       "program": "egw_from_pod",
//!       "node": "worker" | "gateway",
//!       "path": "<what the packet exercises>",
//!       "verdict": 7,                                // TC_ACT_*, asserted on every run
//!       "method": "repeat" | "fresh",
//!       "ns": { "median": 61.0, "min": 59.8, "max": 66.2, "rounds": [ ... ] },  // a "stat"
//!       "net_ns": 20.5,                              // ns median - floor median (same method)
//!       "cross_check_ns": { ... } | null,            // the other method (passthrough cases)
//!       "in_place_repeat": { "ns": 9.0, "last_verdict": 0 } | null  // NOT the path: see above
//!     }, ... ],
//!   "nat": {                                         // null with EGRESS_BENCH_ONLY
//!     "max_entries": 1048576,
//!     "memlock_bytes": 123456789,                    // /proc/self/fdinfo of the NAT map
//!     "map_id": 42,
//!     "levels": [
//!       { "flows": 10000, "entries": 20000,          // forward + reverse entry per flow
//!         "fill_added_entries": 19996, "fill_s": 0.02, "fill_entries_per_s": 1.0e6,
//!         "rss_bytes": 12345678,                     // VmRSS after the fill
//!         "sample_flows": 1024,                      // flows the *_spread cases cycle through
//!         "snat_hit_ns": { stat },                   // egw_from_pod on the gateway, one flow
//!                                                    // (all NAT figures: fresh, floor included)
//!         "snat_hit_spread_ns": { stat },            //   ... over `sample_flows` flows
//!         "reverse_hit_ns": { stat },                // egw_from_wire, reply tunnelled back
//!         "reverse_hit_spread_ns": { stat } }, ... ],
//!     "fill_entries_per_s": 1.0e6,                   // over all levels
//!     "gc": { "entries": 1000000, "expired_entries": 100000,
//!             "list_s": 2.0,                         // nat_entries(): the whole table
//!             "decide_s": 0.3,                       // nat_gc::expired()
//!             "collect_s": 2.5,                      // agent::collect_nat(): list + decide + delete
//!             "collect_noop_s": 2.2,                 // the next pass, nothing to delete
//!             "rss_after_bytes": 1, "rss_peak_bytes": 1 }
//!   }
//! }
//! ```
//! Times are ns per packet unless named `_s` (seconds).

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::sys::{enable_stats, Stats};
use egress_agent::{
    agent::collect_nat,
    datapath::{ip4, Datapath, MapSizes},
    nat_gc::{self, Timeouts},
};
use egress_common::{
    endpoint::{Endpoint, EP_F_SELECTED},
    nat::{NatEntry4, NatKey4, CT_CLOSING, CT_ESTABLISHED, NAT_F_REVERSE},
    program_names::{self, FROM_POD, FROM_WIRE},
    proto::IPPROTO_TCP,
};
use egress_tests::{
    microbench::{
        round2, Case as CaseReport, Env, Floor, Gc, InPlaceRepeat, Method, Nat, NatLevel,
        ProgramSize, Report, Stat, SCHEMA,
    },
    packet::*,
};

/// `BPF_MAP_TYPE_LRU_HASH`.
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const NAT_MAX_ENTRIES: u32 = 1 << 20;
/// NAT ports per remote address in the fill (the whole range).
const PORTS: u32 = (PORT_MAX - PORT_MIN) as u32 + 1;
/// Gateway-local pods of the fill: 10.244.0.2 + j, endpoint ifindex 1000 + j.
const FILL_PODS: u32 = 200;
const FILL_POD_IF: u32 = 1000;
/// Remote port of every fill flow.
const FILL_DPORT: u16 = 443;
const PAYLOAD: &[u8] = &[0x42; 100];

/// The measurement floor: a program that only returns `TC_ACT_OK` (`r0 = 0; exit`), loaded
/// and run with raw `bpf(2)` calls (the eBPF object has no such program, and aya loads ELF
/// objects only). What it costs per run is what each method adds to any program.
mod floor {
    use std::os::fd::{AsRawFd, OwnedFd};

    pub use egress_tests::rawbpf::prog_stats;
    use egress_tests::rawbpf::{load_sched_cls, Attr, BPF_PROG_TEST_RUN};

    pub struct Noop(OwnedFd);

    impl Noop {
        pub fn load() -> Noop {
            // r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K); exit.
            let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
            Noop(load_sched_cls(&insns, "egw_noop").expect("BPF_PROG_LOAD of the noop program"))
        }

        /// `BPF_PROG_TEST_RUN`: (return value, average ns per repetition).
        pub fn test_run(&self, pkt: &[u8], ctx: &[u8], repeat: u32) -> (u32, u32) {
            let mut out = vec![0u8; pkt.len() + 256];
            let mut a = Attr::new();
            a.u32(0, self.0.as_raw_fd() as u32)
                .u32(8, pkt.len() as u32)
                .u32(12, out.len() as u32)
                .u64(16, pkt.as_ptr() as u64)
                .u64(24, out.as_mut_ptr() as u64)
                .u32(32, repeat)
                .u32(40, ctx.len() as u32)
                .u64(48, ctx.as_ptr() as u64);
            a.bpf(BPF_PROG_TEST_RUN)
                .expect("BPF_PROG_TEST_RUN of the noop");
            (a.get_u32(4), a.get_u32(36))
        }

        pub fn stats(&self) -> (u64, u64) {
            prog_stats(self.0.as_raw_fd())
        }
    }
}

struct Params {
    quick: bool,
    only: Option<String>,
    rounds: usize,
    repeat: u32,
    fresh_runs: u32,
    scale_runs: u32,
    levels: Vec<u32>,
    sample_flows: u32,
}

impl Params {
    fn from_env() -> Params {
        let quick = std::env::var("EGRESS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let only = std::env::var("EGRESS_BENCH_ONLY")
            .ok()
            .filter(|v| !v.is_empty());
        if quick {
            Params {
                quick,
                only,
                rounds: 3,
                repeat: 20_000,
                fresh_runs: 5_000,
                scale_runs: 2_000,
                levels: vec![2, 1_000, 10_000],
                sample_flows: 256,
            }
        } else {
            Params {
                quick,
                only,
                rounds: 5,
                repeat: 500_000,
                fresh_runs: 100_000,
                scale_runs: 100_000,
                levels: vec![2, 10_000, 100_000, 500_000],
                sample_flows: 1024,
            }
        }
    }
}

fn fmt_stat(s: &Stat) -> String {
    format!("{:>7.1} ns  (min {:.1}, max {:.1})", s.median, s.min, s.max)
}

/// One packet to run: bytes and the ingress interface.
#[derive(Clone)]
struct Pkt {
    bytes: Vec<u8>,
    ifindex: u32,
}

/// One round of the `fresh` method: a `BPF_PROG_TEST_RUN` per packet (cycling through
/// `pkts`), timed by the program's run-time statistics. Returns ns per run.
fn fresh_round(dp: &Datapath, prog: &'static str, pkts: &[Pkt], verdict: u32, runs: u32) -> f64 {
    let p = dp.program(prog).expect("program");
    let stats = || {
        let info = p.info().expect("program info");
        (info.run_time().as_nanos() as u64, info.run_count())
    };
    let run1 = |pkt: &Pkt| run_repeat(dp, prog, &pkt.bytes, pkt.ifindex, 1).verdict;
    fresh_round_with(prog, &stats, &run1, pkts, verdict, runs)
}

fn fresh_round_with(
    what: &str,
    stats: &dyn Fn() -> (u64, u64),
    run1: &dyn Fn(&Pkt) -> u32,
    pkts: &[Pkt],
    verdict: u32,
    runs: u32,
) -> f64 {
    let (t0, n0) = stats();
    for i in 0..runs as usize {
        assert_eq!(
            run1(&pkts[i % pkts.len()]),
            verdict,
            "{what}: verdict changed during the run"
        );
    }
    let (t1, n1) = stats();
    assert_eq!(
        n1 - n0,
        u64::from(runs),
        "{what}: run count (are stats enabled?)"
    );
    (t1 - t0) as f64 / (n1 - n0) as f64
}

/// The floor of both methods: (repeat ns, fresh ns) for one round.
fn floor_round(noop: &floor::Noop, pkt: &Pkt, p: &Params) -> (f64, f64) {
    let ctx = skb_ctx(pkt.ifindex);
    let (rc, ns) = noop.test_run(&pkt.bytes, &ctx, p.repeat);
    assert_eq!(rc, TC_ACT_OK);
    let run1 = |pk: &Pkt| noop.test_run(&pk.bytes, &skb_ctx(pk.ifindex), 1).0;
    let fresh = fresh_round_with(
        "noop",
        &|| noop.stats(),
        &run1,
        std::slice::from_ref(pkt),
        TC_ACT_OK,
        p.fresh_runs,
    );
    (f64::from(ns), fresh)
}

/// One round of the `repeat` method; the packet must come out unchanged.
fn repeat_round(dp: &Datapath, prog: &'static str, pkt: &Pkt, verdict: u32, repeat: u32) -> f64 {
    let r = run_repeat(dp, prog, &pkt.bytes, pkt.ifindex, repeat);
    assert_eq!(
        r.verdict, verdict,
        "{prog}: verdict after {repeat} repetitions"
    );
    assert_eq!(
        r.out, pkt.bytes,
        "{prog}: packet changed over the repetitions"
    );
    r.avg.as_nanos() as f64
}

struct Case<'a> {
    name: &'static str,
    program: &'static str,
    node: &'static str,
    path: &'static str,
    dp: &'a Datapath,
    pkt: Pkt,
    verdict: u32,
    /// The program leaves the packet unchanged: `repeat` is valid.
    unchanged: bool,
    primary: Vec<f64>,
    cross: Vec<f64>,
}

/// What a case runs: a packet through a program and the verdict it must get.
struct Spec {
    name: &'static str,
    program: &'static str,
    node: &'static str,
    path: &'static str,
    pkt: Pkt,
    verdict: u32,
}

impl<'a> Case<'a> {
    /// Runs the packet once, asserts the verdict and the output (`check`), and classifies it.
    fn new(dp: &'a Datapath, s: Spec, check: impl Fn(&[u8])) -> Case<'a> {
        let (rc, out) = run(dp, s.program, &s.pkt.bytes, s.pkt.ifindex);
        assert_eq!(rc, s.verdict, "{}: verdict", s.name);
        check(&out);
        let unchanged = out == s.pkt.bytes;
        Case {
            name: s.name,
            program: s.program,
            node: s.node,
            path: s.path,
            dp,
            pkt: s.pkt,
            verdict: s.verdict,
            unchanged,
            primary: Vec::new(),
            cross: Vec::new(),
        }
    }

    fn round(&mut self, p: &Params) {
        let pkts = std::slice::from_ref(&self.pkt);
        if self.unchanged {
            self.primary.push(repeat_round(
                self.dp,
                self.program,
                &self.pkt,
                self.verdict,
                p.repeat,
            ));
            self.cross.push(fresh_round(
                self.dp,
                self.program,
                pkts,
                self.verdict,
                p.fresh_runs,
            ));
        } else {
            self.primary.push(fresh_round(
                self.dp,
                self.program,
                pkts,
                self.verdict,
                p.fresh_runs,
            ));
        }
    }

    /// Prints and returns the case's figures; `floors` = (repeat, fresh) floor medians.
    fn report(&self, p: &Params, floors: (f64, f64)) -> CaseReport {
        let ns = Stat::of(self.primary.clone());
        let floor = if self.unchanged { floors.0 } else { floors.1 };
        let net = round2(ns.median - floor);
        let cross = (!self.cross.is_empty()).then(|| Stat::of(self.cross.clone()));
        // What a naive in-place repeat reports for a packet the program rewrites.
        let in_place = (!self.unchanged).then(|| {
            let r = run_repeat(
                self.dp,
                self.program,
                &self.pkt.bytes,
                self.pkt.ifindex,
                p.repeat,
            );
            InPlaceRepeat {
                ns: r.avg.as_nanos() as f64,
                last_verdict: r.verdict,
            }
        });
        let method = if self.unchanged {
            Method::Repeat
        } else {
            Method::Fresh
        };
        let mut line = format!(
            "  {:<34} {:<14} {}  [{}, net {net:.1}]",
            self.name,
            self.program,
            fmt_stat(&ns),
            method.name()
        );
        if let Some(c) = &cross {
            line += &format!("  fresh: {:.1} ns", c.median);
        }
        if let Some(ip) = &in_place {
            line += &format!("  (in-place repeat would say {} ns)", ip.ns);
        }
        eprintln!("{line}");
        CaseReport {
            name: self.name.to_owned(),
            program: self.program.to_owned(),
            node: self.node.to_owned(),
            path: self.path.to_owned(),
            verdict: self.verdict,
            method,
            ns,
            net_ns: net,
            cross_check_ns: cross,
            in_place_repeat: in_place,
        }
    }
}

fn tcp_ack(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    tcp_data(src, dst, sport, dport, PAYLOAD)
}

fn pkt(bytes: Vec<u8>, ifindex: u32) -> Pkt {
    Pkt { bytes, ifindex }
}

fn entry(addr: Ipv4Addr, port: u16, flags: u8, state: u8, node: Ipv4Addr, now: u64) -> NatEntry4 {
    NatEntry4 {
        addr: ip4(addr),
        port: port.to_be(),
        flags,
        state,
        node_ip4: ip4(node),
        policy_id: POLICY,
        last_seen_ns: now,
        ..NatEntry4::default()
    }
}

/// Writes an established flow (forward and reverse entry) as the gateway would have.
fn put_flow(dp: &mut Datapath, f: &Flow, now: u64) {
    let mut m = dp.maps();
    m.put_nat(f.reverse_key(), f.reverse_entry(now))
        .expect("reverse entry");
    m.put_nat(f.forward_key(), f.forward_entry(now))
        .expect("forward entry");
}

/// The small cases: every program path on a worker and a gateway with the default map sizes,
/// and the floor.
fn small_cases(p: &Params) -> (Floor, Vec<CaseReport>) {
    // Two nodes at once: each a load of its own (the shared one is one node at a time).
    let worker = datapath_sized(&MapSizes::default(), WORKER);
    let mut gateway = datapath_sized(&MapSizes::default(), GATEWAY);

    // An established flow of a pod on the gateway node: SYN out, reply in.
    let (rc, syn) = run(
        &gateway,
        FROM_POD,
        &tcp_syn(POD_A, INTERNET, 40000, 25, 1460),
        POD_A_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    let nat_port = sport(&syn);
    let (rc, _) = run(
        &gateway,
        FROM_WIRE,
        &tcp_ack(INTERNET, EGRESS, 25, nat_port),
        UPLINK_IF,
    );
    assert_eq!(rc, TC_ACT_REDIRECT);
    // An established flow of a pod on a worker (its replies go back through the tunnel).
    let remote_flow = Flow {
        pod: Ipv4Addr::new(10, 244, 2, 7),
        pod_port: 40001,
        remote: INTERNET,
        remote_port: 25,
        nat_port: 61500,
        node: WORKER,
        state: CT_ESTABLISHED,
    };
    put_flow(&mut gateway, &remote_flow, nat_gc::monotonic_ns());
    let entries_before = gateway.maps().nat_entries().expect("nat").len();
    assert_eq!(entries_before, 4);

    let mut cases = vec![
        Case::new(
            &worker,
            Spec {
                name: "from_pod_unselected_passthrough",
                program: FROM_POD,
                node: "worker",
                path: "endpoint lookup: pod not selected -> TCX_NEXT",
                pkt: pkt(udp(POD_B, INTERNET, 40000, 53, PAYLOAD), POD_B_IF),
                verdict: TCX_NEXT,
            },
            |_| {},
        ),
        Case::new(
            &worker,
            Spec {
                name: "from_pod_worker_tunnel",
                program: FROM_POD,
                node: "worker",
                path: "TCP ACK of a selected pod: endpoint + policy LPM lookup, TTL, MSS check, \
             counters, tunnel key, redirect",
                pkt: pkt(tcp_ack(POD_A, INTERNET, 40000, 25), POD_A_IF),
                verdict: TC_ACT_REDIRECT,
            },
            |out| {
                assert_eq!(out[L3 + 8], 63, "TTL");
                assert_eq!(src_ip(out), POD_A);
                assert_checksums(out);
            },
        ),
        Case::new(
            &worker,
            Spec {
                name: "from_pod_worker_tunnel_syn",
                program: FROM_POD,
                node: "worker",
                path: "TCP SYN of a selected pod: as above plus the MSS clamp (1460 -> 1410)",
                pkt: pkt(tcp_syn(POD_A, INTERNET, 40000, 25, 1460), POD_A_IF),
                verdict: TC_ACT_REDIRECT,
            },
            |out| {
                assert_eq!(tcp_mss(out), Some((TUNNEL_MTU - 40) as u16));
                assert_checksums(out);
            },
        ),
        Case::new(
            &gateway,
            Spec {
                name: "from_pod_gateway_snat_hit",
                program: FROM_POD,
                node: "gateway",
                path: "TCP ACK of an established flow of a pod on the gateway: endpoint + policy \
             lookup, NAT hit, source rewrite + checksums, TTL, counters, redirect_neigh",
                pkt: pkt(tcp_ack(POD_A, INTERNET, 40000, 25), POD_A_IF),
                verdict: TC_ACT_REDIRECT,
            },
            |out| {
                assert_eq!(src_ip(out), EGRESS);
                assert_eq!(sport(out), nat_port, "the established mapping");
                assert_checksums(out);
            },
        ),
        Case::new(
            &gateway,
            Spec {
                name: "from_wire_reverse_hit_tunnel",
                program: FROM_WIRE,
                node: "gateway",
                path:
                    "reply to a pod on a worker: reverse NAT hit, destination rewrite + checksums, \
             TTL, counters, MSS check, tunnel key, redirect",
                pkt: pkt(tcp_ack(INTERNET, EGRESS, 25, 61500), UPLINK_IF),
                verdict: TC_ACT_REDIRECT,
            },
            |out| {
                assert_eq!(dst_ip(out), remote_flow.pod);
                assert_eq!(dport(out), remote_flow.pod_port);
                assert_checksums(out);
            },
        ),
        Case::new(
            &gateway,
            Spec {
                name: "from_wire_reverse_hit_local",
                program: FROM_WIRE,
                node: "gateway",
                path: "reply to a pod on the gateway: reverse NAT hit, destination rewrite, TTL, \
             counters, endpoint lookup, redirect_neigh",
                pkt: pkt(tcp_ack(INTERNET, EGRESS, 25, nat_port), UPLINK_IF),
                verdict: TC_ACT_REDIRECT,
            },
            |out| {
                assert_eq!(dst_ip(out), POD_A);
                assert_eq!(dport(out), 40000);
                assert_checksums(out);
            },
        ),
        Case::new(
            &gateway,
            Spec {
                name: "from_wire_miss_passthrough",
                program: FROM_WIRE,
                node: "gateway",
                path: "a packet for the host itself: reverse NAT miss -> TCX_NEXT",
                pkt: pkt(tcp_ack(INTERNET, EGRESS, 25, 45678), UPLINK_IF),
                verdict: TCX_NEXT,
            },
            |_| {},
        ),
    ];
    if let Some(only) = &p.only {
        cases.retain(|c| c.name.contains(only.as_str()));
        assert!(
            !cases.is_empty(),
            "no case matches EGRESS_BENCH_ONLY={only}"
        );
    }
    for c in &cases {
        if c.verdict == TCX_NEXT {
            assert!(
                c.unchanged,
                "{}: a passthrough leaves the packet alone",
                c.name
            );
        }
    }
    let _stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
    // The raw stats reader of the floor program agrees with aya's on our programs.
    let prog = worker.program(FROM_POD).expect("program");
    let raw = floor::prog_stats(prog.fd().expect("fd").as_fd().as_raw_fd());
    let info = prog.info().expect("info");
    assert_eq!(raw, (info.run_time().as_nanos() as u64, info.run_count()));
    let noop = floor::Noop::load();
    let floor_pkt = pkt(udp(POD_B, INTERNET, 40000, 53, PAYLOAD), POD_B_IF);
    let (mut floor_repeat, mut floor_fresh) = (vec![], vec![]);
    for _ in 0..p.rounds {
        let (r, f) = floor_round(&noop, &floor_pkt, p);
        floor_repeat.push(r);
        floor_fresh.push(f);
        for c in &mut cases {
            c.round(p);
        }
    }
    let (floor_repeat, floor_fresh) = (Stat::of(floor_repeat), Stat::of(floor_fresh));
    eprintln!(
        "  {:<34} {:<14} {}  [repeat]  fresh: {:.1} ns",
        "floor (r0 = 0; exit)",
        "noop",
        fmt_stat(&floor_repeat),
        floor_fresh.median
    );
    let floors = (floor_repeat.median, floor_fresh.median);
    let reports = cases.iter().map(|c| c.report(p, floors)).collect();
    let floor = Floor {
        program: "r0 = 0; exit (sched_cls, loaded with raw bpf(2))".to_owned(),
        repeat_ns: floor_repeat,
        fresh_ns: floor_fresh,
    };
    drop(cases);
    assert_eq!(
        gateway.maps().nat_entries().expect("nat").len(),
        entries_before,
        "hits only: no flow was created"
    );
    (floor, reports)
}

/// A flow of the NAT fill.
struct Flow {
    pod: Ipv4Addr,
    pod_port: u16,
    remote: Ipv4Addr,
    remote_port: u16,
    nat_port: u16,
    node: Ipv4Addr,
    state: u8,
}

impl Flow {
    /// Flow `i` of the fill: even flows belong to pods on the gateway (their packets can run
    /// through egw_from_pod here), odd ones to pods on a worker (replies go back by tunnel).
    /// Every tenth flow is closing and long idle: the GC pass collects it.
    fn nth(i: u32) -> Flow {
        let local = i.is_multiple_of(2);
        let j = (i / 2) % FILL_PODS;
        let pod = if local {
            Ipv4Addr::new(10, 244, 0, 2 + j as u8)
        } else {
            Ipv4Addr::new(10, 244, 2, 2 + j as u8)
        };
        Flow {
            pod,
            pod_port: 20000 + (i % PORTS) as u16,
            // 198.18.0.0/15 (benchmarking range): one address per run of NAT ports.
            remote: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i / PORTS),
            remote_port: FILL_DPORT,
            nat_port: PORT_MIN + (i % PORTS) as u16,
            node: if local { GATEWAY } else { WORKER },
            state: if i % 10 == 9 {
                CT_CLOSING
            } else {
                CT_ESTABLISHED
            },
        }
    }

    fn stale(&self) -> bool {
        self.state == CT_CLOSING
    }

    fn forward_key(&self) -> NatKey4 {
        key(
            self.pod,
            self.remote,
            self.pod_port,
            self.remote_port,
            IPPROTO_TCP,
        )
    }

    fn reverse_key(&self) -> NatKey4 {
        key(
            self.remote,
            EGRESS,
            self.remote_port,
            self.nat_port,
            IPPROTO_TCP,
        )
    }

    fn last_seen(&self, now: u64) -> u64 {
        if self.stale() {
            now.saturating_sub(60_000_000_000)
        } else {
            now
        }
    }

    fn forward_entry(&self, now: u64) -> NatEntry4 {
        entry(
            EGRESS,
            self.nat_port,
            0,
            self.state,
            self.node,
            self.last_seen(now),
        )
    }

    fn reverse_entry(&self, now: u64) -> NatEntry4 {
        entry(
            self.pod,
            self.pod_port,
            NAT_F_REVERSE,
            self.state,
            self.node,
            self.last_seen(now),
        )
    }

    fn pod_ifindex(&self) -> u32 {
        FILL_POD_IF + u32::from(self.pod.octets()[3] - 2)
    }

    /// A data packet of the pod, as it arrives on its veth.
    fn out_pkt(&self) -> Pkt {
        pkt(
            tcp_ack(self.pod, self.remote, self.pod_port, self.remote_port),
            self.pod_ifindex(),
        )
    }

    /// A reply, as it arrives on the uplink.
    fn reply_pkt(&self) -> Pkt {
        pkt(
            tcp_ack(self.remote, EGRESS, self.remote_port, self.nat_port),
            UPLINK_IF,
        )
    }
}

/// Up to `n` flows spread over `0..flows` with `keep(i)`.
fn sample(flows: u32, n: u32, keep: impl Fn(u32) -> bool) -> Vec<u32> {
    let step = (flows / n).max(1);
    let mut out: Vec<u32> = Vec::new();
    let mut i = 0;
    while i < flows && out.len() < n as usize {
        if let Some(f) = (i..flows.min(i + step)).find(|&f| keep(f)) {
            out.push(f);
        }
        i += step;
    }
    out
}

/// The NAT map's `memlock:` and id, from this process's fdinfo.
fn nat_map_fdinfo() -> (u64, u64) {
    for e in fs::read_dir("/proc/self/fdinfo").expect("fdinfo") {
        let Ok(text) = fs::read_to_string(e.expect("fdinfo entry").path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        if field("map_type:") == Some(u64::from(BPF_MAP_TYPE_LRU_HASH))
            && field("max_entries:") == Some(u64::from(NAT_MAX_ENTRIES))
        {
            return (
                field("memlock:").expect("memlock"),
                field("map_id:").unwrap_or(0),
            );
        }
    }
    panic!("the NAT map is not among this process's file descriptors");
}

/// `VmRSS` / `VmHWM` of this process, bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let s = fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One timed round over `pkts` after asserting each packet's path once.
fn scale_round(dp: &Datapath, prog: &'static str, pkts: &[Pkt], runs: u32) -> f64 {
    fresh_round(dp, prog, pkts, TC_ACT_REDIRECT, runs)
}

fn nat_at_scale(p: &Params) -> Nat {
    let sizes = MapSizes {
        nat: NAT_MAX_ENTRIES,
        ..MapSizes::default()
    };
    let mut dp = datapath_sized(&sizes, GATEWAY);
    for j in 0..FILL_PODS {
        dp.maps()
            .put_endpoint(
                ip4(Ipv4Addr::new(10, 244, 0, 2 + j as u8)),
                Endpoint {
                    ifindex: FILL_POD_IF + j,
                    policy_id: POLICY,
                    flags: EP_F_SELECTED,
                    deliver_ifindex: 0,
                },
            )
            .expect("endpoint");
    }
    let (memlock, map_id) = nat_map_fdinfo();
    eprintln!(
        "NAT table: LRU hash, {NAT_MAX_ENTRIES} entries, memlock {:.1} MiB (map id {map_id})",
        memlock as f64 / (1 << 20) as f64
    );
    let _stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut levels = Vec::new();
    let mut filled = 0u32;
    let mut fill_time = Duration::ZERO;
    for &flows in &p.levels {
        assert!(flows * 2 <= NAT_MAX_ENTRIES);
        let now = nat_gc::monotonic_ns();
        let t = Instant::now();
        for i in filled..flows {
            put_flow(&mut dp, &Flow::nth(i), now);
        }
        let fill = t.elapsed();
        let added = u64::from(flows - filled) * 2;
        fill_time += fill;
        filled = flows;
        let rss = proc_status_bytes("VmRSS:");

        // Measured flows: in the table, not stale, SNAT from gateway pods, replies to workers.
        let snat: Vec<Pkt> = sample(flows, p.sample_flows, |i| i.is_multiple_of(2))
            .into_iter()
            .map(|i| {
                let f = Flow::nth(i);
                let pk = f.out_pkt();
                let (rc, out) = run(&dp, FROM_POD, &pk.bytes, pk.ifindex);
                assert_eq!(rc, TC_ACT_REDIRECT, "flow {i}: verdict");
                assert_eq!(src_ip(&out), EGRESS);
                assert_eq!(
                    sport(&out),
                    f.nat_port,
                    "flow {i}: the mapping in the table"
                );
                assert_checksums(&out);
                pk
            })
            .collect();
        let rev: Vec<Pkt> = sample(flows, p.sample_flows, |i| {
            i % 2 == 1 && !Flow::nth(i).stale()
        })
        .into_iter()
        .map(|i| {
            let f = Flow::nth(i);
            let pk = f.reply_pkt();
            let (rc, out) = run(&dp, FROM_WIRE, &pk.bytes, pk.ifindex);
            assert_eq!(rc, TC_ACT_REDIRECT, "flow {i}: verdict");
            assert_eq!(dst_ip(&out), f.pod, "flow {i}: reverse translated");
            assert_eq!(dport(&out), f.pod_port);
            assert_checksums(&out);
            pk
        })
        .collect();
        let one_snat = std::slice::from_ref(&snat[snat.len() / 2]);
        let one_rev = std::slice::from_ref(&rev[rev.len() / 2]);
        let (mut s1, mut sn, mut r1, mut rn) = (vec![], vec![], vec![], vec![]);
        for _ in 0..p.rounds {
            s1.push(scale_round(&dp, FROM_POD, one_snat, p.scale_runs));
            sn.push(scale_round(&dp, FROM_POD, &snat, p.scale_runs));
            r1.push(scale_round(&dp, FROM_WIRE, one_rev, p.scale_runs));
            rn.push(scale_round(&dp, FROM_WIRE, &rev, p.scale_runs));
        }
        let (s1, sn, r1, rn) = (Stat::of(s1), Stat::of(sn), Stat::of(r1), Stat::of(rn));
        let rate = added as f64 / fill.as_secs_f64().max(1e-9);
        eprintln!(
            "  {flows:>7} flows ({:>7} entries; +{added} in {:.2} s, {:.0} entries/s; RSS {:.0} MiB)",
            flows * 2,
            fill.as_secs_f64(),
            rate,
            rss as f64 / (1 << 20) as f64
        );
        eprintln!("    snat hit      one flow {}", fmt_stat(&s1));
        eprintln!("    snat hit  {:>4} flows {}", snat.len(), fmt_stat(&sn));
        eprintln!("    reverse hit   one flow {}", fmt_stat(&r1));
        eprintln!("    reverse hit {:>4} flows {}", rev.len(), fmt_stat(&rn));
        levels.push(NatLevel {
            flows,
            entries: flows * 2,
            fill_added_entries: added,
            fill_s: fill.as_secs_f64(),
            fill_entries_per_s: rate.round(),
            rss_bytes: rss,
            sample_flows: snat.len().min(rev.len()),
            snat_hit_ns: s1,
            snat_hit_spread_ns: sn,
            reverse_hit_ns: r1,
            reverse_hit_spread_ns: rn,
        });
    }
    drop(_stats);
    let total_rate = f64::from(filled) * 2.0 / fill_time.as_secs_f64().max(1e-9);

    // The agent's GC pass over the full table: list, decide, delete the expired flows.
    let timeouts = Timeouts::default();
    let t = Instant::now();
    let entries = dp.maps().nat_entries().expect("list nat");
    let list_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dead = nat_gc::expired(&entries, nat_gc::monotonic_ns(), &timeouts);
    let decide_s = t.elapsed().as_secs_f64();
    let listed = entries.len();
    assert_eq!(listed, filled as usize * 2, "every entry is in the table");
    let expected_dead = (0..filled).filter(|&i| Flow::nth(i).stale()).count() * 2;
    assert_eq!(dead.len(), expected_dead, "the closing, idle flows");
    drop(entries);
    let t = Instant::now();
    let (deleted, _) = collect_nat(&mut dp, &timeouts).expect("collect_nat");
    let collect_s = t.elapsed().as_secs_f64();
    assert_eq!(deleted, expected_dead);
    let t = Instant::now();
    let (again, _) = collect_nat(&mut dp, &timeouts).expect("collect_nat");
    let noop_s = t.elapsed().as_secs_f64();
    assert_eq!(again, 0);
    let rss_after = proc_status_bytes("VmRSS:");
    let rss_peak = proc_status_bytes("VmHWM:");
    eprintln!(
        "  fill: {total_rate:.0} entries/s overall\n  GC of {listed} entries: list {list_s:.2} s, \
         decide {decide_s:.2} s, collect_nat (list + decide + delete {deleted}) {collect_s:.2} s, \
         next pass (nothing expired) {noop_s:.2} s; RSS {:.0} MiB, peak {:.0} MiB",
        rss_after as f64 / (1 << 20) as f64,
        rss_peak as f64 / (1 << 20) as f64
    );
    Nat {
        max_entries: NAT_MAX_ENTRIES,
        memlock_bytes: memlock,
        map_id,
        levels,
        fill_entries_per_s: total_rate.round(),
        gc: Gc {
            entries: listed,
            expired_entries: deleted,
            list_s,
            decide_s,
            collect_s,
            collect_noop_s: noop_s,
            rss_after_bytes: rss_after,
            rss_peak_bytes: rss_peak,
        },
    }
}

/// Size of each program after the verifier (xlated instructions) and the JIT.
fn program_sizes() -> BTreeMap<String, ProgramSize> {
    let dp = datapath(GATEWAY);
    program_names::ALL
        .into_iter()
        .map(|name| {
            let info = dp.program(name).expect("program").info().expect("info");
            let size = ProgramSize {
                xlated_insns: info.size_translated().map(|b| b / 8),
                jited_bytes: info.size_jitted(),
            };
            (name.to_owned(), size)
        })
        .collect()
}

fn first_line(path: &str, prefix: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_default()
}

fn main() {
    let start = Instant::now();
    let p = Params::from_env();
    let kernel = first_line("/proc/sys/kernel/osrelease", "");
    let cpu = first_line("/proc/cpuinfo", "model name");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let stats_sysctl: i64 = first_line("/proc/sys/kernel/bpf_stats_enabled", "")
        .parse()
        .unwrap_or(-1);
    eprintln!(
        "datapath bench: kernel {kernel}, {cpus} CPUs ({cpu}); {} rounds, repeat {}, {} fresh runs{}",
        p.rounds,
        p.repeat,
        p.fresh_runs,
        if p.quick { " (QUICK: not for publishing)" } else { "" }
    );
    let programs = program_sizes();
    eprintln!("per packet (median of rounds):");
    let (floor, cases) = small_cases(&p);
    let nat = p.only.is_none().then(|| {
        eprintln!("NAT at scale:");
        nat_at_scale(&p)
    });
    let total_s = start.elapsed().as_secs_f64();
    eprintln!("total {total_s:.1} s");
    let doc = Report {
        schema: SCHEMA,
        env: Env {
            kernel,
            cpu,
            cpus,
            bpf_stats_enabled_sysctl: stats_sysctl,
            quick: p.quick,
            only: p.only,
            rounds: p.rounds,
            repeat: p.repeat,
            fresh_runs: p.fresh_runs,
            scale_runs: p.scale_runs,
            total_s,
        },
        programs,
        floor,
        cases,
        nat,
    };
    let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
    match std::env::var_os("EGRESS_BENCH_JSON") {
        Some(path) if !path.is_empty() => {
            fs::write(&path, text).expect("write EGRESS_BENCH_JSON");
            eprintln!("JSON written to {}", path.to_string_lossy());
        }
        _ => print!("{text}"),
    }
}
