//! The datapath fuzzer: at least 100,000 mutated packets per program through
//! `BPF_PROG_TEST_RUN`, against the packet tests' seeded maps (`egress_tests::packet::datapath`)
//! with a few flows opened, on a gateway and on a worker in turn.
//!
//! Packets (see `gen`): valid TCP, UDP, ICMP echo, ICMP errors quoting a flow, fragments and
//! VXLAN frames, of a pod and of the internet, mutated in headers, lengths, options and flags,
//! and random bytes. Every program gets every kind, its own side's mostly.
//!
//! Invariants, per packet (see `oracle`): no error from the test run; a verdict the program
//! gives; a packet left to the stack byte-identical; a packet that matches no policy or flow
//! left alone (`TCX_NEXT`, byte-identical, the NAT entry at its tuple unchanged); a translated
//! packet with every valid checksum still valid, nothing changed beyond the translation, and a
//! tuple of a seeded flow or of one the run created legitimately (pod A, from its own
//! interface: the model learns each such translation and judges every reply by it). Per
//! round: every drop counted, and the NAT invariant checker (`egress_agent::nat_check`)
//! finds nothing wrong with the map.
//!
//! CI runs it with a fixed seed (`EGRESS_FUZZ_SEED`, default below) and 100,000 packets per
//! program (`EGRESS_FUZZ_PACKETS`); `cargo xtask fuzz [--seed N] [--packets N]` runs a longer
//! one. Not in the kernel matrix (only test binaries named `packet*` run in its guests).
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN), as the packet tests.

#![expect(
    unused_crate_dependencies,
    reason = "one test binary of several sharing the package's dependencies"
)]

mod gen;
mod oracle;
mod wire;
mod world;

use std::{collections::BTreeMap, os::fd::AsFd, time::Instant};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use egress_agent::{
    datapath::Datapath,
    nat_check::{self, Limits},
    nat_gc::{monotonic_ns, CLAIM_STALE_NS},
};
use egress_common::{
    map_names,
    program_names::{FROM_POD, FROM_WIRE, TO_POD},
};
use egress_tests::packet::{
    datapath, skb_ctx, EGRESS, INTERNET, POD_A, POD_A_IF, PORT_MAX, PORT_MIN, TCX_NEXT,
    TC_ACT_REDIRECT, TC_ACT_SHOT,
};
use rand::SeedableRng;

use crate::{
    gen::{Input, Prng},
    oracle::{Expect, Maps, ALL_PROGRAMS},
    wire::hex,
    world::{Cfg, Flow, Model, Role, INBOUND_PEER_PORT, INBOUND_POD_PORT, POD_FLOWS},
};

/// The seed CI runs with.
const CI_SEED: u64 = 0x6567_7731_3366_757a;
/// Packets per program per run.
const CI_PACKETS: u64 = 100_000;
/// Rounds per run: the maps are emptied and seeded again at each (gateway and worker in
/// turn), and checked as a whole at the end of each.
const ROUNDS: u64 = 10;
/// Examples kept per kind of failure.
const EXAMPLES: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

/// One run's bookkeeping.
#[derive(Default)]
struct Tally {
    per_program: BTreeMap<&'static str, u64>,
    verdicts: BTreeMap<(&'static str, String), u64>,
    translated: u64,
    untouched_expected: u64,
    failures: BTreeMap<String, (u64, Vec<String>)>,
    /// Known holes met (see `oracle::HOLES`): count and a first example.
    holes: BTreeMap<&'static str, (u64, String)>,
    /// Known holes fail the run too (`EGRESS_FUZZ_STRICT=1`).
    strict: bool,
}

impl Tally {
    fn hole(&mut self, test: &'static str, example: String) {
        let e = self.holes.entry(test).or_insert((0, example));
        e.0 += 1;
    }

    fn fail(&mut self, kind: String, example: String) {
        let e = self.failures.entry(kind).or_default();
        e.0 += 1;
        if e.1.len() < EXAMPLES {
            e.1.push(example);
        }
    }
}

struct Round<'a> {
    dp: &'a Datapath,
    role: Role,
    cfg: Cfg,
    maps: Maps,
    model: Model,
    shots: u64,
    seed: u64,
    round: u64,
}

