//! A pool of ready network namespaces for new cells, refilled in the
//! background. When it is empty, a cell creates its own namespace as usual.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};

/// How many spare namespaces to keep.
const SPARES: usize = 2;

pub struct NetnsPool {
    spares: Mutex<Vec<OwnedFd>>,
    wanted: Condvar,
}

impl NetnsPool {
    /// Starts the pool and its refill thread.
    pub fn start() -> Arc<NetnsPool> {
        let pool = Arc::new(NetnsPool {
            spares: Mutex::new(Vec::new()),
            wanted: Condvar::new(),
        });
        let weak = Arc::downgrade(&pool);
        let spawned = std::thread::Builder::new()
            .name("netns-refill".into())
            .spawn(move || loop {
                let Some(pool) = weak.upgrade() else { return };
                {
                    let guard = pool.spares.lock().unwrap_or_else(|e| e.into_inner());
                    let guard = pool
                        .wanted
                        .wait_while(guard, |s| s.len() >= SPARES)
                        .unwrap_or_else(|e| e.into_inner());
                    drop(guard);
                }
                match crate::sys::netns::create() {
                    Ok(fd) => pool
                        .spares
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(fd),
                    Err(e) => {
                        tracing::warn!("the network namespace pool stops: {e}");
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no network namespace pool: {e}");
        }
        pool
    }

    /// A ready namespace, if one is there; the pool refills behind it.
    pub fn take(&self) -> Option<OwnedFd> {
        let fd = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
        self.wanted.notify_one();
        fd
    }
}
