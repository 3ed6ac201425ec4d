//! Tests of the instance network. They need root (CAP_NET_ADMIN and
//! CAP_SYS_ADMIN for unshare): each runs in a network namespace of its own,
//! so nothing touches the host's links, and sends traffic only to what it
//! made. Without the privilege they print `SKIP <test>: <reason>` and return.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags};
use rtnetlink::LinkVeth;

use super::*;

/// Every test's bound.
const BOUND: Duration = Duration::from_secs(30);

/// A fresh network namespace, held by an fd. A short-lived thread makes it,
/// so the caller's thread stays where it is.
pub(super) fn new_netns() -> std::io::Result<OwnedFd> {
    std::thread::spawn(|| -> std::io::Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .expect("the unshare thread panicked")
}

/// Runs `body` on a dedicated thread in a fresh network namespace with its
/// own current-thread runtime, bounded by [`BOUND`]. Skips (returns false)
/// if the namespace cannot be made.
pub(super) fn in_netns<F, Fut>(test: &str, body: F) -> bool
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let test = test.to_string();
    let ran = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("SKIP {test}: unshare(CLONE_NEWNET): {e} (needs root)");
            return false;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(BOUND, body())
                .await
                .unwrap_or_else(|_| panic!("{test} took longer than {BOUND:?}"))
        });
        true
    })
    .join();
    match ran {
        Ok(ran) => ran,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

pub(super) fn ula() -> Ula {
    Ula::derive(b"spiffe://aurae.test/auraed/net-tests")
}

async fn link(name: &str) -> Option<rtnetlink::packet_route::link::LinkMessage> {
    let conn = Conn::open().unwrap();
    get_link(&conn.handle, name).await.unwrap()
}

/// The IPv6 addresses of link `index` (in the caller's namespace) and
/// whether each is tentative.
async fn addrs_of(handle: &rtnetlink::Handle, index: u32) -> Vec<(Ipv6Prefix, bool)> {
    let mut out = Vec::new();
    let mut msgs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = msgs.try_next().await.unwrap() {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(std::net::IpAddr::V6(a)) => Some(*a),
            _ => None,
        });
        let tentative = msg.attributes.iter().any(
            |a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Tentative)),
        );
        if let Some(a) = addr {
            if !a.is_unicast_link_local() {
                out.push((Ipv6Prefix::new(a, msg.header.prefix_len), tentative));
            }
        }
    }
    out
}

#[test]
fn ensure_bridge_is_idempotent() {
    in_netns("ensure_bridge_is_idempotent", || async {
        let u = ula();
        let first = ensure_bridge("aurae0", u.bridge_addr(), INSTANCE_PREFIX_LEN)
            .await
            .unwrap();
        assert!(first.created);
        let second = ensure_bridge("aurae0", u.bridge_addr(), INSTANCE_PREFIX_LEN)
            .await
            .unwrap();
        assert!(!second.created);
        assert_eq!(first.index, second.index);

        let l = link("aurae0").await.expect("the bridge exists");
        assert_eq!(link_kind(&l), Some(&InfoKind::Bridge));
        assert!(l.header.flags.contains(LinkFlags::Up));
        let conn = Conn::open().unwrap();
        let addrs = addrs_of(&conn.handle, first.index).await;
        let want = Ipv6Prefix::new(u.bridge_addr(), 64);
        assert_eq!(addrs, vec![(want, false)], "one address, not tentative");
    });
}

#[test]
fn ensure_bridge_refuses_a_prefix_clash_and_creates_nothing() {
    in_netns("ensure_bridge_refuses_a_prefix_clash", || async {
        let u = ula();
        let conn = Conn::open().unwrap();
        let h = &conn.handle;
        // (A veth end: some kernels have no dummy driver.)
        h.link()
            .add(LinkVeth::new("other0", "other1").build())
            .execute()
            .await
            .unwrap();
        let other = link_index(h, "other0").await.unwrap();
        let squatter = u.instance_addr(40);
        addresses::add_nodad(h, other, "other0", squatter, 64)
            .await
            .unwrap();

        let err = ensure_bridge("aurae0", u.bridge_addr(), 64)
            .await
            .unwrap_err();
        match &err {
            NetError::PrefixClash {
                field,
                link,
                held,
                prefix,
            } => {
                assert_eq!(*link, "other0");
                assert_eq!(*field, "bridge address");
                assert_eq!(*held, Ipv6Prefix::new(squatter, 64));
                assert_eq!(*prefix, Ipv6Prefix::new(u.bridge_addr(), 64));
            }
            e => panic!("expected PrefixClash, got {e:?}"),
        }
        assert!(err.to_string().contains("other0"), "{err}");
        assert!(link("aurae0").await.is_none(), "nothing left behind");

        // A wider prefix held elsewhere overlaps too; an unrelated one doesn't.
        let other_ula = Ula::derive(b"someone else");
        let b = ensure_bridge("aurae1", other_ula.bridge_addr(), 64)
            .await
            .unwrap();
        assert!(b.created);
        let err = ensure_bridge("aurae2", u.bridge_addr(), 32)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::PrefixClash { ref link, .. } if link == "other0"));

        // The bridge itself with a different address in the prefix clashes.
        let err = ensure_bridge("aurae1", other_ula.instance_addr(3), 64)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::PrefixClash { ref link, .. } if link == "aurae1"));

        // A link of that name that is not a bridge is refused.
        let err = ensure_bridge("other0", Ula::derive(b"x").bridge_addr(), 64)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::NotABridge { .. }), "{err:?}");
    });
}