fn own_map<K: aya::Pod, V: aya::Pod>(dp: &Datapath, name: &'static str) -> HashMap<MapData, K, V> {
    let fd = dp
        .map_fd(name)
        .expect("map fd")
        .as_fd()
        .try_clone_to_owned()
        .expect("dup");
    let map = Map::from_map_data(MapData::from_fd(fd).expect("map data")).expect("map");
    HashMap::try_from(map).expect("a hash map")
}

impl Round<'_> {
    /// Runs `prog` on `input`; `Err`: the test run itself failed.
    fn run(&self, prog: &'static str, input: &Input) -> Result<(u32, Vec<u8>), String> {
        let mut ctx = skb_ctx(input.ingress);
        ctx[8..12].copy_from_slice(&input.mark.to_ne_bytes());
        let mut ctx_out = [0u8; 192];
        let mut out = vec![0u8; input.pkt.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&input.pkt);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.ctx_out = Some(&mut ctx_out);
        let res = self
            .dp
            .program(prog)
            .expect("program")
            .test_run(opts)
            .map_err(|e| format!("{e:#}"))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// One packet through one program, judged.
    fn one(&mut self, prog: &'static str, input: &Input, t: &mut Tally, index: u64) {
        let expect = oracle::expect(prog, &self.cfg, &input.pkt, input.ingress, &self.maps);
        let watched: Vec<_> = if expect == Expect::Untouched {
            oracle::untouched_keys(&input.pkt)
                .into_iter()
                .map(|k| (k, self.maps.nat(&k)))
                .collect()
        } else {
            Vec::new()
        };
        let repro = |what: &str, verdict: Option<u32>, out: &[u8]| {
            format!(
                "{what}\n      seed {:#x} round {} packet {index} on the {:?}: {prog} ingress {} \
                 mark {:#x}, expected {expect:?}, verdict {}\n      made as: {}\n      in:  {}\n      \
                 out: {}",
                self.seed,
                self.round,
                self.role,
                input.ingress,
                input.mark,
                verdict.map_or("-".into(), oracle::verdict_name),
                input.how,
                hex(&input.pkt),
                hex(out)
            )
        };
        let (verdict, out) = match self.run(prog, input) {
            Ok(r) => r,
            Err(e) => {
                t.fail(
                    format!("{prog}: BPF_PROG_TEST_RUN failed"),
                    repro(&e, None, &[]),
                );
                return;
            }
        };
        *t.verdicts
            .entry((prog, oracle::verdict_name(verdict)))
            .or_default() += 1;
        if verdict == TC_ACT_SHOT {
            self.shots += 1;
        }
        let mut check = || -> Result<(), oracle::Violation> {
            if !oracle::verdict_ok(prog, verdict) {
                return Err(oracle::Violation::new(
                    format!("{prog}: verdict {}", oracle::verdict_name(verdict)),
                    String::new(),
                ));
            }
            if verdict == TCX_NEXT && out != input.pkt {
                return Err(oracle::Violation::new(
                    format!("{prog}: left to the stack, but changed"),
                    String::new(),
                ));
            }
            match (expect, verdict) {
                (Expect::Untouched, TCX_NEXT) => {
                    t.untouched_expected += 1;
                    for (k, before) in &watched {
                        let after = self.maps.nat(k);
                        if after != *before {
                            let v = oracle::Violation::new(
                                format!(
                                    "{prog}: a packet of no flow changed the NAT entry at its \
                                     tuple"
                                ),
                                format!("{before:?}\n      became {after:?}"),
                            );
                            return Err(v);
                        }
                    }
                }
                (Expect::Untouched, v) => {
                    return Err(oracle::Violation::new(
                        format!(
                            "{prog}: a packet of no policy or flow got {}",
                            oracle::verdict_name(v)
                        ),
                        String::new(),
                    ))
                }
                (Expect::Shot, TC_ACT_SHOT) => {}
                (Expect::Shot, v) => {
                    return Err(oracle::Violation::new(
                        format!(
                            "{prog}: a packet to be dropped got {}",
                            oracle::verdict_name(v)
                        ),
                        String::new(),
                    ))
                }
                (Expect::Any, _) => {}
            }
            if verdict == TC_ACT_REDIRECT {
                t.translated += 1;
                oracle::check_redirect(
                    prog,
                    self.role,
                    &self.cfg,
                    &input.pkt,
                    input.ingress,
                    &out,
                    &self.maps,
                    &mut self.model,
                )?;
            }
            Ok(())
        };
        if let Err(v) = check() {
            let what = if v.detail.is_empty() {
                v.kind.clone()
            } else {
                format!("{}: {}", v.kind, v.detail)
            };
            let example = repro(&what, Some(verdict), &out);
            match v.hole {
                Some(test) if !t.strict => t.hole(test, example),
                _ => t.fail(v.kind, example),
            }
        }
    }

    /// Opens the seeded flows as the datapath would (judged like any packet): pod A's flows
    /// and their replies on the gateway, a flow to the gateway on the worker, and a peer's
    /// connection to pod A.
    fn open_flows(&mut self, t: &mut Tally) {
        use egress_tests::packet::{HOST_MAC, POD_MAC};

        use crate::gen::{ip, tcp};
        let mut i = 0;
        let mut send = |r: &mut Self, prog, pkt: Vec<u8>, ingress| {
            let input = Input {
                pkt,
                ingress,
                mark: 0,
                how: "seeding".into(),
            };
            r.one(prog, &input, t, i);
            i += 1;
        };
        for f in &POD_FLOWS {
            let (out_l4, back_l4) = flow_packets(f);
            let out = ip(
                (POD_MAC, HOST_MAC),
                f.pod,
                f.remote,
                f.proto,
                64,
                1,
                0,
                &out_l4,
            );
            send(self, FROM_POD, out, POD_A_IF);
            if self.role == Role::Gateway {
                let back = ip(
                    (HOST_MAC, POD_MAC),
                    f.remote,
                    EGRESS,
                    f.proto,
                    64,
                    1,
                    0,
                    &back_l4,
                );
                send(self, FROM_WIRE, back, egress_tests::packet::UPLINK_IF);
            }
        }
        let syn = tcp(
            INBOUND_PEER_PORT,
            INBOUND_POD_PORT,
            9000,
            0,
            0x02,
            64240,
            &[],
            &[],
        );
        let pkt = ip(
            (HOST_MAC, POD_MAC),
            INTERNET,
            POD_A,
            egress_common::proto::IPPROTO_TCP,
            64,
            2,
            0,
            &syn,
        );
        send(self, TO_POD, pkt, 0);
        // The generators aim at these ports: the flows must hold them.
        if self.role == Role::Gateway {
            for f in &POD_FLOWS {
                let port = self.maps.nat(&f.key()).map(|e| u16::from_be(e.port));
                assert_eq!(port, Some(f.nat_port), "seeded flow {f:?}");
            }
        }
    }
}

