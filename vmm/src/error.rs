//! VMM errors, classified once where they happen: each variant names the
//! call that failed and keeps the error it failed with as its `source`.

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("--{option}: {reason}")]
    Config {
        option: &'static str,
        reason: String,
    },
    /// A configured file, interface or argument that could not be used.
    #[error("--{option}: {subject}")]
    ConfigInput {
        option: &'static str,
        /// Its path or name, and what was wrong with it.
        subject: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("guest memory of {len} bytes: {why}")]
    GuestRamSize { len: usize, why: &'static str },
    #[error("{what} (mmap)")]
    GuestRamMap {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("describing guest memory (MmapRegionBuilder::build)")]
    GuestRegion {
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("describing guest memory (GuestMemoryMmap::from_regions)")]
    GuestRegions {
        #[source]
        source: vm_memory::GuestRegionCollectionError,
    },
    #[error("{what} (guest memory)")]
    GuestMemory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("building the kernel command line (Cmdline::new)")]
    Cmdline {
        #[source]
        source: linux_loader::cmdline::Error,
    },
    #[error("writing the kernel command line (load_cmdline)")]
    LoadCmdline {
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("writing the boot parameters (BootConfigurator::write_bootparams)")]
    BootParams {
        #[source]
        source: linux_loader::configurator::Error,
    },
    #[error("creating the eventfd of {what}")]
    EventFd {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the {device} device")]
    DeviceSetup {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sharing a folder over virtio-fs")]
    FsSetup(#[source] crate::devices::virtio::fs::FsError),
    #[error("placing a device on the {bus} bus")]
    Bus {
        bus: &'static str,
        #[source]
        source: crate::bus::Overlap,
    },
    #[error("the VM has already been started")]
    AlreadyStarted,
    #[error("installing the vCPU kick signal handler (sigaction)")]
    KickHandler {
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("building the seccomp filter: {what}")]
    SeccompBuild {
        what: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("installing the seccomp filter (seccomp(2))")]
    SeccompApply {
        #[source]
        source: seccompiler::Error,
    },
    #[error("creating the device event loop (EventManager::new)")]
    EventManager {
        #[source]
        source: event_manager::Error,
    },
    #[error("the device event loop (EventManager::run_with_timeout)")]
    EventLoopRun {
        #[source]
        source: event_manager::Error,
    },
    #[error("starting the {thread} thread")]
    Spawn {
        thread: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] crate::devices::event_loop::WatchError),
}

impl VmmError {
    /// The option at fault, for an error in the configuration.
    pub fn config_option(&self) -> Option<&'static str> {
        match self {
            VmmError::Config { option, .. } | VmmError::ConfigInput { option, .. } => Some(option),
            _ => None,
        }
    }

    /// Maps the error of using `--{option}`'s `subject` (a path, a name).
    pub(crate) fn input<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
        option: &'static str,
        subject: impl std::fmt::Display,
    ) -> impl FnOnce(E) -> VmmError {
        let subject = subject.to_string();
        move |e| VmmError::ConfigInput {
            option,
            subject,
            source: e.into(),
        }
    }
}

