//! `aer spawn`: its flags, and the request they make.

use std::path::PathBuf;

use aurae_proto::runtime as pb;

use crate::units::{parse_bytes, parse_millis};

/// What an instance is given, shared by `aer spawn` and `aer pod run`.
#[derive(clap::Args)]
pub struct InstanceFlags {
    /// auto, microvm or cell.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    #[arg(long, default_value_t = 0)]
    pub vcpus: u32,
    /// Memory, like 256M (no limit when unset).
    #[arg(long)]
    pub memory: Option<String>,
    /// How long to wait for the instance to answer health, like 60s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// A key of the instance's metadata record, KEY=VALUE (repeatable).
    #[arg(long = "meta")]
    pub meta: Vec<String>,
}

#[derive(clap::Args)]
pub struct SpawnArgs {
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub instance: InstanceFlags,
    /// A base initramfs instead of the configured image's.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Let a microVM run KVM itself, so it can spawn microVMs too.
    #[arg(long)]
    pub nested: bool,
}

/// `--meta KEY=VALUE` flags as a map.
pub fn meta_map(
    entries: &[String],
) -> Result<std::collections::HashMap<String, String>, FlagError> {
    entries
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| FlagError {
                    flag: "meta",
                    reason: format!("{e:?} is not KEY=VALUE"),
                })
        })
        .collect()
}

/// A size flag in MiB, which the API takes: a whole number of them, at
/// least one (`512K` would otherwise become 0, "the default").
pub fn whole_mib(flag: &'static str, text: &str) -> Result<u64, FlagError> {
    let bytes = parse_bytes(text).map_err(|reason| FlagError { flag, reason })?;
    if bytes < 1 << 20 || bytes % (1 << 20) != 0 {
        return Err(FlagError {
            flag,
            reason: format!("{text:?} is not a whole number of MiB (at least 1M)"),
        });
    }
    Ok(bytes >> 20)
}

/// A flag whose value can't be used, named.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub reason: String,
}

impl SpawnArgs {
    pub fn request(self) -> Result<pb::SpawnRequest, FlagError> {
        let backend = match self.instance.backend.as_str() {
            "auto" => pb::SpawnBackend::Auto,
            "microvm" => pb::SpawnBackend::Microvm,
            "cell" => pb::SpawnBackend::Cell,
            other => {
                return Err(FlagError {
                    flag: "backend",
                    reason: format!("{other:?} is not auto, microvm or cell"),
                })
            }
        };
        let memory_mib = match self.instance.memory.as_deref() {
            Some(m) => whole_mib("memory", m)?,
            None => 0,
        };
        let ready_timeout_ms = self
            .instance
            .timeout
            .as_deref()
            .map(parse_millis)
            .transpose()
            .map_err(|reason| FlagError {
                flag: "timeout",
                reason,
            })?;
        Ok(pb::SpawnRequest {
            name: self.name,
            vcpus: self.instance.vcpus,
            memory_mib,
            backend: backend as i32,
            initramfs: self
                .initramfs
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ready_timeout_ms,
            nested: self.nested,
            metadata: meta_map(&self.instance.meta)?,
            ..Default::default()
        })
    }
}
