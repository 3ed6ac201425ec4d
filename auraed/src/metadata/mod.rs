//! The instance metadata service: what an auraed knows about each instance
//! it spawned, and what its admins gave it (key/values, at most
//! [`MAX_BYTES`]).
//!
//! - [`bridge`]: the parent serves `Own` on its bridge to its instances,
//!   each authenticated by the SVID it issued: the caller's record, and no
//!   other (the request names nothing; the identity picks the record).
//! - [`service`]: on the API, `Get` and `Set` for admins, and `Own`, which
//!   an instance's auraed answers by asking its parent.

pub mod assume;
pub mod bridge;
pub mod imds;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use aurae_proto::metadata as pb;

use crate::error::ApiError;

/// The most metadata one record holds: keys and values, in bytes.
pub const MAX_BYTES: usize = 64 << 10;
/// The longest key.
pub const MAX_KEY: usize = 128;

/// Checks `entries` (keys and the total size), naming `field`.
pub fn validate(field: &str, entries: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let mut total = 0usize;
    for (k, v) in entries {
        let ok = !k.is_empty()
            && k.len() <= MAX_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !ok {
            return Err(ApiError::invalid(
                format!("{field}[{}]", crate::validation::shown(k)),
                format!(
                    "a key is 1 to {MAX_KEY} characters of a-z, A-Z, 0-9, '.', '_', '-' and '/'"
                ),
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("{total} bytes of keys and values; a record holds at most {MAX_BYTES}"),
        ));
    }
    Ok(())
}

/// What a parent knows of one instance.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub path: String,
    pub spiffe_id: String,
    pub address: String,
    pub parent_address: String,
    pub backend: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub metadata: BTreeMap<String, String>,
}

impl Record {
    pub fn from_pb(r: pb::InstanceRecord) -> Record {
        Record {
            name: r.name,
            path: r.path,
            spiffe_id: r.spiffe_id,
            address: r.address,
            parent_address: r.parent_address,
            backend: r.backend,
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            metadata: r.metadata.into_iter().collect(),
        }
    }

    pub fn to_pb(&self) -> pb::InstanceRecord {
        pb::InstanceRecord {
            name: self.name.clone(),
            path: self.path.clone(),
            spiffe_id: self.spiffe_id.clone(),
            address: self.address.clone(),
            parent_address: self.parent_address.clone(),
            backend: self.backend.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            metadata: self.metadata.clone().into_iter().collect(),
        }
    }
}

/// The records of one auraed's instances, by name.
#[derive(Default)]
pub struct Store {
    records: Mutex<HashMap<String, Record>>,
    /// Where a record's key/values are kept on disk as they change (a
    /// plain VM's, which may outlive this auraed), by name.
    saved: Mutex<HashMap<String, std::path::PathBuf>>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, record: Record) {
        self.lock().insert(record.name.clone(), record);
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
        self.saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Keeps `name`'s key/values in `path` (JSON) from now on, on every
    /// change.
    pub fn save_to(&self, name: &str, path: std::path::PathBuf) {
        self.saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), path);
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn get(&self, name: &str) -> Result<Record, ApiError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("id: no instance named {name:?}")))
    }

    /// The record whose SPIFFE ID is exactly `id`.
    pub fn by_spiffe_id(&self, id: &str) -> Option<Record> {
        self.lock().values().find(|r| r.spiffe_id == id).cloned()
    }

    /// Sets and removes keys of `name`'s record; the result must stay
    /// within [`MAX_BYTES`].
    pub fn update(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Record, ApiError> {
        validate("set", &set)?;
        let mut records = self.lock();
        let record = records
            .get_mut(name)
            .ok_or_else(|| ApiError::NotFound(format!("id: no instance named {name:?}")))?;
        let mut next = record.metadata.clone();
        for k in remove {
            next.remove(k);
        }
        next.extend(set);
        validate("set", &next)?;
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if let Some(path) = saved {
            save(&path, &next)?;
        }
        record.metadata = next;
        Ok(record.clone())
    }
}

/// Writes `metadata` to `path` as JSON (write, then rename): all or nothing.
fn save(path: &std::path::Path, metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let json = serde_json::to_vec(metadata)
        .map_err(|e| ApiError::Internal(format!("encoding metadata: {e}")))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)
        .map_err(|e| ApiError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| ApiError::io(format!("renaming {}", tmp.display()), e))
}

/// Key/values [`Store::save_to`] kept in `path`, if it holds any.
pub fn saved(path: &std::path::Path) -> Option<BTreeMap<String, String>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_key_values_follow_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metadata.json");
        let store = Store::default();
        store.insert(record("vm"));
        store.save_to("vm", path.clone());
        store
            .update("vm", [("k".to_string(), "v".to_string())].into(), &[])
            .expect("update");
        assert_eq!(
            saved(&path),
            Some([("k".to_string(), "v".to_string())].into())
        );
        store
            .update("vm", BTreeMap::new(), &["k".to_string()])
            .expect("remove");
        assert_eq!(saved(&path), Some(BTreeMap::new()));
    }

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            path: name.into(),
            spiffe_id: format!("spiffe://td/auraed/{name}"),
            address: "[fd00::2]:8443".into(),
            parent_address: "[fd00::1]:8444".into(),
            backend: "cell".into(),
            vcpus: 1,
            memory_mib: 256,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn keys_and_size_are_checked_by_name() {
        let big = BTreeMap::from([("k".to_string(), "v".repeat(MAX_BYTES))]);
        let e = validate("metadata", &big).unwrap_err();
        assert!(e.to_string().starts_with("metadata: "), "{e}");
        let bad = BTreeMap::from([("a b".to_string(), "v".to_string())]);
        let e = validate("metadata", &bad).unwrap_err();
        assert!(e.to_string().starts_with("metadata[\"a b\"]: "), "{e}");
        let ok = BTreeMap::from([("team/owner".to_string(), "db".to_string())]);
        validate("metadata", &ok).expect("a good key");
    }

    #[test]
    fn an_update_that_would_cross_the_limit_changes_nothing() {
        let s = Store::default();
        s.insert(record("a"));
        let half = "v".repeat(MAX_BYTES / 2);
        s.update("a", BTreeMap::from([("x".into(), half.clone())]), &[])
            .expect("first half");
        let e = s
            .update("a", BTreeMap::from([("y".into(), half)]), &[])
            .unwrap_err();
        assert!(e.to_string().starts_with("set: "), "{e}");
        assert_eq!(s.get("a").expect("a").metadata.len(), 1);
        let r = s
            .update("a", BTreeMap::new(), &["x".to_string()])
            .expect("remove");
        assert!(r.metadata.is_empty());
        assert_eq!(
            s.by_spiffe_id("spiffe://td/auraed/a").map(|r| r.name),
            Some("a".into())
        );
        assert!(s.by_spiffe_id("spiffe://td/auraed/b").is_none());
    }
}
