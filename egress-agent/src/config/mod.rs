//! The agent's configuration file (YAML): the node's settings and, for hosts without
//! Kubernetes (and the lab), a static description of nodes, namespaces, pods and
//! `EgressGatewayPolicy` specs in the custom resource's shape. It feeds the same model as the
//! Kubernetes source.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use egress_common::map_sizes::MapSizes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{self, EgressGatewayPolicySpec, Labels};

mod unknown;

/// What is wrong with a configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or a value of the wrong type or shape. The parser's message has the field's
    /// path and the line (so it is part of this message, not a separate source).
    #[error("parsing {path}: {error}")]
    Parse {
        path: String,
        /// The line of the error, when the parser knows it (1-based).
        line: Option<usize>,
        error: serde_norway::Error,
    },
    /// A key that no field has: a misspelt optional field would silently do nothing.
    #[error("{path}: {at}: unknown field{}", hint.map(|h| format!(" (did you mean {h}?)")).unwrap_or_default())]
    UnknownField {
        path: String,
        /// Where, with list items named: `policy mail: spec.excludedCidrs`.
        at: String,
        /// The known field of that object with the closest name.
        hint: Option<&'static str>,
    },
    #[error("invalid configuration: {field}: {why}")]
    Invalid { field: &'static str, why: String },
    /// Two nodes, pods or policies with the same name.
    #[error("invalid configuration: {kind} {name} is listed twice")]
    Duplicate { kind: &'static str, name: String },
}

impl ConfigError {
    /// The same error about the file at `path` (parsing knows no file name).
    fn in_file(self, file: &Path) -> ConfigError {
        let file = file.display().to_string();
        match self {
            ConfigError::Parse { line, error, .. } => ConfigError::Parse {
                path: file,
                line,
                error,
            },
            ConfigError::UnknownField { at, hint, .. } => ConfigError::UnknownField {
                path: file,
                at,
                hint,
            },
            e => e,
        }
    }
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
fn default_cluster_cidrs() -> Vec<IpNet> {
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(from = "File")]
pub struct AgentConfig {
    pub tunnel: TunnelConfig,
    pub nat: NatConfig,
    pub failover: FailoverConfig,
    pub map_sizes: MapSizes,
    pub cluster: Cluster,
}

/// The file's shape: the settings and the cluster side by side at the top level. (Not
/// `#[serde(flatten)]`: a flattened struct hides the keys nobody asked for.)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    tunnel: TunnelConfig,
    #[serde(default)]
    nat: NatConfig,
    #[serde(default)]
    failover: FailoverConfig,
    #[serde(default)]
    map_sizes: MapSizes,
    /// Both families: the IPv6 ones are never refused (see the policies' `ipv6`).
    #[serde(default = "default_cluster_cidrs")]
    cluster_cidrs: Vec<IpNet>,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    pods: Vec<Pod>,
    #[serde(default)]
    policies: Vec<Policy>,
}

impl From<File> for AgentConfig {
    fn from(f: File) -> Self {
        AgentConfig {
            tunnel: f.tunnel,
            nat: f.nat,
            failover: f.failover,
            map_sizes: f.map_sizes,
            cluster: Cluster {
                cluster_cidrs: f
                    .cluster_cidrs
                    .iter()
                    .filter_map(|n| match n {
                        IpNet::V4(n) => Some(n.trunc()),
                        IpNet::V6(_) => None,
                    })
                    .collect(),
                cluster_cidrs6: f
                    .cluster_cidrs
                    .iter()
                    .filter_map(|n| match n {
                        IpNet::V6(n) => Some(n.trunc()),
                        IpNet::V4(_) => None,
                    })
                    .collect(),
                nodes: f.nodes,
                namespaces: f.namespaces,
                pods: f.pods,
                policies: f.policies,
            },
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TunnelConfig {
    /// Name of the VXLAN (collect_md) device the agent creates.
    #[serde(default = "default_device")]
    pub device: String,
    /// UDP port of the tunnel, the same on every node. The default, 4788, is no CNI's VXLAN
    /// port (see `egress_common::config::VXLAN_PORT`); a port that another VXLAN device or a
    /// socket holds stops the agent with an error naming the holder.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MTU of the node network; the tunnel costs 50 bytes of it.
    #[serde(default = "default_mtu")]
    pub underlay_mtu: u32,
    /// The underlay: the interface the tunnel runs on, which must hold the node's InternalIP.
    /// Tunnel packets are accepted only when they arrive there. Default: the interface that
    /// holds the InternalIP.
    #[serde(default)]
    pub interface: Option<String>,
    /// The skb mark bit(s) the underlay's program sets on trusted tunnel packets for the
    /// tunnel device's program (must not be used by anything else on the node).
    #[serde(default = "default_trust_mark")]
    pub trust_mark: u32,
}

fn default_trust_mark() -> u32 {
    egress_common::config::DEFAULT_TRUST_MARK
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            device: default_device(),
            port: default_port(),
            underlay_mtu: default_mtu(),
            interface: None,
            trust_mark: default_trust_mark(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
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

/// Gateway failover: heartbeats to every member of each gateway group (see
/// `egress_common::heartbeat` and `model::group`). With the defaults a member is dead 300 ms
/// after its last answer (plus up to one interval): detection and switch-over under a second.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverConfig {
    /// UDP port the members' datapaths answer heartbeats on (every node: the same).
    #[serde(default = "default_heartbeat_port")]
    pub heartbeat_port: u16,
    /// Milliseconds between two heartbeats to one member.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u32,
    /// Heartbeats missed in a row before a member is dead.
    #[serde(default = "default_missed_heartbeats")]
    pub missed_heartbeats: u32,
}

fn default_heartbeat_port() -> u16 {
    egress_common::heartbeat::HEARTBEAT_PORT
}
fn default_interval_ms() -> u32 {
    100
}
fn default_missed_heartbeats() -> u32 {
    3
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            heartbeat_port: default_heartbeat_port(),
            interval_ms: default_interval_ms(),
            missed_heartbeats: default_missed_heartbeats(),
        }
    }
}

impl FailoverConfig {
    /// How long after its last answer a member is dead (at most one interval more).
    pub fn detection_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            u64::from(self.interval_ms) * u64::from(self.missed_heartbeats),
        )
    }
}

/// Nodes, namespaces, pods and policies: the static stand-in for the Kubernetes API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    /// Pod and service CIDRs: never sent through a gateway.
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// The IPv6 ones: never refused.
    pub cluster_cidrs6: Vec<Ipv6Net>,
    pub nodes: Vec<Node>,
    /// Namespace labels. A namespace that pods name but that is not listed has only the
    /// `kubernetes.io/metadata.name` label, as every namespace does.
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
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
    /// The node's IPv6 addresses (never refused).
    #[serde(
        default,
        rename = "ipv6Addresses",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses6: Vec<Ipv6Addr>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub name: String,
    pub spec: EgressGatewayPolicySpec,
}

