//! Endpoints (pods) on this node, cluster nodes, and pods of other nodes that use this node as
//! their gateway.

/// `Endpoint::flags`: the pod is selected by a policy (`policy_id` is valid).
pub const EP_F_SELECTED: u32 = 1 << 0;

/// A pod on this node. Key: the pod's IPv4 address (network byte order).
///
/// Every local pod the agent knows is listed, selected or not, so that a packet carrying a
/// known pod's address on any other pod's veth is recognised as spoofed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the pod's host-side veth (where its packets must arrive).
    pub ifindex: u32,
    /// Policy that selects the pod (0: none).
    pub policy_id: u32,
    /// `EP_F_*` bits.
    pub flags: u32,
    /// Where packets for the pod are sent (`bpf_redirect_neigh`): 0 for `ifindex` itself (a
    /// routed veth: Calico's `cali*`, Cilium's `lxc*`, the ptp plugin), or the bridge the veth
    /// is a port of (flannel's and k3s's `cni0`). Through a bridge the packet takes the path
    /// the host's own routing would: the neighbour entry lives on the bridge (a bridge port's
    /// ARP replies are handed to the bridge, never to the port), and the bridge forwards the
    /// frame to the port by its FDB.
    pub deliver_ifindex: u32,
}
crate::assert_size!(Endpoint, 16);

impl Endpoint {
    /// The interface packets for the pod are redirected to (see `deliver_ifindex`).
    #[inline(always)]
    pub fn delivery_ifindex(&self) -> u32 {
        if self.deliver_ifindex != 0 {
            self.deliver_ifindex
        } else {
            self.ifindex
        }
    }
}

/// `NodeInfo::flags`: the underlay address of another cluster node: it may send tunnelled
/// traffic to this node.
pub const NODE_F_PEER: u32 = 1 << 0;
/// `NodeInfo::flags`: an address of a cluster node (any node, this one included: InternalIP,
/// ExternalIPs) or an egress IP. Pods never reach the tunnel port of such an address.
pub const NODE_F_ADDRESS: u32 = 1 << 1;
/// `NodeInfo::flags`: a peer on the underlay's own L2 segment: its tunnel packets must carry
/// `NodeInfo::mac` as their Ethernet source (a spoofer beyond a router carries the router's).
pub const NODE_F_ONLINK: u32 = 1 << 2;

/// A cluster node's address. Key: the IPv4 address (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `NODE_F_*` bits.
    pub flags: u32,
    /// On-link peers: the MAC address of the peer's underlay interface, from this node's
    /// neighbour table (all zero while unknown: its tunnel packets are dropped).
    pub mac: [u8; 6],
    pub _pad: [u8; 6],
}
crate::assert_size!(NodeInfo, 16);

/// A selected pod on another node that egresses through this gateway.
/// Key: the pod's IPv4 address (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Underlay address of the pod's node (network byte order): tunnelled packets from the pod
    /// must come from there, and replies go back there.
    pub node_ip4: u32,
    /// Policy that selects the pod; must equal the tunnel's VNI.
    pub policy_id: u32,
}
crate::assert_size!(RemoteEndpoint, 8);
