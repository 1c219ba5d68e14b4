//! Protocol names (agent side), as `inspect` shows them.

use super::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// The name of a protocol the datapath translates, or `None`.
pub const fn name(proto: u8) -> Option<&'static str> {
    match proto {
        IPPROTO_ICMP => Some("icmp"),
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        _ => None,
    }
}