#[test]
fn veth_into_a_netns_carries_traffic_and_remove_deletes_both_ends() {
    in_netns("veth_into_a_netns", || async {
        let u = ula();
        let bridge = ensure_bridge("aurae0", u.bridge_addr(), 64).await.unwrap();
        let peer_ns = new_netns().unwrap();
        let host = host_link_name("av", 0).unwrap();
        let peer_addr = u.instance_addr(0);
        let veth = create_veth(
            &host,
            "avp0",
            &bridge.link(),
            peer_ns.as_fd(),
            "eth0",
            Some((peer_addr, 64)),
        )
        .await
        .unwrap();
        assert_eq!(veth.peer, "eth0");
        let h = link(&host).await.expect("the host end exists");
        assert!(h
            .attributes
            .contains(&LinkAttribute::Controller(bridge.index)));
        assert!(h.header.flags.contains(LinkFlags::Up));
        assert!(link("avp0").await.is_none(), "the peer left this namespace");

        // Inside: eth0 holds the address (not tentative), eth0 and lo are up,
        // and a TCP listener binds to the address.
        let listener = netns::run_in(peer_ns.try_clone().unwrap(), move |h| async move {
            let eth0 = get_link(&h, "eth0").await?.expect("eth0 in the netns");
            assert!(eth0.header.flags.contains(LinkFlags::Up));
            let lo = get_link(&h, "lo").await?.expect("lo");
            assert!(lo.header.flags.contains(LinkFlags::Up));
            let addrs = addrs_of(&h, eth0.header.index).await;
            assert_eq!(addrs, vec![(Ipv6Prefix::new(peer_addr, 64), false)]);
            Ok(std::net::TcpListener::bind(SocketAddr::from((peer_addr, 0))).unwrap())
        })
        .await
        .unwrap();
        // The listening socket stays in the peer's namespace; connect to it
        // from the bridge's side (bridge address as source), and back.
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, connected) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                listener.accept(),
                tokio::net::TcpStream::connect(SocketAddr::from((peer_addr, port)))
            )
        })
        .await
        .expect("the handshake over the veth took more than 10 s");
        let (_, from) = accepted.unwrap();
        connected.unwrap();
        assert_eq!(from.ip(), std::net::IpAddr::V6(u.bridge_addr()));

        assert!(veth.remove().await.unwrap(), "it existed");
        assert!(link(&host).await.is_none(), "the host end is gone");
        let eth0_left = netns::run_in(peer_ns.try_clone().unwrap(), |h| async move {
            Ok(get_link(&h, "eth0").await?.is_some())
        })
        .await
        .unwrap();
        assert!(!eth0_left, "the peer end is gone");
    });
}

#[test]
fn a_failed_veth_leaves_nothing_behind() {
    in_netns("a_failed_veth_leaves_nothing_behind", || async {
        let bridge = ensure_bridge("aurae0", ula().bridge_addr(), 64)
            .await
            .unwrap();
        let peer_ns = new_netns().unwrap();
        // `lo` exists in the peer's namespace: the rename there fails.
        let err = create_veth("av1", "avp1", &bridge.link(), peer_ns.as_fd(), "lo", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NetError::SetNetns { ref new_name, .. } if new_name == "lo"),
            "{err:?}"
        );
        assert!(link("av1").await.is_none());
        assert!(link("avp1").await.is_none());
        let names = netns::run_in(peer_ns.try_clone().unwrap(), |h| async move {
            let mut links = h.link().get().execute();
            let mut names = Vec::new();
            while let Some(l) = links.try_next().await.unwrap() {
                names.push(link_name(&l).unwrap_or_default().to_string());
            }
            Ok(names)
        })
        .await
        .unwrap();
        assert_eq!(names, vec!["lo".to_string()]);
    });
}

