//! `RunVirtualMachine`: a long-lived VM with a kernel, initramfs parts and
//! disks that the user supplies, booted by `aurae-vmm` in a cell of its own
//! on a TAP on this auraed's bridge. No auraed runs inside, and nothing is
//! configured in the guest: the address auraed assigned it is announced in
//! its status. The VMM writes the serial console and its own messages to
//! files in the VM's folder, which auraed follows (`Logs`), so that the VM
//! can outlive auraed (see `adopt`); its exit reason is what the VMM said
//! as it stopped.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;

mod adopt;

pub use adopt::{discard, discard_parts, left_running, Survivor};

use super::undo::Undo;
use super::vmm_process::{vmm_cell_spec, vmm_process, Disk, VmmArgs};
use super::{console_tail, Instances, VMM_STOP_GRACE};
use crate::cells::{Cell, CellContext};
use crate::cgroup::CellCgroup;
use crate::error::ApiError;
use crate::executables::{Executable, Output, Placement};
use crate::logs::Stream;
use crate::metadata::imds;
use crate::net::{self, Veth, INSTANCE_PREFIX_LEN};

/// A plain VM's parameters, validated.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub kernel: PathBuf,
    /// Concatenated in this order into the VM's initrd.
    pub initramfs: Vec<PathBuf>,
    /// The root disk first, if any: /dev/vda, /dev/vdb...
    pub disks: Vec<Disk>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// What its metadata record holds for it (validated).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// How long a VM that can't boot has to show it before RunVirtualMachine
/// answers: a VMM that rejects the kernel or a disk exits within this.
const EARLY_EXIT: Duration = Duration::from_millis(500);

/// Where a VM's folder keeps its record's key/values as an admin changes
/// them (read back when the VM is taken back after a restart).
const METADATA_FILE: &str = "metadata.json";

/// What the VMM prints as the VM stops (`aurae-vmm`'s main).
const STOPPED_LINE: &str = "aurae-vmm: VM stopped: ";
/// What it prints when SIGUSR1 asks the guest to shut down.
const ASKED_LINE: &str = "aurae-vmm: asked the guest to shut down";

/// A running (or stopped) plain VM.
pub struct Vm {
    pub name: String,
    pub kernel: PathBuf,
    pub address: Ipv6Addr,
    /// Its link on auraed's bridge: the host end of its uplink (its TAP is
    /// in the VMM's network namespace; see [`net::make_vm_link`]).
    pub tap_name: String,
    pub created_at: SystemTime,
    /// The VMM; its output is the guest's console.
    pub init: Arc<Executable>,
    cell: VmCell,
    uplink: Mutex<Option<Veth>>,
    /// The link-local metadata endpoint in its namespace.
    imds: Mutex<Option<tokio::task::JoinHandle<()>>>,
    dir: PathBuf,
    index: u32,
    torn_down: AtomicBool,
    /// Held for a whole teardown, so that a second one waits for it.
    tearing_down: tokio::sync::Mutex<()>,
    /// Stop asked the guest to shut down (the VMM says so too, in its
    /// output, which a chatty console may push out of the buffer).
    asked: AtomicBool,
}

impl Vm {
    pub fn running(&self) -> bool {
        !self.torn_down.load(Ordering::SeqCst) && self.init.exit_info().is_none()
    }

    /// The VMM's boot timer, if the guest wrote its mark.
    pub fn boot_ms(&self) -> Option<u64> {
        super::microvm::boot_ms(&self.init)
    }

    /// The VM's address with its prefix, as the status shows it.
    pub fn address_text(&self) -> String {
        format!("{}/{INSTANCE_PREFIX_LEN}", self.address)
    }

    /// Why the VM stopped; `None` while it runs.
    pub fn exit_reason(&self) -> Option<String> {
        let exit = self.init.exit_info()?;
        let reason = reason_text(stopped_word(&self.init).as_deref(), exit.exit);
        Some(
            if self.asked.load(Ordering::SeqCst) || was_asked(&self.init) {
                format!("{reason}, asked to shut down")
            } else {
                reason
            },
        )
    }

