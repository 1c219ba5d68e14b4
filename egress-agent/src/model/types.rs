//! The model's input (what the sources know) and output (what one node's maps must hold, and
//! every policy's status): plain data.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use egress_common::{
    endpoint::RemoteEndpoint,
    policy::{PolicyValue, PolicyValue6},
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    EgressGatewayPolicySpec, EgressGatewayPolicyStatus, Labels, Protection, UnderlayFacts,
};

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
    /// The node's pod CIDRs (`Node.spec.podCIDRs`, IPv4): never sent through a gateway.
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Its IPv6 pod CIDRs and addresses: never refused.
    pub pod_cidrs6: Vec<Ipv6Net>,
    pub addresses6: Vec<Ipv6Addr>,
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
    /// The API object's uid, when the source has one: a pod deleted and created again under
    /// the same name is another pod (its flows are not the old one's).
    pub uid: Option<String>,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What tells this pod from an earlier one with the same address: the uid, else the key.
    pub fn identity(&self) -> String {
        match &self.uid {
            Some(uid) => format!("{}/{}", self.key(), uid),
            None => self.key(),
        }
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
    /// Pod and service CIDRs the agent is given (`clusterCidrs`, `--cluster-cidr`), besides
    /// the nodes' pod CIDRs: never sent through a gateway.
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// The IPv6 ones (`clusterCidrs`' IPv6 entries): never refused.
    pub cluster_cidrs6: Vec<Ipv6Net>,
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
}

/// What the node the model runs for knows about itself: its interfaces' IPv4 addresses, and
/// its underlay (when the agent has found it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalFacts {
    pub interfaces: BTreeMap<String, Vec<Ipv4Addr>>,
    pub underlay: Option<UnderlayFacts>,
    /// The kernel's routes from a local egress IP to a policy destination (its
    /// [`route_probe`] address): the interface they leave by, `None` if there is no route.
    /// A pair not looked up is not checked.
    pub routes: BTreeMap<(Ipv4Addr, Ipv4Addr), Option<String>>,
    /// The host's ephemeral and reserved ports and the NAT range (`None`: not read).
    pub host_ports: Option<super::ports::HostPorts>,
    /// What this node knows of gateway nodes' health, by node name: their heartbeat answers
    /// (this node's own entry: its self-check). A node without an entry has not been heard
    /// of yet (see `group`).
    pub gateway_health: BTreeMap<String, GatewayHealth>,
}

/// A gateway node's health as one node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayHealth {
    /// It answers heartbeats, and says it has been healthy for this long (the same answer
    /// for every node that asks: what makes them agree on the longest-healthy member).
    Alive { healthy_for: std::time::Duration },
    /// It missed the configured number of heartbeats in a row (or says it is not healthy).
    Dead,
}

/// The address whose route stands for the destination `net` (`ip route get`): its first
/// address after the network's own (for 0.0.0.0/0, 0.0.0.1: the default route).
pub fn route_probe(net: Ipv4Net) -> Ipv4Addr {
    if net.prefix_len() >= 31 {
        net.network()
    } else {
        Ipv4Addr::from(u32::from(net.network()) + 1)
    }
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
    /// `{policy id, IPv6 prefix}` -> value (`ACTION_REFUSE` or `ACTION_EXCLUDED`).
    pub policies6: BTreeMap<(u32, Ipv6Net), PolicyValue6>,
    /// Other cluster nodes' underlay addresses (tunnel peers).
    pub nodes: Vec<Ipv4Addr>,
    /// Every address of every node, every address on this node's interfaces and every
    /// egress IP: pods never reach the tunnel port there.
    pub node_addresses: BTreeSet<Ipv4Addr>,
    /// Whether the tunnel on this node's underlay is protected against spoofed peers.
    pub tunnel: Option<Protection>,
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
