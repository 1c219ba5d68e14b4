//! NAT/conntrack entries of the gateway (one LRU hash holds both directions).
//!
//! Forward entry, key `{pod ip, remote ip, pod port, remote port, proto}` ->
//! `{egress ip, nat port, source node, ...}`.
//! Reverse entry, key as the reply arrives `{remote ip, egress ip, remote port, nat port,
//! proto}` -> `{pod ip, pod port, source node, ...}`.
//! For ICMP echo the "port" of the pod side is the echo identifier and the remote port is 0.

/// `NatEntry4::flags`: this is the reverse (reply-direction) entry.
pub const NAT_F_REVERSE: u8 = 1 << 0;
/// `NatEntry4::flags` of a forward TCP entry: `ack` holds the pod's latest acknowledgment
/// number; without it, what the peer must acknowledge to answer the pod's SYN.
pub const NAT_F_POD_ACKED: u8 = 1 << 1;

/// Connection state, for state-aware expiry by the agent.
pub const CT_NEW: u8 = 0;
/// A TCP reply was seen (or any UDP/ICMP reply).
pub const CT_ESTABLISHED: u8 = 1;
/// A FIN was seen in either direction.
pub const CT_CLOSING: u8 = 2;
/// A RST was seen.
pub const CT_RESET: u8 = 3;

/// `NatKey4::kind` of a claim key: a short-lived entry of the gateway program that
/// serialises handing a closed flow's port to a new flow. Not a flow; readers skip it.
pub const NAT_KEY_CLAIM: u8 = 1;

/// A NAT lookup key: one direction of a flow as it appears on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey4 {
    pub saddr: u32,
    pub daddr: u32,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    /// 0 for a flow, `NAT_KEY_CLAIM` for a claim key. A byte of its own (not the first of
    /// a 3-byte pad), so that zeroing the rest is one aligned 2-byte store: the eBPF target
    /// turns a 3-byte zeroing into an out-of-line `memset` call, and every call frame counts
    /// against the verifier's 512-byte stack limit (rounded up to 32 bytes each on 6.1).
    pub kind: u8,
    pub _pad: [u8; 2],
}
crate::assert_size!(NatKey4, 16);

/// A NAT entry: what to rewrite the key's local side to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry4 {
    /// Forward: the egress IP. Reverse: the pod IP. Network byte order.
    pub addr: u32,
    /// Forward: the NAT port. Reverse: the pod port. Network byte order.
    pub port: u16,
    /// `NAT_F_*`.
    pub flags: u8,
    /// `CT_*`.
    pub state: u8,
    /// Underlay address of the pod's node (network byte order); equals the gateway's own
    /// address for pods on the gateway node.
    pub node_ip4: u32,
    /// Policy that created the entry (counters, tunnel VNI).
    pub policy_id: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet in either direction; only the
    /// forward entry's value is authoritative for the agent's expiry.
    pub last_seen_ns: u64,
    /// Forward TCP entries: the sequence number a RST from the peer must carry to end the
    /// flow (RFC 5961: the next one the pod expects, its latest acknowledgment number, with
    /// `NAT_F_POD_ACKED`), or, before the pod acknowledged anything, the acknowledgment
    /// number that answers its SYN (its SYN's sequence number + 1). Host byte order.
    pub ack: u32,
    /// Forward TCP entries: the pod's latest receive window as sent (unscaled): how far past
    /// `ack` a FIN from the peer may be.
    pub window: u16,
    pub _pad: u16,
}
crate::assert_size!(NatEntry4, 32);

/// A datagram's fragments, as they arrive at the gateway: `{source, destination, IP id,
/// proto}` (a pod's datagram going out, or a reply coming in). Only the first fragment
/// carries the ports, so the rest are matched by this key to the flow that the first one was
/// translated for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey4 {
    pub saddr: u32,
    pub daddr: u32,
    /// Network byte order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}
crate::assert_size!(FragKey4, 12);

impl NatKey4 {
    /// The key of the other direction of the same flow (TCP, UDP).
    #[inline(always)]
    pub const fn reversed(&self) -> NatKey4 {
        self.forward_of(self.daddr, self.dport)
    }

    /// For a reverse key, the forward key of the flow whose reverse entry maps it to
    /// `pod_addr`:`pod_port`.
    #[inline(always)]
    pub const fn forward_of(&self, pod_addr: u32, pod_port: u16) -> NatKey4 {
        NatKey4 {
            saddr: pod_addr,
            daddr: self.saddr,
            sport: pod_port,
            dport: self.sport,
            proto: self.proto,
            kind: 0,
            _pad: [0; 2],
        }
    }

    /// The claim key of this (reverse) key: see `NAT_KEY_CLAIM`.
    #[inline(always)]
    pub const fn claim(&self) -> NatKey4 {
        let mut k = *self;
        k.kind = NAT_KEY_CLAIM;
        k
    }

    /// Whether this is a claim key (see `NAT_KEY_CLAIM`), not a flow.
    #[inline(always)]
    pub const fn is_claim(&self) -> bool {
        self.kind == NAT_KEY_CLAIM
    }

    /// The key of the other direction with the given local address and port.
    #[inline(always)]
    pub const fn reply_to(&self, local_addr: u32, local_port: u16) -> NatKey4 {
        NatKey4 {
            saddr: self.daddr,
            daddr: local_addr,
            sport: self.dport,
            dport: local_port,
            proto: self.proto,
            kind: 0,
            _pad: [0; 2],
        }
    }
}