/// A flow's first packet (the pod's) and its answer's L4 header.
fn flow_packets(f: &Flow) -> (Vec<u8>, Vec<u8>) {
    use egress_common::proto::{IPPROTO_ICMP, IPPROTO_TCP};
    use egress_tests::packet::{PEER_ISN, POD_ISN};

    use crate::gen::{icmp, tcp, udp};
    match f.proto {
        IPPROTO_TCP => (
            tcp(
                f.pod_port,
                f.remote_port,
                POD_ISN,
                0,
                0x02,
                64240,
                &[2, 4, 5, 0xb4],
                &[],
            ),
            tcp(
                f.remote_port,
                f.nat_port,
                PEER_ISN,
                POD_ISN + 1,
                0x12,
                64240,
                &[2, 4, 5, 0xb4],
                &[],
            ),
        ),
        IPPROTO_ICMP => {
            let rest = |id: u16| {
                let mut r = [0u8; 4];
                r[..2].copy_from_slice(&id.to_be_bytes());
                r[3] = 1;
                r
            };
            (
                icmp(8, 0, rest(f.pod_port), b"abcdefgh"),
                icmp(0, 0, rest(f.nat_port), b"abcdefgh"),
            )
        }
        _ => (
            udp(f.pod_port, f.remote_port, b"query"),
            udp(f.remote_port, f.nat_port, b"answer"),
        ),
    }
}

/// The sum of every drop counter.
fn drops_total(dp: &Datapath) -> u64 {
    dp.drops().expect("drops").iter().map(|(_, n)| n).sum()
}

