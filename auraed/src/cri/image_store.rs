//! The CRI's pulled images: a content-addressed blob store, and for each
//! image an OCI image layout whose blobs are hard links into it, which
//! cells unpack (and verify) through the same image cache as `RunCell`.
//!
//! ```text
//! <root>/blobs/sha256/<hex>          verified content, written once
//! <root>/layouts/<manifest hex>/     oci-layout, index.json, blobs/ (links)
//! <root>/images.json                 the records: tags and digests of each
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One image: what `ListImages` and `ImageStatus` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest's digest (`sha256:<hex>`).
    pub manifest: String,
    /// The config's digest: the image's id, as containerd reports it.
    pub config: String,
    /// Config plus layers, in bytes.
    pub size: u64,
    /// Fully qualified `registry/repository:tag` names.
    pub tags: Vec<String>,
    /// `registry/repository@sha256:<manifest>` names.
    pub digests: Vec<String>,
    /// The config's `User`, if it names one.
    pub user: Option<String>,
    /// Every blob the image holds (config, layers, manifest).
    pub blobs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0:?} is not a sha256 digest")]
    Digest(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// The hex of a `sha256:<64 hex>` digest.
pub fn sha256_hex(digest: &str) -> Result<&str, StoreError> {
    crate::oci::sha256_hex(digest).ok_or_else(|| StoreError::Digest(digest.to_string()))
}

/// A name of its own beside `path` for something being written there: two
/// pulls writing the same blob or layout never share one. Removed at open
/// if left behind.
pub fn partial_name(path: &Path) -> Result<PathBuf, StoreError> {
    let mut salt = [0u8; 8];
    getrandom::getrandom(&mut salt).map_err(|e| StoreError::Io {
        op: "naming a file being written beside",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(path.with_extension(format!("{}.partial", hex::encode(salt))))
}

pub struct ImageStore {
    root: PathBuf,
    records: Mutex<Vec<ImageRecord>>,
}

impl ImageStore {
    /// Opens (or makes) the store at `root`, removing blobs a pull left
    /// half-written.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        std::fs::create_dir_all(root.join("layouts")).map_err(io_err("creating", root))?;
        for entry in std::fs::read_dir(&blobs).map_err(io_err("reading", &blobs))? {
            let entry = entry.map_err(io_err("reading", &blobs))?;
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
            }
        }
        // Layouts a pull left half-written.
        let layouts = root.join("layouts");
        for entry in std::fs::read_dir(&layouts).map_err(io_err("reading", &layouts))? {
            let entry = entry.map_err(io_err("reading", &layouts))?;
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(io_err("removing", &p))?;
            }
        }
        let file = root.join("images.json");
        let records = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                path: file.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("reading", &file)(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            records: Mutex::new(records),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob of `digest` is (or goes).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    /// The image layout of the manifest `digest`.
    pub fn layout(&self, manifest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("layouts").join(sha256_hex(manifest)?))
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Vec<ImageRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.records().clone()
    }

    /// The image `name` names: its id (full or a unique prefix of 12 or
    /// more hex digits), a tag or a digest reference (normalized by the
    /// caller).
    pub fn find(&self, name: &str) -> Option<ImageRecord> {
        let records = self.records();
        let by_name = records.iter().find(|r| {
            r.config == name
                || r.manifest == name
                || r.tags.iter().any(|t| t == name)
                || r.digests.iter().any(|d| d == name)
        });
        if let Some(r) = by_name {
            return Some(r.clone());
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() < 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut hits = records
            .iter()
            .filter(|r| r.config.trim_start_matches("sha256:").starts_with(hex));
        match (hits.next(), hits.next()) {
            (Some(r), None) => Some(r.clone()),
            _ => None,
        }
    }

    /// Writes the layout of a pulled image whose blobs are all in the
    /// store: `manifest_media_type` is the manifest's as the registry gave it.
    pub fn write_layout(
        &self,
        record: &ImageRecord,
        manifest_media_type: &str,
        manifest_size: u64,
    ) -> Result<(), StoreError> {
        let dir = self.layout(&record.manifest)?;
        // Named by the manifest's digest: one that is there is this one.
        if dir.join("index.json").is_file() {
            return Ok(());
        }
        let tmp = partial_name(&dir)?;
        let blobs = tmp.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        for digest in &record.blobs {
            let link = blobs.join(sha256_hex(digest)?);
            let blob = self.blob_path(digest)?;
            std::fs::hard_link(&blob, &link).map_err(io_err("linking", &blob))?;
        }
        let write = |name: &str, text: String| {
            let p = tmp.join(name);
            std::fs::write(&p, text).map_err(io_err("writing", &p))
        };
        write("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#.into())?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": manifest_media_type,
                "digest": record.manifest,
                "size": manifest_size,
            }],
        });
        write("index.json", index.to_string())?;
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            // Another pull of the same image put it there first.
            Err(_) if dir.join("index.json").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(io_err("renaming", &tmp)(e)),
        }
    }

    /// Adds (or updates) an image: its tags move here from any other image.
    pub fn add(&self, record: ImageRecord) -> Result<(), StoreError> {
        let mut records = self.records();
        for r in records.iter_mut() {
            r.tags.retain(|t| !record.tags.contains(t));
        }
        match records.iter_mut().find(|r| r.manifest == record.manifest) {
            Some(r) => {
                for t in record.tags {
                    if !r.tags.contains(&t) {
                        r.tags.push(t);
                    }
                }
                for d in record.digests {
                    if !r.digests.contains(&d) {
                        r.digests.push(d);
                    }
                }
            }
            None => records.push(record),
        }
        self.save(&records)
    }

    /// Removes the image `name` names, and the blobs no other image holds.
    /// `None` when there is no such image.
    pub fn remove(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let Some(found) = self.find(name) else {
            return Ok(None);
        };
        let mut records = self.records();
        records.retain(|r| r.manifest != found.manifest);
        self.save(&records)?;
        let kept: BTreeSet<&String> = records.iter().flat_map(|r| &r.blobs).collect();
        let layout = self.layout(&found.manifest)?;
        match std::fs::remove_dir_all(&layout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &layout)(e)),
        }
        for digest in found.blobs.iter().filter(|d| !kept.contains(d)) {
            let p = self.blob_path(digest)?;
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &p)(e)),
            }
        }
        Ok(Some(found))
    }

    /// Removes those of `digests` that no image holds (the blobs of a pull
    /// that failed); a blob already gone is fine.
    pub fn discard_unheld(&self, digests: &[String]) -> Result<(), StoreError> {
        let records = self.records();
        let held: BTreeSet<&String> = records.iter().flat_map(|r| &r.blobs).collect();
        for digest in digests.iter().filter(|d| !held.contains(d)) {
            let p = self.blob_path(digest)?;
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &p)(e)),
            }
        }
        Ok(())
    }

    /// Bytes and inodes the store's blobs use.
    pub fn usage(&self) -> (u64, u64) {
        let dir = self.root.join("blobs/sha256");
        let mut bytes = 0;
        let mut inodes = 0;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if let Ok(m) = e.metadata() {
                    bytes += m.len();
                    inodes += 1;
                }
            }
        }
        (bytes, inodes)
    }

    fn save(&self, records: &[ImageRecord]) -> Result<(), StoreError> {
        let file = self.root.join("images.json");
        let tmp = self.root.join("images.json.partial");
        let text = serde_json::to_vec_pretty(records).map_err(|source| StoreError::Parse {
            path: file.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &file).map_err(io_err("renaming", &tmp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn record(m: char, tags: &[&str], blobs: &[String]) -> ImageRecord {
        ImageRecord {
            manifest: digest(m),
            config: digest(m),
            size: 1,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            digests: vec![],
            user: None,
            blobs: blobs.to_vec(),
        }
    }

    #[test]
    fn a_tag_moves_to_the_newer_image_and_removal_keeps_shared_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let shared = digest('1');
        for d in [&shared, &digest('2'), &digest('3')] {
            std::fs::write(store.blob_path(d).unwrap(), b"x").unwrap();
        }
        store
            .add(record('a', &["r/x:1"], &[shared.clone(), digest('2')]))
            .unwrap();
        store
            .add(record(
                'b',
                &["r/x:1", "r/x:2"],
                &[shared.clone(), digest('3')],
            ))
            .unwrap();
        assert!(store.find("r/x:1").unwrap().manifest == digest('b'));
        assert!(store.find(&digest('a')).unwrap().tags.is_empty());
        // By a unique id prefix.
        assert_eq!(store.find("bbbbbbbbbbbb").unwrap().manifest, digest('b'));
        assert!(store.find("bbbb").is_none());
        store.remove("r/x:2").unwrap().unwrap();
        assert!(store.blob_path(&shared).unwrap().exists());
        assert!(!store.blob_path(&digest('3')).unwrap().exists());
        // The records survive a reopen.
        let again = ImageStore::open(dir.path()).unwrap();
        assert_eq!(again.list().len(), 1);
        assert!(again.remove("r/x:2").unwrap().is_none());
    }
}
