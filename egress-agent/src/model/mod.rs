//! The policy model, pure: from policies, pods, namespaces and nodes (whatever the source: the
//! Kubernetes API or the configuration file) it computes the exact map contents one node needs
//! and every policy's status. No I/O; every outcome of bad or conflicting input is defined:
//!
//! | situation | outcome | condition |
//! | --- | --- | --- |
//! | invalid CIDR, selector, or gateway spec (both/neither of `nodeName`/`nodeSelector`, both `egressIP` and `interface`, unparsable `egressIP`) | the policy is not programmed; its pods keep their normal path | `Ready=False` with reason `InvalidCIDR`, `InvalidSelector`, `InvalidGateway` |
//! | no `selectors` or no IPv4 `destinationCIDRs` | not programmed | `Ready=False`, `NoSelectors` / `NoDestinations` |
//! | gateway node unknown, or `nodeSelector` matches no node with an InternalIP | not programmed | `Ready=False`, `GatewayNotFound` |
//! | `nodeSelector` matches several nodes | the first by name is the gateway | `Ready=True`; message names the others |
//! | a pod matched by two policies | the older policy (creation time, then name) gets it | `PodConflict=True` on the younger one |
//! | `egressIP` not among the gateway's known addresses | still programmed (the address may be routed to the node without being configured) | `EgressIPOnGateway=False`, `EgressIPNotOnGateway` (seen by the gateway's agent, which also knows its interfaces; other nodes say `Unknown`) |
//! | `interface` missing or without IPv4 on the gateway (known only there) | the gateway does not SNAT for the policy (its tunnel packets are dropped and counted) | `Ready=False`, `InterfaceNotFound` |
//! | IPv6 CIDRs | ignored (the datapath is IPv4 for now) | `IPv6Ignored=True` |
//! | more than 1023 policies | the youngest get no datapath id, not programmed | `Ready=False`, `TooManyPolicies` |
//!
//! The cluster's pod and service CIDRs are always excluded. Hostnetwork pods, and pods without
//! a node or an IP, are never endpoints.
//!
//! Datapath ids (the tunnel VNI and counter index, 1..=1023) come from a hash of the policy name,
//! probed linearly on collision in policy order (oldest first): every node computes the same id
//! from the same inputs, a restart changes nothing, and adding a policy never moves an older one.

pub mod crd;
pub mod selector;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

pub use crd::{
    EgressGatewayPolicy, EgressGatewayPolicySpec, EgressGatewayPolicyStatus, GatewaySpec,
    PodSelection, PolicyCondition,
};
use egress_common::{
    addr::ip4,
    endpoint::RemoteEndpoint,
    policy::{PolicyValue, ACTION_EXCLUDED, ACTION_VIA_GATEWAY, MAX_POLICIES},
};
use ipnet::{IpNet, Ipv4Net};
pub use selector::{Labels, Selector, SelectorError};

/// The namespace label the API server sets on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A node, as the model needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// The underlay (InternalIP) address; a node without one takes no part.
    pub ip: Option<Ipv4Addr>,
    /// Other addresses known to be on the node (ExternalIPs, extra addresses).
    pub addresses: Vec<Ipv4Addr>,
    /// Uplink interface (towards the internet) when the source knows it.
    pub uplink: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub host_network: bool,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub name: String,
    /// Creation time (Unix seconds); `None` sorts first (the file source has none).
    pub created: Option<i64>,
    pub spec: EgressGatewayPolicySpec,
}

/// Everything the sources know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    /// Pod and service CIDRs: never sent through a gateway.
    pub cluster_cidrs: Vec<Ipv4Net>,
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
}

/// What the node the model runs for knows about itself: its interfaces' IPv4 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalFacts {
    pub interfaces: BTreeMap<String, Vec<Ipv4Addr>>,
}

/// A local pod: its address, and its policy if an active one selects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// `namespace/name`.
    pub name: String,
    pub ip: Ipv4Addr,
    pub policy_id: Option<u32>,
}

