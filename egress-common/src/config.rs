//! Per-node configuration read by every program (a one-entry array map, written by the agent).

/// Tunnel encapsulation overhead of VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// UDP destination port of the VXLAN device.
pub const VXLAN_PORT: u16 = 4789;

/// `Config::flags`: the configuration has been written by the agent. Until then every
/// program passes traffic through untouched.
pub const CFG_F_READY: u32 = 1 << 0;

/// The node's configuration. One entry, index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// This node's underlay IPv4 address (network byte order).
    pub node_ip4: u32,
    /// ifindex of the VXLAN (collect_md) device.
    pub tunnel_ifindex: u32,
    /// ifindex of the uplink towards the internet (gateway role).
    pub uplink_ifindex: u32,
    /// Largest IPv4 packet (L3 length) that fits into the tunnel: underlay MTU - overhead.
    pub tunnel_mtu: u32,
    /// SNAT port range, inclusive, host byte order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
}
crate::assert_size!(Config, 24);
