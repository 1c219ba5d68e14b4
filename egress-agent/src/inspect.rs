//! `egress-agent inspect`: reads the pinned maps of a running (or stopped) agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use anyhow::Result;
use aya::maps::{lpm_trie::LpmTrie, Array, HashMap, MapData, MapError};
use egress_common::{
    config::{Config, CFG_F_READY},
    counters::PolicyStats,
    endpoint::Endpoint,
    map_names,
    nat::{NatEntry4, NatKey4, NAT_F_REVERSE},
    policy::{
        decode_policy_key6, PolicyKey4, PolicyKey6, PolicyValue, PolicyValue6, ACTION_EXCLUDED,
        ACTION_REFUSE, ACTION_VIA_GATEWAY, POLICY_ID_BITS,
    },
};
use serde::Serialize;

use crate::{
    datapath::{ip4_from, open_pinned_map, read_drops, read_nat_stats, read_policy_stats},
    model::PolicyStatus,
    nat_check,
    nat_gc::{monotonic_ns, CLAIM_STALE_NS},
    table::{self, left, right, Col},
};

fn proto(p: u8) -> String {
    egress_common::proto::name(p).map_or_else(|| p.to_string(), str::to_owned)
}

/// `--json`: the rows as pretty JSON; otherwise the text table.
fn output<T: Serialize>(rows: &T, as_json: bool, text: impl FnOnce() -> String) -> Result<String> {
    Ok(if as_json {
        serde_json::to_string_pretty(rows)? + "\n"
    } else {
        text()
    })
}

/// One translated flow (forward direction) of `inspect nat`.
#[derive(Clone, Debug, Serialize)]
pub struct NatRow {
    pub proto: String,
    /// Pod address and port.
    pub pod: String,
    pub remote: String,
    /// The egress address and port it is translated to.
    pub egress: String,
    /// The node the pod is on.
    pub node: Ipv4Addr,
    pub policy: u32,
    pub state: u8,
}

impl NatRow {
    const COLUMNS: [Col; 6] = [
        left("PROTO", 5),
        left("POD", 22),
        left("REMOTE", 22),
        left("EGRESS", 22),
        left("NODE", 15),
        right("POLICY", 6),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.proto.clone(),
            self.pod.clone(),
            self.remote.clone(),
            self.egress.clone(),
            self.node.to_string(),
            self.policy.to_string(),
        ]
    }
}

pub fn nat(pin_root: &Path, as_json: bool) -> Result<String> {
    let map = open_pinned_map(pin_root, map_names::NAT4)?;
    let m: HashMap<&MapData, NatKey4, NatEntry4> = (&map).try_into()?;
    let mut rows = Vec::new();
    for kv in m.iter() {
        let (k, v) = kv?;
        if v.flags & NAT_F_REVERSE != 0 || k.is_claim() {
            continue;
        }
        rows.push(NatRow {
            proto: proto(k.proto),
            pod: format!("{}:{}", ip4_from(k.saddr), u16::from_be(k.sport)),
            remote: format!("{}:{}", ip4_from(k.daddr), u16::from_be(k.dport)),
            egress: format!("{}:{}", ip4_from(v.addr), u16::from_be(v.port)),
            node: ip4_from(v.node_ip4),
            policy: v.policy_id,
            state: v.state,
        });
    }
    output(&rows, as_json, || {
        table::render(&NatRow::COLUMNS, rows.iter().map(NatRow::cells))
    })
}

/// A problem of `inspect nat --check` (its `--json` output lists these).
#[derive(Clone, Debug, Serialize)]
pub struct NatProblemRow {
    pub kind: &'static str,
    pub message: String,
}

/// What `inspect nat --check` reports (its `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct NatCheckReport {
    pub ok: bool,
    pub summary: nat_check::Summary,
    pub problems: Vec<NatProblemRow>,
}

/// How long `inspect nat --check` waits before it reads the entries of a problem again: a
/// flow is written in two steps microseconds apart, and a listing is no snapshot.
const RECHECK_PAUSE: Duration = Duration::from_millis(50);

