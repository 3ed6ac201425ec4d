//! `aer cell run` options that confine a cell's processes further: a
//! seccomp profile and a read-only root.

use aurae_proto::runtime as pb;
use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct ConfineArgs {
    /// The seccomp profile: `runtime/default`, `unconfined` (the default),
    /// or the path of an OCI or Docker JSON profile.
    #[arg(long, value_name = "PROFILE")]
    pub seccomp: Option<String>,
    /// The image's root is read-only (its /tmp, /dev and mounts are not).
    #[arg(long)]
    pub read_only_root: bool,
    /// A path inside the cell to hide (repeatable).
    #[arg(long = "mask", value_name = "PATH")]
    pub masked_paths: Vec<String>,
    /// A path inside the cell to make read-only (repeatable).
    #[arg(long = "read-only", value_name = "PATH")]
    pub readonly_paths: Vec<String>,
}

impl ConfineArgs {
    /// The request's seccomp profile; a profile file is read here, so
    /// auraed gets its text.
    pub fn seccomp(&self) -> Result<Option<pb::SeccompProfile>, String> {
        use pb::seccomp_profile::Kind;
        let (kind, json) = match self.seccomp.as_deref() {
            None | Some("unconfined") => return Ok(None),
            Some("runtime/default") => (Kind::RuntimeDefault, String::new()),
            Some(path) => (
                Kind::Custom,
                std::fs::read_to_string(path).map_err(|e| format!("--seccomp: {path}: {e}"))?,
            ),
        };
        Ok(Some(pb::SeccompProfile {
            kind: kind as i32,
            json,
        }))
    }
}
