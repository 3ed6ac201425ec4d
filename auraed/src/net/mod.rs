//! The instance network, over rtnetlink.
//!
//! auraed gives the instances it spawns a network of their own: a Linux
//! bridge (say `aurae0`) holding the first address of an IPv6 ULA prefix
//! derived from auraed's identity ([`Ula`]), so that a nested auraed, whose
//! identity differs, derives a different prefix and its bridge never clashes
//! with its parent's. Each microVM gets a persistent TAP on the bridge
//! ([`create_tap`]); each cell-backed instance gets a veth pair whose host end
//! is on the bridge and whose other end is `eth0` in the cell's network
//! namespace ([`create_veth`]). The parent assigns the addresses
//! ([`Ula::instance_addr`]).
//!
//! Set-up is data, rollback is a value: [`create_veth`] and [`create_tap`]
//! undo their own partial work when they fail, and on success hand back a
//! [`Veth`] or [`Tap`] whose `remove` deletes what was made. A caller that
//! fails later on its own path calls `remove` on what it holds. Nothing is
//! removed on drop: deleting a link is a netlink round trip, and an async
//! drop does not exist.
//!
//! Every function acts on the network namespace of the calling thread,
//! except the part of [`create_veth`] that runs in the peer's namespace: that
//! runs on a dedicated thread (see `netns`), never on a tokio worker.
//!
//! Errors are [`NetError`]: each netlink variant names the operation and the
//! link, and keeps the [`rtnetlink::Error`] as its source.

mod addresses;
mod bridge;
mod host_address;
mod metadata_link;
mod netns;
mod pod_tap;
mod tap;
mod tc;
#[cfg(test)]
mod tests;
mod ula;
mod veth;
mod vm_link;

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::BorrowedFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

pub use addresses::Ipv6Prefix;
pub use bridge::{ensure_bridge, find_bridge, Bridge, BridgeLink};
pub use host_address::{add_host_address, free_tcp_port, remove_host_addresses, HostAddress};
pub use metadata_link::metadata_listener;
pub use pod_tap::{join_pod_tap, DeviceLink};
pub use tap::{create_tap, remove_stale_taps, Tap};
pub use ula::{Ula, INSTANCE_PREFIX_LEN, ULA_PREFIX_LEN};
pub use veth::{create_veth, Veth};
pub use vm_link::{make_vm_link, UPLINK};

/// The longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub const MAX_LINK_NAME: usize = libc::IFNAMSIZ - 1;

/// A failed network operation. Netlink variants name the operation and the
/// link and keep the netlink error as their source.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink socket")]
    Connect(#[source] io::Error),
    #[error("{field}: {name:?} is not a valid interface name ({reason})")]
    InvalidName {
        field: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    #[error("{field}: link {link} exists but is not a bridge")]
    NotABridge { field: &'static str, link: String },
    #[error("{field}: link {link} already exists")]
    LinkExists { field: &'static str, link: String },
    #[error(
        "{field}: prefix {prefix} overlaps {held} already held by link {link}; \
         nothing was created"
    )]
    PrefixClash {
        field: &'static str,
        prefix: Ipv6Prefix,
        held: Ipv6Prefix,
        link: String,
    },
    #[error("adding {addr}/32 to {link} (RTM_NEWADDR)")]
    AddAddressV4 {
        link: String,
        addr: std::net::Ipv4Addr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("connecting to port {port} on loopback in another network namespace")]
    ConnectIn {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr} in another network namespace")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("looking up link {link} (RTM_GETLINK)")]
    GetLink {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("creating bridge {link} (RTM_NEWLINK)")]
    AddBridge {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("creating veth pair {link} / {peer} (RTM_NEWLINK)")]
    AddVeth {
        link: String,
        peer: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("setting link {link} up (RTM_SETLINK)")]
    LinkUp {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("enslaving link {link} to bridge {bridge} (RTM_SETLINK)")]
    SetController {
        link: String,
        bridge: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("moving link {link} into the peer's network namespace as {new_name} (RTM_SETLINK)")]
    SetNetns {
        link: String,
        new_name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("listing IPv6 addresses (RTM_GETADDR)")]
    GetAddresses(#[source] rtnetlink::Error),
    #[error("adding address {addr}/{prefix_len} to link {link} (RTM_NEWADDR)")]
    AddAddress {
        link: String,
        addr: Ipv6Addr,
        prefix_len: u8,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing {addr} from link {link} (RTM_DELADDR)")]
    DelAddress {
        link: String,
        addr: Ipv6Addr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("deleting link {link} (RTM_DELLINK)")]
    DelLink {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what} on {link} (rtnetlink)")]
    Tc {
        what: &'static str,
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("creating persistent TAP {link} (/dev/net/tun)")]
    CreateTap {
        link: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} for the peer's network namespace")]
    Netns {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the network namespace thread panicked")]
    NetnsThreadPanicked,
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Checks an interface name; `field` names where it came from.
fn check_link_name(field: &'static str, name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_LINK_NAME {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidName {
            field,
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A host-side link name for instance `index`: `prefix` then the decimal
/// index, as in `av12` (a veth) or `at12` (a TAP). Fails if the result is
/// not a valid interface name; a prefix of at most 5 bytes always fits.
pub fn host_link_name(prefix: &str, index: u32) -> Result<String, NetError> {
    let name = format!("{prefix}{index}");
    check_link_name("host link name", &name)?;
    Ok(name)
}

/// An rtnetlink connection whose task ends when this is dropped.
struct Conn {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Opens a connection in the calling thread's network namespace. Needs
    /// a tokio runtime with IO enabled.
    fn open() -> Result<Conn, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        Ok(Conn {
            handle,
            task: tokio::spawn(conn),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The link `name`, or `None` if there is none.
async fn get_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(NetError::GetLink {
            link: name.to_string(),
            source,
        }),
    }
}

/// The index of link `name`.
async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    get_link(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
}

/// The kind of a link (`bridge`, `veth`, `tun`, ...), if it has one.
fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// The name of a link message.
fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// Moves the link `index` (named `link` here) into the network namespace
/// `netns` (an nsfs fd), renamed `new_name` there, in one request.
async fn move_to_netns(
    handle: &Handle,
    index: u32,
    link: &str,
    new_name: &str,
    netns: std::os::fd::BorrowedFd<'_>,
) -> Result<(), NetError> {
    use std::os::fd::AsRawFd;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(new_name)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|source| NetError::SetNetns {
            link: link.to_string(),
            new_name: new_name.to_string(),
            source,
        })
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|source| NetError::LinkUp {
            link: name.to_string(),
            source,
        })
}

/// Enslaves link `index` to `bridge` and sets it up.
async fn enslave_up(
    handle: &Handle,
    index: u32,
    name: &str,
    bridge: &BridgeLink,
) -> Result<(), NetError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge.index)
                .build(),
        )
        .execute()
        .await
        .map_err(|source| NetError::SetController {
            link: name.to_string(),
            bridge: bridge.name.clone(),
            source,
        })?;
    set_up(handle, index, name).await
}

/// Deletes link `index`; `Ok(false)` if it was already gone.
async fn del_index(handle: &Handle, index: u32, name: &str) -> Result<bool, NetError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(source) => Err(NetError::DelLink {
            link: name.to_string(),
            source,
        }),
    }
}

