//! The agents' configuration file for lab tests, in the file format of `egress-agent run
//! --config` (the CRD's policy shape plus static nodes, namespaces and pods).

use std::{net::Ipv4Addr, path::PathBuf};

use crate::{agent::Agent, lab::Lab};

/// What the file says. The one policy, "mail", selects pods labelled `app: mail` in namespace
/// `mailu` (namespace label `team: mail`) and sends them through the node labelled
/// `egress-gateway: "true"` (the gateway node) to 198.51.100.0/24.
#[derive(Clone, Debug, Default)]
pub struct ConfigSpec<'a> {
    /// Pods labelled `app: mail`; the others get `app: other`.
    pub selected: &'a [&'a str],
    /// The policy's egress IP (default: the gateway node's address; with a private underlay,
    /// its public one, which the file names as the node's extra address).
    pub egress_ip: Option<Ipv4Addr>,
    /// `gateway.interface` instead of an egress IP: the gateway's interface whose first
    /// address is the egress IP.
    pub interface: Option<&'a str>,
    /// The policy's destination CIDRs (default: the internet segment, 198.51.100.0/24).
    pub destinations: Option<&'a [&'a str]>,
    /// The policy's excluded CIDRs.
    pub excluded: &'a [&'a str],
    /// Only these pods are in the file (default: all of the lab's pods); pods not in it carry
    /// no program at all.
    pub only_pods: Option<&'a [&'a str]>,
    /// Top-level YAML put in front (e.g. `nat:` timeouts, `mapSizes:`).
    pub extra: &'a str,
    /// The policy's `ipv6:` mode (`refuse`, `pass`); absent: the default.
    pub ipv6: Option<&'a str>,
}

/// Writes the configuration to `<lab dir>/agent.yaml` (write and rename, as an editor or a
/// ConfigMap update does: never a half-written file) and returns its path.
pub fn write_config(lab: &Lab, spec: &ConfigSpec) -> PathBuf {
    let mut y = String::from(spec.extra);
    y += "nodes:\n";
    for n in lab.nodes() {
        let labels = if n.name == "gateway" {
            "{ egress-gateway: \"true\" }"
        } else {
            "{}"
        };
        let addresses = if n.external_ip == n.underlay_ip {
            String::new()
        } else {
            format!(", addresses: [{}]", n.external_ip)
        };
        y += &format!(
            "  - {{ name: {}, ip: {}{addresses}, labels: {labels} }}\n",
            n.name, n.underlay_ip
        );
    }
    y += "namespaces:\n  - { name: mailu, labels: { team: mail } }\n";
    y += "policies:\n  - name: mail\n    spec:\n      selectors:\n";
    y += "        - podSelector: { matchLabels: { app: mail } }\n";
    y += "          namespaceSelector: { matchExpressions: [{ key: team, operator: In, values: [mail] }] }\n";
    let destinations = spec.destinations.unwrap_or(&["198.51.100.0/24"]).join(", ");
    y += &format!("      destinationCIDRs: [{destinations}]\n");
    if !spec.excluded.is_empty() {
        y += &format!("      excludedCIDRs: [{}]\n", spec.excluded.join(", "));
    }
    if let Some(mode) = spec.ipv6 {
        y += &format!("      ipv6: {mode}\n");
    }
    y += "      gateway:\n        nodeSelector: { matchLabels: { egress-gateway: \"true\" } }\n";
    let gateway = lab.gateway();
    let egress_ip = spec
        .egress_ip
        .or((gateway.external_ip != gateway.underlay_ip).then_some(gateway.external_ip));
    if let Some(i) = spec.interface {
        y += &format!("        interface: {i}\n");
    } else if let Some(ip) = egress_ip {
        y += &format!("        egressIP: {ip}\n");
    }
    y += "pods:\n";
    for p in lab.pods() {
        if spec
            .only_pods
            .is_some_and(|only| !only.contains(&p.name.as_str()))
        {
            continue;
        }
        let app = if spec.selected.contains(&p.name.as_str()) {
            "mail"
        } else {
            "other"
        };
        y += &format!(
            "  - {{ namespace: mailu, name: {}, ip: {}, node: {}, labels: {{ app: {app} }} }}\n",
            p.name, p.ip, p.node
        );
    }
    let path = lab.dir().join("agent.yaml");
    let tmp = lab.dir().join("agent.yaml.tmp");
    std::fs::write(&tmp, y).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
    path
}

/// The datapath id of the "mail" policy (also the VNI of its tunnelled packets), from the
/// agent's programmed policy prefixes.
pub fn mail_policy_id(agent: &Agent) -> u64 {
    let p = agent.inspect("policies").expect("inspect policies");
    p.as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["action"] == "gateway")
                .and_then(|r| r["policy"].as_u64())
        })
        .unwrap_or_else(|| panic!("no policy programmed: {p:#}"))
}
