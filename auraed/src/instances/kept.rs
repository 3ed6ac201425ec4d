//! Instances that outlive their auraed: an instance spawned with `keep` (a
//! CRI pod's, as `[cri] pod_restart = "keep"` has it) runs on when auraed
//! stops or crashes, and the next auraed takes it back.
//!
//! Every cell-backed instance has a folder on disk (`kept_dir/<cell>`) with
//! its auraed's output (`console`: pipes to auraed would break with it); a
//! kept one also has a record there (`instance.json`) of what a restarted
//! auraed needs: its name, SPIFFE ID, address index and port, its link on
//! the bridge, and the pids and start times of its cell's init and of its
//! auraed (so that a reused pid is never taken for them).
//!
//! A kept microVM instance (one on a pod network: its VMM's namespace holds
//! the pod's CNI device and the uplink to the bridge) has the same folder
//! and record; its process is its VMM, which writes the guest's serial
//! console (`console`) and its own messages (`vmm`) there, and its link is
//! the uplink's host end. Its initrd (which holds the instance's keys) is
//! never in it: it stays on the cells' tmpfs, removed once the guest runs
//! (the VMM loaded it at start).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::backend::{Backend, Choice};
use super::{Instance, Instances};
use crate::cells::adopt::{in_cgroup, start_ticks};
use crate::cells::Cell;
use crate::cgroup::{CellCgroup, Hierarchy};
use crate::error::ApiError;
use crate::executables::{Executable, Output};
use crate::log_files::FollowOpts;
use crate::logs::Stream;
use crate::net::Veth;

const RECORD: &str = "instance.json";
const CONSOLE: &str = "console";
/// A kept microVM's VMM's own messages (its standard error).
const VMM_LOG: &str = "vmm";
/// How an instance's console is followed: read every second (a quiet file,
/// one per instance: an inotify instance each would run into the per-user
/// limit with a hundred pods), emptied past 8 MiB (its auraed appends),
/// and after a restart only its tail.
const CONSOLE_POLL: Duration = Duration::from_secs(1);
const CONSOLE_CAP: u64 = 8 << 20;
/// A spawned kept microVM's files are read more often when quiet (at most
/// every 100 ms; often while they grow, see `log_files::follow`): its
/// spawn waits for the guest's "serving" line on its console. Taken back
/// after a restart, they are read as a cell-backed instance's console is.
const VM_CONSOLE_POLL: Duration = Duration::from_millis(100);

/// What a restarted auraed needs to take an instance back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    /// Its cell (a pre-started instance's keeps its provisional name).
    pub cell: String,
    pub spiffe_id: String,
    pub index: u32,
    pub port: u16,
    pub host_network: bool,
    /// Its veth's host end on the bridge (none in the host's network).
    pub veth: Option<(String, u32)>,
    pub reason: String,
    /// The instance's auraed.
    pub init_pid: i32,
    pub init_start: u64,
    pub command: Vec<String>,
    /// Its cell's init, and the namespaces that cell has of its own.
    pub cell_init_pid: i32,
    pub cell_init_start: u64,
    pub ns_flags: i32,
    pub created_at_unix_ms: u64,
    pub ready_after_ms: u64,
    pub shared: Vec<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub metadata: BTreeMap<String, String>,
    /// A microVM's `init` is its VMM (a record without it is a cell's).
    #[serde(default = "cell_backend")]
    pub backend: Backend,
}

fn cell_backend() -> Backend {
    Backend::Cell
}