/// Sets the link `name` up in the caller's network namespace.
pub async fn link_up(name: &str) -> Result<(), NetError> {
    let conn = Conn::open()?;
    let index = link_index(&conn.handle, name).await?;
    set_up(&conn.handle, index, name).await
}

/// A TCP listener on `addr:port` made inside the network namespace `netns`
/// (a pidfd of a process in it): `addr` is added to that namespace's
/// loopback first (as /32; one already there is fine) and loopback is set
/// up. The listener stays in that namespace whoever accepts on it.
pub async fn listen_in(
    netns: BorrowedFd<'_>,
    addr: std::net::Ipv4Addr,
    port: u16,
) -> Result<std::net::TcpListener, NetError> {
    let ns = netns::ns_file(netns).await?;
    netns::run_in(ns, move |handle| loopback_listener(handle, addr, port)).await
}

/// A TCP connection to `port` on loopback inside the network namespace
/// `netns` (a pidfd of a process in it, or an nsfs file): 127.0.0.1 first,
/// then ::1, each within `timeout`. The socket stays in that namespace.
pub async fn connect_in(
    netns: BorrowedFd<'_>,
    port: u16,
    timeout: std::time::Duration,
) -> Result<std::net::TcpStream, NetError> {
    netns::connect_in(netns, port, timeout).await
}

/// A network namespace file (nsfs) for `netns`, which may be a pidfd.
pub async fn netns_file(netns: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd, NetError> {
    netns::ns_file(netns).await
}

/// `addr`/32 on loopback (already there is fine), loopback up, and a
/// listener on `addr:port`, in `handle`'s namespace (and the caller's).
async fn loopback_listener(
    handle: Handle,
    addr: std::net::Ipv4Addr,
    port: u16,
) -> Result<std::net::TcpListener, NetError> {
    {
        let index = link_index(&handle, "lo").await?;
        match handle
            .address()
            .add(index, std::net::IpAddr::V4(addr), 32)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(NetError::AddAddressV4 {
                    link: "lo".into(),
                    addr,
                    source,
                })
            }
        }
        set_up(&handle, index, "lo").await?;
        let at = std::net::SocketAddr::from((addr, port));
        std::net::TcpListener::bind(at).map_err(|source| NetError::Listen { addr: at, source })
    }
}

/// The index of the link `name` in the caller's network namespace, if it
/// exists (asked over netlink: `/sys/class/net` shows the namespace sysfs
/// was mounted in, which need not be auraed's).
pub async fn link_index_of(name: &str) -> Result<Option<u32>, NetError> {
    check_link_name("link", name)?;
    let conn = Conn::open()?;
    Ok(get_link(&conn.handle, name).await?.map(|l| l.header.index))
}

/// Deletes the link `name` in the caller's network namespace. Returns
/// whether it existed: a link that is already gone is not an error. Deleting
/// either end of a veth pair deletes both.
pub async fn delete_link(name: &str) -> Result<bool, NetError> {
    check_link_name("link", name)?;
    let conn = Conn::open()?;
    match get_link(&conn.handle, name).await? {
        Some(link) => del_index(&conn.handle, link.header.index, name).await,
        None => Ok(false),
    }
}
