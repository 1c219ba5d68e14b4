//! Types shared by the eBPF programs (`egress-ebpf`) and the agent (`egress-agent`).
//!
//! Every map key and value is `#[repr(C)]` with fixed-width fields, explicit padding and a
//! compile-time size assertion, so that the kernel, the programs and the agent agree on the
//! layout byte for byte. Addresses and ports are stored in network byte order (as they sit in
//! the packet), so that the datapath never swaps bytes.
//!
//! IPv4 maps carry a `4` suffix; their IPv6 twins will sit beside them with 16-byte addresses.
//!
//! A concern is `x.rs` with the shared types; what only the agent needs (names, key
//! encoding, address conversion, serde) sits in `x/user.rs` behind the `user` feature.
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "user")]
pub mod addr;
pub mod config;
pub mod counters;
pub mod endpoint;
pub mod flow;
pub mod heartbeat;
pub mod map_sizes;
pub mod nat;
pub mod policy;
pub mod proto;

/// Names of the maps, as they appear in the object file, under the pin directory and in
/// `bpftool map show`. Kernel map names are limited to 15 characters.
pub mod map_names {
    pub const CONFIG: &str = "EGW_CONFIG";
    pub const ENDPOINTS4: &str = "EGW_ENDPOINTS4";
    pub const POLICY4: &str = "EGW_POLICY4";
    pub const NODES4: &str = "EGW_NODES4";
    pub const REMOTE_EP4: &str = "EGW_REMOTE_EP4";
    pub const NAT4: &str = "EGW_NAT4";
    pub const POLICY_STATS: &str = "EGW_POL_STATS";
    pub const DROPS: &str = "EGW_DROPS";
    pub const NAT_STATS: &str = "EGW_NAT_STATS";
    /// Fragments of translated datagrams, both ways: the flow of a datagram whose first
    /// fragment passed.
    pub const FRAG4: &str = "EGW_FRAG4";
    /// Flows of local selected pods to their policies' destinations: opened by the pod
    /// through a gateway (what may come back through the tunnel) or by the peer (the pod's
    /// answers keep the normal path).
    pub const FLOWS4: &str = "EGW_FLOWS4";
    /// The IPv6 twin of `POLICY4`: `{policy id, IPv6 prefix}` -> what to do.
    pub const POLICY6: &str = "EGW_POLICY6";
    /// The pod behind each local pod veth (ifindex -> the pod's IPv4 address, its key in
    /// `ENDPOINTS4`): how an IPv6 packet finds its pod's endpoint.
    pub const VETH_PODS: &str = "EGW_VETH_PODS";

    /// Every map, in a stable order (pinning, inspection, clean-up).
    pub const ALL: [&str; 13] = [
        CONFIG,
        ENDPOINTS4,
        POLICY4,
        NODES4,
        REMOTE_EP4,
        NAT4,
        POLICY_STATS,
        DROPS,
        NAT_STATS,
        FRAG4,
        FLOWS4,
        POLICY6,
        VETH_PODS,
    ];
}

/// Names of the tc programs in the object file.
pub mod program_names {
    /// tc ingress on a pod's host-side veth.
    pub const FROM_POD: &str = "egw_from_pod";
    /// tc ingress on the VXLAN device (`egw0`).
    pub const FROM_TUNNEL: &str = "egw_from_tunnel";
    /// tc ingress on the node's uplink (replies from the internet).
    pub const FROM_WIRE: &str = "egw_from_wire";
    /// tc egress on the node's underlay (only our own tunnel packets leave for a tunnel port).
    pub const TO_WIRE: &str = "egw_to_wire";
    /// tc egress on a pod's host-side veth (connections opened towards the pod).
    pub const TO_POD: &str = "egw_to_pod";

    pub const ALL: [&str; 5] = [FROM_POD, FROM_TUNNEL, FROM_WIRE, TO_WIRE, TO_POD];

    /// Whether `program` runs on tc egress (the others run on tc ingress).
    pub fn is_egress(program: &str) -> bool {
        program == TO_WIRE || program == TO_POD
    }
}

/// Asserts at compile time that a shared type has exactly the expected size (no hidden padding
/// difference between the bpf target and the host).
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// Implements `aya::Pod` for the agent side (`user` feature) of plain-data types.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: every type listed is #[repr(C)], made only of integers and explicit
            // padding fields, so any bit pattern is valid and there are no padding holes.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

#[cfg(feature = "user")]
impl_pod!(
    config::Config,
    endpoint::Endpoint,
    endpoint::NodeInfo,
    endpoint::RemoteEndpoint,
    policy::PolicyKey4,
    policy::PolicyValue,
    policy::PolicyKey6,
    policy::PolicyValue6,
    nat::NatKey4,
    nat::NatEntry4,
    nat::FragKey4,
    flow::FlowEntry4,
    counters::PolicyStats,
);
