//! Drop reasons by name (agent side): metric labels and `inspect` output.

use super::DropReason;

impl DropReason {
    /// Stable snake_case name, used as metric label and in `inspect` output.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Spoofed => "spoofed",
            DropReason::UnknownNode => "unknown_node",
            DropReason::UnknownTunnelEndpoint => "unknown_tunnel_endpoint",
            DropReason::NatExhausted => "nat_exhausted",
            DropReason::NatInsertFailed => "nat_insert_failed",
            DropReason::TunnelKey => "tunnel_key",
            DropReason::Redirect => "redirect",
            DropReason::FragNeeded => "frag_needed",
            DropReason::Fragment => "fragment",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::Rewrite => "rewrite",
            DropReason::NoGatewayConfig => "no_gateway_config",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::TunnelFromPod => "tunnel_from_pod",
            DropReason::TunnelUntrusted => "tunnel_untrusted",
            DropReason::TunnelMacMismatch => "tunnel_mac_mismatch",
            DropReason::TunnelNotIpv4 => "tunnel_not_ipv4",
            DropReason::TunnelUnselectedPod => "tunnel_unselected_pod",
            DropReason::TunnelWrongVni => "tunnel_wrong_vni",
            DropReason::TunnelWrongGateway => "tunnel_wrong_gateway",
            DropReason::TunnelUnsolicited => "tunnel_unsolicited",
            DropReason::TunnelNotOurs => "tunnel_not_ours",
            DropReason::UplinkTooBig => "uplink_too_big",
            DropReason::NatTableFull => "nat_table_full",
            DropReason::Ipv6Refused => "ipv6_refused",
        }
    }

    /// The reason named `name` (see `name`).
    pub fn from_name(name: &str) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_name() {
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_name(r.name()), Some(r));
        }
        assert_eq!(DropReason::from_name("nope"), None);
    }
}
