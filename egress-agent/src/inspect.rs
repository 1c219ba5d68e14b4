//! `egress-agent inspect`: reads the pinned maps of a running (or stopped) agent.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use aya::maps::{lpm_trie::LpmTrie, HashMap, MapData};
use egress_common::{
    endpoint::Endpoint,
    map_names,
    nat::{NatEntry4, NatKey4, NAT_F_REVERSE},
    policy::{PolicyKey4, PolicyValue, ACTION_EXCLUDED, ACTION_VIA_GATEWAY, POLICY_ID_BITS},
};
use serde_json::json;

use crate::{
    datapath::{ip4_from, open_pinned_map, read_drops, read_nat_stats, read_policy_stats},
    model::PolicyStatus,
};

fn proto(p: u8) -> String {
    egress_common::proto::name(p).map_or_else(|| p.to_string(), str::to_owned)
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
        rows.push(json!({
            "proto": proto(k.proto),
            "pod": format!("{}:{}", ip4_from(k.saddr), u16::from_be(k.sport)),
            "remote": format!("{}:{}", ip4_from(k.daddr), u16::from_be(k.dport)),
            "egress": format!("{}:{}", ip4_from(v.addr), u16::from_be(v.port)),
            "node": ip4_from(v.node_ip4).to_string(),
            "policy": v.policy_id,
            "state": v.state,
        }));
    }
    if as_json {
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    let mut out = format!(
        "{:<5} {:<22} {:<22} {:<22} {:<15} {:>6}\n",
        "PROTO", "POD", "REMOTE", "EGRESS", "NODE", "POLICY"
    );
    for r in &rows {
        writeln!(
            out,
            "{:<5} {:<22} {:<22} {:<22} {:<15} {:>6}",
            r["proto"].as_str().unwrap_or(""),
            r["pod"].as_str().unwrap_or(""),
            r["remote"].as_str().unwrap_or(""),
            r["egress"].as_str().unwrap_or(""),
            r["node"].as_str().unwrap_or(""),
            r["policy"]
        )?;
    }
    Ok(out)
}

