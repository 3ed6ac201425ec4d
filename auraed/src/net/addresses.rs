//! IPv6 prefixes, and the addresses links hold.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::NetError;

/// An IPv6 address and a prefix length, as in `fd12:3456:789a::1/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix {
    addr: Ipv6Addr,
    len: u8,
}

impl Ipv6Prefix {
    /// `len` is clamped to 128.
    pub fn new(addr: Ipv6Addr, len: u8) -> Ipv6Prefix {
        Ipv6Prefix {
            addr,
            len: len.min(128),
        }
    }

    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The network: the address with its host bits cleared.
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & mask(self.len))
    }

    /// Whether `addr` is inside this prefix.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask(self.len) == u128::from(self.network())
    }

    /// Whether the two prefixes share an address: the shorter contains the
    /// other's network.
    pub fn overlaps(&self, other: &Ipv6Prefix) -> bool {
        let len = self.len.min(other.len);
        u128::from(self.addr) & mask(len) == u128::from(other.addr) & mask(len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l => u128::MAX << (128 - u32::from(l.min(128))),
    }
}

/// An IPv6 address held by a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub index: u32,
    pub prefix: Ipv6Prefix,
}

/// Every IPv6 address in the calling thread's network namespace.
pub(super) async fn list_ipv6(handle: &Handle) -> Result<Vec<Held>, NetError> {
    let mut msgs = handle.address().get().execute();
    let mut held = Vec::new();
    while let Some(msg) = msgs.try_next().await.map_err(NetError::GetAddresses)? {
        if msg.header.family != AddressFamily::Inet6 {
            continue;
        }
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(a)) => Some(*a),
            _ => None,
        });
        if let Some(addr) = addr {
            held.push(Held {
                index: msg.header.index,
                prefix: Ipv6Prefix::new(addr, msg.header.prefix_len),
            });
        }
    }
    Ok(held)
}

/// Adds `addr/prefix_len` to link `index` with `IFA_F_NODAD`: the address
/// is usable at once, without duplicate address detection (the parent
/// assigns every address of the prefix, so there is nothing to detect).
pub(super) async fn add_nodad(
    handle: &Handle,
    index: u32,
    link: &str,
    addr: Ipv6Addr,
    prefix_len: u8,
) -> Result<(), NetError> {
    let mut req = handle.address().add(index, IpAddr::V6(addr), prefix_len);
    let msg = req.message_mut();
    msg.header.flags |= AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    req.execute().await.map_err(|source| NetError::AddAddress {
        link: link.to_string(),
        addr,
        prefix_len,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, len: u8) -> Ipv6Prefix {
        Ipv6Prefix::new(s.parse().unwrap(), len)
    }

    #[test]
    fn overlap_and_containment() {
        let a = p("fd00:1:2::1", 64);
        assert_eq!(a.network(), "fd00:1:2::".parse::<Ipv6Addr>().unwrap());
        assert!(a.contains("fd00:1:2::ffff".parse().unwrap()));
        assert!(!a.contains("fd00:1:3::1".parse().unwrap()));
        assert!(a.overlaps(&p("fd00:1:2::99", 64)));
        assert!(a.overlaps(&p("fd00:1::", 32)));
        assert!(p("fd00:1::", 32).overlaps(&a));
        assert!(a.overlaps(&p("fd00:1:2::5", 128)));
        assert!(!a.overlaps(&p("fd00:1:3::1", 64)));
        assert!(!a.overlaps(&p("fe80::1", 64)));
        assert!(p("::", 0).overlaps(&a));
        assert_eq!(a.to_string(), "fd00:1:2::1/64");
    }
}
