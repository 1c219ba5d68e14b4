//! Egress policies: which destinations of which selected pods leave through which gateway.

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{decode_policy_key, decode_policy_key6, policy_key, policy_key6};

/// `PolicyValue::action`: send through the gateway and SNAT to the egress IP.
pub const ACTION_VIA_GATEWAY: u16 = 1;
/// `PolicyValue::action`: leave by the normal path (excluded CIDRs, cluster CIDRs).
pub const ACTION_EXCLUDED: u16 = 2;

/// `PolicyValue6::action`: refuse: the policy has no IPv6 egress, so a selected pod's IPv6
/// packet to the destination is answered at once with an ICMPv6 destination unreachable
/// (administratively prohibited) instead of leaving from its node's own IPv6 address.
pub const ACTION_REFUSE: u16 = 3;

/// Largest policy id (ids index the per-policy counters; 0 means "no policy").
pub const MAX_POLICIES: u32 = 1024;

/// Number of prefix bits taken by `policy_id` in the LPM key: the policy id always matches
/// exactly, the destination by longest prefix.
pub const POLICY_ID_BITS: u32 = 32;

/// LPM trie data: `{policy id, destination}`. The trie's prefix length is
/// `POLICY_ID_BITS + destination prefix length`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyKey4 {
    /// Policy id, big-endian, so that the trie compares it byte by byte like an address.
    pub policy_id_be: u32,
    /// Destination IPv4 address (network byte order).
    pub dst: u32,
}
crate::assert_size!(PolicyKey4, 8);

/// What to do with a matching destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// `ACTION_*`. (A u32 before `egress_mtu` was cut from it: on little-endian hosts an
    /// older agent's value reads the same, with an MTU of 0.)
    pub action: u16,
    /// On the gateway, with `egress_ifindex`: that interface's MTU (0: unknown, not checked).
    pub egress_mtu: u16,
    /// Underlay address of the gateway node (network byte order).
    pub gateway_ip4: u32,
    /// Source address after SNAT (network byte order).
    pub egress_ip4: u32,
    /// On the gateway: the interface translated packets leave through, when the egress IP is
    /// on another interface than the uplink (a second NIC); 0: the uplink. The reconciler
    /// sets it, from the interfaces' addresses.
    pub egress_ifindex: u32,
}
crate::assert_size!(PolicyValue, 16);

/// The IPv6 twin of `PolicyKey4`: `{policy id, destination}`, prefix length
/// `POLICY_ID_BITS + destination prefix length`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyKey6 {
    pub policy_id_be: u32,
    /// Destination IPv6 address (network byte order).
    pub dst: [u8; 16],
}
crate::assert_size!(PolicyKey6, 20);

/// What to do with a matching IPv6 destination: `ACTION_REFUSE` or `ACTION_EXCLUDED` today.
/// Shaped for the translation to come (an IPv6 egress address, reached through the tunnel
/// to an IPv4 or IPv6 gateway address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue6 {
    /// `ACTION_*`.
    pub action: u16,
    pub egress_mtu: u16,
    /// Underlay address of the gateway node (network byte order), IPv4 underlay.
    pub gateway_ip4: u32,
    pub egress_ifindex: u32,
    pub _pad: u32,
    /// Source address after translation (network byte order).
    pub egress_ip6: [u8; 16],
}
crate::assert_size!(PolicyValue6, 32);
