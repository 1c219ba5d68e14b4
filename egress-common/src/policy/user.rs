//! The policy LPM key, encoded and decoded (agent side).

use core::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;

use super::{PolicyKey4, PolicyKey6, POLICY_ID_BITS};
use crate::addr::{ip4, ip4_from};

/// The LPM key of `{policy, prefix}`.
pub fn policy_key(policy_id: u32, dst: Ipv4Addr, prefix_len: u8) -> Key<PolicyKey4> {
    Key::new(
        POLICY_ID_BITS + u32::from(prefix_len),
        PolicyKey4 {
            policy_id_be: policy_id.to_be(),
            dst: ip4(dst),
        },
    )
}

/// `{policy, destination, destination prefix length}` of an LPM key; `None` for a key no
/// `policy_key` makes (shorter than the policy id, or a prefix longer than 32 bits).
pub fn decode_policy_key(key: &Key<PolicyKey4>) -> Option<(u32, Ipv4Addr, u8)> {
    let prefix = u8::try_from(key.prefix_len().checked_sub(POLICY_ID_BITS)?).ok()?;
    if prefix > 32 {
        return None;
    }
    let data = key.data();
    Some((u32::from_be(data.policy_id_be), ip4_from(data.dst), prefix))
}

/// The IPv6 LPM key of `{policy, prefix}`.
pub fn policy_key6(policy_id: u32, dst: Ipv6Addr, prefix_len: u8) -> Key<PolicyKey6> {
    Key::new(
        POLICY_ID_BITS + u32::from(prefix_len),
        PolicyKey6 {
            policy_id_be: policy_id.to_be(),
            dst: dst.octets(),
        },
    )
}

/// `decode_policy_key` for IPv6 keys (prefixes up to 128 bits).
pub fn decode_policy_key6(key: &Key<PolicyKey6>) -> Option<(u32, Ipv6Addr, u8)> {
    let prefix = u8::try_from(key.prefix_len().checked_sub(POLICY_ID_BITS)?).ok()?;
    if prefix > 128 {
        return None;
    }
    let data = key.data();
    Some((
        u32::from_be(data.policy_id_be),
        Ipv6Addr::from(data.dst),
        prefix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_key_decodes_to_what_made_it() {
        let dst = Ipv4Addr::new(203, 0, 113, 0);
        let k = policy_key(7, dst, 24);
        assert_eq!(k.prefix_len(), 56);
        assert_eq!(decode_policy_key(&k), Some((7, dst, 24)));
        let short = Key::new(16, k.data());
        assert_eq!(decode_policy_key(&short), None);
        let long = Key::new(POLICY_ID_BITS + 33, k.data());
        assert_eq!(decode_policy_key(&long), None);
    }

    #[test]
    fn an_ipv6_policy_key_decodes_to_what_made_it() {
        let dst = Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0);
        let k = policy_key6(7, dst, 48);
        assert_eq!(k.prefix_len(), 80);
        assert_eq!(decode_policy_key6(&k), Some((7, dst, 48)));
        let long = Key::new(POLICY_ID_BITS + 129, k.data());
        assert_eq!(decode_policy_key6(&long), None);
    }
}