#[test]
fn tap_on_the_bridge_and_delete() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP tap_on_the_bridge_and_delete: /dev/net/tun is missing");
        return;
    }
    in_netns("tap_on_the_bridge_and_delete", || async {
        let bridge = ensure_bridge("aurae0", ula().bridge_addr(), 64)
            .await
            .unwrap();
        let name = host_link_name("at", 7).unwrap();
        let tap = create_tap(&name, &bridge.link()).await.unwrap();
        let l = link(&name).await.expect("the TAP exists");
        assert_eq!(link_kind(&l), Some(&InfoKind::Tun));
        assert!(l
            .attributes
            .contains(&LinkAttribute::Controller(bridge.index)));
        assert!(l.header.flags.contains(LinkFlags::Up));

        let err = create_tap(&name, &bridge.link()).await.unwrap_err();
        assert!(matches!(err, NetError::LinkExists { .. }), "{err:?}");

        assert!(tap.remove().await.unwrap());
        assert!(link(&name).await.is_none(), "the TAP is gone");
        assert!(!delete_link(&name).await.unwrap(), "already gone");
    });
}

#[test]
fn delete_link_says_whether_it_existed() {
    in_netns("delete_link_says_whether_it_existed", || async {
        let conn = Conn::open().unwrap();
        conn.handle
            .link()
            .add(LinkVeth::new("gone0", "gone1").build())
            .execute()
            .await
            .unwrap();
        assert!(delete_link("gone0").await.unwrap());
        assert!(!delete_link("gone0").await.unwrap());
        assert!(link("gone1").await.is_none(), "a veth goes with its peer");
        assert!(!delete_link("gone1").await.unwrap());
        assert!(matches!(
            delete_link("this-name-is-too-long").await,
            Err(NetError::InvalidName { .. })
        ));
    });
}

#[test]
fn link_up_sets_a_link_up() {
    in_netns("link_up_sets_a_link_up", || async {
        assert!(!link("lo")
            .await
            .unwrap()
            .header
            .flags
            .contains(LinkFlags::Up));
        link_up("lo").await.unwrap();
        assert!(link("lo")
            .await
            .unwrap()
            .header
            .flags
            .contains(LinkFlags::Up));
        assert!(matches!(link_up("nope0").await, Err(NetError::NoSuchLink(n)) if n == "nope0"));
    });
}

#[test]
fn host_link_names_fit_ifnamsiz() {
    assert_eq!(host_link_name("av", 12).unwrap(), "av12");
    assert_eq!(host_link_name("abcde", u32::MAX).unwrap().len(), 15);
    assert!(matches!(
        host_link_name("abcdef", u32::MAX),
        Err(NetError::InvalidName { .. })
    ));
    assert!(host_link_name("a/b", 1).is_err());
}

#[test]
fn veth_by_pidfd_and_a_bad_fd_creates_nothing() {
    in_netns("veth_by_pidfd_and_a_bad_fd_creates_nothing", || async {
        let u = ula();
        let bridge = ensure_bridge("aurae0", u.bridge_addr(), 64).await.unwrap();

        // Not a namespace: refused before anything is made.
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let err = create_veth("av3", "avp3", &bridge.link(), devnull.as_fd(), "eth0", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NetError::Netns { op: "setns", .. }),
            "{err:?}"
        );
        assert!(link("av3").await.is_none() && link("avp3").await.is_none());

        // A pidfd of a process inside the peer's namespace.
        let peer_ns = new_netns().unwrap();
        let ns = peer_ns.try_clone().unwrap();
        let mut child = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::process::Command::new("sleep").arg("30").spawn()
        })
        .join()
        .unwrap()
        .expect("spawning sleep");
        let pidfd = crate::sys::pidfd::open(child.id() as i32).unwrap();
        let made = create_veth(
            "av4",
            "avp4",
            &bridge.link(),
            pidfd.as_fd(),
            "eth0",
            Some((u.instance_addr(4), 64)),
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let veth = made.unwrap();
        let addrs = netns::run_in(peer_ns.try_clone().unwrap(), |h| async move {
            let index = link_index(&h, "eth0").await?;
            Ok(addrs_of(&h, index).await)
        })
        .await
        .unwrap();
        assert_eq!(
            addrs,
            vec![(Ipv6Prefix::new(u.instance_addr(4), 64), false)]
        );
        assert!(veth.remove().await.unwrap());
    });
}