/// `inspect nat --check`: the NAT table's invariants (see `nat_check`), each problem a line,
/// and whether all is well. What looks wrong is read again after a pause (after the stale limit
/// when an unstamped claim is among it) and reported only if it still is.
pub fn nat_check(pin_root: &Path, as_json: bool) -> Result<(String, bool)> {
    let map = open_pinned_map(pin_root, map_names::NAT4)?;
    let m: HashMap<&MapData, NatKey4, NatEntry4> = (&map).try_into()?;
    let cfg_map = open_pinned_map(pin_root, map_names::CONFIG)?;
    let cfg: Array<&MapData, Config> = (&cfg_map).try_into()?;
    let cfg = cfg.get(&0, 0)?;
    let ports = (cfg.flags & CFG_F_READY != 0
        && cfg.nat_port_min != 0
        && cfg.nat_port_min <= cfg.nat_port_max)
        .then_some((cfg.nat_port_min, cfg.nat_port_max));
    let limits = || nat_check::Limits {
        ports,
        now_ns: monotonic_ns(),
        claim_stale_ns: CLAIM_STALE_NS,
    };
    let entries = m.iter().collect::<Result<Vec<_>, _>>()?;
    let first = nat_check::check(&entries, &limits());
    let mut problems = Vec::new();
    if !first.problems.is_empty() {
        std::thread::sleep(if nat_check::has_unstamped_claims(&first.problems) {
            Duration::from_nanos(CLAIM_STALE_NS)
        } else {
            RECHECK_PAUSE
        });
        let mut fresh = std::collections::HashMap::new();
        for k in first.problems.iter().flat_map(nat_check::Problem::keys) {
            let v = match m.get(&k, 0) {
                Ok(v) => Some(v),
                Err(MapError::KeyNotFound) => None,
                Err(e) => return Err(e.into()),
            };
            fresh.insert(k, v);
        }
        // The listing with the entries read again: same order, gone ones left out, new ones
        // at the end.
        let mut again: Vec<(NatKey4, NatEntry4)> = entries
            .iter()
            .filter_map(|(k, v)| match fresh.get(k) {
                Some(now) => now.map(|now| (*k, now)),
                None => Some((*k, *v)),
            })
            .collect();
        for (k, v) in &fresh {
            if let (Some(v), false) = (v, entries.iter().any(|(e, _)| e == k)) {
                again.push((*k, *v));
            }
        }
        problems = nat_check::persisting(
            &first.problems,
            nat_check::check(&again, &limits()).problems,
        );
    }
    let s = first.summary;
    let report = NatCheckReport {
        ok: problems.is_empty(),
        summary: s,
        problems: problems
            .iter()
            .map(|p| NatProblemRow {
                kind: p.kind(),
                message: p.to_string(),
            })
            .collect(),
    };
    let counts = format!(
        "{} entries, {} flows, {} claims{}",
        s.entries,
        s.flows,
        s.claims,
        if s.leftovers > 0 {
            format!(", {} leftovers of reopened tuples", s.leftovers)
        } else {
            String::new()
        }
    );
    let out = output(&report, as_json, || {
        if report.ok {
            return format!("NAT table consistent: {counts}\n");
        }
        let mut out = String::new();
        for p in &report.problems {
            out += &format!("problem: {}\n", p.message);
        }
        let n = report.problems.len();
        out += &format!(
            "{n} problem{} in the NAT table ({counts}); an entry is deleted with `bpftool map \
             delete pinned {} key hex ...`\n",
            if n == 1 { "" } else { "s" },
            pin_root.join("maps").join(map_names::NAT4).display()
        );
        out
    })?;
    Ok((out, report.ok))
}

/// One local pod of `inspect endpoints`.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointRow {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    pub policy: u32,
    /// A policy selects the pod.
    pub selected: bool,
}

impl EndpointRow {
    const COLUMNS: [Col; 4] = [
        left("POD IP", 15),
        right("IFINDEX", 8),
        right("POLICY", 6),
        right("SELECTED", 8),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.ip.to_string(),
            self.ifindex.to_string(),
            self.policy.to_string(),
            self.selected.to_string(),
        ]
    }
}

