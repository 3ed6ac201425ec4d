//! A pool of ready network and IPC namespaces for new cells
//! ([`SpareNamespaces`]), refilled in the background. When it is empty, a
//! cell creates its own namespaces as usual.
//!
//! Creating a namespace keeps a CPU busy for a while, so the refill waits
//! for a quiet moment: it starts once no namespace has been taken for
//! [`QUIET`], or [`MAX_DELAY`] after it was first needed, whichever is
//! sooner. A cell start is then not slowed down by the refill that the
//! previous cell start triggered.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many spare namespaces to keep.
const SPARES: usize = 2;
/// No take for this long counts as quiet.
const QUIET: Duration = Duration::from_millis(10);
/// The longest a needed refill waits for quiet.
const MAX_DELAY: Duration = Duration::from_millis(300);

use crate::sys::spare_ns::{self, SpareNamespaces};

struct Spares {
    ready: Vec<SpareNamespaces>,
    last_take: Option<Instant>,
}

pub struct NamespacePool {
    spares: Mutex<Spares>,
    wanted: Condvar,
}

impl NamespacePool {
    /// Starts the pool and its refill thread.
    pub fn start() -> Arc<NamespacePool> {
        let pool = Arc::new(NamespacePool {
            spares: Mutex::new(Spares {
                ready: Vec::new(),
                last_take: None,
            }),
            wanted: Condvar::new(),
        });
        let weak = Arc::downgrade(&pool);
        let spawned = std::thread::Builder::new()
            .name("ns-refill".into())
            .spawn(move || loop {
                let Some(pool) = weak.upgrade() else { return };
                pool.wait_until_refill_is_due();
                match spare_ns::create() {
                    Ok(fd) => pool.lock().ready.push(fd),
                    Err(e) => {
                        tracing::warn!("the namespace pool stops: {e}");
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no namespace pool: {e}");
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the pool is short, then until it is quiet (or the
    /// refill has waited long enough).
    fn wait_until_refill_is_due(&self) {
        let guard = self.lock();
        let mut guard = self
            .wanted
            .wait_while(guard, |s| s.ready.len() >= SPARES)
            .unwrap_or_else(|e| e.into_inner());
        let needed = Instant::now();
        loop {
            let now = Instant::now();
            let quiet_at = guard.last_take.map(|t| t + QUIET).unwrap_or(now);
            let due = quiet_at.min(needed + MAX_DELAY);
            if now >= due {
                return;
            }
            guard = self
                .wanted
                .wait_timeout(guard, due - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ready namespaces, if there are some; the pool refills behind them.
    pub fn take(&self) -> Option<SpareNamespaces> {
        let mut spares = self.lock();
        spares.last_take = Some(Instant::now());
        let fd = spares.ready.pop();
        drop(spares);
        self.wanted.notify_one();
        fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_and_refills_after_a_quiet_moment() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: creating namespaces needs root");
            return;
        }
        let pool = NamespacePool::start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().ready.len() < SPARES {
            assert!(Instant::now() < deadline, "the pool never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let taken: Vec<SpareNamespaces> = (0..SPARES).filter_map(|_| pool.take()).collect();
        assert_eq!(taken.len(), SPARES);
        assert!(pool.take().is_none(), "empty right after");
        let emptied = Instant::now();
        while pool.lock().ready.is_empty() {
            assert!(Instant::now() < deadline, "the pool never refilled");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            emptied.elapsed() >= QUIET,
            "the refill waited for a quiet moment"
        );
    }
}
