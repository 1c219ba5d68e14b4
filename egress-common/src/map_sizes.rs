//! Default sizes (max entries) of the maps the agent may resize at load time.

/// NAT/conntrack entries (`EGW_NAT4`; both directions of a flow take one each).
pub const DEFAULT_NAT: u32 = 262_144;
/// Local pods (`EGW_ENDPOINTS4`).
pub const DEFAULT_ENDPOINTS: u32 = 16_384;
/// Pods of other nodes that egress through this one (`EGW_REMOTE_EP4`).
pub const DEFAULT_REMOTE_ENDPOINTS: u32 = 65_536;
/// `{policy, prefix}` entries (`EGW_POLICY4`).
pub const DEFAULT_POLICIES: u32 = 16_384;
/// Cluster nodes (`EGW_NODES4`).
pub const DEFAULT_NODES: u32 = 16_384;

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::MapSizes;
