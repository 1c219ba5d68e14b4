//! Status conditions: their types and reasons as enums, written into the custom resource's
//! string fields by `cond`.

use super::PolicyCondition;

/// A condition's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionType {
    /// The policy is programmed (or why not).
    Ready,
    /// Some of the policy's pods are claimed by an older policy.
    PodConflict,
    /// Set (False) when the policy lists IPv6 destinations: the gateway does not translate
    /// IPv6 yet; says whether they are refused (the default) or pass from the nodes' own
    /// addresses.
    IPv6Egress,
    /// Whether the egress IP is on the gateway node.
    EgressIPOnGateway,
    /// Whether tunnel packets can be trusted on the gateway's underlay.
    TunnelProtected,
    /// Set (False) when the egress IP is one of the gateway node's own addresses.
    EgressIPDedicated,
    /// Set (False) when a pod's address is in no known pod CIDR (the agent's `clusterCidrs`,
    /// the nodes' `spec.podCIDRs`): traffic to it would go through the gateway.
    ClusterCIDRs,
    /// When the egress IP is the gateway node's own address: whether the host's ephemeral
    /// ports (`ip_local_port_range` minus `ip_local_reserved_ports`) stay out of the NAT
    /// range. Written by the gateway's agent.
    HostPortsApart,
}

impl ConditionType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::PodConflict => "PodConflict",
            ConditionType::IPv6Egress => "IPv6Egress",
            ConditionType::EgressIPOnGateway => "EgressIPOnGateway",
            ConditionType::TunnelProtected => "TunnelProtected",
            ConditionType::EgressIPDedicated => "EgressIPDedicated",
            ConditionType::ClusterCIDRs => "ClusterCIDRs",
            ConditionType::HostPortsApart => "HostPortsApart",
        }
    }
}

/// Why a condition has its status (the `reason` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// `Ready=True`.
    Active,
    InvalidCIDR,
    InvalidSelector,
    InvalidGateway,
    NoSelectors,
    NoDestinations,
    GatewayNotFound,
    InterfaceNotFound,
    TooManyPolicies,
    /// `Ready=False`: this node's datapath could not be loaded or attached (a kernel without
    /// a feature the programs need, a verifier rejection, a tc conflict).
    DatapathUnavailable,
    /// `IPv6Egress=False` (`ipv6: refuse`): selected pods' IPv6 to the policy's IPv6
    /// destinations is answered with ICMPv6 administratively prohibited.
    IPv6Refused,
    /// `IPv6Egress=False` (`ipv6: pass`): it leaves from each node's own IPv6 address.
    IPv6Passed,
    /// `EgressIPOnGateway=True`.
    Assigned,
    /// `EgressIPOnGateway=Unknown`: only the gateway's agent can tell.
    CheckedOnGateway,
    /// `EgressIPOnGateway=False`.
    EgressIPNotOnGateway,
    /// `PodConflict=True`.
    SelectedByOlderPolicy,
    /// `TunnelProtected=True`: the underlay is not the internet-facing interface.
    PrivateUnderlay,
    /// `TunnelProtected=True`: every peer is on-link (checked by MAC).
    OnLinkPeers,
    /// `TunnelProtected=False`: peers reached through a router on the internet-facing
    /// interface can be spoofed.
    RoutedPublicUnderlay,
    /// `EgressIPDedicated=False`: the egress IP is the gateway node's own address.
    NodeAddress,
    /// `ClusterCIDRs=False`: pods outside every known pod CIDR.
    PodOutsideClusterCIDRs,
    /// `Ready=False`: the gateway's kernel routes from the egress IP to a destination out of
    /// another interface than the one holding it, or not at all (seen by the gateway's agent).
    EgressIPUnrouted,
    /// `HostPortsApart=True`: the host's ephemeral ports are outside the NAT range, or the
    /// NAT ports among them are reserved.
    OutsideEphemeralPorts,
    /// `HostPortsApart=False`: the host can give its own connections NAT ports.
    EphemeralPortsOverlap,
    /// `Ready=False`: every member of the gateway group is known dead; selected pods'
    /// traffic is held (lost), never sent from their own nodes (see `group`).
    NoHealthyGateway,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Active => "Active",
            Reason::InvalidCIDR => "InvalidCIDR",
            Reason::InvalidSelector => "InvalidSelector",
            Reason::InvalidGateway => "InvalidGateway",
            Reason::NoSelectors => "NoSelectors",
            Reason::NoDestinations => "NoDestinations",
            Reason::GatewayNotFound => "GatewayNotFound",
            Reason::InterfaceNotFound => "InterfaceNotFound",
            Reason::TooManyPolicies => "TooManyPolicies",
            Reason::DatapathUnavailable => "DatapathUnavailable",
            Reason::IPv6Refused => "IPv6Refused",
            Reason::IPv6Passed => "IPv6Passed",
            Reason::Assigned => "Assigned",
            Reason::CheckedOnGateway => "CheckedOnGateway",
            Reason::EgressIPNotOnGateway => "EgressIPNotOnGateway",
            Reason::SelectedByOlderPolicy => "SelectedByOlderPolicy",
            Reason::PrivateUnderlay => "PrivateUnderlay",
            Reason::OnLinkPeers => "OnLinkPeers",
            Reason::RoutedPublicUnderlay => "RoutedPublicUnderlay",
            Reason::NodeAddress => "NodeAddress",
            Reason::PodOutsideClusterCIDRs => "PodOutsideClusterCIDRs",
            Reason::EgressIPUnrouted => "EgressIPUnrouted",
            Reason::OutsideEphemeralPorts => "OutsideEphemeralPorts",
            Reason::EphemeralPortsOverlap => "EphemeralPortsOverlap",
            Reason::NoHealthyGateway => "NoHealthyGateway",
        }
    }
}

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Status {
        if b {
            Status::True
        } else {
            Status::False
        }
    }
}

/// A condition (no transition time: the status writer sets it).
pub fn cond(
    type_: ConditionType,
    status: impl Into<Status>,
    reason: Reason,
    message: impl Into<String>,
) -> PolicyCondition {
    PolicyCondition {
        type_: type_.as_str().into(),
        status: status.into().as_str().into(),
        reason: reason.as_str().into(),
        message: message.into(),
        last_transition_time: None,
    }
}

impl PolicyCondition {
    /// True when this condition is of type `t`.
    pub fn is(&self, t: ConditionType) -> bool {
        self.type_ == t.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_carries_the_names_of_its_enums() {
        let c = cond(ConditionType::Ready, false, Reason::GatewayNotFound, "gone");
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "False", "GatewayNotFound")
        );
        assert!(c.is(ConditionType::Ready));
        assert_eq!(
            cond(
                ConditionType::EgressIPOnGateway,
                Status::Unknown,
                Reason::CheckedOnGateway,
                ""
            )
            .status,
            "Unknown"
        );
    }
}
