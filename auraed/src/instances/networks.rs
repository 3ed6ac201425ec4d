//! An instance's network devices besides eth0 (a pod's `networks`): each a
//! link on an existing host bridge, eth1, eth2... inside. A cell-backed
//! instance gets a veth pair (its peer moved into the instance's network
//! namespace and set up); a microVM gets a TAP, which its VMM turns into a
//! virtio-net device. auraed configures no address: the network joined
//! does.

use std::os::fd::BorrowedFd;

use super::{Instances, Network, MAX_NETWORKS};
use crate::error::ApiError;
use crate::net::{self, BridgeLink, NetError, Tap, Veth};

/// The host end of an attached network device.
#[derive(Debug, Clone)]
pub enum HostEnd {
    Veth(Veth),
    Tap(Tap),
}

impl HostEnd {
    pub fn name(&self) -> &str {
        match self {
            HostEnd::Veth(v) => &v.host,
            HostEnd::Tap(t) => &t.name,
        }
    }

    pub async fn remove(self) -> Result<bool, NetError> {
        match self {
            HostEnd::Veth(v) => v.remove().await,
            HostEnd::Tap(t) => t.remove().await,
        }
    }
}

impl From<Veth> for HostEnd {
    fn from(v: Veth) -> Self {
        HostEnd::Veth(v)
    }
}

impl From<Tap> for HostEnd {
    fn from(t: Tap) -> Self {
        HostEnd::Tap(t)
    }
}

/// Removes the link taken from `slot`, if it still holds one.
pub async fn remove_taken<L: Into<HostEnd>>(
    slot: &std::sync::Mutex<Option<L>>,
) -> Result<(), ApiError> {
    let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    match taken {
        Some(link) => link.into().remove().await.map(drop).map_err(ApiError::from),
        None => Ok(()),
    }
}

/// Ends the task in `slot` (a link-local metadata endpoint, whose socket
/// holds a network namespace) and waits until it has.
pub async fn end_task(slot: &std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>) {
    let task = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(task) = task {
        task.abort();
        let _cancelled = task.await;
    }
}

/// A network device an instance was given.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Its name inside: eth1, eth2...
    pub inside: String,
    pub bridge: String,
    pub host: HostEnd,
}

/// The name of the `i`-th extra device inside the instance.
fn inside_name(i: usize) -> String {
    format!("eth{}", i + 1)
}

/// A host-side name for instance `index`'s `i`-th extra device: `prefix`
/// and a number no other instance's device has.
fn host_name(prefix: &str, index: u32, i: usize) -> Result<String, ApiError> {
    let n = index
        .checked_mul(MAX_NETWORKS as u32)
        .and_then(|n| n.checked_add(i as u32))
        .ok_or_else(|| ApiError::FailedPrecondition("networks: out of link names".into()))?;
    Ok(net::host_link_name(prefix, n)?)
}

/// Removes every device in `attached`, all of them even if one fails; the
/// first failure is returned.
pub async fn remove_all(attached: Vec<Attached>) -> Result<(), ApiError> {
    let mut first = Ok(());
    for a in attached {
        let name = a.host.name().to_string();
        if let Err(e) = a.host.remove().await {
            tracing::error!("removing {name} (on {}): {e}", a.bridge);
            if first.is_ok() {
                first = Err(e.into());
            }
        }
    }
    first
}

impl Instances {
    /// Finds each bridge the spec names, before anything is made: a bridge
    /// that doesn't exist, isn't a bridge, or is this auraed's own is
    /// refused, naming the field.
    pub(super) async fn resolve_networks(
        &self,
        networks: &[Network],
    ) -> Result<Vec<BridgeLink>, ApiError> {
        let mut found = Vec::with_capacity(networks.len());
        for n in networks {
            if n.bridge == self.cfg.bridge {
                return Err(ApiError::invalid(
                    n.field.clone(),
                    format!(
                        "{} is this auraed's own bridge, which every instance is on as eth0",
                        n.bridge
                    ),
                ));
            }
            match net::find_bridge("bridge", &n.bridge).await {
                Ok(b) => found.push(b),
                Err(NetError::NoSuchLink(_)) => {
                    return Err(ApiError::invalid(
                        n.field.clone(),
                        format!("there is no link {} on this host", n.bridge),
                    ))
                }
                Err(NetError::NotABridge { .. }) => {
                    return Err(ApiError::invalid(
                        n.field.clone(),
                        format!("{} is not a bridge", n.bridge),
                    ))
                }
                Err(NetError::InvalidName { name, reason, .. }) => {
                    return Err(ApiError::invalid(
                        n.field.clone(),
                        format!("{name:?} is not an interface name ({reason})"),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(found)
    }

    /// A veth pair per bridge for a cell-backed instance, its peer moved
    /// into the namespace of `netns` (a pidfd) as eth1, eth2... and set up.
    /// Each is pushed to `made` as it exists, for the caller's undo.
    pub(super) async fn attach_veths(
        &self,
        bridges: &[BridgeLink],
        index: u32,
        netns: BorrowedFd<'_>,
        made: &mut Vec<Attached>,
    ) -> Result<(), ApiError> {
        let stem: String = self.cfg.bridge.chars().take(9).collect();
        for (i, bridge) in bridges.iter().enumerate() {
            let host = host_name(&format!("{stem}e"), index, i)?;
            let peer = host_name(&format!("{stem}f"), index, i)?;
            let inside = inside_name(i);
            let veth = net::create_veth(&host, &peer, bridge, netns, &inside, None).await?;
            made.push(Attached {
                inside,
                bridge: bridge.name.clone(),
                host: HostEnd::Veth(veth),
            });
        }
        Ok(())
    }

    /// A TAP per bridge for a microVM, in the order its VMM gets them
    /// (after eth0's). Each is pushed to `made` as it exists.
    pub(super) async fn make_taps(
        &self,
        bridges: &[BridgeLink],
        index: u32,
        made: &mut Vec<Attached>,
    ) -> Result<(), ApiError> {
        for (i, bridge) in bridges.iter().enumerate() {
            let name = host_name(&self.extra_tap_prefix(), index, i)?;
            let tap = net::create_tap(&name, bridge).await?;
            made.push(Attached {
                inside: inside_name(i),
                bridge: bridge.name.clone(),
                host: HostEnd::Tap(tap),
            });
        }
        Ok(())
    }

    /// What the names of extra TAPs start with (named after the bridge, as
    /// every host link of this auraed's is).
    pub(super) fn extra_tap_prefix(&self) -> String {
        let stem: String = self.cfg.bridge.chars().take(9).collect();
        format!("{stem}u")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instances_devices_have_names_of_their_own() {
        assert_eq!(inside_name(0), "eth1");
        assert_eq!(host_name("aurae0e", 0, 0).expect("name"), "aurae0e0");
        assert_eq!(host_name("aurae0e", 0, 3).expect("name"), "aurae0e3");
        assert_eq!(host_name("aurae0e", 1, 0).expect("name"), "aurae0e4");
        assert!(host_name("aurae0e", u32::MAX, 0).is_err());
    }
}