pub fn endpoints(pin_root: &Path, as_json: bool) -> Result<String> {
    let map = open_pinned_map(pin_root, map_names::ENDPOINTS4)?;
    let m: HashMap<&MapData, u32, Endpoint> = (&map).try_into()?;
    let mut rows = Vec::new();
    for kv in m.iter() {
        let (k, v) = kv?;
        rows.push(EndpointRow {
            ip: ip4_from(k),
            ifindex: v.ifindex,
            policy: v.policy_id,
            selected: v.flags & egress_common::endpoint::EP_F_SELECTED != 0,
        });
    }
    output(&rows, as_json, || {
        table::render(&EndpointRow::COLUMNS, rows.iter().map(EndpointRow::cells))
    })
}

/// One policy's traffic on this node (a row of `inspect counters`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TrafficRow {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl From<PolicyStats> for TrafficRow {
    fn from(s: PolicyStats) -> Self {
        TrafficRow {
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
        }
    }
}

/// NAT mappings created and taken ports retried.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NatCounters {
    pub port_retries: u64,
    pub allocations: u64,
}

/// `inspect counters`: traffic per policy id, NAT counters, drops by reason.
#[derive(Clone, Debug, Serialize)]
pub struct Counters {
    pub drops: BTreeMap<&'static str, u64>,
    pub policies: BTreeMap<u32, TrafficRow>,
    pub nat: NatCounters,
}

impl Counters {
    const POLICY_COLUMNS: [Col; 5] = [
        left("POLICY", 8),
        right("TX PACKETS", 12),
        right("TX BYTES", 14),
        right("RX PACKETS", 12),
        right("RX BYTES", 14),
    ];
    const DROP_COLUMNS: [Col; 2] = [left("DROP REASON", 26), right("PACKETS", 10)];

    fn render(&self) -> String {
        let mut out = table::render(
            &Self::POLICY_COLUMNS,
            self.policies.iter().map(|(id, s)| {
                vec![
                    id.to_string(),
                    s.tx_packets.to_string(),
                    s.tx_bytes.to_string(),
                    s.rx_packets.to_string(),
                    s.rx_bytes.to_string(),
                ]
            }),
        );
        out += &format!(
            "\nNAT: {} mappings created, {} taken ports retried\n\n",
            self.nat.allocations, self.nat.port_retries
        );
        out += &table::render(
            &Self::DROP_COLUMNS,
            self.drops
                .iter()
                .map(|(r, n)| vec![(*r).to_owned(), n.to_string()]),
        );
        out
    }
}

pub fn counters(pin_root: &Path, as_json: bool) -> Result<String> {
    let drops = read_drops(&open_pinned_map(pin_root, map_names::DROPS)?)?.by_name();
    let stats = read_policy_stats(&open_pinned_map(pin_root, map_names::POLICY_STATS)?)?;
    let nat = read_nat_stats(&open_pinned_map(pin_root, map_names::NAT_STATS)?)?;
    let c = Counters {
        drops,
        policies: stats.into_iter().map(|(id, s)| (id, s.into())).collect(),
        nat: NatCounters {
            port_retries: nat.port_retries,
            allocations: nat.allocations,
        },
    };
    output(&c, as_json, || c.render())
}

