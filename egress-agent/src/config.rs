//! The agent's configuration file (YAML): the node's settings and, for hosts without
//! Kubernetes (and the lab), a static description of nodes, namespaces, pods and
//! `EgressGatewayPolicy` specs in the custom resource's shape. It feeds the same model as the
//! Kubernetes source.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use egress_common::map_sizes::MapSizes;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{self, EgressGatewayPolicySpec, Labels};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn default_device() -> String {
    "egw0".into()
}
fn default_port() -> u16 {
    egress_common::config::VXLAN_PORT
}
fn default_mtu() -> u32 {
    1500
}
fn default_cluster_cidrs() -> Vec<Ipv4Net> {
    vec![
        "10.244.0.0/16".parse().expect("valid"),
        "10.96.0.0/12".parse().expect("valid"),
    ]
}
fn default_port_range() -> [u16; 2] {
    // Above Linux's default ephemeral range (32768-60999), so that the gateway host's own
    // connections never pick a port that a translated flow holds.
    [61000, 65535]
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub nat: NatConfig,
    #[serde(default)]
    pub map_sizes: MapSizes,
    #[serde(flatten)]
    pub cluster: Cluster,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelConfig {
    /// Name of the VXLAN (collect_md) device the agent creates.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// MTU of the node network; the tunnel costs 50 bytes of it.
    #[serde(default = "default_mtu")]
    pub underlay_mtu: u32,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            device: default_device(),
            port: default_port(),
            underlay_mtu: default_mtu(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NatConfig {
    /// SNAT source ports, inclusive. Keep it outside the gateway host's
    /// `net.ipv4.ip_local_port_range` (or reserve it in `ip_local_reserved_ports`).
    #[serde(default = "default_port_range")]
    pub port_range: [u16; 2],
    /// Idle timeouts in seconds.
    #[serde(default)]
    pub timeouts: crate::nat_gc::Timeouts,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            port_range: default_port_range(),
            timeouts: Default::default(),
        }
    }
}

/// Nodes, namespaces, pods and policies: the static stand-in for the Kubernetes API.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// Pod and service CIDRs: never sent through a gateway.
    #[serde(default = "default_cluster_cidrs")]
    pub cluster_cidrs: Vec<Ipv4Net>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Namespace labels. A namespace that pods name but that is not listed has only the
    /// `kubernetes.io/metadata.name` label, as every namespace does.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    /// Underlay (InternalIP) address.
    pub ip: Ipv4Addr,
    /// Uplink interface towards the internet (used on gateway nodes); default `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// Other addresses on the node (candidates for `egressIP`).
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    #[serde(default)]
    pub labels: Labels,
}

/// An `EgressGatewayPolicy`: its name and the custom resource's `spec`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub name: String,
    pub spec: EgressGatewayPolicySpec,
}

impl Cluster {
    /// The model's view of the file.
    pub fn to_model(&self) -> model::Cluster {
        model::Cluster {
            cluster_cidrs: self.cluster_cidrs.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| model::Node {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    ip: Some(n.ip),
                    addresses: n.addresses.clone(),
                    uplink: Some(n.uplink.clone().unwrap_or_else(|| "eth0".into())),
                })
                .collect(),
            namespaces: self
                .namespaces
                .iter()
                .map(|n| model::Namespace {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                })
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| model::Pod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    node: Some(p.node.clone()),
                    ip: Some(p.ip),
                    host_network: false,
                })
                .collect(),
            policies: self
                .policies
                .iter()
                .map(|p| model::Policy {
                    name: p.name.clone(),
                    created: None,
                    spec: p.spec.clone(),
                })
                .collect(),
        }
    }
}

