//! vCPU threads: each runs KVM_RUN and dispatches port I/O and MMIO exits
//! to the buses until the VM stops.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::error::{chain, KvmError, VcpuError};
use crate::guest_ram::GuestRam;
use crate::state::{ExitReason, VmState};

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process.
pub fn install_kick_handler() -> Result<(), crate::VmmError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|source| crate::VmmError::KickHandler { source })
}

/// Guest profile samples: (microseconds since the VM ran, guest RIP).
pub type Samples = Arc<Mutex<Vec<(u32, u64)>>>;

pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u8,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub state: Arc<VmState>,
    /// Where to record the guest's instruction pointer each time a kick
    /// interrupts KVM_RUN (the guest profiler), with the time since `since`.
    pub samples: Option<(Samples, Instant)>,
    /// Guest memory stays mapped while this vCPU exists (last: dropped
    /// after everything above that may use it).
    pub ram: Arc<GuestRam>,
}

impl Vcpu {
    /// Runs until the VM stops; records why if this vCPU stopped it.
    pub fn run(mut self) {
        let _guard = crate::state::ExitOnPanic {
            state: self.state.clone(),
            thread: format!("vcpu {}", self.id),
        };
        // Guest exits run device code on this thread: it gets the vCPU
        // filter before it enters the guest.
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
            self.fail(VcpuError::Seccomp {
                index: self.id,
                source: Box::new(e),
            });
            return;
        }
        let index = self.id;
        while !self.state.stopping() {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::Shutdown) => self.state.exit(ExitReason::Shutdown),
                Ok(VcpuExit::Hlt) => self.state.exit(ExitReason::Shutdown),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => self.state.exit(ExitReason::Reset),
                    _ => self.state.exit(ExitReason::PowerOff),
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    self.fail(VcpuError::FailEntry { index, reason, cpu })
                }
                Ok(VcpuExit::InternalError) => self.fail(VcpuError::InternalError { index }),
                Ok(other) => {
                    let exit = format!("{other:?}");
                    self.fail(VcpuError::UnhandledExit { index, exit })
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A profiler sample is best effort: a failed
                    // KVM_GET_REGS only loses that sample.
                    if let (Some((samples, since)), Ok(regs)) = (&self.samples, self.fd.get_regs())
                    {
                        let micros = u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
                        if let Ok(mut s) = samples.lock() {
                            s.push((micros, regs.rip));
                        }
                    }
                }
                Err(source) => self.fail(KvmError::Run { index, source }.into()),
            }
        }
    }

    /// Stops the VM with `e` (and its causes) as the reason.
    fn fail(&self, e: VcpuError) {
        self.state.exit(ExitReason::Error(chain(&e)));
    }
}
