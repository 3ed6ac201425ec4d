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
    /// Show the record of one of this auraed's instances: ID, or with
    /// --instance and no ID, that instance's (asked of its parent).
    Get { id: Option<String> },
    /// Set (KEY=VALUE) and remove (--remove KEY) keys of an instance's
    /// record: `aer meta set ID K=V...`, or `aer --instance a/b meta set
    /// K=V...` for instance a/b's (its parent, a, keeps it).
    Set {
        /// The instance's ID (unless --instance names it), then KEY=VALUE
        /// entries.
        args: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

/// Whose record a `meta` command is about, and where it is sent: the
/// parent that keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// The route to the parent (`None`: this auraed).
    pub route: Option<String>,
    pub id: String,
}

/// `meta get|set`'s target. Without `--instance`, `id` is one of this
/// auraed's instances. With it and no `id`, the record is the routed
/// instance's own, which its parent keeps: `a/b` asks `a` about `b`; `a`
/// asks this auraed about `a`. With both, `id` is an instance of the routed
/// one.
pub fn target(instance: Option<&str>, id: Option<&str>) -> Result<Target, TargetError> {
    match (instance, id) {
        (route, Some(id)) => Ok(Target {
            route: route.map(str::to_string),
            id: id.to_string(),
        }),
        (Some(path), None) => {
            let path = path.trim_matches('/');
            match path.rsplit_once('/') {
                Some((parent, id)) if !id.is_empty() => Ok(Target {
                    route: Some(parent.to_string()),
                    id: id.to_string(),
                }),
                None if !path.is_empty() => Ok(Target {
                    route: None,
                    id: path.to_string(),
                }),
                _ => Err(TargetError),
            }
        }
        (None, None) => Err(TargetError),
    }
}

/// A `meta` command that names no instance.
#[derive(Debug, thiserror::Error)]
#[error("name the instance: `aer meta set ID KEY=VALUE...`, or `aer --instance PATH meta set KEY=VALUE...`")]
pub struct TargetError;

/// `meta set`'s arguments: an ID first unless `--instance` names the
/// instance and the first argument is an entry.
pub fn split_set_args(instance: Option<&str>, args: &[String]) -> (Option<String>, Vec<String>) {
    match args.split_first() {
        Some((first, rest)) if instance.is_none() || !first.contains('=') => {
            (Some(first.clone()), rest.to_vec())
        }
        _ => (None, args.to_vec()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(route: Option<&str>, id: &str) -> Target {
        Target {
            route: route.map(str::to_string),
            id: id.into(),
        }
    }

    #[test]
    fn an_instance_path_names_the_record_its_parent_keeps() {
        assert_eq!(target(Some("a"), None).expect("a"), t(None, "a"));
        assert_eq!(target(Some("a/b"), None).expect("a/b"), t(Some("a"), "b"));
        assert_eq!(target(Some("a/b/c"), None).expect("c"), t(Some("a/b"), "c"));
        assert_eq!(target(None, Some("a")).expect("id"), t(None, "a"));
        assert_eq!(
            target(Some("a"), Some("b")).expect("both"),
            t(Some("a"), "b")
        );
        assert!(target(None, None).is_err());
        assert!(target(Some("/"), None).is_err());
    }

    #[test]
    fn set_takes_an_id_first_unless_the_instance_path_names_it() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            split_set_args(None, &args(&["a", "k=v"])),
            (Some("a".into()), args(&["k=v"]))
        );
        assert_eq!(
            split_set_args(Some("a"), &args(&["k=v", "x=y"])),
            (None, args(&["k=v", "x=y"]))
        );
        assert_eq!(
            split_set_args(Some("a"), &args(&["b", "k=v"])),
            (Some("b".into()), args(&["k=v"]))
        );
    }
}
