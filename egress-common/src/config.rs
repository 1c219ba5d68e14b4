//! Per-node configuration read by every program (a one-entry array map, written by the agent).

/// Tunnel encapsulation overhead of VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Default UDP port of the tunnel (`tunnel.port`). Not the VXLAN port of any CNI's overlay, so
/// that the agent runs beside them: IANA's VXLAN port 4789 is Calico's (and Antrea's,
/// OVN-Kubernetes', Kube-OVN's VXLAN mode), Linux's default 8472 flannel's and Cilium's, 4790
/// Calico's egress gateway's, 6081 is Geneve (Antrea, OVN-Kubernetes, Kube-OVN, Cilium's
/// Geneve mode); 51820, 51821 and 51871 are the WireGuard ports of flannel, Calico and Cilium.
/// Below Linux's ephemeral range (32768-60999), so no local socket is given it at random;
/// next to VXLAN's own for firewall rules.
pub const VXLAN_PORT: u16 = 4788;

/// `Config::flags`: the configuration has been written by the agent. Until then every
/// program passes traffic through untouched.
pub const CFG_F_READY: u32 = 1 << 0;

/// `Config::flags`: this node is the gateway of at least one policy: `egw_from_wire` on the
/// uplink reverse-translates replies.
pub const CFG_F_GATEWAY: u32 = 1 << 1;

/// Default `Config::trust_mark`: the skb mark bit `egw_from_wire` sets on a tunnel packet that
/// arrived on the underlay from a cluster node, and `egw_from_tunnel` requires (and clears)
/// after decapsulation. Outside the bits kube-proxy (0x4000, 0x8000), Cilium (0x0f00 and the
/// upper half) and Calico (0xffff0000) use by default.
pub const DEFAULT_TRUST_MARK: u32 = 0x1000;

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
    /// ifindex of the underlay interface: tunnel packets are accepted only when they arrive
    /// there.
    pub underlay_ifindex: u32,
    /// The skb mark bit(s) that carry "arrived on the underlay from a cluster node" from the
    /// underlay's tc ingress to the tunnel device's (the interface is lost in decapsulation).
    pub trust_mark: u32,
    /// UDP port of the tunnel, network byte order.
    pub tunnel_port: u16,
    /// MTU of the uplink (gateway role): the largest IPv4 packet the gateway sends out of it
    /// (0: unknown, unchecked).
    pub uplink_mtu: u16,
    pub _pad: [u8; 4],
}
crate::assert_size!(Config, 40);
