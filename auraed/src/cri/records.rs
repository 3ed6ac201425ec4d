//! What a restarted auraed takes its pods back by (`[cri] pod_restart =
//! "keep"`): each sandbox's record in its folder (`sandbox.json`) and each
//! container's beside it (`containers/<id>.json`), written as they change.
//! The CRI's own messages (configs, mounts, seccomp profiles) are kept in
//! their protobuf encoding, so that a record never loses a field.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aurae_proto::cri;
use aurae_proto::runtime as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::state::{Container, Run, Sandbox};

const SANDBOX: &str = "sandbox.json";
const CONTAINERS: &str = "containers";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("decoding {what} in {path}")]
    Decode {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub instance: String,
    pub handler: String,
    pub created_at: i64,
    pub ip: String,
    pub resolv_conf: Option<PathBuf>,
    /// `PodSandboxConfig`, protobuf, in hex.
    pub config: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub cell: String,
    /// `ContainerConfig`, protobuf, in hex.
    pub config: String,
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    pub image_inside: PathBuf,
    pub log_path: Option<PathBuf>,
    /// Each `CellMount`, protobuf, in hex.
    pub mounts: Vec<String>,
    pub user: Option<(u32, u32)>,
    pub groups: Vec<u32>,
    /// A `SeccompProfile`, protobuf, in hex.
    pub seccomp: Option<String>,
    pub created_at: i64,
    pub state: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub executable_id: String,
}

fn decode<M: Message + Default>(
    hex_text: &str,
    what: &'static str,
    path: &Path,
) -> Result<M, RecordError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| RecordError::Decode {
        what,
        path: path.to_path_buf(),
        source,
    };
    let bytes = hex::decode(hex_text).map_err(|e| err(Box::new(e)))?;
    M::decode(bytes.as_slice()).map_err(|e| err(Box::new(e)))
}