/// What one node's maps must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub node_ip: Option<Ipv4Addr>,
    pub uplink: Option<String>,
    pub pods: Vec<LocalPod>,
    /// `{policy id, prefix}` -> value.
    pub policies: BTreeMap<(u32, Ipv4Net), PolicyValue>,
    /// Other cluster nodes.
    pub nodes: Vec<Ipv4Addr>,
    /// Pods of other nodes that egress through this node.
    pub remote_endpoints: BTreeMap<Ipv4Addr, RemoteEndpoint>,
    /// Problems worth a log line (the same facts as the status conditions).
    pub warnings: Vec<String>,
}

/// A policy's status as the model sees it.
pub type PolicyStatus = EgressGatewayPolicyStatus;

/// The model's answer for one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub desired: Desired,
    /// By policy name.
    pub status: BTreeMap<String, PolicyStatus>,
}

/// A valid, resolved policy.
#[derive(Clone, Debug)]
struct Active {
    id: u32,
    gateway: String,
    gateway_ip: Ipv4Addr,
    /// `None`: taken from an interface this node cannot see.
    egress_ip: Option<Ipv4Addr>,
    destinations: Vec<Ipv4Net>,
    excluded: Vec<Ipv4Net>,
    selectors: Vec<(Option<Selector>, Option<Selector>)>,
}

fn cond(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> PolicyCondition {
    PolicyCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
    }
}

/// 32-bit FNV-1a: stable across builds and platforms (unlike std's hasher).
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Datapath ids for `names` (in policy order, oldest first): the name's hash, probed linearly.
/// Names beyond the id space get none.
pub fn allocate_ids<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let slots = MAX_POLICIES - 1; // ids 1..=1023; 0 means "no policy"
    let mut used = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for name in names {
        if used.len() as u32 >= slots || ids.contains_key(name) {
            continue;
        }
        let mut id = fnv1a(name) % slots + 1;
        while !used.insert(id) {
            id = id % slots + 1;
        }
        ids.insert(name.to_owned(), id);
    }
    ids
}

/// Parses CIDRs: IPv4 ones (host bits cleared), the count of IPv6 ones, or the first bad one.
fn parse_cidrs(list: &[String], field: &str) -> Result<(Vec<Ipv4Net>, usize), String> {
    let mut v4 = Vec::new();
    let mut v6 = 0;
    for s in list {
        match s.trim().parse::<IpNet>() {
            Ok(IpNet::V4(n)) => v4.push(n.trunc()),
            Ok(IpNet::V6(_)) => v6 += 1,
            Err(_) => {
                return Err(format!(
                    "{field}: {s:?} is not a CIDR (like 203.0.113.0/24)"
                ))
            }
        }
    }
    Ok((v4, v6))
}

fn selector(
    s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    what: &str,
) -> Result<Option<Selector>, String> {
    s.as_ref()
        .map(|s| Selector::new(s).map_err(|e| format!("{what}: {e}")))
        .transpose()
}

/// Checks everything in the spec that does not depend on the cluster.
struct Checked {
    destinations: Vec<Ipv4Net>,
    excluded: Vec<Ipv4Net>,
    ipv6: usize,
    selectors: Vec<(Option<Selector>, Option<Selector>)>,
    egress_ip: Option<Ipv4Addr>,
}