/// A failed call to KVM (an ioctl on /dev/kvm, the VM or a vCPU), named
/// after the call.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("opening /dev/kvm")]
    Open {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_VM")]
    CreateVm {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot}")]
    SetUserMemoryRegion {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_TSS_ADDR")]
    SetTssAddr {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_IRQCHIP")]
    CreateIrqchip {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_PIT2")]
    CreatePit2 {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IRQFD for the {device} interrupt (GSI {gsi})")]
    Irqfd {
        device: &'static str,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IOEVENTFD for queue {queue}'s notifications at MMIO {addr:#x}")]
    IoEventFd {
        addr: u64,
        queue: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_SUPPORTED_CPUID")]
    GetSupportedCpuid {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_VCPU for vCPU {index}")]
    CreateVcpu {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_CPUID2 for vCPU {index}")]
    SetCpuid2 {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("building the KVM_SET_MSRS list for vCPU {index}")]
    MsrList {
        index: u8,
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    #[error("KVM_SET_MSRS for vCPU {index}")]
    SetMsrs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_FPU for vCPU {index}")]
    SetFpu {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_LAPIC for vCPU {index}")]
    GetLapic {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_LAPIC for vCPU {index}")]
    SetLapic {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_SREGS for vCPU {index}")]
    GetSregs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_SREGS for vCPU {index}")]
    SetSregs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_REGS for vCPU {index}")]
    SetRegs {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_RUN on vCPU {index}")]
    Run {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Why a vCPU stopped the VM: a failed KVM_RUN, or an exit the VMM can't
/// handle. The vCPU thread records it, rendered with [`chain`], as the
/// VM's [`crate::ExitReason::Error`].
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: installing its seccomp filter")]
    Seccomp {
        index: u8,
        #[source]
        source: Box<VmmError>,
    },
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("vCPU {index}: KVM_RUN exit FAIL_ENTRY (hardware entry failure reason {reason:#x}, cpu {cpu})")]
    FailEntry { index: u8, reason: u64, cpu: u32 },
    #[error("vCPU {index}: KVM_RUN exit INTERNAL_ERROR (KVM internal error)")]
    InternalError { index: u8 },
    #[error("vCPU {index}: unhandled KVM_RUN exit {exit}")]
    UnhandledExit { index: u8, exit: String },
}

/// `e` and each of its sources, joined by ": " (what `{:#}` gives for an
/// `anyhow::Error`), for an error that is recorded as text.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn einval() -> kvm_ioctls::Error {
        kvm_ioctls::Error::new(libc::EINVAL)
    }

    /// Each KVM error names the call (and the vCPU) in its message, and
    /// keeps the errno as its source.
    #[test]
    fn a_kvm_error_names_the_call_and_keeps_its_source() {
        let cases: Vec<(KvmError, &str)> = vec![
            (
                KvmError::CreateVcpu {
                    index: 3,
                    source: einval(),
                },
                "KVM_CREATE_VCPU for vCPU 3",
            ),
            (
                KvmError::SetUserMemoryRegion {
                    slot: 0,
                    source: einval(),
                },
                "KVM_SET_USER_MEMORY_REGION for slot 0",
            ),
            (
                KvmError::SetCpuid2 {
                    index: 1,
                    source: einval(),
                },
                "KVM_SET_CPUID2 for vCPU 1",
            ),
            (
                KvmError::IoEventFd {
                    addr: 0xd000_0050,
                    queue: 2,
                    source: einval(),
                },
                "KVM_IOEVENTFD for queue 2's notifications at MMIO 0xd0000050",
            ),
            (
                KvmError::Run {
                    index: 0,
                    source: einval(),
                },
                "KVM_RUN on vCPU 0",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
            let source = e.source().expect("a source");
            let errno = source
                .downcast_ref::<kvm_ioctls::Error>()
                .expect("the KVM errno")
                .errno();
            assert_eq!(errno, libc::EINVAL, "{want}");
        }
    }

    /// Wrapped in a `VmmError`, a KVM error says the same and keeps the
    /// errno one level down, so the chain reads call first, errno last.
    #[test]
    fn the_chain_of_a_wrapped_kvm_error_ends_with_the_errno() {
        let e = VmmError::from(KvmError::SetLapic {
            index: 2,
            source: kvm_ioctls::Error::new(libc::ENXIO),
        });
        assert_eq!(e.to_string(), "KVM_SET_LAPIC for vCPU 2");
        let text = chain(&e);
        assert!(text.starts_with("KVM_SET_LAPIC for vCPU 2: "), "{text}");
        assert!(
            text.ends_with(&std::io::Error::from_raw_os_error(libc::ENXIO).to_string()),
            "{text}"
        );
        let run = VcpuError::from(KvmError::Run {
            index: 1,
            source: kvm_ioctls::Error::new(libc::EFAULT),
        });
        assert!(chain(&run).starts_with("KVM_RUN on vCPU 1: "), "{run}");
    }
}
