//! The agent's configuration file (YAML): the node's settings and a static description of
//! nodes, egress policies and pods. The Kubernetes source (a later addition) produces the
//! same `Cluster` data.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::datapath::MapSizes;

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

/// Nodes, policies and pods: what a Kubernetes watch or the file provides.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// Pod and service CIDRs: never sent through a gateway.
    #[serde(default = "default_cluster_cidrs")]
    pub cluster_cidrs: Vec<Ipv4Net>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub pods: Vec<Pod>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    /// Underlay (InternalIP) address.
    pub ip: Ipv4Addr,
    /// Uplink interface towards the internet (used on gateway nodes).
    #[serde(default = "default_uplink")]
    pub uplink: String,
}

fn default_uplink() -> String {
    "eth0".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub name: String,
    /// Stable small id (1..1023): the tunnel VNI and the counter index.
    pub id: u32,
    /// The gateway node.
    pub gateway_node: String,
    /// Source address after SNAT; default: the gateway node's address.
    #[serde(default)]
    pub egress_ip: Option<Ipv4Addr>,
    pub destination_cidrs: Vec<Ipv4Net>,
    #[serde(default)]
    pub excluded_cidrs: Vec<Ipv4Net>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    /// Name of the policy that selects this pod, if any.
    #[serde(default)]
    pub policy: Option<String>,
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
        let cfg: AgentConfig = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<config>".into(),
            source,
        })?;
        cfg.validate()?;
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
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for p in &self.cluster.policies {
            if p.id == 0 || p.id >= egress_common::policy::MAX_POLICIES {
                return Err(ConfigError::Invalid(format!(
                    "policy {}: id {} must be in 1..{}",
                    p.name,
                    p.id,
                    egress_common::policy::MAX_POLICIES
                )));
            }
            if !ids.insert(p.id) || !names.insert(p.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "policy {}: duplicate name or id {}",
                    p.name, p.id
                )));
            }
        }
        Ok(())
    }
}