/// Writes `value` as JSON at `path` (a file of a name of its own, then
/// renamed), readable by root only (a container's config holds its
/// environment, secrets included), making its folder (0700).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let werr = |source| RecordError::Write {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(value).map_err(|e| werr(std::io::Error::other(e)))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(werr)?;
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{n}.tmp"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&json))
        .map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RecordError> {
    let bytes = std::fs::read(path).map_err(|source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RecordError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a sandbox's record into its folder `dir`.
pub fn save_sandbox(dir: &Path, s: &Sandbox) -> Result<(), RecordError> {
    write_json(
        &dir.join(SANDBOX),
        &SandboxRecord {
            id: s.id.clone(),
            instance: s.instance.clone(),
            handler: s.handler.clone(),
            created_at: s.created_at,
            ip: s.ip.clone(),
            resolv_conf: s.resolv_conf.clone(),
            config: hex::encode(s.config.encode_to_vec()),
        },
    )
}

/// The sandbox record in `dir`, if there is one.
pub fn read_sandbox(
    dir: &Path,
) -> Result<Option<(SandboxRecord, cri::PodSandboxConfig)>, RecordError> {
    let path = dir.join(SANDBOX);
    if !path.exists() {
        return Ok(None);
    }
    let r: SandboxRecord = read_json(&path)?;
    let config = decode(&r.config, "the pod's config", &path)?;
    Ok(Some((r, config)))
}

fn container_path(sandbox_dir: &Path, id: &str) -> PathBuf {
    sandbox_dir.join(CONTAINERS).join(format!("{id}.json"))
}

/// Writes a container's record (as it is now) into its sandbox's folder;
/// nothing once the sandbox is removed (its folder gone).
pub fn save_container(sandbox_dir: &Path, c: &Container) -> Result<(), RecordError> {
    if !sandbox_dir.join(SANDBOX).exists() {
        return Ok(());
    }
    let run = c.run();
    write_json(
        &container_path(sandbox_dir, &c.id),
        &ContainerRecord {
            id: c.id.clone(),
            sandbox_id: c.sandbox_id.clone(),
            cell: c.cell.clone(),
            config: hex::encode(c.config.encode_to_vec()),
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            image_ref: c.image_ref.clone(),
            image_inside: c.image_inside.clone(),
            log_path: c.log_path.clone(),
            mounts: c
                .mounts
                .iter()
                .map(|m| hex::encode(m.encode_to_vec()))
                .collect(),
            user: c.user,
            groups: c.groups.clone(),
            seccomp: c.seccomp.as_ref().map(|s| hex::encode(s.encode_to_vec())),
            created_at: c.created_at,
            state: run.state,
            started_at: run.started_at,
            finished_at: run.finished_at,
            exit_code: run.exit_code,
            reason: run.reason,
            message: run.message,
            executable_id: run.executable_id,
        },
    )
}

/// Removes a container's record; one that isn't there is no error.
pub fn remove_container(sandbox_dir: &Path, id: &str) -> std::io::Result<()> {
    match std::fs::remove_file(container_path(sandbox_dir, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The containers recorded in a sandbox's folder, rebuilt (not running
/// anything: their loggers are the caller's to start). One whose record
/// can't be read is logged and left out.
pub fn read_containers(sandbox_dir: &Path) -> Vec<Container> {
    let Ok(entries) = std::fs::read_dir(sandbox_dir.join(CONTAINERS)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match container_of(&path) {
            Ok(c) => out.push(c),
            Err(e) => tracing::error!("{}", crate::error::chain(&e)),
        }
    }
    out
}

fn container_of(path: &Path) -> Result<Container, RecordError> {
    let r: ContainerRecord = read_json(path)?;
    let config: cri::ContainerConfig = decode(&r.config, "the container's config", path)?;
    let mounts = r
        .mounts
        .iter()
        .map(|m| decode::<pb::CellMount>(m, "a mount", path))
        .collect::<Result<Vec<_>, _>>()?;
    let seccomp = r
        .seccomp
        .as_deref()
        .map(|s| decode::<pb::SeccompProfile>(s, "the seccomp profile", path))
        .transpose()?;
    Ok(Container {
        id: r.id,
        sandbox_id: r.sandbox_id,
        cell: r.cell,
        config,
        image: r.image,
        image_id: r.image_id,
        image_ref: r.image_ref,
        image_inside: r.image_inside,
        log_path: r.log_path,
        mounts,
        user: r.user,
        groups: r.groups,
        seccomp,
        created_at: r.created_at,
        run: Mutex::new(Run {
            state: r.state,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            reason: r.reason,
            message: r.message,
            executable_id: r.executable_id,
            starting: false,
        }),
        logger: Mutex::new(None),
        reopen: Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_survives_a_round_trip_through_its_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Container {
            id: "c1".into(),
            sandbox_id: "s1".into(),
            cell: "c-c1".into(),
            config: cri::ContainerConfig {
                command: vec!["sh".into()],
                log_path: "main.log".into(),
                ..Default::default()
            },
            image: "busybox".into(),
            image_id: "sha256:aa".into(),
            image_ref: "busybox@sha256:bb".into(),
            image_inside: "/etc/aurae/pods/c-c1".into(),
            log_path: Some("/logs/main.log".into()),
            mounts: vec![pb::CellMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: true,
                propagation: pb::MountPropagation::Bidirectional as i32,
            }],
            user: Some((1, 2)),
            groups: vec![3],
            seccomp: None,
            created_at: 7,
            run: Mutex::new(Run {
                state: 1,
                started_at: 8,
                executable_id: "c-c1/main".into(),
                ..Default::default()
            }),
            logger: Mutex::new(None),
            reopen: Mutex::new(None),
        };
        save_container(dir.path(), &c).expect("save");
        assert!(
            read_containers(dir.path()).is_empty(),
            "no record once the sandbox's is gone"
        );
        std::fs::write(dir.path().join(SANDBOX), b"{}").expect("sandbox.json");
        save_container(dir.path(), &c).expect("save");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(container_path(dir.path(), "c1"))
            .expect("record")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "root's only: it holds the environment");
        let back = read_containers(dir.path());
        assert_eq!(back.len(), 1);
        let b = &back[0];
        assert_eq!(b.config, c.config);
        assert_eq!(b.mounts, c.mounts);
        assert_eq!((b.user, b.groups.clone()), (Some((1, 2)), vec![3]));
        assert_eq!(b.run().executable_id, "c-c1/main");
        assert_eq!(b.run().state, 1);
        remove_container(dir.path(), "c1").expect("remove");
        assert!(read_containers(dir.path()).is_empty());
        remove_container(dir.path(), "c1").expect("a second removal is no error");
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SANDBOX), b"{\"id\": 1}").expect("write");
        let e = read_sandbox(dir.path()).expect_err("damaged");
        assert!(crate::error::chain(&e).contains("sandbox.json"), "{e}");
        assert!(read_sandbox(&dir.path().join("none"))
            .expect("none")
            .is_none());
    }
}
