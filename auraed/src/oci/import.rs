//! Putting an image into this auraed blob by blob (`PutImage`), the way a
//! parent gives an image to a microVM instance after it booted: each blob
//! is written into a temporary OCI layout as it arrives and checked against
//! its declared size and digest before the next one starts; the layout is
//! renamed into place (`<imports>/sha256-<hex>`, named by the manifest's
//! digest) once the manifest and every blob it names are there. Dropping an
//! unfinished [`Import`] removes its temporary layout.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::ImageManifest;
use sha2::Digest as _;

use super::limits::DOCUMENT_CAP;

/// A blob as the sender describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// The media types of an image manifest (an index is not one).
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{digest:?} is not a sha256 digest (sha256:<64 lowercase hex digits>)")]
    Digest { field: &'static str, digest: String },
    #[error("{0:?} is not an image manifest's")]
    ManifestType(String),
    #[error("{size} bytes is over the cap of {cap} for a manifest")]
    ManifestSize { size: u64, cap: u64 },
    #[error("{0}")]
    Order(&'static str),
    #[error("an empty message")]
    Empty,
    #[error("{0} was already sent")]
    Duplicate(String),
    #[error("blob {digest}: {size} bytes would bring the image to more than the limit of {limit}")]
    OverLimit {
        digest: String,
        size: u64,
        limit: u64,
    },
    #[error("blob {digest}: more bytes than its declared size of {size}")]
    Overflow { digest: String, size: u64 },
    #[error("blob {digest}: {got} bytes received, {size} declared")]
    Short { digest: String, size: u64, got: u64 },
    #[error("blob {digest}: the bytes received have digest sha256:{actual}")]
    Mismatch { digest: String, actual: String },
    #[error("manifest {digest}")]
    Manifest {
        digest: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("blob {digest}: named by the manifest as {expected} bytes, sent as {sent}")]
    ManifestSizeOf {
        digest: String,
        expected: u64,
        sent: u64,
    },
    #[error("blob {0}: named by the manifest, never sent")]
    Missing(String),
    #[error("the stream ended before it was complete")]
    Aborted,
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImportError {
    /// Whether the sender is at fault (else this host is): not a failed
    /// write, nor a manifest this host could not read back.
    pub fn is_sender_fault(&self) -> bool {
        match self {
            ImportError::Io { .. } | ImportError::OverLimit { .. } => false,
            ImportError::Manifest { source, .. } => {
                !matches!(source, oci_spec::OciSpecError::Io(_))
            }
            _ => true,
        }
    }

    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        use ImportError as E;
        match self {
            E::Digest { field, .. } => field,
            E::ManifestType(_) => "manifest.media_type",
            E::ManifestSize { .. } => "manifest.size",
            E::Manifest { .. } => "manifest",
            E::Duplicate(_) => "blob.digest",
            E::OverLimit { .. } | E::ManifestSizeOf { .. } => "blob.size",
            E::Missing(_) => "blob",
            E::Order(_) | E::Empty | E::Overflow { .. } | E::Short { .. } | E::Mismatch { .. } => {
                "data"
            }
            E::Aborted | E::Io { .. } => "part",
        }
    }

    /// Whether this host ran out of room for the image.
    pub fn is_no_space(&self) -> bool {
        match self {
            ImportError::OverLimit { .. } => true,
            ImportError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
                )
            }
            _ => false,
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImportError + 'a {
    move |source| ImportError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The hex of a `sha256:<hex>` digest.
fn sha256_hex<'a>(field: &'static str, digest: &'a str) -> Result<&'a str, ImportError> {
    super::sha256_hex(digest).ok_or_else(|| ImportError::Digest {
        field,
        digest: digest.to_string(),
    })
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What [`Import::begin`] found.
pub enum Begun {
    /// The image is already here: its layout.
    Here(PathBuf),
    Import(Box<Import>),
}

/// The blob being received.
struct Open {
    desc: Descriptor,
    file: BufWriter<File>,
    path: PathBuf,
    hasher: sha2::Sha256,
    written: u64,
}

/// An image being received.
pub struct Import {
    tmp: PathBuf,
    dest: PathBuf,
    manifest: Descriptor,
    limit: u64,
    received: u64,
    current: Option<Open>,
    /// Blobs received and checked: digest to size.
    done: std::collections::HashMap<String, u64>,
    finished: bool,
}

impl Import {
    /// Starts receiving the image whose manifest is `manifest`, into
    /// `imports`, taking at most `limit` bytes.
    pub fn begin(imports: &Path, manifest: Descriptor, limit: u64) -> Result<Begun, ImportError> {
        let hex = sha256_hex("manifest.digest", &manifest.digest)?;
        if !MANIFEST_TYPES.contains(&manifest.media_type.as_str()) {
            return Err(ImportError::ManifestType(manifest.media_type));
        }
        if manifest.size > DOCUMENT_CAP {
            return Err(ImportError::ManifestSize {
                size: manifest.size,
                cap: DOCUMENT_CAP,
            });
        }
        let dest = imports.join(format!("sha256-{hex}"));
        if dest.join("index.json").is_file() {
            return Ok(Begun::Here(dest));
        }
        let tmp = imports.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let blobs = tmp.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io("creating", &blobs))?;
        Ok(Begun::Import(Box::new(Import {
            tmp,
            dest,
            manifest,
            limit,
            received: 0,
            current: None,
            done: Default::default(),
            finished: false,
        })))
    }

    /// Starts the next blob (checking the one before).
    pub fn blob(&mut self, desc: Descriptor) -> Result<(), ImportError> {
        self.close_current()?;
        let hex = sha256_hex("blob.digest", &desc.digest)?;
        if self.done.contains_key(&desc.digest) {
            return Err(ImportError::Duplicate(desc.digest));
        }
        if desc.digest == self.manifest.digest && desc.size != self.manifest.size {
            return Err(ImportError::ManifestSizeOf {
                digest: desc.digest,
                expected: self.manifest.size,
                sent: desc.size,
            });
        }
        let total = self.received.saturating_add(desc.size);
        if total > self.limit {
            return Err(ImportError::OverLimit {
                digest: desc.digest,
                size: desc.size,
                limit: self.limit,
            });
        }
        self.received = total;
        let path = self.tmp.join("blobs/sha256").join(hex);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("creating", &path))?;
        self.current = Some(Open {
            desc,
            file: BufWriter::with_capacity(1 << 20, file),
            path,
            hasher: sha2::Sha256::new(),
            written: 0,
        });
        Ok(())
    }

    /// More bytes of the current blob (never none: an empty message
    /// would let a stream live forever without progress).
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), ImportError> {
        if bytes.is_empty() {
            return Err(ImportError::Empty);
        }
        let Some(open) = self.current.as_mut() else {
            return Err(ImportError::Order("sent before any blob"));
        };
        let written = open.written.saturating_add(bytes.len() as u64);
        if written > open.desc.size {
            return Err(ImportError::Overflow {
                digest: open.desc.digest.clone(),
                size: open.desc.size,
            });
        }
        open.file
            .write_all(bytes)
            .map_err(io("writing", &open.path))?;
        open.hasher.update(bytes);
        open.written = written;
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), ImportError> {
        let Some(mut open) = self.current.take() else {
            return Ok(());
        };
        if open.written != open.desc.size {
            return Err(ImportError::Short {
                digest: open.desc.digest,
                size: open.desc.size,
                got: open.written,
            });
        }
        let actual = hex::encode(open.hasher.finalize());
        if format!("sha256:{actual}") != open.desc.digest {
            return Err(ImportError::Mismatch {
                digest: open.desc.digest,
                actual,
            });
        }
        // On disk before the layout is named as complete.
        open.file.flush().map_err(io("writing", &open.path))?;
        open.file
            .get_ref()
            .sync_all()
            .map_err(io("syncing", &open.path))?;
        self.done.insert(open.desc.digest, open.desc.size);
        Ok(())
    }

    /// Checks that the manifest and every blob it names arrived, writes
    /// the layout's index and moves it into place; returns the layout and
    /// the bytes received.
    pub fn finish(mut self) -> Result<(PathBuf, u64), ImportError> {
        self.close_current()?;
        let digest = self.manifest.digest.clone();
        if !self.done.contains_key(&digest) {
            return Err(ImportError::Missing(digest));
        }
        let hex = sha256_hex("manifest.digest", &digest)?;
        let path = self.tmp.join("blobs/sha256").join(hex);
        let manifest = ImageManifest::from_file(&path).map_err(|source| ImportError::Manifest {
            digest: digest.clone(),
            source,
        })?;
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let named = d.digest().to_string();
            match self.done.get(&named) {
                None => return Err(ImportError::Missing(named)),
                Some(&sent) if sent != d.size() => {
                    return Err(ImportError::ManifestSizeOf {
                        digest: named,
                        expected: d.size(),
                        sent,
                    })
                }
                Some(_) => {}
            }
        }
        let layout = self.tmp.join("oci-layout");
        std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io("writing", &layout))?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": self.manifest.media_type,
                "digest": digest,
                "size": self.manifest.size,
            }],
        });
        let index_path = self.tmp.join("index.json");
        std::fs::write(&index_path, index.to_string()).map_err(io("writing", &index_path))?;
        match std::fs::rename(&self.tmp, &self.dest) {
            Ok(()) => self.finished = true,
            // The same image arrived meanwhile by another call: theirs is
            // used, and this one removed on drop.
            Err(_) if self.dest.join("index.json").is_file() => {}
            Err(source) => {
                return Err(ImportError::Io {
                    op: "renaming into",
                    path: self.dest.clone(),
                    source,
                })
            }
        }
        Ok((self.dest.clone(), self.received))
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.current = None;
        if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!("removing {}: {e}", self.tmp.display());
            }
        }
    }
}

/// Removes what imports cut short by a crash left (at start).
pub fn clean_partial(imports: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(imports) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .map(|e| e.path())
        .filter(|p| std::fs::remove_dir_all(p).is_ok())
        .collect()
}

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;
