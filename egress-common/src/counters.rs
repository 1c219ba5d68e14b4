//! Per-policy traffic counters and per-reason drop counters (both per-CPU arrays).

#[cfg(feature = "user")]
mod user;

/// Packets and bytes of one policy on this node, per CPU; index: policy id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Packets sent towards the gateway or SNATed here.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Replies reverse-translated here or delivered to a local pod from the tunnel.
    pub rx_packets: u64,
    pub rx_bytes: u64,
}
crate::assert_size!(PolicyStats, 32);

/// Why a program dropped a packet. Index into the drop counter array.
///
/// These are never returned to tc: an entry point maps every `Err(DropReason)` to
/// `TC_ACT_SHOT` after counting it. The values start at 128 so they cannot be mistaken for a
/// TC verdict in a log or a trace.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated or inconsistent headers.
    Malformed = 128,
    /// A pod's veth carried a source address that is not that pod's (another pod's, or any
    /// address at all: the egress IP from a raw socket, say).
    Spoofed = 129,
    /// A tunnelled packet from a host that is not a cluster node.
    UnknownNode = 130,
    /// A tunnelled packet whose inner source is not a pod this gateway serves, or whose node
    /// or VNI does not match that pod.
    UnknownTunnelEndpoint = 131,
    /// No free SNAT port after all retries.
    NatExhausted = 132,
    /// The NAT map refused an insert (not a collision).
    NatInsertFailed = 133,
    /// Could not set the tunnel metadata.
    TunnelKey = 134,
    /// The redirect helper failed.
    Redirect = 135,
    /// An oversize packet with DF set: answered with ICMP fragmentation-needed.
    FragNeeded = 136,
    /// A later IP fragment of a datagram to translate whose first fragment (the one with the
    /// ports) has not passed the gateway.
    Fragment = 137,
    /// A protocol that cannot be translated (not TCP, UDP or ICMP echo/error).
    UnsupportedProtocol = 138,
    /// A checksum or header rewrite helper failed.
    Rewrite = 139,
    /// A policy names a gateway but its egress configuration is missing.
    NoGatewayConfig = 140,
    /// TTL expired on a hop the programs route (the source node answers with ICMP
    /// time-exceeded; the gateway only counts).
    TtlExceeded = 141,
    /// A pod sent UDP to the tunnel port of a cluster node's address (or an egress IP).
    TunnelFromPod = 142,
    /// A packet came out of the tunnel device without having arrived on the underlay from a
    /// cluster node (sent from a pod, from the internet to another interface, ...).
    TunnelUntrusted = 143,
    /// A tunnel packet from an on-link peer's address whose Ethernet source is not that
    /// peer's MAC (spoofed from beyond a router, or the MAC is not known yet).
    TunnelMacMismatch = 144,
    /// A frame through the tunnel that is not IPv4.
    TunnelNotIpv4 = 145,
    /// A tunnel packet for a local pod that no policy selects.
    TunnelUnselectedPod = 146,
    /// A tunnel packet for a local pod with another policy's VNI.
    TunnelWrongVni = 147,
    /// A tunnel packet for a local pod from another node than its flow's gateway.
    TunnelWrongGateway = 148,
    /// A tunnel packet for a local pod that answers no flow the pod opened through the
    /// gateway (nor is an ICMP error about one).
    TunnelUnsolicited = 149,
    /// A datagram to a cluster node's tunnel port forwarded out of the underlay that is not
    /// one of ours (a pod's, through a Service or NodePort DNAT and the node's masquerade):
    /// its peer would take it for this node's.
    TunnelNotOurs = 150,
    /// A packet to translate that is larger than the gateway's uplink MTU and may be
    /// fragmented (no DF, or a later fragment): a tc program cannot fragment it.
    UplinkTooBig = 151,
    /// The NAT table is full: a new flow could not get its entries (existing flows are never
    /// evicted by the datapath; the agent makes room, see its NAT collector).
    NatTableFull = 152,
    /// A selected pod's IPv6 packet to a destination of its policy, which has no IPv6 egress:
    /// answered with ICMPv6 destination unreachable (administratively prohibited) so that
    /// the pod falls back to IPv4 at once, never leaving from its node's own IPv6 address.
    Ipv6Refused = 153,
}

/// `EGW_NAT_STATS` index: candidate SNAT ports that were taken (by a flow or a host socket)
/// and made the allocator try another.
pub const NAT_STAT_PORT_RETRIES: u32 = 0;
/// `EGW_NAT_STATS` index: SNAT mappings created.
pub const NAT_STAT_ALLOCATIONS: u32 = 1;
/// Number of NAT statistics (size of the NAT statistics array).
pub const NAT_STAT_COUNT: u32 = 2;

/// First drop reason value.
pub const DROP_REASON_BASE: u32 = 128;
/// Number of drop reasons.
pub const DROP_REASON_COUNT: u32 = 26;
/// Size of the drop counter array: room for reasons to come, so that a pinned counter map
/// keeps its shape when an upgrade adds one.
pub const DROP_SLOTS: u32 = 64;
const _: () = assert!(DROP_REASON_COUNT <= DROP_SLOTS);

impl DropReason {
    pub const ALL: [DropReason; DROP_REASON_COUNT as usize] = [
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::UnknownNode,
        DropReason::UnknownTunnelEndpoint,
        DropReason::NatExhausted,
        DropReason::NatInsertFailed,
        DropReason::TunnelKey,
        DropReason::Redirect,
        DropReason::FragNeeded,
        DropReason::Fragment,
        DropReason::UnsupportedProtocol,
        DropReason::Rewrite,
        DropReason::NoGatewayConfig,
        DropReason::TtlExceeded,
        DropReason::TunnelFromPod,
        DropReason::TunnelUntrusted,
        DropReason::TunnelMacMismatch,
        DropReason::TunnelNotIpv4,
        DropReason::TunnelUnselectedPod,
        DropReason::TunnelWrongVni,
        DropReason::TunnelWrongGateway,
        DropReason::TunnelUnsolicited,
        DropReason::TunnelNotOurs,
        DropReason::UplinkTooBig,
        DropReason::NatTableFull,
        DropReason::Ipv6Refused,
    ];

    /// Index into the drop counter array.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32 - DROP_REASON_BASE
    }
}

const _: () = {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!(DropReason::ALL[i].index() == i as u32);
        i += 1;
    }
};
