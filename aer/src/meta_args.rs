//! `aer metadata` and `aer meta get|set`: an instance's record.

use std::collections::HashMap;

use aurae_proto::metadata as pb;
use serde_json::{json, Value};

/// A `KEY=VALUE` argument that isn't one.
#[derive(Debug, thiserror::Error)]
#[error("KEY=VALUE argument {0:?}: it has no '='")]
pub struct EntryError(String);
use crate::text::escape;

#[derive(clap::Subcommand)]
pub enum MetaCmd {
    /// Show the record of one of this auraed's instances.
    Get { id: String },
    /// Set (KEY=VALUE) and remove (--remove KEY) keys of an instance's
    /// record.
    Set {
        id: String,
        entries: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

/// The request `aer meta set` makes.
pub fn set_request(
    id: String,
    entries: &[String],
    remove: Vec<String>,
) -> Result<pb::SetRequest, EntryError> {
    let mut set = HashMap::new();
    for e in entries {
        let (k, v) = e.split_once('=').ok_or_else(|| EntryError(e.clone()))?;
        set.insert(k.to_string(), v.to_string());
    }
    Ok(pb::SetRequest { id, set, remove })
}

pub fn record_json(r: &pb::InstanceRecord) -> Value {
    let metadata: std::collections::BTreeMap<_, _> = r.metadata.iter().collect();
    json!({
        "name": r.name,
        "path": r.path,
        "spiffe_id": r.spiffe_id,
        "address": r.address,
        "parent_address": r.parent_address,
        "backend": r.backend,
        "vcpus": r.vcpus,
        "memory_mib": r.memory_mib,
        "metadata": metadata,
    })
}

/// A record as `key: value` lines, then its metadata as `KEY=VALUE`.
pub fn record_text(r: &pb::InstanceRecord) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("name", r.name.as_str()),
        ("path", &r.path),
        ("spiffe_id", &r.spiffe_id),
        ("address", &r.address),
        ("parent_address", &r.parent_address),
        ("backend", &r.backend),
    ] {
        out.push_str(&format!("{k}: {}\n", escape(v)));
    }
    out.push_str(&format!(
        "vcpus: {}\nmemory_mib: {}\n",
        r.vcpus, r.memory_mib
    ));
    let mut keys: Vec<_> = r.metadata.iter().collect();
    keys.sort();
    for (k, v) in keys {
        out.push_str(&format!("{}={}\n", escape(k), escape(v)));
    }
    out
}