/// One prefix of the policy map (`inspect policies`; the `--json` output is a list of these).
#[derive(Clone, Debug, Serialize)]
pub struct PrefixRow {
    /// The policy's datapath id.
    pub policy: u32,
    /// The policy's name, when the agent's status file knows it.
    pub name: String,
    pub destination: String,
    /// `gateway` or `excluded`.
    pub action: &'static str,
    pub gateway: Ipv4Addr,
    pub egress_ip: Ipv4Addr,
    /// On the gateway, when the egress IP is on another interface than the uplink: that
    /// interface (by name when it still exists) and its MTU.
    pub egress_interface: Option<String>,
    pub egress_mtu: u16,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl PrefixRow {
    const COLUMNS: [Col; 6] = [
        right("ID", 4),
        left("DESTINATION", 18),
        left("ACTION", 9),
        left("GATEWAY", 15),
        left("EGRESS IP", 15),
        left("LEAVES BY", 0),
    ];

    fn cells(&self) -> Vec<String> {
        // An excluded prefix has no gateway.
        let dash = |ip: Ipv4Addr| {
            if self.action == "excluded" {
                "-".to_owned()
            } else {
                ip.to_string()
            }
        };
        vec![
            self.policy.to_string(),
            self.destination.clone(),
            self.action.to_owned(),
            dash(self.gateway),
            dash(self.egress_ip),
            match (&self.egress_interface, self.action) {
                (_, "excluded") => "-".to_owned(),
                (Some(i), _) => format!("{i} (mtu {})", self.egress_mtu),
                (None, _) => "uplink".to_owned(),
            },
        ]
    }
}

/// A policy's line in the text of `inspect policies` and `check`: its status (when known),
/// and its conditions other than a plain Ready=True under it.
struct StatusRow<'a> {
    name: &'a str,
    id: Option<u32>,
    status: Option<&'a PolicyStatus>,
    traffic: Option<PolicyStats>,
}

impl StatusRow<'_> {
    const INSPECT_COLUMNS: [Col; 9] = [
        left("NAME", 20),
        right("ID", 4),
        left("READY", 6),
        left("REASON", 16),
        left("GATEWAY", 12),
        left("EGRESS IP", 15),
        right("PODS", 5),
        right("TX PACKETS", 11),
        right("TX BYTES", 14),
    ];
    const CHECK_COLUMNS: [Col; 7] = [
        left("POLICY", 20),
        right("ID", 4),
        left("READY", 6),
        left("REASON", 22),
        left("GATEWAY", 12),
        left("EGRESS IP", 15),
        right("PODS", 5),
    ];

    /// The cells, and the notes under them.
    fn cells(&self) -> (Vec<String>, Vec<String>) {
        let s = self.status;
        let ready = s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let mut cells = vec![
            self.name.to_owned(),
            self.id.map_or("-".into(), |i| i.to_string()),
            ready.map_or("?", |c| c.status.as_str()).to_owned(),
            ready.map_or("", |c| c.reason.as_str()).to_owned(),
            s.and_then(|s| s.gateway_node.as_deref())
                .unwrap_or("-")
                .to_owned(),
            s.and_then(|s| s.egress_ip.as_deref())
                .unwrap_or("-")
                .to_owned(),
            s.map_or("-".into(), |s| s.selected_pods.to_string()),
        ];
        if let Some(t) = self.traffic {
            cells.extend([t.tx_packets.to_string(), t.tx_bytes.to_string()]);
        }
        let notes = s
            .iter()
            .flat_map(|s| &s.conditions)
            .filter(|c| c.type_ != "Ready" || c.status != "True")
            .map(|c| format!("    {}={} {}: {}", c.type_, c.status, c.reason, c.message))
            .collect();
        (cells, notes)
    }
}