fn check_spec(spec: &EgressGatewayPolicySpec) -> Result<Checked, (&'static str, String)> {
    let (destinations, d6) =
        parse_cidrs(&spec.destination_cidrs, "destinationCIDRs").map_err(|m| ("InvalidCIDR", m))?;
    let (excluded, e6) =
        parse_cidrs(&spec.excluded_cidrs, "excludedCIDRs").map_err(|m| ("InvalidCIDR", m))?;
    let mut selectors = Vec::new();
    for (i, s) in spec.selectors.iter().enumerate() {
        if s.pod_selector.is_none() && s.namespace_selector.is_none() {
            return Err((
                "InvalidSelector",
                format!("selectors[{i}]: give a podSelector, a namespaceSelector or both (use podSelector: {{}} to select every pod)"),
            ));
        }
        let pod = selector(&s.pod_selector, &format!("selectors[{i}].podSelector"))
            .map_err(|m| ("InvalidSelector", m))?;
        let ns = selector(
            &s.namespace_selector,
            &format!("selectors[{i}].namespaceSelector"),
        )
        .map_err(|m| ("InvalidSelector", m))?;
        selectors.push((pod, ns));
    }
    let g = &spec.gateway;
    match (&g.node_name, &g.node_selector) {
        (Some(_), Some(_)) => {
            return Err((
                "InvalidGateway",
                "gateway: give nodeName or nodeSelector, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                "InvalidGateway",
                "gateway: give nodeName or nodeSelector".into(),
            ))
        }
        (None, Some(s)) => {
            Selector::new(s)
                .map_err(|e| ("InvalidGateway", format!("gateway.nodeSelector: {e}")))?;
        }
        (Some(_), None) => {}
    }
    if g.egress_ip.is_some() && g.interface.is_some() {
        return Err((
            "InvalidGateway",
            "gateway: give egressIP or interface, not both".into(),
        ));
    }
    let egress_ip = match &g.egress_ip {
        None => None,
        Some(s) => Some(s.trim().parse::<Ipv4Addr>().map_err(|_| {
            (
                "InvalidGateway",
                format!("gateway.egressIP: {s:?} is not an IPv4 address"),
            )
        })?),
    };
    if selectors.is_empty() {
        return Err((
            "NoSelectors",
            "selectors is empty: the policy selects no pod".into(),
        ));
    }
    if destinations.is_empty() {
        return Err((
            "NoDestinations",
            "destinationCIDRs holds no IPv4 CIDR: nothing to send through the gateway".into(),
        ));
    }
    Ok(Checked {
        destinations,
        excluded,
        ipv6: d6 + e6,
        selectors,
        egress_ip,
    })
}

/// The policy order: oldest first, then by name.
fn ordered(policies: &[Policy]) -> Vec<&Policy> {
    let mut v: Vec<&Policy> = policies.iter().collect();
    v.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    v
}