    /// `Stop`: asks the guest to shut down (the VMM presses Ctrl-Alt-Del on
    /// SIGUSR1) and gives it `grace` to do so, then tears the VM down as
    /// [`Vm::tear_down`] does. SIGKILL skips the asking; another signal is
    /// refused, as a VM has no process to give it to.
    pub async fn stop(&self, signal: Signal, grace: Duration) -> Result<(), ApiError> {
        match signal {
            Signal::SIGKILL => {}
            Signal::SIGTERM if self.running() => {
                // It fails only if the VMM has just exited (its exit is
                // published once its output is read): nothing to ask.
                match self.init.signal(Signal::SIGUSR1) {
                    Ok(()) => self.asked.store(true, Ordering::SeqCst),
                    Err(e) => tracing::info!("vm {}: not asked to shut down: {e}", self.name),
                }
                if tokio::time::timeout(grace, self.init.wait()).await.is_err() {
                    tracing::info!(
                        "vm {}: the guest did not shut down within {grace:?}; stopping it",
                        self.name
                    );
                }
            }
            Signal::SIGTERM => {}
            other => {
                return Err(ApiError::invalid(
                    "signal",
                    format!(
                        "{other} can't be given to a VM: SIGTERM asks its guest to shut down, \
                         SIGKILL stops it at once"
                    ),
                ))
            }
        }
        self.tear_down().await
    }

    /// Stops the VMM (SIGTERM: it stops the VM; SIGKILL after
    /// [`VMM_STOP_GRACE`]), then removes its cell (its network namespace,
    /// with its TAP), its uplink and folder.
    /// Idempotent; a second caller waits until the first has finished.
    pub async fn tear_down(&self) -> Result<(), ApiError> {
        let _one_at_a_time = self.tearing_down.lock().await;
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(e) = self.init.stop(Signal::SIGTERM, VMM_STOP_GRACE).await {
            tracing::warn!("vm {}: stopping its VMM: {e}", self.name);
        }
        // Its metadata socket holds its network namespace: closed first.
        super::networks::end_task(&self.imds).await;
        // Every step runs; the first failure is returned.
        let destroyed = self.cell.destroy().await;
        // Gone with the namespace already, as a rule.
        let uplink_removed = super::networks::remove_taken(&self.uplink).await;
        let dir_removed = super::microvm::remove_dir(&self.dir);
        destroyed.and(uplink_removed).and(dir_removed)
    }

    /// The address index it held of its auraed's bridge.
    pub(super) fn index(&self) -> u32 {
        self.index
    }
}

/// The VMM's cell: made by this auraed, or left running by a previous one
/// and adopted (its cgroup is all that is left of it: its files were on
/// that auraed's tmpfs).
enum VmCell {
    Made(Arc<Cell>),
    Adopted(CellCgroup),
}

impl VmCell {
    async fn destroy(&self) -> Result<(), ApiError> {
        match self {
            VmCell::Made(cell) => cell.destroy().await,
            VmCell::Adopted(cgroup) => {
                let cg = cgroup.clone();
                crate::blocking::run("removing an adopted VM's cell", move || {
                    cg.remove(Duration::from_secs(10))
                })
                .await??;
                Ok(())
            }
        }
    }
}

/// The files of a VM's folder that hold its VMM's output, so that it
/// outlives this auraed: the serial console (written by the VMM, capped at
/// 64 MiB) and the VMM's own messages.
fn vm_outputs(dir: &Path) -> Vec<(PathBuf, Stream)> {
    vec![
        (dir.join("console"), Stream::Stdout),
        (dir.join("vmm.log"), Stream::Stderr),
    ]
}

/// What the VMM said as the VM stopped (its `ExitReason`, debug-printed),
/// if it said anything.
fn stopped_word(vmm: &Executable) -> Option<String> {
    let sub = vmm.logs.subscribe(false);
    // The VMM writes it to its stderr; the guest's console is its stdout,
    // so a guest can't forge it.
    sub.history
        .iter()
        .rev()
        .filter(|l| l.stream == crate::logs::Stream::Stderr)
        .find_map(|l| {
            let line = String::from_utf8_lossy(&l.data);
            line.split_once(STOPPED_LINE)
                .map(|(_, reason)| reason.trim().to_string())
        })
}