/// The policy map (like `cilium bpf egress list`): per policy id and destination prefix, the
/// action, gateway and egress IP, with the policy's traffic counters.
pub fn policies(pin_root: &Path, state_dir: &Path, as_json: bool) -> Result<String> {
    // Names and status, when the agent has written them (it need not run now).
    let status: BTreeMap<String, PolicyStatus> =
        std::fs::read(state_dir.join(crate::agent::STATUS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    let name_of: BTreeMap<u32, &str> = status
        .iter()
        .filter_map(|(n, s)| Some((s.datapath_id?, n.as_str())))
        .collect();
    let map = open_pinned_map(pin_root, map_names::POLICY4)?;
    let trie: LpmTrie<&MapData, PolicyKey4, PolicyValue> = (&map).try_into()?;
    let stats = read_policy_stats(&open_pinned_map(pin_root, map_names::POLICY_STATS)?)?;
    let mut rows = Vec::new();
    for kv in trie.iter() {
        let (k, v) = kv?;
        let data = k.data();
        let id = u32::from_be(data.policy_id_be);
        let prefix = k.prefix_len().saturating_sub(POLICY_ID_BITS);
        let s = stats.get(&id).copied().unwrap_or_default();
        rows.push(PrefixRow {
            policy: id,
            name: name_of.get(&id).copied().unwrap_or("").to_owned(),
            destination: format!("{}/{prefix}", ip4_from(data.dst)),
            action: match v.action {
                ACTION_VIA_GATEWAY => "gateway",
                ACTION_EXCLUDED => "excluded",
                _ => "unknown",
            },
            gateway: ip4_from(v.gateway_ip4),
            egress_ip: ip4_from(v.egress_ip4),
            egress_interface: (v.egress_ifindex != 0).then(|| interface_name(v.egress_ifindex)),
            egress_mtu: v.egress_mtu,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
        });
    }
    // The IPv6 prefixes (refused, or excluded from a refusal); absent from maps pinned by
    // an agent older than IPv6 refusal.
    if let Ok(map) = open_pinned_map(pin_root, map_names::POLICY6) {
        let trie: LpmTrie<&MapData, PolicyKey6, PolicyValue6> = (&map).try_into()?;
        for kv in trie.iter() {
            let (k, v) = kv?;
            let Some((id, dst, prefix)) = decode_policy_key6(&k) else {
                continue;
            };
            let s = stats.get(&id).copied().unwrap_or_default();
            rows.push(PrefixRow {
                policy: id,
                name: name_of.get(&id).copied().unwrap_or("").to_owned(),
                destination: format!("{dst}/{prefix}"),
                action: match v.action {
                    ACTION_REFUSE => "refuse",
                    ACTION_EXCLUDED => "excluded",
                    _ => "unknown",
                },
                gateway: ip4_from(v.gateway_ip4),
                egress_ip: ip4_from(0),
                egress_interface: None,
                egress_mtu: v.egress_mtu,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
            });
        }
    }
    rows.sort_by(|a, b| (a.policy, &a.destination).cmp(&(b.policy, &b.destination)));
    output(&rows, as_json, || policies_text(&status, &stats, &rows))
}

/// The name of interface `ifindex`, or `#<ifindex>` when there is none (any more).
fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The text of `inspect policies`: per policy its status (when known) and traffic on this
/// node, then the ids in the maps without a known name (no status file, or a stale entry);
/// then the datapath's prefixes.
fn policies_text(
    status: &BTreeMap<String, PolicyStatus>,
    stats: &BTreeMap<u32, PolicyStats>,
    rows: &[PrefixRow],
) -> String {
    let named: BTreeSet<u32> = status.values().filter_map(|s| s.datapath_id).collect();
    let mut ids: Vec<u32> = rows.iter().map(|r| r.policy).collect();
    ids.dedup();
    let traffic =
        |id: Option<u32>| Some(id.and_then(|i| stats.get(&i)).copied().unwrap_or_default());
    let listed = status
        .iter()
        .map(|(n, s)| StatusRow {
            name: n,
            id: s.datapath_id,
            status: Some(s),
            traffic: traffic(s.datapath_id),
        })
        .chain(
            ids.iter()
                .filter(|id| !named.contains(id))
                .map(|id| StatusRow {
                    name: "?",
                    id: Some(*id),
                    status: None,
                    traffic: traffic(Some(*id)),
                }),
        );
    let mut out = table::render_with_notes(&StatusRow::INSPECT_COLUMNS, listed.map(|r| r.cells()));
    out.push('\n');
    out += &table::render(&PrefixRow::COLUMNS, rows.iter().map(PrefixRow::cells));
    out
}

/// Per node in `check`: its local pods, how many a policy selects, and the remote pods it
/// accepts as a gateway.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NodeRow {
    pub pods: usize,
    pub selected: usize,
    pub remote: usize,
}

impl NodeRow {
    const COLUMNS: [Col; 4] = [
        left("NODE", 20),
        right("PODS", 5),
        right("SELECTED", 9),
        right("REMOTE", 7),
    ];
}

/// What `check` reports (its `--json` output).
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Every policy's status, as its gateway node computes it.
    pub policies: BTreeMap<String, PolicyStatus>,
    pub nodes: BTreeMap<String, NodeRow>,
    pub warnings: Vec<String>,
}