/// Computes the maps of node `node` and every policy's status.
pub fn compute(cluster: &Cluster, node: &str, local: &LocalFacts) -> Model {
    let mut m = Model::default();
    let d = &mut m.desired;
    let mut nodes: Vec<&Node> = cluster.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let node_by_name: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.name.as_str(), *n)).collect();
    let this = node_by_name.get(node).copied();
    d.node_ip = this.and_then(|n| n.ip);
    d.uplink = this.and_then(|n| n.uplink.clone());
    match this {
        None => d
            .warnings
            .push(format!("node {node} is not known to the source")),
        Some(n) if n.ip.is_none() => d.warnings.push(format!("node {node} has no InternalIP")),
        _ => {}
    }
    d.nodes = nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| n.ip)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let policies = ordered(&cluster.policies);
    let ids = allocate_ids(policies.iter().map(|p| p.name.as_str()));
    // Resolve every policy, oldest first.
    let mut active: Vec<(&str, Active)> = Vec::new();
    for p in &policies {
        if m.status.contains_key(&p.name) {
            d.warnings.push(format!(
                "policy {}: defined twice; the second is ignored",
                p.name
            ));
            continue;
        }
        let mut st = PolicyStatus {
            datapath_id: ids.get(&p.name).copied(),
            ..Default::default()
        };
        match resolve(p, &st, &node_by_name, &nodes, node, local) {
            Ok((a, conds)) => {
                st.gateway_node = Some(a.gateway.clone());
                st.egress_ip = a.egress_ip.map(|ip| ip.to_string());
                st.conditions = conds;
                active.push((p.name.as_str(), a));
            }
            Err(conds) => st.conditions = conds,
        }
        if let Some(c) = st.conditions.iter().find(|c| c.status == "False") {
            d.warnings
                .push(format!("policy {}: {} ({})", p.name, c.message, c.reason));
        }
        m.status.insert(p.name.clone(), st);
    }

    // Program the active policies' prefixes.
    let excluded = PolicyValue {
        action: ACTION_EXCLUDED,
        ..Default::default()
    };
    for (_, a) in &active {
        let via = PolicyValue {
            action: ACTION_VIA_GATEWAY,
            gateway_ip4: ip4(a.gateway_ip),
            egress_ip4: a.egress_ip.map_or(0, ip4),
            _pad: 0,
        };
        for dst in &a.destinations {
            d.policies.insert((a.id, *dst), via);
        }
        // Exclusions win over destinations of the same prefix; longer prefixes win anyway.
        for ex in a.excluded.iter().chain(&cluster.cluster_cidrs) {
            d.policies.insert((a.id, ex.trunc()), excluded);
        }
    }

    // Pods: the oldest matching active policy claims each.
    let ns_labels: BTreeMap<&str, &Labels> = cluster
        .namespaces
        .iter()
        .map(|n| (n.name.as_str(), &n.labels))
        .collect();
    let mut conflicts: BTreeMap<&str, Vec<(String, &str)>> = BTreeMap::new();
    let mut selected: BTreeMap<&str, u32> = BTreeMap::new();
    let mut seen_ips = BTreeMap::new();
    let mut pods: Vec<&Pod> = cluster.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for pod in pods {
        let (Some(ip), Some(pod_node)) = (pod.ip, pod.node.as_deref()) else {
            continue;
        };
        if pod.host_network {
            continue;
        }
        if let Some(other) = seen_ips.insert(ip, pod.key()) {
            d.warnings.push(format!(
                "pods {other} and {} share the address {ip}; only {other} is used",
                pod.key()
            ));
            seen_ips.insert(ip, other);
            continue;
        }
        let mut labels = ns_labels
            .get(pod.namespace.as_str())
            .map(|l| (*l).clone())
            .unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.into())
            .or_insert_with(|| pod.namespace.clone());
        let mut owner: Option<(&str, &Active)> = None;
        for (name, a) in &active {
            let hit = a.selectors.iter().any(|(ps, ns)| {
                ps.as_ref().is_none_or(|s| s.matches(&pod.labels))
                    && ns.as_ref().is_none_or(|s| s.matches(&labels))
            });
            if !hit {
                continue;
            }
            match owner {
                None => owner = Some((name, a)),
                Some((first, _)) => conflicts.entry(name).or_default().push((pod.key(), first)),
            }
        }
        if let Some((name, _)) = owner {
            *selected.entry(name).or_default() += 1;
        }
        if pod_node == node {
            d.pods.push(LocalPod {
                name: pod.key(),
                ip,
                policy_id: owner.map(|(_, a)| a.id),
            });
        } else if let Some((_, a)) = owner {
            if a.gateway == node {
                match node_by_name.get(pod_node).and_then(|n| n.ip) {
                    Some(src) => {
                        d.remote_endpoints.insert(
                            ip,
                            RemoteEndpoint {
                                node_ip4: ip4(src),
                                policy_id: a.id,
                            },
                        );
                    }
                    None => d.warnings.push(format!(
                        "pod {}: node {pod_node} is unknown or has no InternalIP; not accepted from the tunnel",
                        pod.key()
                    )),
                }
            }
        }
    }
    for (name, n) in selected {
        if let Some(st) = m.status.get_mut(name) {
            st.selected_pods = n;
        }
    }
    for (name, list) in conflicts {
        let shown: Vec<String> = list
            .iter()
            .take(5)
            .map(|(pod, by)| format!("{pod} (by {by})"))
            .collect();
        let more = if list.len() > 5 {
            format!(" and {} more", list.len() - 5)
        } else {
            String::new()
        };
        let msg = format!(
            "{} pod(s) also selected by an older policy, which wins: {}{more}",
            list.len(),
            shown.join(", ")
        );
        m.desired.warnings.push(format!("policy {name}: {msg}"));
        if let Some(st) = m.status.get_mut(name) {
            st.conditions
                .push(cond("PodConflict", true, "SelectedByOlderPolicy", msg));
        }
    }
    m
}

