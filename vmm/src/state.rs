//! What the VM's threads share: why it stopped, and when the guest's
//! `/init` reported in (the boot timer).

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest triple-faulted (Linux `reboot=t`): a clean exit.
    Shutdown,
    /// The guest reset the machine through the i8042 controller.
    Reset,
    /// The guest asked KVM to power off or reset (system event).
    PowerOff,
    /// The host asked the VM to stop.
    Stopped,
    /// A test guest wrote this value to the debug exit port.
    DebugExit(u8),
    /// A vCPU failed.
    Error(String),
}

pub struct VmState {
    started: Instant,
    /// Written when the VM stops, so that the device event loop (which
    /// otherwise sleeps until a device has work) wakes up and ends.
    stop_evt: vmm_sys_util::eventfd::EventFd,
    exit: Mutex<Option<ExitReason>>,
    exited: Condvar,
    boot_time: OnceLock<Duration>,
    boot_cpu: OnceLock<Duration>,
}

impl VmState {
    pub fn new(started: Instant) -> std::io::Result<Self> {
        Ok(Self {
            started,
            stop_evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            boot_time: OnceLock::new(),
            boot_cpu: OnceLock::new(),
        })
    }

    /// Records the first exit reason and wakes the waiters.
    pub fn exit(&self, reason: ExitReason) {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            *exit = Some(reason);
            self.exited.notify_all();
            // Fails only when the counter is full (EAGAIN): the event loop
            // is woken already.
            let _ = self.stop_evt.write(1);
        }
    }

    /// Readable once the VM is stopping.
    pub fn stop_event(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.stop_evt
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stopping(&self) -> bool {
        self.exit_reason().is_some()
    }

    /// Blocks until the VM stops, or `timeout` passes.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let guard = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        match timeout {
            Some(t) => match self.exited.wait_timeout_while(guard, t, |e| e.is_none()) {
                Ok((g, _)) => g.clone(),
                Err(e) => e.into_inner().0.clone(),
            },
            None => match self.exited.wait_while(guard, |e| e.is_none()) {
                Ok(g) => g.clone(),
                Err(e) => e.into_inner().clone(),
            },
        }
    }

    /// The first report counts; a later one (a guest that writes the port
    /// again) is ignored, which is what the `Err` of `set` says.
    /// The first report is also printed at once (auraed reads it from the
    /// VMM's output while the VM runs); the summary at exit repeats it.
    pub fn mark_boot(&self) {
        let elapsed = self.started.elapsed();
        let first = self.boot_time.set(elapsed).is_ok();
        let _ = self.boot_cpu.set(process_cpu());
        if first {
            eprintln!(
                "aurae-vmm: boot timer: /init reported after {:.1} ms",
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }

    /// CPU time the whole VMM process had used when the boot timer fired.
    pub fn boot_cpu(&self) -> Option<Duration> {
        self.boot_cpu.get().copied()
    }

    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time.get().copied()
    }
}

/// Stops the VM with an error if the thread that holds it panics, so that
/// nobody waits for a thread that is gone.
pub struct ExitOnPanic {
    pub state: std::sync::Arc<VmState>,
    pub thread: String,
}

impl Drop for ExitOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.state
                .exit(ExitReason::Error(format!("{} panicked", self.thread)));
        }
    }
}

/// CPU time of this process so far, from the scheduler's precise
/// accounting (getrusage is tick-based). A diagnostic figure: should
/// clock_gettime fail (it can't for this clock), it reads zero.
fn process_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_panics_stops_the_vm_with_an_error() {
        let state = std::sync::Arc::new(VmState::new(Instant::now()).expect("state"));
        let guard = ExitOnPanic {
            state: state.clone(),
            thread: "vcpu 0".into(),
        };
        let t = std::thread::spawn(move || {
            let _guard = guard;
            panic!("a device model bug");
        });
        assert!(t.join().is_err());
        match state.wait(Some(Duration::from_secs(5))) {
            Some(ExitReason::Error(e)) => assert!(e.contains("vcpu 0 panicked"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_thread_that_returns_leaves_the_vm_running() {
        let state = std::sync::Arc::new(VmState::new(Instant::now()).expect("state"));
        drop(ExitOnPanic {
            state: state.clone(),
            thread: "vcpu 0".into(),
        });
        assert_eq!(state.wait(Some(Duration::from_millis(10))), None);
    }
}
