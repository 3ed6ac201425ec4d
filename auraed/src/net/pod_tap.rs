//! A microVM's link to a pod network that CNI made in its VMM's network
//! namespace: a persistent TAP there, joined to the CNI device by mirred
//! redirects both ways (as Kata's tc mode does), so that the guest is on
//! the pod network with the address CNI gave. The CNI device's own
//! addresses are removed: the guest holds them now, and the namespace must
//! not answer for them.

use std::os::fd::BorrowedFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;

use super::{link_index, netns, set_up, tc, NetError};

/// What the guest takes over from CNI's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLink {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

/// Makes `tap` in the namespace of `netns` (a pidfd of a process in it)
/// and joins it to `device` (CNI's); answers the device's MAC and MTU.
/// On error the TAP is removed.
pub async fn join_pod_tap(
    netns: BorrowedFd<'_>,
    device: &str,
    tap: &str,
) -> Result<DeviceLink, NetError> {
    super::check_link_name("tap name", tap)?;
    let ns = netns::ns_file(netns).await?;
    let (device, tap) = (device.to_string(), tap.to_string());
    netns::run_in(ns, move |handle| async move {
        let link = super::get_link(&handle, &device)
            .await?
            .ok_or_else(|| NetError::NoSuchLink(device.clone()))?;
        let device_index = link.header.index;
        let mut found = DeviceLink {
            mac: None,
            mtu: None,
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(m) => found.mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
                LinkAttribute::Mtu(m) => found.mtu = Some(*m),
                _ => {}
            }
        }
        crate::sys::tun::create_persistent_tap(&tap).map_err(|source| NetError::CreateTap {
            link: tap.clone(),
            source,
        })?;
        // Gone with the namespace if even this fails.
        let tap_index = link_index(&handle, &tap).await?;
        let joined = async {
            set_up(&handle, tap_index, &tap).await?;
            let mut addresses = handle
                .address()
                .get()
                .set_link_index_filter(device_index)
                .execute();
            let mut found = Vec::new();
            while let Some(a) = addresses.try_next().await.map_err(NetError::GetAddresses)? {
                found.push(a);
            }
            for a in found {
                handle
                    .address()
                    .del(a)
                    .execute()
                    .await
                    .map_err(|source| NetError::Tc {
                        what: "removing an address of the CNI device (RTM_DELADDR)",
                        link: device.clone(),
                        source,
                    })?;
            }
            tc::redirect_both(&handle, (tap_index, &tap), (device_index, &device)).await
        }
        .await
        .map(|()| found);
        if joined.is_err() {
            if let Err(undo) = super::del_index(&handle, tap_index, &tap).await {
                tracing::error!("removing {tap} after a failed set-up: {undo}");
            }
        }
        joined
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use futures::TryStreamExt;

    use super::super::tests::{in_netns, new_netns, ula};
    use super::super::{create_veth, ensure_bridge, get_link, host_link_name, netns};
    use super::*;

    /// Links of the namespace: (name, up, addresses, ingress filters).
    async fn inspect(
        handle: &rtnetlink::Handle,
        name: &str,
    ) -> Result<Option<(bool, usize, usize)>, NetError> {
        let Some(link) = get_link(handle, name).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        let up = link
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up);
        let addresses: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(NetError::GetAddresses)?;
        let filters: Vec<_> = handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        Ok(Some((up, addresses.len(), filters.len())))
    }

    #[test]
    fn the_pod_tap_is_joined_to_the_cni_device_which_keeps_no_address() {
        in_netns("the_pod_tap_is_joined_to_the_cni_device", || async {
            let u = ula();
            let bridge = ensure_bridge("aurae0", u.bridge_addr(), 64).await.unwrap();
            let pod_ns = new_netns().unwrap();
            let host = host_link_name("pv", 0).unwrap();
            // As CNI leaves it: a device with the pod's address.
            let _uplink = create_veth(
                &host,
                "pvp0",
                &bridge.link(),
                pod_ns.as_fd(),
                "eth1",
                Some((u.instance_addr(0), 64)),
            )
            .await
            .unwrap();
            join_pod_tap(pod_ns.as_fd(), "eth1", "podtap")
                .await
                .unwrap();
            let (device, tap) = netns::run_in(pod_ns.try_clone().unwrap(), |h| async move {
                Ok((inspect(&h, "eth1").await?, inspect(&h, "podtap").await?))
            })
            .await
            .unwrap();
            let (_, addresses, filters) = device.expect("eth1");
            assert_eq!(addresses, 0, "the guest holds the pod's address now");
            assert!(filters > 0, "eth1 redirects to the TAP");
            let (up, _, filters) = tap.expect("the TAP");
            assert!(up);
            assert!(filters > 0, "the TAP redirects to eth1");

            // A device that isn't there: refused, and no TAP left.
            let other_ns = new_netns().unwrap();
            assert!(join_pod_tap(other_ns.as_fd(), "eth1", "podtap")
                .await
                .is_err());
            let tap = netns::run_in(other_ns, |h| async move { inspect(&h, "podtap").await })
                .await
                .unwrap();
            assert!(tap.is_none());
        });
    }
}