/// Resolves one policy against the nodes: `Ok` with its extra conditions (a `Ready=True` one
/// first), or the conditions saying why it is not active.
fn resolve(
    p: &Policy,
    st: &PolicyStatus,
    node_by_name: &BTreeMap<&str, &Node>,
    nodes: &[&Node],
    this_node: &str,
    local: &LocalFacts,
) -> Result<(Active, Vec<PolicyCondition>), Vec<PolicyCondition>> {
    let not_ready = |reason: &str, msg: String| vec![cond("Ready", false, reason, msg)];
    let c = check_spec(&p.spec).map_err(|(r, m)| not_ready(r, m))?;
    let mut conds = Vec::new();
    if c.ipv6 > 0 {
        conds.push(cond(
            "IPv6Ignored",
            true,
            "IPv6NotSupported",
            format!("{} IPv6 CIDR(s) ignored: the datapath is IPv4 only", c.ipv6),
        ));
    }
    let Some(id) = st.datapath_id else {
        return Err(not_ready(
            "TooManyPolicies",
            format!("no datapath id left: at most {} policies", MAX_POLICIES - 1),
        ));
    };
    let g = &p.spec.gateway;
    let mut ready_msg = String::new();
    let gw: &Node = if let Some(name) = &g.node_name {
        match node_by_name.get(name.as_str()) {
            Some(n) if n.ip.is_some() => n,
            Some(_) => {
                return Err(not_ready(
                    "GatewayNotFound",
                    format!("gateway node {name} has no InternalIP"),
                ))
            }
            None => {
                return Err(not_ready(
                    "GatewayNotFound",
                    format!("gateway node {name} does not exist; its pods keep their normal path"),
                ))
            }
        }
    } else {
        let sel = Selector::new(g.node_selector.as_ref().expect("checked: one of the two"))
            .map_err(|e| not_ready("InvalidGateway", e.to_string()))?;
        let matching: Vec<&Node> = nodes
            .iter()
            .copied()
            .filter(|n| n.ip.is_some() && sel.matches(&n.labels))
            .collect();
        match matching.as_slice() {
            [] => {
                return Err(not_ready(
                    "GatewayNotFound",
                    "gateway.nodeSelector matches no node with an InternalIP; its pods keep their normal path".into(),
                ))
            }
            [one] => one,
            [first, rest @ ..] => {
                ready_msg = format!(
                    "nodeSelector matches {} nodes; the first by name ({}) is the gateway, not {}",
                    rest.len() + 1,
                    first.name,
                    rest.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                );
                first
            }
        }
    };
    let gateway_ip = gw.ip.expect("filtered on ip");
    let on_gateway = gw.name == this_node;
    let egress_ip = if let Some(ifname) = &g.interface {
        if on_gateway {
            match local.interfaces.get(ifname).and_then(|a| a.first()) {
                Some(ip) => Some(*ip),
                None => {
                    return Err(not_ready(
                        "InterfaceNotFound",
                        format!(
                            "gateway {}: interface {ifname} is missing or has no IPv4 address",
                            gw.name
                        ),
                    ))
                }
            }
        } else {
            None
        }
    } else {
        let ip = c.egress_ip.unwrap_or(gateway_ip);
        if c.egress_ip.is_some() {
            let mut known: BTreeSet<Ipv4Addr> = gw.addresses.iter().copied().collect();
            known.insert(gateway_ip);
            if on_gateway {
                known.extend(local.interfaces.values().flatten().copied());
            }
            if known.contains(&ip) {
                conds.push(cond(
                    "EgressIPOnGateway",
                    true,
                    "Assigned",
                    format!("{ip} is on {}", gw.name),
                ));
            } else if !on_gateway {
                // Only the gateway's agent sees its interface addresses; it writes the status.
                conds.push(PolicyCondition {
                    status: "Unknown".into(),
                    ..cond(
                        "EgressIPOnGateway",
                        false,
                        "CheckedOnGateway",
                        format!(
                            "{ip} is not among {}'s node addresses; its agent checks its interfaces",
                            gw.name
                        ),
                    )
                });
            } else {
                conds.push(cond(
                    "EgressIPOnGateway",
                    false,
                    "EgressIPNotOnGateway",
                    format!(
                        "{ip} is not among the known addresses of gateway {}; replies reach it only if the address is routed to that node",
                        gw.name
                    ),
                ));
            }
        }
        Some(ip)
    };
    if ready_msg.is_empty() {
        ready_msg = format!("gateway {} ({gateway_ip})", gw.name);
    }
    conds.insert(0, cond("Ready", true, "Active", ready_msg));
    Ok((
        Active {
            id,
            gateway: gw.name.clone(),
            gateway_ip,
            egress_ip,
            destinations: c.destinations,
            excluded: c.excluded,
            selectors: c.selectors,
        },
        conds,
    ))
}

#[cfg(test)]
mod tests;