/// An instance whose auraed still runs in its cell, found at start.
pub struct Survivor {
    pub record: InstanceRecord,
    pub dir: PathBuf,
    pub cgroup: CellCgroup,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a folder holds no record to take an instance back by.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    #[error("parsing it")]
    Parse(#[source] serde_json::Error),
}

fn read_record(dir: &Path) -> Result<InstanceRecord, RecordError> {
    let bytes = std::fs::read(dir.join(RECORD)).map_err(RecordError::Read)?;
    serde_json::from_slice(&bytes).map_err(RecordError::Parse)
}

/// The kept instances of `kept_dir` whose auraed and cell init still run in
/// their cell; every other folder there is removed (the cells of those are
/// removed with every leftover cell), and logged.
pub fn left_running(kept_dir: &Path, hierarchy: &Hierarchy) -> Vec<Survivor> {
    let Ok(entries) = std::fs::read_dir(kept_dir) else {
        return Vec::new();
    };
    let cells = hierarchy.cells();
    let mut found = Vec::new();
    for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
        let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let kept = match read_record(&dir) {
            Ok(r) if r.cell != folder => Err(format!("its record names cell {:?}", r.cell)),
            Ok(r) => cells
                .iter()
                .find(|c| c.name() == r.cell)
                .cloned()
                .ok_or_else(|| "its cell is gone".to_string())
                .and_then(|cgroup| {
                    let alive = |pid: i32, start: u64| {
                        start_ticks(pid) == Some(start)
                            && in_cgroup(pid, hierarchy.mount(), cgroup.dir())
                    };
                    if alive(r.init_pid, r.init_start) && alive(r.cell_init_pid, r.cell_init_start)
                    {
                        Ok((r, cgroup))
                    } else {
                        Err("its auraed is gone".to_string())
                    }
                }),
            Err(e) => Err(format!("no record ({})", crate::error::chain(&e))),
        };
        match kept {
            Ok((record, cgroup)) => found.push(Survivor {
                record,
                dir,
                cgroup,
            }),
            Err(why) => {
                // Not a kept instance's (or one that ended): its folder goes.
                tracing::info!("{}: not taken back: {why}", dir.display());
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::error!("removing {}: {e}", dir.display());
                }
            }
        }
    }
    found
}

/// Removes what is left of an instance that is not taken back: its cell
/// (everything in it) and its folder.
pub fn discard(name: &str, cgroup: &CellCgroup, dir: &Path) {
    if let Err(e) = cgroup.remove(Duration::from_secs(10)) {
        tracing::error!("instance {name}: removing its cell: {e}");
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::error!("instance {name}: removing {}: {e}", dir.display());
    }
}

