//! Addresses as the maps store them: IPv4 in network byte order in a `u32` (the bytes as they
//! sit in the packet, read in the host's order). Agent side only.

use core::net::Ipv4Addr;

/// Converts an address to the map representation (network byte order in a `u32`).
pub fn ip4(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Converts the map representation back to an address.
pub fn ip4_from(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_keeps_its_wire_bytes() {
        let a = Ipv4Addr::new(10, 244, 1, 2);
        assert_eq!(ip4(a).to_ne_bytes(), [10, 244, 1, 2]);
        assert_eq!(ip4_from(ip4(a)), a);
    }
}