/// The fields of a policy spec, per level: (field, the fields of its objects, if checked).
struct Fields(&'static [(&'static str, Option<&'static Fields>)]);

const SELECTOR_FIELDS: Fields = Fields(&[
    ("matchLabels", None),
    (
        "matchExpressions",
        Some(&Fields(&[
            ("key", None),
            ("operator", None),
            ("values", None),
        ])),
    ),
]);
const SPEC_FIELDS: Fields = Fields(&[
    (
        "selectors",
        Some(&Fields(&[
            ("podSelector", Some(&SELECTOR_FIELDS)),
            ("namespaceSelector", Some(&SELECTOR_FIELDS)),
        ])),
    ),
    ("destinationCIDRs", None),
    ("excludedCIDRs", None),
    (
        "gateway",
        Some(&Fields(&[
            ("nodeName", None),
            ("nodeSelector", Some(&SELECTOR_FIELDS)),
            ("egressIP", None),
            ("interface", None),
        ])),
    ),
]);

/// Refuses keys of `v` (an object, or a list of objects) that `fields` does not name,
/// suggesting the field that differs only in case.
fn check_fields(v: &serde_yaml::Value, at: &str, fields: &Fields) -> Result<(), String> {
    let objects: Vec<&serde_yaml::Value> = match v {
        serde_yaml::Value::Sequence(s) => s.iter().collect(),
        other => vec![other],
    };
    for o in objects {
        let Some(map) = o.as_mapping() else { continue };
        for (k, child) in map {
            let key = k.as_str().unwrap_or_default();
            match fields.0.iter().find(|(f, _)| *f == key) {
                Some((_, Some(sub))) => check_fields(child, &format!("{at}.{key}"), sub)?,
                Some((_, None)) => {}
                None => {
                    let hint = fields
                        .0
                        .iter()
                        .find(|(f, _)| f.eq_ignore_ascii_case(key))
                        .map(|(f, _)| format!(" (did you mean {f}?)"))
                        .unwrap_or_default();
                    return Err(format!("{at}.{key}: unknown field{hint}"));
                }
            }
        }
    }
    Ok(())
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            e => e,
        })
    }

    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let raw: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
        let old_policy = raw["policies"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|p| p.get("gatewayNode").is_some() || p.get("id").is_some());
        let old_pod = raw["pods"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|p| p.get("policy").is_some());
        if old_policy || old_pod {
            return Err(ConfigError::Invalid(
                "this is the old format: a policy is now `{name, spec}` with the \
                 EgressGatewayPolicy spec (selectors, destinationCIDRs, gateway), ids are \
                 derived from names, and pods are selected by their `labels` instead of \
                 `policy:` (see the README, \"The configuration file\")"
                    .into(),
            ));
        }
        let cfg: AgentConfig = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<config>".into(),
            source,
        })?;
        cfg.validate()?;
        // The custom resource's types accept unknown fields (the API server prunes them); in
        // the file a misspelt optional field would silently do nothing, so refuse it.
        for p in raw["policies"].as_sequence().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("?");
            check_fields(&p["spec"], "spec", &SPEC_FIELDS)
                .map_err(|e| ConfigError::Invalid(format!("policy {name}: {e}")))?;
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let [lo, hi] = self.nat.port_range;
        if lo == 0 || hi < lo {
            return Err(ConfigError::Invalid(format!(
                "nat.portRange [{lo}, {hi}] must be a non-empty range of non-zero ports"
            )));
        }
        let overhead = egress_common::config::VXLAN_OVERHEAD;
        if self.tunnel.underlay_mtu < 576 + overhead {
            return Err(ConfigError::Invalid(format!(
                "tunnel.underlayMtu {} is too small for the {overhead}-byte tunnel",
                self.tunnel.underlay_mtu
            )));
        }
        // Names must be unique; everything else about policies is the model's to judge (a bad
        // policy gets a status condition and a log line, the others keep working).
        let mut seen = BTreeSet::new();
        for n in &self.cluster.nodes {
            if !seen.insert(("node", n.name.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "node {} is listed twice",
                    n.name
                )));
            }
        }
        for p in &self.cluster.policies {
            if !seen.insert(("policy", p.name.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "policy {} is listed twice",
                    p.name
                )));
            }
        }
        let mut pods = BTreeSet::new();
        for p in &self.cluster.pods {
            if !pods.insert((p.namespace.as_str(), p.name.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "pod {}/{} is listed twice",
                    p.namespace, p.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use egress_common::addr::ip4;

    use super::*;
    use crate::model;

    const EXAMPLE: &str = include_str!("../../deploy/example-config.yaml");

    #[test]
    fn the_example_configuration_selects_the_mail_pods() {
        let cfg = AgentConfig::parse(EXAMPLE).expect("the example parses");
        let c = cfg.cluster.to_model();
        let m = model::compute(&c, "worker1", &model::LocalFacts::default());
        let st = &m.status["mailu-postfix"];
        assert_eq!(st.gateway_node.as_deref(), Some("gateway"));
        assert_eq!(st.selected_pods, 2);
        assert_eq!(m.desired.pods.len(), 1);
        assert_eq!(m.desired.pods[0].name, "mailu/postfix-0");
        assert_eq!(m.desired.pods[0].policy_id, st.datapath_id);
        assert_eq!(m.desired.uplink.as_deref(), Some("eth0"));
        let gw = model::compute(&c, "gateway", &model::LocalFacts::default());
        let r = gw.desired.remote_endpoints[&Ipv4Addr::new(10, 244, 1, 2)];
        assert_eq!(r.node_ip4, ip4(Ipv4Addr::new(192, 0, 2, 11)));
        assert!(m.desired.warnings.is_empty(), "{:?}", m.desired.warnings);
    }

    #[test]
    fn defaults_fill_in_namespace_uplink_and_cluster_cidrs() {
        let cfg = AgentConfig::parse(
            "nodes: [{name: n, ip: 192.0.2.1}]\npods: [{name: p, ip: 10.244.0.5, node: n}]\n",
        )
        .expect("valid");
        assert_eq!(cfg.cluster.pods[0].namespace, "default");
        assert_eq!(cfg.cluster.cluster_cidrs.len(), 2);
        assert_eq!(
            cfg.cluster.to_model().nodes[0].uplink.as_deref(),
            Some("eth0")
        );
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = AgentConfig::parse("nat: { portRange: [100, 50] }").unwrap_err();
        assert!(e.to_string().contains("portRange"), "{e}");
        assert!(AgentConfig::parse("nodes: [{name: a}]").is_err());
        let e = AgentConfig::parse("nodes: [{name: a, ip: 192.0.2.1}, {name: a, ip: 192.0.2.2}]")
            .unwrap_err();
        assert!(e.to_string().contains("node a is listed twice"), "{e}");
        let e = AgentConfig::parse(
            "pods: [{name: p, ip: 10.0.0.1, node: a}, {name: p, ip: 10.0.0.2, node: a}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("default/p"), "{e}");
        let spec = "{selectors: [{podSelector: {}}], destinationCIDRs: [], gateway: {nodeName: a}}";
        let e = AgentConfig::parse(&format!(
            "policies: [{{name: x, spec: {spec}}}, {{name: x, spec: {spec}}}]"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("policy x is listed twice"), "{e}");
    }

    #[test]
    fn a_misspelt_spec_field_is_an_error_with_a_hint() {
        let spec = |gateway: &str| {
            format!(
                "policies: [{{name: mail, spec: {{selectors: [{{podSelector: {{matchLabels: {{a: b}}}}}}], \
                 destinationCIDRs: [0.0.0.0/0], excludedCidrs: [10.0.0.0/8], gateway: {gateway}}}}}]"
            )
        };
        let e = AgentConfig::parse(&spec("{nodeName: gw}")).unwrap_err();
        assert!(
            e.to_string().contains(
                "policy mail: spec.excludedCidrs: unknown field (did you mean excludedCIDRs?)"
            ),
            "{e}"
        );
        let ok = spec("{nodeName: gw}").replace("excludedCidrs", "excludedCIDRs");
        AgentConfig::parse(&ok).expect("the right spelling parses");
        let e = AgentConfig::parse(
            &ok.replace("{nodeName: gw}", "{nodeSelector: {matchLabel: {a: b}}}"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.gateway.nodeSelector.matchLabel: unknown field"),
            "{e}"
        );
        let e = AgentConfig::parse(&ok.replace("podSelector", "podselector")).unwrap_err();
        assert!(e.to_string().contains("did you mean podSelector?"), "{e}");
    }

    #[test]
    fn the_checked_field_list_knows_every_field_of_the_types() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        let sel = LabelSelector {
            match_labels: Some([("a".to_owned(), "b".to_owned())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "In".into(),
                values: Some(vec!["v".into()]),
            }]),
        };
        let full = EgressGatewayPolicySpec {
            selectors: vec![model::PodSelection {
                pod_selector: Some(sel.clone()),
                namespace_selector: Some(sel.clone()),
            }],
            destination_cidrs: vec!["0.0.0.0/0".into()],
            excluded_cidrs: vec!["10.0.0.0/8".into()],
            gateway: model::GatewaySpec {
                node_name: Some("n".into()),
                node_selector: Some(sel),
                egress_ip: Some("192.0.2.1".into()),
                interface: Some("eth0".into()),
            },
        };
        let v = serde_yaml::to_value(&full).expect("serializes");
        check_fields(&v, "spec", &SPEC_FIELDS).expect("every serialized field is known");
    }

    #[test]
    fn the_old_format_is_rejected_by_name() {
        let e = AgentConfig::parse(
            "policies: [{name: mail, id: 1, gatewayNode: gw, destinationCidrs: [0.0.0.0/0]}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("old format"), "{e}");
        let e = AgentConfig::parse("pods: [{name: p, ip: 10.0.0.1, node: a, policy: mail}]")
            .unwrap_err();
        assert!(e.to_string().contains("by their `labels`"), "{e}");
    }

    #[test]
    fn an_invalid_policy_is_the_models_business_not_a_parse_error() {
        let cfg = AgentConfig::parse(
            "policies: [{name: x, spec: {selectors: [], destinationCIDRs: [nonsense], gateway: {}}}]",
        )
        .expect("parses");
        let m = model::compute(&cfg.cluster.to_model(), "n", &model::LocalFacts::default());
        assert_eq!(m.status["x"].conditions[0].reason, "InvalidCIDR");
    }
}
