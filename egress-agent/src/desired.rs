//! Pure: from the cluster description, the exact map contents one node needs.
//! Interfaces are named here and resolved to ifindexes by the reconciler.

use std::{collections::BTreeMap, net::Ipv4Addr};

use egress_common::{
    endpoint::RemoteEndpoint,
    policy::{PolicyValue, ACTION_EXCLUDED, ACTION_VIA_GATEWAY},
};
use ipnet::Ipv4Net;

use crate::{config::Cluster, datapath::ip4};

/// A local pod: its address, and its policy if a valid one selects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
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
    /// Problems that made the model skip something (unknown gateway node, unknown policy).
    pub warnings: Vec<String>,
}

/// Computes the desired maps of node `node`.
pub fn desired(cluster: &Cluster, node: &str) -> Desired {
    let mut d = Desired::default();
    let node_ip = |name: &str| cluster.nodes.iter().find(|n| n.name == name).map(|n| n.ip);
    let this = cluster.nodes.iter().find(|n| n.name == node);
    d.node_ip = this.map(|n| n.ip);
    d.uplink = this.map(|n| n.uplink.clone());
    if this.is_none() {
        d.warnings
            .push(format!("node {node} is not in the configuration"));
    }
    d.nodes = cluster
        .nodes
        .iter()
        .filter(|n| n.name != node)
        .map(|n| n.ip)
        .collect();

    // Valid policies: those whose gateway node is known.
    let mut valid = BTreeMap::new();
    for p in &cluster.policies {
        let Some(gw) = node_ip(&p.gateway_node) else {
            d.warnings.push(format!(
                "policy {}: gateway node {} is unknown; its pods keep their normal path",
                p.name, p.gateway_node
            ));
            continue;
        };
        let egress = p.egress_ip.unwrap_or(gw);
        valid.insert(p.name.as_str(), (p, gw));
        let via = PolicyValue {
            action: ACTION_VIA_GATEWAY,
            gateway_ip4: ip4(gw),
            egress_ip4: ip4(egress),
            _pad: 0,
        };
        let excluded = PolicyValue {
            action: ACTION_EXCLUDED,
            ..Default::default()
        };
        for dst in &p.destination_cidrs {
            d.policies.insert((p.id, dst.trunc()), via);
        }
        // Exclusions win over destinations of the same prefix; longer prefixes win anyway.
        for ex in p.excluded_cidrs.iter().chain(&cluster.cluster_cidrs) {
            d.policies.insert((p.id, ex.trunc()), excluded);
        }
    }

    for pod in &cluster.pods {
        let policy = match pod.policy.as_deref() {
            None => None,
            Some(name) => match valid.get(name) {
                Some(v) => Some(*v),
                None => {
                    d.warnings.push(format!(
                        "pod {}: policy {name} is unknown or invalid; the pod keeps its normal path",
                        pod.name
                    ));
                    None
                }
            },
        };
        if pod.node == node {
            d.pods.push(LocalPod {
                name: pod.name.clone(),
                ip: pod.ip,
                policy_id: policy.map(|(p, _)| p.id),
            });
        } else if let Some((p, _)) = policy {
            if p.gateway_node == node {
                match node_ip(&pod.node) {
                    Some(src) => {
                        d.remote_endpoints.insert(
                            pod.ip,
                            RemoteEndpoint {
                                node_ip4: ip4(src),
                                policy_id: p.id,
                            },
                        );
                    }
                    None => d.warnings.push(format!(
                        "pod {}: node {} is unknown; not accepted from the tunnel",
                        pod.name, pod.node
                    )),
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    const YAML: &str = r#"
nodes:
  - { name: gateway, ip: 192.0.2.10 }
  - { name: worker1, ip: 192.0.2.11 }
policies:
  - name: mail
    id: 7
    gatewayNode: gateway
    destinationCidrs: [0.0.0.0/0]
    excludedCidrs: [198.51.100.128/25]
  - name: broken
    id: 8
    gatewayNode: nowhere
    destinationCidrs: [0.0.0.0/0]
pods:
  - { name: mail-w1, ip: 10.244.1.2, node: worker1, policy: mail }
  - { name: mail-gw, ip: 10.244.0.2, node: gateway, policy: mail }
  - { name: web-w1, ip: 10.244.1.3, node: worker1 }
  - { name: lost-w1, ip: 10.244.1.4, node: worker1, policy: broken }
"#;

    fn cluster() -> Cluster {
        AgentConfig::parse(YAML).expect("valid").cluster
    }

    #[test]
    fn worker_gets_its_pods_and_policy_but_no_remote_endpoints() {
        let d = desired(&cluster(), "worker1");
        assert_eq!(d.node_ip, Some(Ipv4Addr::new(192, 0, 2, 11)));
        let ids: Vec<_> = d
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.policy_id))
            .collect();
        assert_eq!(
            ids,
            vec![("mail-w1", Some(7)), ("web-w1", None), ("lost-w1", None)]
        );
        assert!(d.remote_endpoints.is_empty());
        assert_eq!(d.nodes, vec![Ipv4Addr::new(192, 0, 2, 10)]);
        let via = d.policies[&(7, "0.0.0.0/0".parse().unwrap())];
        assert_eq!(via.action, ACTION_VIA_GATEWAY);
        assert_eq!(via.gateway_ip4, ip4(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(
            via.egress_ip4, via.gateway_ip4,
            "egress IP defaults to the gateway's"
        );
    }

    #[test]
    fn cluster_and_excluded_cidrs_are_always_excluded() {
        let d = desired(&cluster(), "worker1");
        for cidr in ["10.244.0.0/16", "10.96.0.0/12", "198.51.100.128/25"] {
            assert_eq!(
                d.policies[&(7, cidr.parse().unwrap())].action,
                ACTION_EXCLUDED,
                "{cidr}"
            );
        }
    }

    #[test]
    fn gateway_accepts_selected_pods_of_other_nodes_only() {
        let d = desired(&cluster(), "gateway");
        assert_eq!(d.remote_endpoints.len(), 1);
        let r = d.remote_endpoints[&Ipv4Addr::new(10, 244, 1, 2)];
        assert_eq!(r.node_ip4, ip4(Ipv4Addr::new(192, 0, 2, 11)));
        assert_eq!(r.policy_id, 7);
        assert_eq!(d.pods.len(), 1, "its own mail pod is a local endpoint");
    }

    #[test]
    fn unknown_gateway_is_a_warning_and_installs_nothing() {
        let d = desired(&cluster(), "worker1");
        assert!(d.policies.keys().all(|(id, _)| *id == 7));
        assert!(d
            .warnings
            .iter()
            .any(|w| w.contains("gateway node nowhere is unknown")));
        assert!(d.warnings.iter().any(|w| w.contains("lost-w1")));
    }

    #[test]
    fn explicit_egress_ip_is_used() {
        let mut c = cluster();
        c.policies[0].egress_ip = Some(Ipv4Addr::new(192, 0, 2, 100));
        let d = desired(&c, "worker1");
        let via = d.policies[&(7, "0.0.0.0/0".parse().unwrap())];
        assert_eq!(via.egress_ip4, ip4(Ipv4Addr::new(192, 0, 2, 100)));
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = AgentConfig::parse("nat: { portRange: [100, 50] }").unwrap_err();
        assert!(e.to_string().contains("portRange"), "{e}");
        let e = AgentConfig::parse(
            "policies: [{name: a, id: 0, gatewayNode: g, destinationCidrs: []}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("id 0"), "{e}");
        assert!(AgentConfig::parse("nodes: [{name: a}]").is_err());
    }
}