impl Instances {
    /// A cell-backed instance's folder on disk, made empty, and its
    /// auraed's output into it.
    pub(super) fn console_files(&self, cell: &str) -> Result<(PathBuf, Output), ApiError> {
        let dir = self.cfg.kept_dir.join(cell);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApiError::io(format!("removing {}", dir.display()), e)),
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::io(format!("creating {}", dir.display()), e))?;
        let console = dir.join(CONSOLE);
        std::fs::File::create(&console)
            .map_err(|e| ApiError::io(format!("creating {}", console.display()), e))?;
        Ok((
            dir,
            Output::Files {
                stderr: console.clone(),
                follow: vec![(console, Stream::Stderr)],
                opts: FollowOpts {
                    poll: Some(CONSOLE_POLL),
                    tail: None,
                    cap: Some(CONSOLE_CAP),
                },
            },
        ))
    }

    /// A kept microVM's folder (see the module).
    pub(super) fn kept_vm_dir(&self, name: &str) -> PathBuf {
        self.cfg.kept_dir.join(name)
    }

    /// A kept microVM's output files, made empty in its folder `dir`: the
    /// guest's console (for `--console`) and the VMM's messages, both
    /// followed into its logs.
    pub(super) fn vm_console_files(dir: &Path) -> Result<(PathBuf, Output), ApiError> {
        let (console, messages) = (dir.join(CONSOLE), dir.join(VMM_LOG));
        for f in [&console, &messages] {
            std::fs::File::create(f)
                .map_err(|e| ApiError::io(format!("creating {}", f.display()), e))?;
        }
        Ok((
            console.clone(),
            Output::Files {
                stderr: messages.clone(),
                follow: vm_follow(dir),
                // Not emptied: the VMM writes it at its own offset (not
                // appending), and stops at its own limit (64 MiB).
                opts: FollowOpts {
                    poll: Some(VM_CONSOLE_POLL),
                    tail: None,
                    cap: None,
                },
            },
        ))
    }

    /// Writes what a restarted auraed takes `i` back by (see the module).
    pub fn keep(&self, i: &Instance, vcpus: u32, memory_mib: u64) -> Result<(), ApiError> {
        let refuse = |why: &str| {
            Err(ApiError::FailedPrecondition(format!(
                "instance {}: can't be kept across a restart: {why}",
                i.name
            )))
        };
        let microvm = i.choice.backend == Backend::MicroVm;
        if microvm {
            // A TAP on the bridge would be removed as left behind at the
            // next start; an uplink goes only with its VMM's namespace.
            if i.tap.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                return refuse("a microVM outlives its auraed only on a pod network");
            }
            if !i
                .dir
                .as_ref()
                .is_some_and(|d| d.starts_with(&self.cfg.kept_dir))
            {
                return refuse("its folder is not in instances.kept_dir");
            }
        }
        // Out of its own mount namespace, this auraed keeps cells' files on
        // disk, where the next one removes them as leftovers: a cell kept
        // there would lose its root.
        if !crate::sys::mount_ns::is_own() {
            tracing::warn!(
                "instance {}: not kept across a restart (auraed has no mount namespace of its \
                 own, so cells' files are on disk and removed at its next start)",
                i.name
            );
            return Ok(());
        }
        if !i.networks().is_empty() {
            return refuse("it has devices on host bridges");
        }
        let Some(dir) = &i.dir else {
            return refuse("it has no folder");
        };
        let (Some(init_start), Some((cell_pid, cell_start, ns_flags))) =
            (start_ticks(i.init.pid), i.cell.identity())
        else {
            return refuse("its processes have no start time");
        };
        let veth = i
            .veth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|v| (v.host.clone(), v.host_index));
        let record = InstanceRecord {
            name: i.name.clone(),
            cell: i.cell.name.clone(),
            spiffe_id: i.spiffe_id.clone(),
            index: i.index,
            port: i.address.port(),
            host_network: i.host_network,
            veth,
            reason: i.choice.reason.clone(),
            init_pid: i.init.pid,
            init_start,
            command: i.init.command.clone(),
            cell_init_pid: cell_pid,
            cell_init_start: cell_start,
            ns_flags,
            created_at_unix_ms: unix_ms(i.created_at),
            ready_after_ms: i.ready_after.as_millis() as u64,
            shared: i.shared.clone(),
            vcpus,
            memory_mib,
            metadata: self
                .metadata
                .get(&i.name)
                .map(|r| r.metadata)
                .unwrap_or_default(),
            backend: i.choice.backend,
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| ApiError::Internal(format!("encoding the instance's record: {e}")))?;
        let tmp = dir.join(format!("{RECORD}.tmp"));
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, dir.join(RECORD)))
            .map_err(|e| ApiError::io(format!("writing {}", dir.join(RECORD).display()), e))?;
        i.keep.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Takes back an instance a previous auraed left running: its address
    /// index, its veth (or address) on the bridge, its cell and its auraed,
    /// followed through its console file, and a link to it.
    pub async fn adopt_instance(
        &self,
        s: Survivor,
        cells: &crate::cells::CellContext,
        log_bytes: usize,
    ) -> Result<Instance, ApiError> {
        let mount = cells.hierarchy.mount();
        let r = s.record;
        let cell = Cell::adopt(
            &r.cell,
            crate::cells::adopt::Survivor {
                cgroup: s.cgroup,
                init_pid: r.cell_init_pid,
                init_start: r.cell_init_start,
                ns_flags: r.ns_flags,
                // (On the previous auraed's tmpfs, out of reach: removing
                // it finds nothing.)
                state_dir: cells.state_dir.join("cells").join(&r.cell),
                created_at: UNIX_EPOCH + Duration::from_millis(r.created_at_unix_ms),
            },
            mount,
        )?;
        let pid = r.init_pid;
        let fd = crate::sys::pidfd::open(pid)
            .map_err(|e| ApiError::io(format!("pidfd_open({pid})"), e))?;
        if start_ticks(pid) != Some(r.init_start) || !in_cgroup(pid, mount, cell.cgroup.dir()) {
            return Err(ApiError::FailedPrecondition(format!(
                "instance {}: pid {pid} is no longer its auraed",
                r.name
            )));
        }
        // The bridge is there (its link is on it): found, and taken as this
        // auraed's own, as the auraed that made it had it.
        let bridge = self.ensure_bridge().await?;
        self.own_bridge().await;
        let microvm = r.backend == Backend::MicroVm;
        let veth = match &r.veth {
            Some((host, index)) => {
                let found = crate::net::link_index_of(host).await.ok().flatten();
                // A microVM's uplink is named as this auraed names them.
                let named = !microvm || self.vm_link_names(r.index)?.0 == *host;
                if found != Some(*index) || !named {
                    return Err(ApiError::FailedPrecondition(format!(
                        "instance {}: its link {host} is gone or is another link",
                        r.name
                    )));
                }
                Some(Veth {
                    host: host.clone(),
                    host_index: *index,
                    peer: if microvm { crate::net::UPLINK } else { "eth0" }.into(),
                })
            }
            None if microvm => {
                return Err(ApiError::FailedPrecondition(format!(
                    "instance {}: its record names no uplink",
                    r.name
                )))
            }
            None => None,
        };
        let address = self.ula().instance_addr(r.index);
        let host_address = r.host_network.then(|| crate::net::HostAddress {
            link: bridge.link().name,
            index: bridge.link().index,
            addr: address,
        });
        self.claim_index(r.index)?;
        let addr = SocketAddr::new(address.into(), r.port);
        let expected = super::link::ExpectedId::new(r.spiffe_id.clone());
        let linked = self
            .link()
            .and_then(|l| {
                l.channel_expecting(addr, expected.clone()).map_err(|e| {
                    ApiError::Internal(format!("the link to instance {}: {e}", r.name))
                })
            })
            .and_then(|channel| {
                let (what, follow, poll, cap) = if microvm {
                    ("vmm", vm_follow(&s.dir), CONSOLE_POLL, None)
                } else {
                    let console = vec![(s.dir.join(CONSOLE), Stream::Stderr)];
                    ("init", console, CONSOLE_POLL, Some(CONSOLE_CAP))
                };
                let init = Executable::adopt(
                    format!("{}/{what}", r.name),
                    Some(r.cell.clone()),
                    r.command.clone(),
                    (pid, fd),
                    (
                        follow,
                        FollowOpts {
                            poll: Some(poll),
                            tail: Some(log_bytes as u64),
                            cap,
                        },
                    ),
                    log_bytes,
                )?;
                Ok((channel, init))
            });
        let (channel, init) = match linked {
            Ok(l) => l,
            Err(e) => {
                self.release_index(r.index);
                return Err(e);
            }
        };
        Ok(Instance {
            name: r.name.clone(),
            spiffe_id: r.spiffe_id,
            address: addr,
            choice: Choice {
                backend: r.backend,
                reason: format!("{}; taken back after a restart", r.reason),
            },
            ready_after: Duration::from_millis(r.ready_after_ms),
            boot_ms: None,
            created_at: UNIX_EPOCH + Duration::from_millis(r.created_at_unix_ms),
            init,
            cell,
            veth: Mutex::new(veth),
            host_address: Mutex::new(host_address),
            host_network: r.host_network,
            tap: Mutex::new(None),
            networks: Mutex::new(Vec::new()),
            dir: Some(s.dir),
            index: r.index,
            channel,
            expected,
            torn_down: AtomicBool::new(false),
            tearing_down: tokio::sync::Mutex::new(()),
            imds: Mutex::new(None),
            imds_listener: Mutex::new(None),
            shared: r.shared,
            pod: Mutex::new(None),
            keep: AtomicBool::new(true),
        })
    }
}

