//! The failover heartbeat: a small UDP request from a node's agent to each gateway-group
//! member's underlay address (InternalIP), port `Config::heartbeat_port`, answered by the
//! member's datapath (`egw_from_wire` on its underlay), not its agent, so that an agent restart
//! never looks like a dead gateway. The answer is the request bounced back (addresses, ports
//! and MACs swapped) with `kind` set to [`HB_REPLY`] and `healthy_for_ns` filled in; the
//! nonce comes back as it was sent, so an off-path sender that cannot see the request cannot
//! forge an answer. A member answers only while its agent's self-check holds
//! (`Config::healthy_since_ns` not 0), and only cluster peers (`EGW_NODES4`).

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{reply_of, request};

/// Default `failover.heartbeatPort`: next to the tunnel's 4788, so that one firewall rule
/// between the nodes (4787-4788/udp) lets both through; below Linux's ephemeral range
/// (32768-60999), so that no local socket (the asking agent's own included) gets it at
/// random; not BFD's 3784/3785/4784 (a routing daemon on the node may hold them), nor any
/// CNI's overlay or WireGuard port (see `config::VXLAN_PORT`).
pub const HEARTBEAT_PORT: u16 = 4787;

/// The first bytes of every heartbeat.
pub const HB_MAGIC: [u8; 4] = *b"EGWH";
/// The layout's version.
pub const HB_VERSION: u8 = 1;
/// `Heartbeat::kind`: a request (the only kind the datapath answers: an answer is never
/// bounced again, even when it arrives on the heartbeat port).
pub const HB_REQUEST: u8 = 1;
/// `Heartbeat::kind`: an answer.
pub const HB_REPLY: u8 = 2;

/// The UDP payload of a heartbeat, request and answer alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// [`HB_MAGIC`].
    pub magic: [u8; 4],
    /// [`HB_VERSION`].
    pub version: u8,
    /// `HB_REQUEST` or `HB_REPLY`.
    pub kind: u8,
    pub _pad: [u8; 2],
    /// Chosen at random by the asker for each request; echoed unchanged.
    pub nonce: [u8; 8],
    /// In an answer: how long the member has been healthy, nanoseconds, big-endian (0 in a
    /// request). Every asker hears the same number: what lets them agree on the member
    /// healthy the longest.
    pub healthy_for_ns: [u8; 8],
}
crate::assert_size!(Heartbeat, 24);

/// Offsets in the payload (the datapath writes these two).
pub const HB_KIND_OFF: usize = 5;
pub const HB_HEALTHY_FOR_OFF: usize = 16;