fn fuzz(seed: u64, per_program: u64, strict: bool) -> Tally {
    let mut rng = Prng::seed_from_u64(seed);
    let mut t = Tally {
        strict,
        ..Tally::default()
    };
    let per_round = per_program.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        let role = if round % 2 == 0 {
            Role::Gateway
        } else {
            Role::Worker
        };
        let mut dp = datapath(role.node());
        if role == Role::Gateway {
            world::seed_remote_flows(&mut dp, monotonic_ns());
        }
        let drops_before = drops_total(&dp);
        let mut r = Round {
            dp: &dp,
            role,
            cfg: Cfg::of(role),
            maps: Maps {
                nat: own_map(&dp, map_names::NAT4),
                frag: own_map(&dp, map_names::FRAG4),
            },
            model: Model::new(role),
            shots: 0,
            seed,
            round,
        };
        r.open_flows(&mut t);
        let n = per_round.min(per_program - per_round * round);
        for i in 0..n {
            // Programs take turns, so that each one's packets meet the others' state.
            for prog in ALL_PROGRAMS {
                let input = gen::next(&mut rng, prog, role);
                r.one(prog, &input, &mut t, i);
                *t.per_program.entry(prog).or_default() += 1;
            }
        }
        let shots = r.shots;
        drop(r);
        // Every drop is counted.
        let dropped = drops_total(&dp) - drops_before;
        if dropped < shots {
            t.fail(
                "drops not counted".into(),
                format!("round {round}: {shots} TC_ACT_SHOT verdicts, {dropped} counted drops"),
            );
        }
        // The NAT table as a whole.
        let entries = dp.maps().nat_entries().expect("NAT entries");
        let report = nat_check::check(
            &entries,
            &Limits {
                ports: Some((PORT_MIN, PORT_MAX)),
                now_ns: monotonic_ns(),
                claim_stale_ns: CLAIM_STALE_NS,
            },
        );
        for p in report.problems {
            t.fail(
                format!("NAT invariant: {}", p.kind()),
                format!("seed {seed:#x} round {round} ({role:?}): {p}"),
            );
        }
    }
    t
}

#[test]
fn fuzz_every_program_with_mutated_packets() {
    let seed = env_u64("EGRESS_FUZZ_SEED").unwrap_or(CI_SEED);
    let per_program = env_u64("EGRESS_FUZZ_PACKETS").unwrap_or(CI_PACKETS);
    println!(
        "fuzz: seed {seed:#x}, {per_program} packets per program ({} programs)",
        ALL_PROGRAMS.len()
    );
    let strict = std::env::var_os("EGRESS_FUZZ_STRICT").is_some_and(|v| v == "1");
    let start = Instant::now();
    let t = fuzz(seed, per_program, strict);
    let took = start.elapsed();
    let total: u64 = t.per_program.values().sum();
    println!(
        "fuzz: {total} packets in {:.1} s ({:.1} µs each): {} translated, {} of no flow left \
         alone",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / total.max(1) as f64,
        t.translated,
        t.untouched_expected
    );
    for ((prog, v), n) in &t.verdicts {
        println!("fuzz:   {prog:16} {v:16} {n}");
    }
    for (test, (n, example)) in &t.holes {
        println!(
            "fuzz: known hole, {n} times (the ignored packet test {test}; \
             EGRESS_FUZZ_STRICT=1 fails on it), e.g.:\n    {example}"
        );
    }
    for prog in ALL_PROGRAMS {
        let n = t.per_program.get(prog).copied().unwrap_or(0);
        assert!(n >= per_program, "{prog}: only {n} packets");
    }
    if !t.failures.is_empty() {
        let mut msg = format!(
            "the fuzzer found {} kinds of failure (seed {seed:#x}; run again with \
             EGRESS_FUZZ_SEED={seed:#x} EGRESS_FUZZ_PACKETS={per_program}):\n",
            t.failures.len()
        );
        for (kind, (n, examples)) in &t.failures {
            msg += &format!("\n  {kind} ({n} times)\n");
            for e in examples {
                msg += &format!("    {e}\n");
            }
        }
        panic!("{msg}");
    }
}