impl Cluster {
    /// The model's view of the file.
    pub fn to_model(&self) -> model::Cluster {
        model::Cluster {
            cluster_cidrs: self.cluster_cidrs.clone(),
            cluster_cidrs6: self.cluster_cidrs6.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| model::Node {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    ip: Some(n.ip),
                    addresses: n.addresses.clone(),
                    uplink: Some(n.uplink.clone().unwrap_or_else(|| "eth0".into())),
                    pod_cidrs: Vec::new(),
                    pod_cidrs6: Vec::new(),
                    addresses6: n.addresses6.clone(),
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
                    uid: None,
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

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and checks a file's text: one typed pass that also notes unknown keys.
    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let (cfg, unknown): (AgentConfig, _) =
            unknown::deserialize(serde_norway::Deserializer::from_str(text)).map_err(|error| {
                ConfigError::Parse {
                    path: "<config>".into(),
                    line: error.location().map(|l| l.line()),
                    error,
                }
            })?;
        if let Some(path) = unknown.first() {
            return Err(cfg.unknown_field(path));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The error for the unknown key at `path`: where it is, with list items named, and the
    /// known field it may be a misspelling of.
    fn unknown_field(&self, path: &[unknown::Segment]) -> ConfigError {
        use unknown::Segment::{Index, Key};
        let (key, parent) = match path.split_last() {
            Some((Key(k), parent)) => (k.as_str(), parent),
            _ => ("?", path),
        };
        let hint = unknown::closest(key, unknown::known_fields::<AgentConfig>(parent));
        let c = &self.cluster;
        let (item, rest) = match path {
            [Key(list), Index(i), rest @ ..] => {
                let item = match list.as_str() {
                    "nodes" => c.nodes.get(*i).map(|n| format!("node {}", n.name)),
                    "namespaces" => c
                        .namespaces
                        .get(*i)
                        .map(|n| format!("namespace {}", n.name)),
                    "pods" => c
                        .pods
                        .get(*i)
                        .map(|p| format!("pod {}/{}", p.namespace, p.name)),
                    "policies" => c.policies.get(*i).map(|p| format!("policy {}", p.name)),
                    _ => None,
                };
                match item {
                    Some(item) => (Some(item), rest),
                    None => (None, path),
                }
            }
            _ => (None, path),
        };
        let mut at = item.map(|i| format!("{i}: ")).unwrap_or_default();
        for (n, s) in rest.iter().enumerate() {
            match s {
                Key(k) if n == 0 => at.push_str(k),
                Key(k) => {
                    at.push('.');
                    at.push_str(k);
                }
                Index(i) => at.push_str(&format!("[{i}]")),
            }
        }
        ConfigError::UnknownField {
            path: "<config>".into(),
            at,
            hint,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let [lo, hi] = self.nat.port_range;
        if lo == 0 || hi < lo {
            return Err(ConfigError::Invalid {
                field: "nat.portRange",
                why: format!("[{lo}, {hi}] must be a non-empty range of non-zero ports"),
            });
        }
        let f = &self.failover;
        if f.heartbeat_port == 0 || f.heartbeat_port == self.tunnel.port {
            return Err(ConfigError::Invalid {
                field: "failover.heartbeatPort",
                why: format!(
                    "{} must be a non-zero port other than the tunnel's (default {})",
                    f.heartbeat_port,
                    default_heartbeat_port()
                ),
            });
        }
        if !(10..=10_000).contains(&f.interval_ms) {
            return Err(ConfigError::Invalid {
                field: "failover.intervalMs",
                why: format!(
                    "{} must be 10 to 10000 milliseconds (default 100)",
                    f.interval_ms
                ),
            });
        }
        if !(1..=100).contains(&f.missed_heartbeats) {
            return Err(ConfigError::Invalid {
                field: "failover.missedHeartbeats",
                why: format!("{} must be 1 to 100 (default 3)", f.missed_heartbeats),
            });
        }
        let overhead = egress_common::config::VXLAN_OVERHEAD;
        if self.tunnel.trust_mark == 0 {
            return Err(ConfigError::Invalid {
                field: "tunnel.trustMark",
                why: "must have at least one bit set (default 0x1000)".into(),
            });
        }
        if self.tunnel.underlay_mtu < 576 + overhead {
            return Err(ConfigError::Invalid {
                field: "tunnel.underlayMtu",
                why: format!(
                    "{} is too small for the {overhead}-byte tunnel",
                    self.tunnel.underlay_mtu
                ),
            });
        }
        // Names must be unique; everything else about policies is the model's to judge (a bad
        // policy gets a status condition and a log line, the others keep working).
        let twice = |kind, name: String| ConfigError::Duplicate { kind, name };
        let mut seen = BTreeSet::new();
        for n in &self.cluster.nodes {
            if !seen.insert(n.name.as_str()) {
                return Err(twice("node", n.name.clone()));
            }
        }
        let mut seen = BTreeSet::new();
        for p in &self.cluster.policies {
            if !seen.insert(p.name.as_str()) {
                return Err(twice("policy", p.name.clone()));
            }
        }
        let mut seen = BTreeSet::new();
        for p in &self.cluster.pods {
            if !seen.insert((p.namespace.as_str(), p.name.as_str())) {
                return Err(twice("pod", format!("{}/{}", p.namespace, p.name)));
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

    const EXAMPLE: &str = include_str!("../../../deploy/example-config.yaml");

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
        // The only warning: the egress IP is the gateway node's own address.
        assert!(
            m.desired.warnings.iter().all(|w| w.contains("NodeAddress")),
            "{:?}",
            m.desired.warnings
        );
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
    fn an_unknown_field_anywhere_is_named_by_its_path() {
        let e = AgentConfig::parse("tunnel: {devise: egw1}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "<config>: tunnel.devise: unknown field (did you mean device?)"
        );
        let e = AgentConfig::parse("policy: []").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("policy: unknown field (did you mean policies?)"),
            "{e}"
        );
        let e =
            AgentConfig::parse("nodes: [{name: gw, ip: 192.0.2.1, lables: {a: b}}]").unwrap_err();
        assert!(
            e.to_string()
                .contains("node gw: lables: unknown field (did you mean labels?)"),
            "{e}"
        );
        let e = AgentConfig::parse("pods: [{name: p, ip: 10.0.0.1, node: a, colour: red}]")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("pod default/p: colour: unknown field"),
            "{e}"
        );
        assert!(
            matches!(e, ConfigError::UnknownField { hint: None, .. }),
            "{e:?}"
        );
        // The file's name, when there is a file.
        let dir = std::env::temp_dir().join(format!("egw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("agent.yaml");
        std::fs::write(&file, "nat: {portRnage: [1, 2]}\n").expect("write");
        let e = AgentConfig::load(&file).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.to_string()
                .ends_with("agent.yaml: nat.portRnage: unknown field (did you mean portRange?)"),
            "{e}"
        );
    }

    #[test]
    fn the_default_tunnel_port_is_no_cnis_overlay_port() {
        let port = AgentConfig::parse("{}").expect("parses").tunnel.port;
        for (taken, whose) in [
            (4789, "VXLAN (Calico, Antrea, OVN-Kubernetes)"),
            (8472, "flannel's and Cilium's VXLAN"),
            (4790, "Calico's egress gateway"),
            (6081, "Geneve"),
            (51820, "WireGuard"),
        ] {
            assert_ne!(port, taken, "{whose}");
        }
        assert!(port < 32768, "{port}: below Linux's ephemeral ports");
    }

    #[test]
    fn failover_defaults_detect_a_dead_gateway_well_under_a_second() {
        let f = AgentConfig::parse("{}").expect("parses").failover;
        assert_eq!(f, FailoverConfig::default());
        assert_eq!(f.heartbeat_port, 4787);
        // Dead after the misses, plus one interval at most, plus the switch-over.
        assert!(
            f.detection_time() + std::time::Duration::from_millis(u64::from(f.interval_ms))
                <= std::time::Duration::from_millis(500),
            "{f:?}"
        );
        assert!(f.heartbeat_port < 32768, "below Linux's ephemeral ports");
        for (taken, whose) in [(3784, "BFD"), (3785, "BFD echo"), (4784, "multihop BFD")] {
            assert_ne!(f.heartbeat_port, taken, "{whose}");
        }
        let set = AgentConfig::parse(
            "failover: { heartbeatPort: 7000, intervalMs: 50, missedHeartbeats: 4 }",
        )
        .expect("parses")
        .failover;
        assert_eq!(
            (set.heartbeat_port, set.interval_ms, set.missed_heartbeats),
            (7000, 50, 4)
        );
        for bad in [
            "failover: { heartbeatPort: 0 }",
            "failover: { heartbeatPort: 4788 }",
            "failover: { intervalMs: 1 }",
            "failover: { missedHeartbeats: 0 }",
        ] {
            let e = AgentConfig::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("failover."), "{bad}: {e}");
        }
        let e = AgentConfig::parse("failover: { interval: 100 }")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("failover.interval"), "{e}");
    }

    #[test]
    fn a_parse_error_has_its_line() {
        let e = AgentConfig::parse("tunnel:\n  port: 4788\nnodes:\n  - {name: a}\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { line: Some(4), .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("missing field `ip`"), "{e}");
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