/// `egress-agent check`: what the model makes of a configuration file, without a kernel: every
/// policy's status (as its gateway node computes it, less the interface addresses only the
/// running agent sees) and, per node, the local pods, how many are selected, and the remote
/// pods a gateway accepts.
pub fn check(cfg: &crate::config::AgentConfig, as_json: bool) -> Result<String> {
    let report = check_report(cfg);
    output(&report, as_json, || {
        let c = &cfg.cluster;
        let mut out = format!(
            "configuration parses: {} nodes, {} namespaces, {} pods, {} policies\n\n",
            c.nodes.len(),
            c.namespaces.len(),
            c.pods.len(),
            c.policies.len()
        );
        out += &table::render_with_notes(
            &StatusRow::CHECK_COLUMNS,
            report.policies.iter().map(|(name, s)| {
                StatusRow {
                    name,
                    id: s.datapath_id,
                    status: Some(s),
                    traffic: None,
                }
                .cells()
            }),
        );
        out.push('\n');
        out += &table::render(
            &NodeRow::COLUMNS,
            report.nodes.iter().map(|(n, r)| {
                vec![
                    n.clone(),
                    r.pods.to_string(),
                    r.selected.to_string(),
                    r.remote.to_string(),
                ]
            }),
        );
        if !report.warnings.is_empty() {
            out += "\nwarnings:\n";
            for w in &report.warnings {
                out += &format!("  {w}\n");
            }
        }
        out
    })
}

