//! A VM: `Vm::new(config)` builds it (memory, irqchip, devices, kernel),
//! `run` starts its vCPU threads and device event loop, `stop` asks it to
//! stop, `wait` returns why it stopped, `boot_time` when `/init` reported.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{cpuid, kernel, layout, mptable, regs};
use crate::bus::Bus;
use crate::devices::event_loop::WatchFault;
use crate::devices::virtio::mmio::{reg, MmioTransport, MMIO_LEN};
use crate::devices::virtio::{
    block::Block, fs::Fs, net::tap::Tap, net::Net, rng::Rng, vsock::metrics::VsockMetrics,
    vsock::Vsock, VirtioDevice,
};
use crate::devices::{boot_timer, debug_exit, i8042, serial, IrqTrigger};
use crate::error::KvmError;
use crate::guest_ram::GuestRam;
use crate::state::{ExitReason, VmState};
use crate::vcpu::{self, Vcpu};
use crate::{Console, VmConfig, VmmError};

use crate::event_thread::{self, Subscriber};

/// Stops a VM from anywhere.
#[derive(Clone)]
pub struct StopHandle {
    state: Arc<VmState>,
    keyboard: Arc<Mutex<i8042::I8042>>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.state.exit(ExitReason::Stopped);
    }

    /// Stops the VM with an error as its exit reason.
    pub fn fail(&self, why: String) {
        self.state.exit(ExitReason::Error(why));
    }

    /// Asks the guest to shut down: Ctrl-Alt-Del on its keyboard. The VM
    /// runs on; it stops when the guest resets or halts.
    pub fn ask_guest_to_shut_down(&self) {
        self.keyboard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_ctrl_alt_del();
    }
}

pub struct Vm {
    config: VmConfig,
    _kvm: Kvm,
    /// Holds the VM open (its vCPU fds, owned by the vCPU threads, do too).
    _vm: VmFd,
    mem: GuestMemoryMmap,
    state: Arc<VmState>,
    keyboard: Arc<Mutex<i8042::I8042>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    vcpus: Vec<VcpuFd>,
    subscribers: Vec<Subscriber>,
    /// Where each device (and the VM's own stop watch) records a failed
    /// event-loop registration.
    watch_faults: Vec<WatchFault>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    phases: Vec<(&'static str, Duration)>,
    _vsock_socket: Option<SocketFile>,
    vsock_metrics: Option<Arc<VsockMetrics>>,
    /// The mapping behind `mem`: last, so that it outlives every user.
    /// Each VM thread holds it too, so a thread that outlives the `Vm`
    /// (one that would not stop) keeps it mapped until it ends.
    ram: Arc<GuestRam>,
    profile: Option<vcpu::Samples>,
    sampler_thread: Option<JoinHandle<()>>,
    /// `wait` gave up on threads that would not stop: `Drop` doesn't wait
    /// for them again.
    gave_up: bool,
}

/// How often the guest profiler samples, and for how long at most (about
/// 600,000 samples, under 10 MiB).
const PROFILE_PERIOD: Duration = Duration::from_millis(1);
const PROFILE_SPAN: Duration = Duration::from_secs(600);

/// A Unix socket the VM listens on; its file is removed when the VM is
/// dropped, or when building it fails, on the thread that owns the VM (in
/// `aurae-vmm`, under the control seccomp filter, which allows `unlink`).
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Best effort: a file that is gone already needs no removing.
        let _ = std::fs::remove_file(&self.0);
    }
}

fn device_err(device: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |source| VmmError::DeviceSetup { device, source }
}

fn eventfd(what: &'static str) -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd { what, source })
}

/// An interrupt line of a legacy device: an eventfd registered as the
/// irqfd of `gsi`.
fn irq_line(vm: &VmFd, device: &'static str, gsi: u32) -> Result<EventFd, VmmError> {
    let evt = eventfd("a legacy device's interrupt")?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|source| KvmError::Irqfd {
            device,
            gsi,
            source,
        })?;
    Ok(evt)
}