/// Whether the VMM said it asked the guest to shut down (on its stderr).
fn was_asked(vmm: &Executable) -> bool {
    let sub = vmm.logs.subscribe(false);
    sub.history.iter().any(|l| {
        l.stream == crate::logs::Stream::Stderr
            && String::from_utf8_lossy(&l.data).contains(ASKED_LINE)
    })
}

/// The VMM's last word as a reason.
fn reason_text(said: Option<&str>, exit: crate::sys::pidfd::Exit) -> String {
    match said {
        Some("Shutdown") => "guest shutdown (triple fault or halt)".into(),
        Some("Reset") => "guest reset (i8042)".into(),
        Some("PowerOff") => "guest power-off".into(),
        Some("Stopped") => "stopped by auraed".into(),
        Some(s) if s.starts_with("Error(") => format!(
            "vCPU error: {}",
            s.trim_start_matches("Error(").trim_end_matches(')')
        ),
        Some(s) if s.starts_with("DebugExit(") => format!(
            "debug exit {}",
            s.trim_start_matches("DebugExit(").trim_end_matches(')')
        ),
        _ => match exit {
            crate::sys::pidfd::Exit::Signal(n) => format!("the VMM died: killed by signal {n}"),
            crate::sys::pidfd::Exit::Code(n) => format!("the VMM died: exit status {n}"),
            crate::sys::pidfd::Exit::Unknown => {
                "the VMM exited without a word (adopted: its status is unknown)".into()
            }
        },
    }
}

