//! The model's pass for one node: resolve every policy (oldest first), program the active
//! policies' prefixes, hand each pod to the oldest policy that selects it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use egress_common::{
    addr::ip4,
    endpoint::RemoteEndpoint,
    policy::{PolicyValue, PolicyValue6, ACTION_EXCLUDED, ACTION_REFUSE, ACTION_VIA_GATEWAY},
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    allocate_ids,
    condition::{cond, ConditionType, Reason, Status},
    gateway::{resolve, Active},
    protection, Cluster, Desired, Labels, LocalFacts, LocalPod, Model, Node, Pod, Policy,
    PolicyCondition, PolicyStatus, Protection, NAMESPACE_NAME_LABEL,
};

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
    d.node_addresses = nodes
        .iter()
        .flat_map(|n| n.ip.into_iter().chain(n.addresses.iter().copied()))
        .chain(local.interfaces.values().flatten().copied())
        .collect();
    d.tunnel = local.underlay.as_ref().map(|u| protection(u, &d.nodes));
    // The cluster's own addresses: the CIDRs the agent is given and every node's pod CIDRs. A
    // pod outside them (k3s's 10.42/16 or Calico's 192.168/16 under the defaults) would be
    // reached through the gateway: every policy says so.
    let cluster_cidrs: Vec<Ipv4Net> = cluster
        .cluster_cidrs
        .iter()
        .chain(nodes.iter().flat_map(|n| &n.pod_cidrs))
        .copied()
        .collect();
    let outside = pods_outside(&cluster.pods, &cluster_cidrs);

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
            Ok((a, mut conds)) => {
                // Only the gateway's agent knows its underlay (`check` and `inspect` do not).
                if let Some(t) = d.tunnel.as_ref().filter(|_| a.gateway == node) {
                    conds.push(tunnel_condition(t));
                }
                if let Some(c) = &outside {
                    conds.push(c.clone());
                }
                d.node_addresses.extend(a.egress_ip);
                st.gateway_node = Some(a.gateway.clone());
                st.gateway_group = a.group.clone();
                st.healthy_gateways = a.healthy.clone();
                st.egress_ip = a.egress_ip.map(|ip| ip.to_string());
                st.conditions = conds;
                active.push((p.name.as_str(), a));
            }
            Err(conds) => st.conditions = conds,
        }
        for c in st
            .conditions
            .iter()
            .filter(|c| c.status == Status::False.as_str())
        {
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
            // The reconciler sets these on the gateway (it knows the interfaces).
            egress_mtu: 0,
            egress_ifindex: 0,
        };
        let never = never_via_gateway(a, &cluster_cidrs, &d.node_addresses);
        // An exclusion wins over every destination inside it, however specific: the trie
        // would pick the longer prefix, so such a destination is programmed as excluded.
        for dst in &a.destinations {
            let v = if never.iter().any(|e| e.contains(dst)) {
                excluded
            } else {
                via
            };
            d.policies.insert((a.id, *dst), v);
        }
        for ex in never {
            d.policies.insert((a.id, ex), excluded);
        }
        program_refused6(d, a, cluster);
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
            st.conditions.push(cond(
                ConditionType::PodConflict,
                true,
                Reason::SelectedByOlderPolicy,
                msg,
            ));
        }
    }
    m
}

/// Destinations that never go through a gateway, whatever a policy says: link-local,
/// multicast and broadcast (besides the pod and service CIDRs, every node address and every
/// egress IP).
pub const NEVER_VIA_GATEWAY: [(Ipv4Addr, u8); 3] = [
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::BROADCAST, 32),
];

/// Everything policy `a` keeps on the normal path: its excluded CIDRs, the cluster's pod and
/// service CIDRs, link-local, multicast and broadcast, and every node address and egress IP
/// (kubelet probes and node traffic answer from the node, not from the gateway).
fn never_via_gateway(
    a: &Active,
    cluster_cidrs: &[Ipv4Net],
    node_addresses: &BTreeSet<Ipv4Addr>,
) -> BTreeSet<Ipv4Net> {
    let fixed = NEVER_VIA_GATEWAY
        .iter()
        .filter_map(|(ip, len)| Ipv4Net::new(*ip, *len).ok());
    let hosts = node_addresses
        .iter()
        .filter_map(|ip| Ipv4Net::new(*ip, 32).ok());
    a.excluded
        .iter()
        .chain(cluster_cidrs)
        .map(Ipv4Net::trunc)
        .chain(fixed)
        .chain(hosts)
        .collect()
}

/// The policy's refused IPv6 destinations (`ipv6: refuse`), each excluded one, the cluster's
/// IPv6 pod and service CIDRs and every node IPv6 address kept on the normal path (the
/// datapath never refuses link-local or multicast traffic itself).
fn program_refused6(d: &mut Desired, a: &Active, cluster: &Cluster) {
    if a.refused6.is_empty() {
        return;
    }
    let excluded = PolicyValue6 {
        action: ACTION_EXCLUDED,
        ..Default::default()
    };
    let refused = PolicyValue6 {
        action: ACTION_REFUSE,
        ..Default::default()
    };
    let hosts = cluster
        .nodes
        .iter()
        .flat_map(|n| &n.addresses6)
        .filter_map(|ip| Ipv6Net::new(*ip, 128).ok());
    let never: BTreeSet<Ipv6Net> = a
        .excluded6
        .iter()
        .chain(&cluster.cluster_cidrs6)
        .chain(cluster.nodes.iter().flat_map(|n| &n.pod_cidrs6))
        .map(Ipv6Net::trunc)
        .chain(hosts)
        .collect();
    for dst in &a.refused6 {
        let v = if never.iter().any(|e| e.contains(dst)) {
            excluded
        } else {
            refused
        };
        d.policies6.insert((a.id, *dst), v);
    }
    for ex in never {
        d.policies6.insert((a.id, ex), excluded);
    }
}

/// `ClusterCIDRs=False` naming the pods (up to five) whose address is in none of `cidrs`, if
/// there are any.
fn pods_outside(pods: &[Pod], cidrs: &[Ipv4Net]) -> Option<PolicyCondition> {
    let outside: Vec<String> = pods
        .iter()
        .filter(|p| !p.host_network)
        .filter_map(|p| Some((p, p.ip?)))
        .filter(|(_, ip)| !cidrs.iter().any(|c| c.contains(ip)))
        .map(|(p, ip)| format!("{} ({ip})", p.key()))
        .collect();
    let first = outside
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = outside.len().saturating_sub(5);
    (!outside.is_empty()).then(|| {
        cond(
            ConditionType::ClusterCIDRs,
            false,
            Reason::PodOutsideClusterCIDRs,
            format!(
                "{} pod(s) outside every pod CIDR the agent knows ({}): {first}{}; selected pods' \
                 traffic to them would go through the gateway. Set the agent configuration's \
                 clusterCidrs to the cluster's pod and service CIDRs, or give the nodes \
                 spec.podCIDRs",
                outside.len(),
                if cidrs.is_empty() {
                    "none".to_owned()
                } else {
                    cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
            ),
        )
    })
}

/// The `TunnelProtected` condition the gateway's agent writes: whether tunnel packets from
/// the policy's source nodes can be trusted on its underlay.
fn tunnel_condition(p: &Protection) -> PolicyCondition {
    cond(
        ConditionType::TunnelProtected,
        p.protected,
        p.reason,
        p.message.clone(),
    )
}
