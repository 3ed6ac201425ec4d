//! The IPv6 unique local prefix (RFC 4193) an auraed owns.
//!
//! The 40-bit global ID is not random but derived from a seed (auraed's own
//! SPIFFE ID): the same auraed always gets the same prefix, and a nested
//! auraed, whose ID differs, gets a different one, so its bridge does not
//! clash with its parent's.

use std::fmt;
use std::net::Ipv6Addr;

use sha2::{Digest, Sha256};

use super::Ipv6Prefix;

/// The length of a ULA prefix: `fd00::/8` and a 40-bit global ID.
pub const ULA_PREFIX_LEN: u8 = 48;

/// The length of the subnet the bridge and its instances share.
pub const INSTANCE_PREFIX_LEN: u8 = 64;

/// A ULA /48, `fdxx:xxxx:xxxx::/48` (x: hex digits of the global ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ula {
    /// The first 6 bytes: `0xfd` and the global ID.
    prefix: [u8; 6],
}

impl Ula {
    /// The prefix whose global ID is the first 40 bits of `sha256(seed)`.
    pub fn derive(seed: &[u8]) -> Ula {
        let digest = Sha256::digest(seed);
        let mut prefix = [0u8; 6];
        prefix[0] = 0xfd;
        prefix[1..].copy_from_slice(&digest[..5]);
        Ula { prefix }
    }

    /// The /48 itself.
    pub fn prefix(&self) -> Ipv6Prefix {
        Ipv6Prefix::new(self.addr(0, 0), ULA_PREFIX_LEN)
    }

    /// Subnet `n` of the /48, a /64.
    pub fn subnet(&self, n: u16) -> Ipv6Prefix {
        Ipv6Prefix::new(self.addr(n, 0), INSTANCE_PREFIX_LEN)
    }

    /// The bridge's address, `<prefix>:0::1`, in subnet 0 (a /64).
    pub fn bridge_addr(&self) -> Ipv6Addr {
        self.addr(0, 1)
    }

    /// Instance `index`'s address, `<prefix>:0::<index + 2>`, in subnet 0
    /// (a /64): distinct for every index and never the bridge's.
    pub fn instance_addr(&self, index: u32) -> Ipv6Addr {
        self.addr(0, u64::from(index) + 2)
    }

    fn addr(&self, subnet: u16, interface: u64) -> Ipv6Addr {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&self.prefix);
        b[6..8].copy_from_slice(&subnet.to_be_bytes());
        b[8..].copy_from_slice(&interface.to_be_bytes());
        Ipv6Addr::from(b)
    }
}

impl fmt::Display for Ula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.prefix().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_fd_prefixed() {
        let a = Ula::derive(b"spiffe://aurae.example/auraed/a");
        assert_eq!(a, Ula::derive(b"spiffe://aurae.example/auraed/a"));
        assert_eq!(a.bridge_addr().octets()[0], 0xfd);
        // The global ID is the first 40 bits of sha256(seed).
        let digest = Sha256::digest(b"spiffe://aurae.example/auraed/a");
        assert_eq!(&a.prefix().addr().octets()[1..6], &digest[..5]);
        assert_eq!(&a.prefix().addr().octets()[6..], &[0u8; 10]);
        assert_eq!(a.prefix().prefix_len(), 48);
    }

    #[test]
    fn different_seeds_give_different_prefixes() {
        let a = Ula::derive(b"spiffe://aurae.example/auraed/a");
        let b = Ula::derive(b"spiffe://aurae.example/auraed/a/child");
        assert_ne!(a.prefix(), b.prefix());
        assert!(!a.prefix().overlaps(&b.prefix()));
        assert!(!a.prefix().contains(b.bridge_addr()));
    }

    #[test]
    fn bridge_and_instances_are_inside_subnet_zero() {
        let u = Ula::derive(b"seed");
        let net = u.subnet(0);
        assert_eq!(net.prefix_len(), INSTANCE_PREFIX_LEN);
        assert!(u.prefix().contains(net.addr()));
        assert!(net.contains(u.bridge_addr()));
        assert_eq!(u.bridge_addr().segments()[7], 1);
        for i in [0, 1, 7, u32::MAX] {
            let a = u.instance_addr(i);
            assert!(net.contains(a), "{a} not in {net}");
            assert_ne!(a, u.bridge_addr());
        }
        assert_ne!(u.instance_addr(0), u.instance_addr(1));
        assert_eq!(u.instance_addr(0).segments()[7], 2);
        assert!(!net.contains(u.subnet(1).addr()));
    }

    #[test]
    fn display_is_the_48() {
        let u = Ula::derive(b"seed");
        let s = u.to_string();
        assert!(s.starts_with("fd") && s.ends_with("::/48"), "{s}");
    }
}
