//! What a previous run of this auraed left on the host that its cells did
//! not take with them, removed when it starts.

impl super::Instances {
    /// Removes what a previous run left on the host that its cells did not
    /// take with them: the TAPs of its microVM instances and of VMs not
    /// taken back (their VMMs, in cells, are gone already). Logs each.
    pub async fn remove_left_behind(&self) {
        // In its parent's network namespace, what looks left behind is the
        // parent's.
        if self.cfg.in_host_network {
            return;
        }
        let stem: String = self.cfg.bridge.chars().take(9).collect();
        for prefix in [format!("{stem}t"), self.extra_tap_prefix()] {
            match crate::net::remove_stale_taps(&prefix).await {
                Ok(removed) => {
                    for tap in removed {
                        tracing::warn!("removed TAP {tap}, left behind by a previous run");
                    }
                }
                Err(e) => tracing::error!("removing TAPs left behind by a previous run: {e}"),
            }
        }
        // The addresses of host-network instances, on the bridge (but those
        // of instances taken back).
        let in_use: Vec<std::net::Ipv6Addr> = self
            .used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|i| self.ula().instance_addr(*i))
            .collect();
        if let Ok(bridge) = crate::net::find_bridge("instances.bridge", &self.cfg.bridge).await {
            match crate::net::remove_host_addresses(&bridge, &in_use).await {
                Ok(removed) => {
                    for addr in removed {
                        tracing::warn!(
                            "removed {addr} from {}, left behind by a previous run",
                            bridge.name
                        );
                    }
                }
                Err(e) => tracing::error!("removing addresses left behind by a previous run: {e}"),
            }
        }
    }
}
