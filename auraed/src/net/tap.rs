//! A persistent TAP for a microVM, enslaved to the bridge.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::InfoKind;

use super::{
    check_link_name, del_index, enslave_up, link_index, link_kind, link_name, BridgeLink, Conn,
    NetError,
};

/// A TAP made by [`create_tap`]. Call [`Tap::remove`] to delete it;
/// dropping it deletes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a persistent TAP stays until remove() is called"]
pub struct Tap {
    pub name: String,
    pub index: u32,
}

impl Tap {
    /// Deletes the TAP. Returns whether it still existed.
    pub async fn remove(self) -> Result<bool, NetError> {
        let conn = Conn::open()?;
        del_index(&conn.handle, self.index, &self.name).await
    }
}

/// Deletes every TAP named `<prefix><digits>`: a previous run's, since a
/// persistent TAP outlives its VMM (an auraed killed with SIGKILL leaves
/// them). A plain VM's TAP is in its own network namespace, out of reach.
/// Returns their names.
pub async fn remove_stale_taps(prefix: &str) -> Result<Vec<String>, NetError> {
    let conn = Conn::open()?;
    let handle = &conn.handle;
    let mut links = handle.link().get().execute();
    let mut stale = Vec::new();
    loop {
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) => break,
            Err(source) => {
                return Err(NetError::GetLink {
                    link: format!("{prefix}*"),
                    source,
                })
            }
        };
        let ours = link_name(&link).and_then(|n| {
            let n_rest = n.strip_prefix(prefix)?;
            (!n_rest.is_empty() && n_rest.bytes().all(|b| b.is_ascii_digit())).then_some(n)
        });
        if let Some(name) = ours {
            if link_kind(&link) == Some(&InfoKind::Tun) {
                stale.push((link.header.index, name.to_string()));
            }
        }
    }
    let mut removed = Vec::new();
    for (index, name) in stale {
        if del_index(handle, index, &name).await? {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Creates the persistent TAP `name` (`IFF_TAP | IFF_NO_PI`, as the VMM's
/// `--tap` attaches to it), enslaves it to `bridge` and sets it up. Its
/// carrier comes up when the VMM attaches. A TUN/TAP device `name` that
/// already exists is [`NetError::CreateTap`] with `EBUSY`, never adopted. If
/// a later step fails, the TAP is deleted before the error is returned.
pub async fn create_tap(name: &str, bridge: &BridgeLink) -> Result<Tap, NetError> {
    check_link_name("tap name", name)?;
    let conn = Conn::open()?;
    let handle = &conn.handle;
    if super::get_link(handle, name).await?.is_some() {
        return Err(NetError::LinkExists {
            field: "tap name",
            link: name.to_string(),
        });
    }
    let owned = name.to_string();
    tokio::task::spawn_blocking(move || crate::sys::tun::create_persistent_tap(&owned))
        .await
        .map_err(|e| NetError::CreateTap {
            link: name.to_string(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| NetError::CreateTap {
            link: name.to_string(),
            source,
        })?;
    let index = match link_index(handle, name).await {
        Ok(i) => i,
        Err(e) => {
            let _ = super::delete_link(name).await;
            return Err(e);
        }
    };
    if let Err(e) = enslave_up(handle, index, name, bridge).await {
        if let Err(undo) = del_index(handle, index, name).await {
            tracing::error!("removing TAP {name} after a failed set-up: {undo}");
        }
        return Err(e);
    }
    Ok(Tap {
        name: name.to_string(),
        index,
    })
}
