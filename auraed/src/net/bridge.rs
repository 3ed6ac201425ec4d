//! The bridge that instances' TAPs and veths are enslaved to.

use std::net::Ipv6Addr;

use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkBridge};

use super::addresses::{self, Ipv6Prefix};
use super::{check_link_name, del_index, errno, get_link, link_kind, set_up, Conn, NetError};

/// A bridge made (or found) by [`ensure_bridge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub index: u32,
    /// The bridge's own address and its prefix, which its instances share.
    pub addr: Ipv6Prefix,
    /// Whether this call created the bridge (rather than finding it).
    pub created: bool,
}

/// A bridge as a link: what its ports are enslaved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeLink {
    pub name: String,
    pub index: u32,
}

impl Bridge {
    pub fn link(&self) -> BridgeLink {
        BridgeLink {
            name: self.name.clone(),
            index: self.index,
        }
    }
}

/// The existing bridge `name` of the caller's network namespace (a host
/// bridge a pod joins). `field` names the request field, for errors.
pub async fn find_bridge(field: &'static str, name: &str) -> Result<BridgeLink, NetError> {
    check_link_name(field, name)?;
    let conn = Conn::open()?;
    match get_link(&conn.handle, name).await? {
        None => Err(NetError::NoSuchLink(name.to_string())),
        Some(link) if link_kind(&link) != Some(&InfoKind::Bridge) => Err(NetError::NotABridge {
            field,
            link: name.to_string(),
        }),
        Some(link) => Ok(BridgeLink {
            name: name.to_string(),
            index: link.header.index,
        }),
    }
}

/// Makes sure the bridge `name` exists in the caller's network namespace,
/// holds `addr/prefix_len` and is up. Idempotent: a second call finds the
/// bridge and its address and changes nothing.
///
/// The address is added with `IFA_F_NODAD`, so it is usable at once.
///
/// Before anything is created, the namespace's IPv6 addresses are checked:
/// if another link holds an address whose prefix overlaps
/// `addr/prefix_len`, or the bridge itself holds a different address in an
/// overlapping prefix, the result is [`NetError::PrefixClash`] naming that
/// link. A link `name` that is not a bridge is [`NetError::NotABridge`]. If
/// this call created the bridge and a later step fails, the bridge is
/// deleted again.
pub async fn ensure_bridge(name: &str, addr: Ipv6Addr, prefix_len: u8) -> Result<Bridge, NetError> {
    check_link_name("bridge name", name)?;
    let conn = Conn::open()?;
    let handle = &conn.handle;
    let want = Ipv6Prefix::new(addr, prefix_len);

    let existing = get_link(handle, name).await?;
    if let Some(link) = &existing {
        if link_kind(link) != Some(&InfoKind::Bridge) {
            return Err(NetError::NotABridge {
                field: "bridge name",
                link: name.to_string(),
            });
        }
    }
    let existing_index = existing.as_ref().map(|l| l.header.index);
    let mut has_addr = false;
    for held in addresses::list_ipv6(handle).await? {
        if !held.prefix.overlaps(&want) {
            continue;
        }
        if Some(held.index) == existing_index && held.prefix == want {
            has_addr = true;
            continue;
        }
        // A host-network instance's own address, on this bridge (one taken
        // back after a restart of auraed).
        if Some(held.index) == existing_index && held.prefix.prefix_len() == 128 {
            continue;
        }
        return Err(NetError::PrefixClash {
            field: "bridge address",
            prefix: want,
            held: held.prefix,
            link: index_name(handle, held.index).await,
        });
    }

    let (index, created) = match existing_index {
        Some(index) => (index, false),
        None => create(handle, name).await?,
    };
    let finish = async {
        if !has_addr {
            match addresses::add_nodad(handle, index, name, addr, prefix_len).await {
                // Another caller added it between our check and now.
                Err(NetError::AddAddress { source, .. })
                    if errno(&source) == Some(libc::EEXIST) => {}
                r => r?,
            }
        }
        set_up(handle, index, name).await
    };
    if let Err(e) = finish.await {
        if created {
            if let Err(undo) = del_index(handle, index, name).await {
                tracing::error!("removing bridge {name} after a failed set-up: {undo}");
            }
        }
        return Err(e);
    }
    Ok(Bridge {
        name: name.to_string(),
        index,
        addr: want,
        created,
    })
}

/// Creates the bridge; returns its index and whether this call created it
/// (a concurrent caller may have won the race).
async fn create(handle: &Handle, name: &str) -> Result<(u32, bool), NetError> {
    let created = match handle
        .link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
    {
        Ok(()) => true,
        Err(e) if errno(&e) == Some(libc::EEXIST) => false,
        Err(source) => {
            return Err(NetError::AddBridge {
                link: name.to_string(),
                source,
            })
        }
    };
    let link = get_link(handle, name)
        .await?
        .ok_or_else(|| NetError::NoSuchLink(name.to_string()))?;
    if !created && link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(NetError::NotABridge {
            field: "bridge name",
            link: name.to_string(),
        });
    }
    Ok((link.header.index, created))
}

/// The name of link `index`, for messages; `#<index>` if it has none.
async fn index_name(handle: &Handle, index: u32) -> String {
    use futures::TryStreamExt;
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(link)) => super::link_name(&link)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{index}")),
        _ => format!("#{index}"),
    }
}
