//! Map sizes as the agent's configuration gives them (`mapSizes`).

use super::{
    DEFAULT_ENDPOINTS, DEFAULT_NAT, DEFAULT_NODES, DEFAULT_POLICIES, DEFAULT_REMOTE_ENDPOINTS,
};

/// Map sizes (max entries) the agent may override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MapSizes {
    pub nat: u32,
    pub endpoints: u32,
    pub remote_endpoints: u32,
    pub policies: u32,
    pub nodes: u32,
}

impl MapSizes {
    /// The max entries of map `name` when the configuration sizes it (IPv6 twins take their
    /// IPv4 map's size; the pod veths map one per local pod); `None`: the object's own.
    pub fn of_map(&self, name: &str) -> Option<u32> {
        use crate::map_names as m;
        match name {
            m::NAT4 => Some(self.nat),
            m::ENDPOINTS4 | m::VETH_PODS => Some(self.endpoints),
            m::REMOTE_EP4 => Some(self.remote_endpoints),
            m::POLICY4 | m::POLICY6 => Some(self.policies),
            m::NODES4 => Some(self.nodes),
            _ => None,
        }
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            nat: DEFAULT_NAT,
            endpoints: DEFAULT_ENDPOINTS,
            remote_endpoints: DEFAULT_REMOTE_ENDPOINTS,
            policies: DEFAULT_POLICIES,
            nodes: DEFAULT_NODES,
        }
    }
}