fn check_report(cfg: &crate::config::AgentConfig) -> CheckReport {
    let cluster = cfg.cluster.to_model();
    let local = crate::model::LocalFacts::default();
    let mut nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    nodes.sort_unstable();
    let models: BTreeMap<&str, crate::model::Model> = nodes
        .iter()
        .map(|n| (*n, crate::model::compute(&cluster, n, &local)))
        .collect();
    let any = crate::model::compute(&cluster, nodes.first().copied().unwrap_or(""), &local);
    let mut policies = any.status.clone();
    for (name, s) in policies.iter_mut() {
        if let Some(m) = s.gateway_node.as_deref().and_then(|g| models.get(g)) {
            if let Some(gs) = m.status.get(name) {
                *s = gs.clone();
            }
        }
    }
    let nodes = models
        .iter()
        .map(|(n, m)| {
            let row = NodeRow {
                pods: m.desired.pods.len(),
                selected: m
                    .desired
                    .pods
                    .iter()
                    .filter(|p| p.policy_id.is_some())
                    .count(),
                remote: m.desired.remote_endpoints.len(),
            };
            ((*n).to_owned(), row)
        })
        .collect();
    let mut warnings: Vec<String> = models
        .values()
        .flat_map(|m| &m.desired.warnings)
        .chain(&any.desired.warnings)
        .cloned()
        .collect();
    warnings.sort();
    warnings.dedup();
    CheckReport {
        policies,
        nodes,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_the_example_configuration() {
        let cfg =
            crate::config::AgentConfig::parse(include_str!("../../deploy/example-config.yaml"))
                .expect("the example parses");
        let out = check(&cfg, false).expect("a report");
        let line = out
            .lines()
            .find(|l| l.starts_with("mailu-postfix "))
            .unwrap_or_else(|| panic!("{out}"));
        for want in ["True", "Active", "gateway", "192.0.2.10"] {
            assert!(line.contains(want), "{want} in {line:?}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&check(&cfg, true).expect("json")).expect("valid JSON");
        assert_eq!(v["policies"]["mailu-postfix"]["selectedPods"], 2);
        assert_eq!(v["nodes"]["worker1"]["selected"], 1);
        assert_eq!(v["nodes"]["gateway"]["remote"], 1);
        // The only warning: the egress IP is the gateway node's own address.
        let warnings = v["warnings"].as_array().expect("warnings");
        assert!(
            warnings
                .iter()
                .all(|w| w.as_str().is_some_and(|w| w.contains("NodeAddress"))),
            "{warnings:?}"
        );
    }

    #[test]
    fn inspect_policies_text_is_the_readme_layout() {
        let status: BTreeMap<String, PolicyStatus> = serde_json::from_value(serde_json::json!({
            "mail": {"gatewayNode": "gateway", "egressIP": "192.0.2.10", "selectedPods": 1,
                     "datapathId": 53, "conditions": [
                        {"type": "Ready", "status": "True", "reason": "Active", "message": ""}]},
            "broken": {"selectedPods": 0, "conditions": [
                {"type": "Ready", "status": "False", "reason": "GatewayNotFound",
                 "message": "gateway node nowhere does not exist"}]}
        }))
        .expect("status");
        let stats = BTreeMap::from([(
            53,
            PolicyStats {
                tx_packets: 1460,
                tx_bytes: 52526540,
                ..Default::default()
            },
        )]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("IP");
        let row = |dst: &str, action| PrefixRow {
            policy: 53,
            name: "mail".into(),
            destination: dst.into(),
            action,
            gateway: ip(if action == "gateway" {
                "192.0.2.10"
            } else {
                "0.0.0.0"
            }),
            egress_ip: ip(if action == "gateway" {
                "192.0.2.10"
            } else {
                "0.0.0.0"
            }),
            egress_interface: None,
            egress_mtu: 0,
            tx_packets: 1460,
            tx_bytes: 52526540,
        };
        let mut rows = vec![
            row("10.244.0.0/16", "excluded"),
            row("10.96.0.0/12", "excluded"),
            row("198.51.100.0/24", "gateway"),
        ];
        rows.push(PrefixRow {
            policy: 7,
            egress_interface: Some("eth2".into()),
            egress_mtu: 1300,
            ..row("203.0.113.0/24", "gateway")
        });
        assert_eq!(
            policies_text(&status, &stats, &rows),
            "\
NAME                   ID READY  REASON           GATEWAY      EGRESS IP        PODS  TX PACKETS       TX BYTES
broken                  - False  GatewayNotFound  -            -                   0           0              0
    Ready=False GatewayNotFound: gateway node nowhere does not exist
mail                   53 True   Active           gateway      192.0.2.10          1        1460       52526540
?                       7 ?                       -            -                   -           0              0

  ID DESTINATION        ACTION    GATEWAY         EGRESS IP       LEAVES BY
  53 10.244.0.0/16      excluded  -               -               -
  53 10.96.0.0/12       excluded  -               -               -
  53 198.51.100.0/24    gateway   192.0.2.10      192.0.2.10      uplink
   7 203.0.113.0/24     gateway   192.0.2.10      192.0.2.10      eth2 (mtu 1300)
"
        );
    }

    #[test]
    fn counters_text_has_traffic_nat_and_drops() {
        let c = Counters {
            drops: BTreeMap::from([("frag_needed", 0), ("no_gateway", 12)]),
            policies: BTreeMap::from([(
                53,
                TrafficRow {
                    tx_packets: 1,
                    tx_bytes: 2,
                    rx_packets: 3,
                    rx_bytes: 4,
                },
            )]),
            nat: NatCounters {
                port_retries: 5,
                allocations: 6,
            },
        };
        assert_eq!(
            c.render(),
            "\
POLICY     TX PACKETS       TX BYTES   RX PACKETS       RX BYTES
53                  1              2            3              4

NAT: 6 mappings created, 5 taken ports retried

DROP REASON                   PACKETS
frag_needed                         0
no_gateway                         12
"
        );
        let v = serde_json::to_value(&c).expect("JSON");
        assert_eq!(v["policies"]["53"]["rx_bytes"], 4);
        assert_eq!(v["drops"]["no_gateway"], 12);
        assert_eq!(v["nat"]["allocations"], 6);
    }

    #[test]
    fn check_shows_why_a_policy_is_not_ready() {
        let cfg = crate::config::AgentConfig::parse(
            "nodes: [{name: a, ip: 192.0.2.1}]\n\
             policies: [{name: p, spec: {selectors: [{podSelector: {}}], \
             destinationCIDRs: [0.0.0.0/0], gateway: {nodeName: nowhere}}}]\n",
        )
        .expect("parses");
        let out = check(&cfg, false).expect("a report");
        assert!(out.contains("GatewayNotFound"), "{out}");
        assert!(out.contains("gateway node nowhere does not exist"), "{out}");
    }
}
