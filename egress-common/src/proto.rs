//! IP protocol numbers (IANA), as the IPv4 `protocol` field carries them: one definition for
//! the programs and the agent.

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::name;
