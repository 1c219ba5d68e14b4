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