impl Instances {
    /// Boots a plain VM; on error nothing is left behind.
    pub async fn run_vm(
        &self,
        spec: &VmSpec,
        cells: &CellContext,
        log_bytes: usize,
    ) -> Result<Vm, ApiError> {
        let mut undo = Undo::default();
        match self.vm_steps(spec, cells, log_bytes, &mut undo).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                undo.rollback(self).await;
                Err(e)
            }
        }
    }

    async fn vm_steps(
        &self,
        spec: &VmSpec,
        cells: &CellContext,
        log_bytes: usize,
        undo: &mut Undo,
    ) -> Result<Vm, ApiError> {
        // 1. The bridge and an address on it.
        let bridge = self.ensure_bridge().await?;
        let index = self.take_index();
        undo.index = Some(index);
        let address = self.ula().instance_addr(index);

        // 2. The VM's folder, with its initrd when there are several parts.
        let dir = self.vm_dir(&spec.name);
        undo.dir = Some(dir.clone());
        let (parts, d, parent) = (
            spec.initramfs.clone(),
            dir.clone(),
            self.cfg.vms_dir.clone(),
        );
        let initrd = crate::blocking::run("writing the VM's initrd", move || {
            concat_initrd(&parent, &d, &parts)
        })
        .await??;

        // 3. The VMM's cell, with a network namespace of its own, and its
        // links there: the TAP, and the uplink to the bridge.
        let cell = Cell::create(
            vmm_cell_spec(&spec.name, spec.memory_mib, cells, false),
            cells.clone(),
        )
        .await?;
        undo.cell = Some(cell.clone());
        let (host, peer, tap) = self.vm_link_names(index)?;
        let (pidfd, _) = cell.namespaces();
        let uplink =
            net::make_vm_link(pidfd, (&host, &peer), &bridge.link(), &tap, imds::ADDR).await?;
        undo.veth = Some(uplink.clone());
        // Its record, and the link-local endpoint in its namespace, before
        // the guest runs: an early question gets its answer.
        let endpoint = self
            .vm_metadata(
                &spec.name,
                address,
                (spec.vcpus, spec.memory_mib),
                &spec.metadata,
                pidfd,
            )
            .await?;
        undo.metadata = Some((spec.name.clone(), endpoint));

        // 4. The VMM; a VM that can't boot shows it at once.
        let outputs = vm_outputs(&dir);
        for (path, _) in &outputs {
            std::fs::File::create(path)
                .map_err(|e| ApiError::io(format!("creating {}", path.display()), e))?;
        }
        let process = vmm_process(&VmmArgs {
            vmm: &self.cfg.vmm,
            kernel: &spec.kernel,
            console: Some(&outputs[0].0),
            initrd: initrd.as_deref(),
            mem_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            taps: std::slice::from_ref(&tap),
            macs: &[],
            cmdline: spec.cmdline.clone(),
            nested: false,
            disks: &spec.disks,
            volumes: None,
        })?;
        let command = process.command.clone();
        let init = Executable::start_with(
            format!("{}/vmm", spec.name),
            process,
            Placement::Cell(cell.clone()),
            log_bytes,
            "vm",
            Output::Files {
                stderr: outputs[1].0.clone(),
                follow: outputs,
                opts: Default::default(),
            },
        )
        .await?;
        undo.init = Some(init.clone());
        // A VMM that exits at once without having run the VM (no word of
        // it stopping) refused the kernel or a disk; a guest that ran and
        // stopped quickly is a VM like any other.
        if let Ok(exit) = tokio::time::timeout(EARLY_EXIT, init.wait()).await {
            if stopped_word(&init).is_none() {
                return Err(ApiError::FailedPrecondition(format!(
                    "kernel: the VM did not boot ({:?}); its console:\n{}",
                    exit.exit,
                    console_tail(&init, 20)
                )));
            }
        }
        // What a restarted auraed adopts it by.
        let created_at = SystemTime::now();
        adopt::write_record(
            &dir,
            &adopt::VmRecord {
                name: spec.name.clone(),
                kernel: spec.kernel.clone(),
                index,
                tap: uplink.host.clone(),
                tap_index: uplink.host_index,
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                metadata: spec.metadata.clone(),
                vmm_pid: init.pid,
                vmm_start: adopt::start_ticks(init.pid).unwrap_or_else(|| {
                    tracing::warn!(
                        "vm {}: no start time for its VMM (pid {}): it won't be taken back \
                         after a restart",
                        spec.name,
                        init.pid
                    );
                    0
                }),
                created_at_unix_ms: adopt::unix_ms(created_at),
                command,
            },
        )?;
        let endpoint = undo.metadata.take().map(|(_, task)| task);
        undo.init = None;
        undo.cell = None;
        undo.index = None;
        undo.dir = None;
        let uplink = undo.veth.take();
        Ok(Vm {
            name: spec.name.clone(),
            kernel: spec.kernel.clone(),
            address,
            tap_name: host,
            created_at,
            init,
            cell: VmCell::Made(cell),
            uplink: Mutex::new(uplink),
            imds: Mutex::new(endpoint),
            dir,
            index,
            torn_down: AtomicBool::new(false),
            tearing_down: tokio::sync::Mutex::new(()),
            asked: AtomicBool::new(false),
        })
    }

    /// Releases what a VM held of this auraed's: its address and record.
    pub fn forget_vm(&self, vm: &Vm) {
        self.forget_record(&vm.name);
        self.release_index(vm.index());
    }

    /// VM `name`'s folder. A dot: no instance name has one, so no
    /// instance's folder is this.
    fn vm_dir(&self, name: &str) -> PathBuf {
        self.cfg.vms_dir.join(format!("vm.{name}"))
    }

    /// The names of VM `index`'s links: its uplink's host end (on the
    /// bridge) and temporary peer name, and its TAP (in its namespace;
    /// named like a microVM's, so that guest MACs, derived from the TAP's
    /// name, differ).
    pub(super) fn vm_link_names(&self, index: u32) -> Result<(String, String, String), ApiError> {
        let stem: String = self.cfg.bridge.chars().take(9).collect();
        Ok((
            net::host_link_name(&format!("{stem}m"), index)?,
            net::host_link_name(&format!("{stem}n"), index)?,
            net::host_link_name(&format!("{stem}t"), index)?,
        ))
    }

    /// Records what VM `name` may read of itself and serves it on
    /// 169.254.169.254 in the VM's network namespace (`netns`, a pidfd of
    /// a process in it), where only the VM's traffic arrives. Returns the
    /// endpoint's task; on error, nothing is left.
    async fn vm_metadata(
        &self,
        name: &str,
        address: Ipv6Addr,
        (vcpus, memory_mib): (u8, u64),
        metadata: &std::collections::BTreeMap<String, String>,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<tokio::task::JoinHandle<()>, ApiError> {
        let listener = net::listen_in(netns, imds::ADDR, imds::PORT).await?;
        let source = imds::Source::Records {
            store: self.metadata.clone(),
            name: name.to_string(),
        };
        let task = imds::serve(listener, source)
            .map_err(|e| ApiError::io("serving the VM's link-local metadata endpoint", e))?;
        let recorded = self.serve_metadata(crate::metadata::Record {
            name: name.to_string(),
            path: self.child_path(name),
            spiffe_id: String::new(),
            address: format!("{address}/{INSTANCE_PREFIX_LEN}"),
            parent_address: String::new(),
            backend: "vm".into(),
            vcpus: vcpus.into(),
            memory_mib,
            metadata: metadata.clone(),
        });
        if let Err(e) = recorded {
            task.abort();
            return Err(e);
        }
        // An admin's changes outlive this auraed, as the VM may.
        self.metadata
            .save_to(name, self.vm_dir(name).join(METADATA_FILE));
        Ok(task)
    }
}

