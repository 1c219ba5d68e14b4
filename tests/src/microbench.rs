//! The JSON document of the datapath micro-benchmark (`benches/datapath.rs` writes it, the
//! report of `cargo xtask bench` reads it). The comment at the top of the benchmark says how
//! each figure is measured. Times are ns per packet unless named `_s` (seconds).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of this document's layout.
pub const SCHEMA: u32 = 1;

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    pub env: Env,
    /// Per program: its size after the verifier.
    pub programs: BTreeMap<String, ProgramSize>,
    /// What each method adds to any program.
    pub floor: Floor,
    /// One per measured path.
    pub cases: Vec<Case>,
    /// `None` with `EGRESS_BENCH_ONLY`.
    pub nat: Option<Nat>,
}

/// The machine and the parameters of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Env {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    /// `kernel.bpf_stats_enabled` at the start (-1 if unreadable).
    pub bpf_stats_enabled_sysctl: i64,
    /// A smoke run (`EGRESS_BENCH_QUICK`): its figures are not for publishing.
    pub quick: bool,
    /// `EGRESS_BENCH_ONLY`.
    pub only: Option<String>,
    pub rounds: usize,
    pub repeat: u32,
    pub fresh_runs: u32,
    pub scale_runs: u32,
    pub total_s: f64,
}

/// A program's size after the verifier (xlated instructions) and the JIT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramSize {
    pub xlated_insns: Option<u32>,
    pub jited_bytes: u32,
}

/// Median, min and max over rounds, and every round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: Vec<f64>,
}

impl Stat {
    /// The statistics of `rounds` (at least one), each figure rounded to 0.01.
    pub fn of(rounds: Vec<f64>) -> Stat {
        let mut v = rounds.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat {
            median: round2(median),
            min: round2(v[0]),
            max: round2(v[n - 1]),
            rounds: rounds.into_iter().map(round2).collect(),
        }
    }
}

/// `x` rounded to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The measurement floor: a program that only returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floor {
    /// What the program is.
    pub program: String,
    pub repeat_ns: Stat,
    pub fresh_ns: Stat,
}

/// How a case is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The kernel repeats the program on one skb (the packet comes out unchanged).
    Repeat,
    /// One `BPF_PROG_TEST_RUN` per packet, timed by the run-time statistics.
    Fresh,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Repeat => "repeat",
            Method::Fresh => "fresh",
        }
    }
}

/// One measured path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    /// A stable identifier.
    pub name: String,
    pub program: String,
    /// `worker` or `gateway`.
    pub node: String,
    /// What the packet exercises.
    pub path: String,
    /// TC_ACT_*, asserted on every run.
    pub verdict: u32,
    pub method: Method,
    pub ns: Stat,
    /// `ns` median minus the floor median of the same method.
    pub net_ns: f64,
    /// The other method (passthrough cases).
    pub cross_check_ns: Option<Stat>,
    /// What a naive in-place repeat claims for a packet the program rewrites: NOT the path.
    pub in_place_repeat: Option<InPlaceRepeat>,
}

/// A naive in-place repeat of a rewritten packet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InPlaceRepeat {
    pub ns: f64,
    pub last_verdict: u32,
}

/// The NAT table at scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nat {
    pub max_entries: u32,
    /// `/proc/self/fdinfo` of the NAT map.
    pub memlock_bytes: u64,
    pub map_id: u64,
    pub levels: Vec<NatLevel>,
    /// Over all levels.
    pub fill_entries_per_s: f64,
    pub gc: Gc,
}

/// One fill level of the NAT table (all figures: fresh, floor included).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatLevel {
    pub flows: u32,
    /// Forward + reverse entry per flow.
    pub entries: u32,
    pub fill_added_entries: u64,
    pub fill_s: f64,
    pub fill_entries_per_s: f64,
    /// `VmRSS` after the fill.
    pub rss_bytes: u64,
    /// Flows the `*_spread` figures cycle through.
    pub sample_flows: usize,
    /// egw_from_pod on the gateway, one flow.
    pub snat_hit_ns: Stat,
    /// ... over `sample_flows` flows.
    pub snat_hit_spread_ns: Stat,
    /// egw_from_wire, reply tunnelled back, one flow.
    pub reverse_hit_ns: Stat,
    /// ... over `sample_flows` flows.
    pub reverse_hit_spread_ns: Stat,
}

/// One GC pass of the agent over the full table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gc {
    pub entries: usize,
    pub expired_entries: usize,
    /// `nat_entries()`: the whole table.
    pub list_s: f64,
    /// `nat_gc::expired()`.
    pub decide_s: f64,
    /// `agent::collect_nat()`: list + decide + delete.
    pub collect_s: f64,
    /// The next pass, nothing to delete.
    pub collect_noop_s: f64,
    pub rss_after_bytes: u64,
    pub rss_peak_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_median_min_max_rounded() {
        let s = Stat::of(vec![3.0, 1.004, 2.0, 10.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert_eq!(s.rounds, [3.0, 1.0, 2.0, 10.0]);
        assert_eq!(Stat::of(vec![5.0, 1.0, 2.0]).median, 2.0);
    }

    #[test]
    fn method_is_written_in_lowercase() {
        assert_eq!(
            serde_json::to_string(&Method::Fresh).expect("json"),
            "\"fresh\""
        );
        assert_eq!(Method::Repeat.name(), "repeat");
    }
}