pub fn endpoints(pin_root: &Path, as_json: bool) -> Result<String> {
    let map = open_pinned_map(pin_root, map_names::ENDPOINTS4)?;
    let m: HashMap<&MapData, u32, Endpoint> = (&map).try_into()?;
    let mut rows = Vec::new();
    for kv in m.iter() {
        let (k, v) = kv?;
        rows.push(json!({
            "ip": ip4_from(k).to_string(),
            "ifindex": v.ifindex,
            "policy": v.policy_id,
            "selected": v.flags & egress_common::endpoint::EP_F_SELECTED != 0,
        }));
    }
    if as_json {
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    let mut out = format!(
        "{:<15} {:>8} {:>6} {:>8}\n",
        "POD IP", "IFINDEX", "POLICY", "SELECTED"
    );
    for r in &rows {
        writeln!(
            out,
            "{:<15} {:>8} {:>6} {:>8}",
            r["ip"].as_str().unwrap_or(""),
            r["ifindex"],
            r["policy"],
            r["selected"]
        )?;
    }
    Ok(out)
}

pub fn counters(pin_root: &Path, as_json: bool) -> Result<String> {
    let drops = read_drops(&open_pinned_map(pin_root, map_names::DROPS)?)?.by_name();
    let stats = read_policy_stats(&open_pinned_map(pin_root, map_names::POLICY_STATS)?)?;
    let nat = read_nat_stats(&open_pinned_map(pin_root, map_names::NAT_STATS)?)?;
    if as_json {
        let policies: serde_json::Map<String, serde_json::Value> = stats
            .iter()
            .map(|(id, s)| {
                (
                    id.to_string(),
                    json!({"tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
                           "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes}),
                )
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&json!({
            "drops": drops,
            "policies": policies,
            "nat": {"port_retries": nat.port_retries, "allocations": nat.allocations},
        }))? + "\n");
    }
    let mut out = format!(
        "{:<8} {:>12} {:>14} {:>12} {:>14}\n",
        "POLICY", "TX PACKETS", "TX BYTES", "RX PACKETS", "RX BYTES"
    );
    for (id, s) in &stats {
        writeln!(
            out,
            "{:<8} {:>12} {:>14} {:>12} {:>14}",
            id, s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes
        )?;
    }
    writeln!(
        out,
        "\nNAT: {} mappings created, {} taken ports retried",
        nat.allocations, nat.port_retries
    )?;
    writeln!(out, "\n{:<26} {:>10}", "DROP REASON", "PACKETS")?;
    for (r, n) in &drops {
        writeln!(out, "{r:<26} {n:>10}")?;
    }
    Ok(out)
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
        rows.push(json!({
            "policy": id,
            "name": name_of.get(&id).copied().unwrap_or(""),
            "destination": format!("{}/{prefix}", ip4_from(data.dst)),
            "action": match v.action {
                ACTION_VIA_GATEWAY => "gateway",
                ACTION_EXCLUDED => "excluded",
                _ => "unknown",
            },
            "gateway": ip4_from(v.gateway_ip4).to_string(),
            "egress_ip": ip4_from(v.egress_ip4).to_string(),
            "tx_packets": s.tx_packets,
            "tx_bytes": s.tx_bytes,
        }));
    }
    rows.sort_by_key(|r| {
        (
            r["policy"].as_u64(),
            r["destination"].as_str().map(str::to_owned),
        )
    });
    if as_json {
        return Ok(serde_json::to_string_pretty(&rows)? + "\n");
    }
    let mut out = String::new();
    // Per policy: status (when known) and traffic on this node.
    let mut ids: Vec<u32> = rows
        .iter()
        .filter_map(|r| r["policy"].as_u64())
        .map(|i| i as u32)
        .collect();
    ids.dedup();
    writeln!(
        out,
        "{:<20} {:>4} {:<6} {:<16} {:<12} {:<15} {:>5} {:>11} {:>14}",
        "NAME", "ID", "READY", "REASON", "GATEWAY", "EGRESS IP", "PODS", "TX PACKETS", "TX BYTES"
    )?;
    let mut listed: Vec<(String, Option<&PolicyStatus>, Option<u32>)> = status
        .iter()
        .map(|(n, s)| (n.clone(), Some(s), s.datapath_id))
        .collect();
    // Ids in the maps without a known name (no status file, or a stale entry).
    for id in &ids {
        if !name_of.contains_key(id) {
            listed.push(("?".into(), None, Some(*id)));
        }
    }
    for (name, s, id) in &listed {
        let ready = s.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let traffic = id.and_then(|i| stats.get(&i)).copied().unwrap_or_default();
        writeln!(
            out,
            "{:<20} {:>4} {:<6} {:<16} {:<12} {:<15} {:>5} {:>11} {:>14}",
            name,
            id.map_or("-".into(), |i| i.to_string()),
            ready.map_or("?", |c| c.status.as_str()),
            ready.map_or("", |c| c.reason.as_str()),
            s.and_then(|s| s.gateway_node.as_deref()).unwrap_or("-"),
            s.and_then(|s| s.egress_ip.as_deref()).unwrap_or("-"),
            s.map_or("-".into(), |s| s.selected_pods.to_string()),
            traffic.tx_packets,
            traffic.tx_bytes,
        )?;
        // Everything but a plain Ready=True, under the policy.
        for c in s
            .iter()
            .flat_map(|s| &s.conditions)
            .filter(|c| c.type_ != "Ready" || c.status != "True")
        {
            writeln!(
                out,
                "    {}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            )?;
        }
    }
    // The datapath's prefixes.
    writeln!(
        out,
        "\n{:>4} {:<18} {:<9} {:<15} EGRESS IP",
        "ID", "DESTINATION", "ACTION", "GATEWAY"
    )?;
    for r in &rows {
        let excluded = r["action"] == "excluded";
        let dash = |k: &str| {
            if excluded {
                "-".to_owned()
            } else {
                r[k].as_str().unwrap_or("").to_owned()
            }
        };
        let line = format!(
            "{:>4} {:<18} {:<9} {:<15} {}",
            r["policy"].as_u64().unwrap_or(0),
            r["destination"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or(""),
            dash("gateway"),
            dash("egress_ip"),
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(out)
}

/// `egress-agent check`: what the model makes of a configuration file, without a kernel: every
/// policy's status (as its gateway node computes it, less the interface addresses only the
/// running agent sees) and, per node, the local pods, how many are selected, and the remote
/// pods a gateway accepts.
pub fn check(cfg: &crate::config::AgentConfig, as_json: bool) -> Result<String> {
    let cluster = cfg.cluster.to_model();
    let local = crate::model::LocalFacts::default();
    let mut nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    nodes.sort_unstable();
    let models: BTreeMap<&str, crate::model::Model> = nodes
        .iter()
        .map(|n| (*n, crate::model::compute(&cluster, n, &local)))
        .collect();
    let any = crate::model::compute(&cluster, nodes.first().copied().unwrap_or(""), &local);
    let mut status = any.status.clone();
    for (name, s) in status.iter_mut() {
        if let Some(m) = s.gateway_node.as_deref().and_then(|g| models.get(g)) {
            if let Some(gs) = m.status.get(name) {
                *s = gs.clone();
            }
        }
    }
    let per_node: BTreeMap<&str, serde_json::Value> = models
        .iter()
        .map(|(n, m)| {
            (
                *n,
                json!({
                    "pods": m.desired.pods.len(),
                    "selected": m.desired.pods.iter().filter(|p| p.policy_id.is_some()).count(),
                    "remote": m.desired.remote_endpoints.len(),
                }),
            )
        })
        .collect();
    let mut warnings: Vec<&String> = models
        .values()
        .flat_map(|m| &m.desired.warnings)
        .chain(&any.desired.warnings)
        .collect();
    warnings.sort();
    warnings.dedup();
    if as_json {
        return Ok(serde_json::to_string_pretty(&json!({
            "policies": status,
            "nodes": per_node,
            "warnings": warnings,
        }))? + "\n");
    }
    let c = &cfg.cluster;
    let mut out = format!(
        "configuration parses: {} nodes, {} namespaces, {} pods, {} policies\n\n",
        c.nodes.len(),
        c.namespaces.len(),
        c.pods.len(),
        c.policies.len()
    );
    writeln!(
        out,
        "{:<20} {:>4} {:<6} {:<22} {:<12} {:<15} {:>5}",
        "POLICY", "ID", "READY", "REASON", "GATEWAY", "EGRESS IP", "PODS"
    )?;
    for (name, s) in &status {
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
        writeln!(
            out,
            "{:<20} {:>4} {:<6} {:<22} {:<12} {:<15} {:>5}",
            name,
            s.datapath_id.map_or("-".into(), |i| i.to_string()),
            ready.map_or("?", |c| c.status.as_str()),
            ready.map_or("", |c| c.reason.as_str()),
            s.gateway_node.as_deref().unwrap_or("-"),
            s.egress_ip.as_deref().unwrap_or("-"),
            s.selected_pods
        )?;
        for c in s
            .conditions
            .iter()
            .filter(|c| c.type_ != "Ready" || c.status != "True")
        {
            writeln!(
                out,
                "    {}={} {}: {}",
                c.type_, c.status, c.reason, c.message
            )?;
        }
    }
    writeln!(
        out,
        "\n{:<20} {:>5} {:>9} {:>7}",
        "NODE", "PODS", "SELECTED", "REMOTE"
    )?;
    for (n, v) in &per_node {
        writeln!(
            out,
            "{:<20} {:>5} {:>9} {:>7}",
            n,
            v["pods"].as_u64().unwrap_or(0),
            v["selected"].as_u64().unwrap_or(0),
            v["remote"].as_u64().unwrap_or(0)
        )?;
    }
    if !warnings.is_empty() {
        writeln!(out, "\nwarnings:")?;
        for w in warnings {
            writeln!(out, "  {w}")?;
        }
    }
    Ok(out)
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
        assert_eq!(v["warnings"].as_array().map(Vec::len), Some(0));
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
