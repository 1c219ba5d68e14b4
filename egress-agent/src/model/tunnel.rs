//! Can the tunnel be trusted on this node's underlay? The gateway accepts a tunnel packet
//! only when it arrives on the underlay interface from a peer node's address and, for a peer
//! on the underlay's own segment, with that peer's MAC. That holds against spoofing when the
//! underlay is a private network (not the interface of the default route) or when every peer
//! is on-link; a peer reached through a router over the internet-facing interface can be
//! impersonated by anyone on the internet.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Reason;

/// What this node knows of its underlay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnderlayFacts {
    /// The underlay interface.
    pub interface: String,
    /// It is also the interface of the IPv4 default route (faces the internet).
    pub default_route: bool,
    /// Its IPv4 prefixes: peers inside one are on-link.
    pub prefixes: Vec<Ipv4Net>,
}

impl UnderlayFacts {
    /// Whether `peer` is on the underlay's own segment.
    pub fn on_link(&self, peer: Ipv4Addr) -> bool {
        self.prefixes.iter().any(|n| n.contains(&peer))
    }
}

/// The reason (`TunnelProtected` condition) and whether the tunnel is protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protection {
    pub protected: bool,
    pub reason: Reason,
    pub message: String,
}

/// Judges the underlay for tunnel packets from `peers`.
pub fn protection(u: &UnderlayFacts, peers: &[Ipv4Addr]) -> Protection {
    if !u.default_route {
        return Protection {
            protected: true,
            reason: Reason::PrivateUnderlay,
            message: format!(
                "tunnel packets are accepted only on {}, which is not the internet-facing interface",
                u.interface
            ),
        };
    }
    let routed: Vec<String> = peers
        .iter()
        .filter(|p| !u.on_link(**p))
        .map(Ipv4Addr::to_string)
        .collect();
    if routed.is_empty() {
        return Protection {
            protected: true,
            reason: Reason::OnLinkPeers,
            message: format!(
                "every peer is on {}'s segment: tunnel packets must carry the peer's MAC (hosts on the same segment are trusted)",
                u.interface
            ),
        };
    }
    Protection {
        protected: false,
        reason: Reason::RoutedPublicUnderlay,
        message: format!(
            "the tunnel runs over {}, the internet-facing interface, and {} peer(s) are reached through a router ({}): their address can be spoofed from the internet. Run the tunnel on a private network or an encrypted node mesh (tunnel.interface)",
            u.interface,
            routed.len(),
            routed.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(default_route: bool) -> UnderlayFacts {
        UnderlayFacts {
            interface: "eth0".into(),
            default_route,
            prefixes: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn a_private_underlay_is_protected_whatever_the_peers() {
        let p = protection(&facts(false), &[Ipv4Addr::new(198, 51, 100, 1)]);
        assert!(p.protected);
        assert_eq!(p.reason, Reason::PrivateUnderlay);
    }

    #[test]
    fn on_link_peers_on_the_public_interface_are_protected_by_their_mac() {
        let p = protection(&facts(true), &[Ipv4Addr::new(192, 0, 2, 11)]);
        assert!(p.protected);
        assert_eq!(p.reason, Reason::OnLinkPeers);
    }

    #[test]
    fn a_routed_peer_on_the_public_interface_is_not_protected() {
        let p = protection(
            &facts(true),
            &[Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(198, 51, 100, 7)],
        );
        assert!(!p.protected);
        assert_eq!(p.reason, Reason::RoutedPublicUnderlay);
        assert!(p.message.contains("198.51.100.7"), "{}", p.message);
        assert!(!p.message.contains("192.0.2.11"), "{}", p.message);
    }
}