/// What a kept microVM's logs follow: the guest's console and the VMM's
/// messages, in its folder `dir`.
fn vm_follow(dir: &Path) -> Vec<(PathBuf, Stream)> {
    vec![
        (dir.join(CONSOLE), Stream::Stdout),
        (dir.join(VMM_LOG), Stream::Stderr),
    ]
}

/// What [`Instances::remember`] needs of an adopted instance's spec.
pub fn spec_of(r: &InstanceRecord) -> super::InstanceSpec {
    super::InstanceSpec {
        name: r.name.clone(),
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        nested: false,
        preference: match r.backend {
            Backend::MicroVm => super::backend::Preference::MicroVm,
            Backend::Cell => super::backend::Preference::Cell,
        },
        kernel: None,
        initramfs: None,
        ready_timeout: Duration::ZERO,
        read_only: Vec::new(),
        metadata: r.metadata.clone(),
        networks: Vec::new(),
        host_ipc: false,
        host_pid: false,
        host_network: r.host_network,
        keep: true,
        pod_network: None,
        files: Vec::new(),
        volumes: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(backend: Backend) -> InstanceRecord {
        InstanceRecord {
            name: "cri-0123".into(),
            cell: "cri-0123".into(),
            spiffe_id: "spiffe://td/auraed/cri-0123".into(),
            index: 3,
            port: 8443,
            host_network: false,
            veth: Some(("aurae0v3".into(), 17)),
            reason: "asked for".into(),
            init_pid: 40,
            init_start: 41,
            command: vec!["aurae-vmm".into()],
            cell_init_pid: 42,
            cell_init_start: 43,
            ns_flags: 0,
            created_at_unix_ms: 1,
            ready_after_ms: 2,
            shared: Vec::new(),
            vcpus: 1,
            memory_mib: 384,
            metadata: BTreeMap::new(),
            backend,
        }
    }

    #[test]
    fn a_record_keeps_its_backend_and_one_written_before_microvms_is_a_cells() {
        let vm = record(Backend::MicroVm);
        let json = serde_json::to_value(&vm).expect("json");
        assert_eq!(json["backend"], "microvm");
        let back: InstanceRecord = serde_json::from_value(json.clone()).expect("parse");
        assert_eq!(back, vm);
        let mut old = json;
        old.as_object_mut().expect("object").remove("backend");
        let back: InstanceRecord = serde_json::from_value(old).expect("parse");
        assert_eq!(back.backend, Backend::Cell);
        assert_eq!(
            spec_of(&back).preference,
            super::super::backend::Preference::Cell
        );
        assert_eq!(
            spec_of(&vm).preference,
            super::super::backend::Preference::MicroVm
        );
    }

    #[test]
    fn a_kept_microvm_follows_its_console_and_its_vmm_messages() {
        let t = tempfile::tempdir().expect("tempdir");
        let (console, output) = Instances::vm_console_files(t.path()).expect("files");
        assert_eq!(console, t.path().join(CONSOLE));
        assert!(console.is_file() && t.path().join(VMM_LOG).is_file());
        let Output::Files {
            stderr,
            follow,
            opts,
        } = output
        else {
            panic!("files, not pipes");
        };
        assert_eq!(stderr, t.path().join(VMM_LOG));
        assert_eq!(follow, vm_follow(t.path()));
        assert_eq!(follow[0], (console, Stream::Stdout));
        assert_eq!(opts.cap, None, "the VMM writes at its own offset");
        assert_eq!(opts.poll, Some(VM_CONSOLE_POLL));
    }
}