/// Makes the VM's folder; with several initramfs parts, writes them
/// there, concatenated (each padded to 4 bytes, as the kernel reads cpio
/// archives back to back), and returns that file; with one, returns it.
fn concat_initrd(
    parent: &Path,
    dir: &Path,
    parts: &[PathBuf],
) -> Result<Option<PathBuf>, ApiError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| ApiError::io(what, e)
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io("creating", parent))?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::warn!("removed a stale VM folder {}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", dir)(e)),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    match parts {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => {
            let path = dir.join("initrd");
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("creating", &path))?;
            for part in many {
                let mut f = std::fs::File::open(part).map_err(io("reading", part))?;
                let n = std::io::copy(&mut f, &mut out).map_err(io("copying", part))?;
                let pad = (4 - n % 4) % 4;
                out.write_all(&[0u8; 3][..pad as usize])
                    .map_err(io("writing", &path))?;
            }
            Ok(Some(path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pidfd::Exit;

    #[test]
    fn the_vmms_last_word_is_the_reason() {
        assert_eq!(
            reason_text(Some("Shutdown"), Exit::Code(0)),
            "guest shutdown (triple fault or halt)"
        );
        assert_eq!(
            reason_text(Some("Stopped"), Exit::Code(0)),
            "stopped by auraed"
        );
        assert_eq!(
            reason_text(Some("Error(\"KVM_RUN: EFAULT\")"), Exit::Code(1)),
            "vCPU error: \"KVM_RUN: EFAULT\""
        );
        assert_eq!(
            reason_text(None, Exit::Signal(9)),
            "the VMM died: killed by signal 9"
        );
    }

    #[test]
    fn initramfs_parts_are_concatenated_on_4_byte_boundaries() {
        let t = tempfile::tempdir().expect("tempdir");
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::fs::write(&a, b"12345").expect("a");
        std::fs::write(&b, b"xy").expect("b");
        let dir = t.path().join("vms/vm-x");
        let out = concat_initrd(&t.path().join("vms"), &dir, &[a.clone(), b])
            .expect("concat")
            .expect("a file");
        assert_eq!(std::fs::read(out).expect("read"), b"12345\0\0\0xy\0\0");
        let one =
            concat_initrd(&t.path().join("vms"), &dir, std::slice::from_ref(&a)).expect("one part");
        assert_eq!(one, Some(a));
    }
}