impl Vm {
    /// Builds the VM. Nothing is running yet; on error nothing is left.
    pub fn new(mut config: VmConfig) -> Result<Vm, VmmError> {
        let started = Instant::now();
        let mut phases = Vec::new();
        let mut mark = {
            let mut last = started;
            move |phases: &mut Vec<(&'static str, Duration)>, what: &'static str| {
                let now = Instant::now();
                phases.push((what, now - last));
                last = now;
            }
        };
        let kvm = Kvm::new().map_err(|source| KvmError::Open { source })?;
        config.validate(kvm.get_max_vcpus())?;
        // Before the VM, so that the VM (and any vCPU fd) is closed before
        // the mapping goes, on a failure below too.
        let mem_size = config.mem_mib << 20;
        let ram = GuestRam::new(mem_size as usize, config.huge_pages)?;
        let vm = kvm
            .create_vm()
            .map_err(|source| KvmError::CreateVm { source })?;
        let mem = ram.guest_memory()?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `ram` (then by the
            // `Arc<GuestRam>` that the `Vm` and each of its threads hold),
            // which outlives the VM fd and every vCPU fd.
            unsafe { vm.set_user_memory_region(r) }.map_err(|source| {
                KvmError::SetUserMemoryRegion {
                    slot: r.slot,
                    source,
                }
            })?;
        }
        vm.set_tss_address(0xfffb_d000)
            .map_err(|source| KvmError::SetTssAddr { source })?;
        vm.create_irq_chip()
            .map_err(|source| KvmError::CreateIrqchip { source })?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|source| KvmError::CreatePit2 { source })?;
        let state = Arc::new(VmState::new(started).map_err(|source| VmmError::EventFd {
            what: "the VM's stop event",
            source,
        })?);
        mark(&mut phases, "kvm and memory");

        // The guest's software, before any device: a bad kernel must not
        // truncate an existing console log, or bind a socket.
        let loaded = kernel::load_kernel(&mem, &config.kernel, config.flat_entry)?;
        let (entry, header) = (loaded.entry, loaded.header);
        mark(&mut phases, "kernel");
        let initrd = kernel::load_initrd(&mem, mem_size, loaded.end, &config.initrds)?;
        mark(&mut phases, "initrd");

        // Legacy devices on the port I/O bus.
        let mut pio = Bus::default();
        let serial_irq = irq_line(&vm, "serial", serial::COM1_IRQ)?;
        let out: Box<dyn Write + Send> = match &config.console {
            Console::None => Box::new(std::io::sink()),
            Console::Stdout => Box::new(std::io::stdout()),
            Console::File(p) => Box::new(serial::Capped::new(
                std::fs::File::create(p).map_err(VmmError::input("console", p.display()))?,
                serial::LOG_LIMIT,
            )),
        };
        let overlap = |source| VmmError::Bus {
            bus: "port I/O",
            source,
        };
        pio.insert(
            serial::COM1,
            8,
            Arc::new(Mutex::new(serial::SerialDevice::new(
                IrqTrigger(serial_irq),
                out,
            ))),
        )
        .map_err(overlap)?;
        let keyboard_irq = irq_line(&vm, "i8042", i8042::IRQ)?;
        let keyboard = Arc::new(Mutex::new(i8042::I8042::new(
            state.clone(),
            IrqTrigger(keyboard_irq),
        )));
        pio.insert(i8042::BASE, i8042::LEN, keyboard.clone())
            .map_err(overlap)?;
        if config.debug_exit {
            pio.insert(
                debug_exit::PORT,
                1,
                Arc::new(Mutex::new(debug_exit::DebugExit::new(state.clone()))),
            )
            .map_err(overlap)?;
        }
        pio.insert(
            boot_timer::PORT,
            1,
            Arc::new(Mutex::new(boot_timer::BootTimer::new(state.clone()))),
        )
        .map_err(overlap)?;

        // Virtio devices on the MMIO bus, announced on the command line.
        let mut mmio = Bus::default();
        let mut subscribers: Vec<Subscriber> = Vec::new();
        let mut watch_faults = Vec::new();
        let mut devices: Vec<(Arc<Mutex<dyn VirtioDevice>>, Subscriber)> = Vec::new();
        // Each device: its event-loop registration watched, then on the bus.
        macro_rules! add {
            ($d:expr) => {{
                let d = $d;
                watch_faults.push(d.watch_fault.clone());
                let d = Arc::new(Mutex::new(d));
                devices.push((d.clone(), d));
            }};
        }
        if config.rng {
            add!(Rng::new().map_err(device_err("rng"))?);
        }
        for disk in &config.disks {
            let d = Block::open(&disk.path, disk.read_only)
                .map_err(VmmError::input("disk", disk.path.display()))?;
            add!(d);
        }
        for share in &config.shares {
            add!(Fs::new(&share.tag, &share.path).map_err(VmmError::FsSetup)?);
        }
        let salt = crate::devices::virtio::net::host_salt();
        for tap in &config.taps {
            let t = Tap::open(tap).map_err(VmmError::input("tap", tap))?;
            let mac = config
                .macs
                .iter()
                .find(|(t, _)| t == tap)
                .map(|(_, m)| *m)
                .unwrap_or_else(|| crate::devices::virtio::net::guest_mac(tap, &salt));
            add!(Net::new(t, mac).map_err(device_err("net"))?);
        }
        let mut vsock_socket = None;
        let mut vsock_metrics = None;
        if let Some(v) = &config.vsock {
            let d = Vsock::new(v.cid, &v.uds_path)
                .map_err(VmmError::input("vsock", v.uds_path.display()))?;
            vsock_socket = Some(SocketFile(v.uds_path.clone()));
            vsock_metrics = Some(d.metrics.clone());
            add!(d);
        }
        for (i, (device, subscriber)) in devices.into_iter().enumerate() {
            let base = layout::MMIO_BASE + i as u64 * MMIO_LEN;
            let irq = layout::MMIO_FIRST_IRQ + i as u32;
            let irq_evt = eventfd("a virtio interrupt")?;
            vm.register_irqfd(&irq_evt, irq)
                .map_err(|source| KvmError::Irqfd {
                    device: "virtio",
                    gsi: irq,
                    source,
                })?;
            {
                let dev = device.lock().unwrap_or_else(|e| e.into_inner());
                for (q, evt) in dev.queue_events().iter().enumerate() {
                    // KVM signals the queue's eventfd itself for a
                    // notification of a valid queue; the transport sees
                    // (and forwards, or refuses) only the others. A
                    // failure is an error: the VM would otherwise run
                    // with every notification taking the slow path.
                    let addr = base + reg::QUEUE_NOTIFY;
                    let queue = q as u32;
                    vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), queue)
                        .map_err(|source| KvmError::IoEventFd {
                            addr,
                            queue,
                            source,
                        })?;
                }
            }
            let transport = MmioTransport::new(device, mem.clone(), irq_evt)
                .map_err(device_err("virtio-mmio"))?;
            mmio.insert(base, MMIO_LEN, Arc::new(Mutex::new(transport)))
                .map_err(|source| VmmError::Bus {
                    bus: "MMIO",
                    source,
                })?;
            config
                .cmdline
                .push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
            subscribers.push(subscriber);
        }

        mark(&mut phases, "devices");
        kernel::write_boot_params(&mem, mem_size, entry, header, &config.cmdline, initrd)?;
        if !matches!(entry, kernel::Entry::Flat(_)) {
            mptable::write(&mem, config.vcpus).map_err(|source| VmmError::GuestMemory {
                what: "writing the MP table",
                source,
            })?;
        }

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| KvmError::GetSupportedCpuid { source })?;
        let features = cpuid::Features {
            nested: config.nested,
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        };
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|source| KvmError::CreateVcpu { index: id, source })?;
            let mut c = supported.clone();
            cpuid::filter(&mut c, id, config.vcpus, features);
            fd.set_cpuid2(&c)
                .map_err(|source| KvmError::SetCpuid2 { index: id, source })?;
            regs::setup_msrs(&fd, id)?;
            regs::setup_fpu(&fd, id)?;
            regs::setup_lapic(&fd, id)?;
            if id == 0 {
                regs::setup_sregs(&mem, &fd, id, entry)?;
                regs::setup_regs(&fd, id, entry)?;
            }
            vcpus.push(fd);
        }
        mark(&mut phases, "vcpus");
        Ok(Vm {
            config,
            _kvm: kvm,
            _vm: vm,
            mem,
            state,
            keyboard,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            vcpus,
            subscribers,
            watch_faults,
            vcpu_threads: Vec::new(),
            event_thread: None,
            phases,
            _vsock_socket: vsock_socket,
            vsock_metrics,
            ram: Arc::new(ram),
            profile: None,
            sampler_thread: None,
            gave_up: false,
        })
    }

    /// Starts the device event loop and one thread per vCPU.
    pub fn run(&mut self) -> Result<(), VmmError> {
        if self.event_thread.is_some() || self.vcpus.is_empty() {
            return Err(VmmError::AlreadyStarted);
        }
        vcpu::install_kick_handler()?;
        self.event_thread = Some(event_thread::start(
            std::mem::take(&mut self.subscribers),
            std::mem::take(&mut self.watch_faults),
            self.state.clone(),
            self.ram.clone(),
            self.config.event_filter(),
        )?);
        let since = Instant::now();
        for (id, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let vcpu = Vcpu {
                fd,
                id: id as u8,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                state: self.state.clone(),
                samples: self
                    .profile
                    .as_ref()
                    .filter(|_| id == 0)
                    .map(|s| (s.clone(), since)),
                ram: self.ram.clone(),
            };
            self.vcpu_threads.push(
                std::thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || vcpu.run())
                    .map_err(|source| VmmError::Spawn {
                        thread: format!("vcpu{id}"),
                        source,
                    })?,
            );
        }
        if let (Some(_), Some(boot)) = (&self.profile, self.vcpu_threads.first()) {
            let target = boot.as_pthread_t();
            let state = self.state.clone();
            // Joined in `wait` before the vCPU threads are, so the target
            // thread is never gone while it is signalled.
            self.sampler_thread = Some(
                std::thread::Builder::new()
                    .name("guest-profiler".into())
                    .spawn(move || {
                        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Control) {
                            state.exit(ExitReason::Error(crate::error::chain(&e)));
                        }
                        let started = Instant::now();
                        while !state.stopping() && started.elapsed() < PROFILE_SPAN {
                            // SAFETY: pthread_kill on a vCPU thread that is
                            // not joined before this thread is.
                            unsafe { libc::pthread_kill(target, vcpu::kick_signal()) };
                            std::thread::sleep(PROFILE_PERIOD);
                        }
                    })
                    .map_err(|source| VmmError::Spawn {
                        thread: "guest-profiler".into(),
                        source,
                    })?,
            );
        }
        Ok(())
    }

    /// Samples the boot vCPU's instruction pointer every millisecond once
    /// the VM runs, for its first ten minutes (call before `run`);
    /// [`Vm::guest_samples`] returns them.
    /// A diagnostic: each sample is a VM exit.
    pub fn profile_guest(&mut self) {
        self.profile = Some(Arc::default());
    }

    /// The guest profile: (microseconds since `run`, guest RIP) pairs.
    pub fn guest_samples(&self) -> Vec<(u32, u64)> {
        self.profile
            .as_ref()
            .and_then(|p| p.lock().ok().map(|s| s.clone()))
            .unwrap_or_default()
    }

    /// Asks the VM to stop; `wait` returns once it has.
    pub fn stop(&self) {
        self.state.exit(ExitReason::Stopped);
    }

    /// A handle that stops the VM from another thread (a signal handler
    /// thread, say).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            state: self.state.clone(),
            keyboard: self.keyboard.clone(),
        }
    }

    /// Waits (at most `timeout`) for the VM to stop, then joins its threads.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Option<ExitReason> {
        let reason = self.state.wait(timeout)?;
        // A join fails only if the thread panicked (the panic hook has
        // printed why): a vCPU's or the event loop's `ExitOnPanic` guard
        // has made that the exit reason already, and the profiler's panic
        // only cuts its profile short.
        if let Some(t) = self.sampler_thread.take() {
            let _ = t.join();
        }
        // Threads that have not stopped within 5 s (blocked in the kernel,
        // say) are kept, not joined: `Drop` then leaves guest memory mapped
        // rather than hang or pull it from under them.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stuck = Vec::new();
        for t in self.vcpu_threads.drain(..) {
            while !t.is_finished() && Instant::now() < deadline {
                // SAFETY: pthread_kill on a thread we spawned and have not
                // joined; the kick handler does nothing.
                unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                stuck.push(t);
            }
        }
        self.vcpu_threads = stuck;
        if let Some(t) = self.event_thread.take() {
            // The stop's eventfd wakes it; it notices once it has handled
            // the events at hand.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                self.event_thread = Some(t);
            }
        }
        self.gave_up = !self.vcpu_threads.is_empty() || self.event_thread.is_some();
        Some(reason)
    }

    /// How long each step of `Vm::new` took, in order.
    pub fn build_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// Whether the host took the advice to back guest memory with
    /// transparent huge pages (see [`GuestRam`]).
    pub fn huge_pages_advised(&self) -> bool {
        self.ram.huge_advised()
    }

    /// The vsock device's counters, if the VM has one.
    pub fn vsock_metrics(&self) -> Option<&VsockMetrics> {
        self.vsock_metrics.as_deref()
    }

    pub fn boot_time(&self) -> Option<Duration> {
        self.state.boot_time()
    }

    /// CPU time of the VMM process when the boot timer fired.
    pub fn boot_cpu(&self) -> Option<Duration> {
        self.state.boot_cpu()
    }

    /// Port I/O and MMIO accesses that hit no device: (pio, mmio), each
    /// (reads, writes).
    pub fn unknown_accesses(&self) -> ((u64, u64), (u64, u64)) {
        (self.pio.unknown_accesses(), self.mmio.unknown_accesses())
    }

    pub fn read_guest(&self, addr: u64, len: usize) -> Result<Vec<u8>, VmmError> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .map_err(|source| VmmError::GuestMemory {
                what: "Vm::read_guest",
                source,
            })?;
        Ok(buf)
    }

    pub fn write_guest(&self, addr: u64, data: &[u8]) -> Result<(), VmmError> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|source| VmmError::GuestMemory {
                what: "Vm::write_guest",
                source,
            })
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.gave_up && (!self.vcpu_threads.is_empty() || self.event_thread.is_some()) {
            self.stop();
            self.wait(Some(Duration::from_secs(5)));
        }
        if !self.vcpu_threads.is_empty() || self.event_thread.is_some() {
            // A thread that would not stop may still touch guest memory:
            // it holds the mapping, which goes when the last of them ends.
            eprintln!(
                "aurae-vmm: VM threads did not stop; guest memory is kept mapped until they do"
            );
        }
    }
}
