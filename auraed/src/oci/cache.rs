//! A content-addressed cache of unpacked images.
//!
//! An image is unpacked (and verified) once, into
//! `<cache>/<key>/rootfs`, where the key is the digest of its manifest (for
//! an image layout) or of the archive file. Cells mount an overlay with the
//! cached rootfs as the read-only lower layer, so starting a cell from a
//! cached image copies nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;

use super::{source, ImageDefaults, OciError};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An unpacked image in the cache.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub rootfs: PathBuf,
    pub defaults: ImageDefaults,
}

/// The cache key of the image at `src`, without unpacking it.
fn key(src: &Path) -> Result<String, OciError> {
    let meta =
        std::fs::metadata(src).map_err(|e| OciError::Source(format!("{}: {e}", src.display())))?;
    if meta.is_dir() {
        if let Some(digest) = source::layout_manifest_digest(src)? {
            return Ok(digest.replace(':', "-"));
        }
        // A docker-save directory: its manifest.json names everything by
        // digest, so its hash identifies the image.
        let manifest = src.join("manifest.json");
        let text = std::fs::read(&manifest)
            .map_err(|e| OciError::Source(format!("{}: {e}", manifest.display())))?;
        return Ok(format!(
            "docker-{}",
            hex::encode(sha2::Sha256::digest(&text))
        ));
    }
    let mut file = std::fs::File::open(src)
        .map_err(|e| OciError::Source(format!("{}: {e}", src.display())))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| OciError::Source(format!("{}: {e}", src.display())))?;
    Ok(format!("archive-{}", hex::encode(hasher.finalize())))
}

/// Returns the unpacked image at `src`, unpacking it into `cache` first if
/// needed. A failed unpack leaves nothing in the cache.
pub fn get(src: &Path, cache: &Path) -> Result<CachedImage, OciError> {
    let entry = cache.join(key(src)?);
    let defaults_file = entry.join("defaults.json");
    if let Ok(text) = std::fs::read(&defaults_file) {
        if let Ok(defaults) = serde_json::from_slice(&text) {
            return Ok(CachedImage {
                rootfs: entry.join("rootfs"),
                defaults,
            });
        }
    }
    let tmp = cache.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let result = (|| {
        let defaults = super::unpack(src, &tmp.join("rootfs"), &tmp.join("archive"))?;
        let json = serde_json::to_vec(&defaults).map_err(|e| OciError::Io(e.to_string()))?;
        std::fs::write(tmp.join("defaults.json"), json)
            .map_err(|e| OciError::Io(format!("{}: {e}", tmp.display())))?;
        match std::fs::rename(&tmp, &entry) {
            Ok(()) => {}
            // Another request unpacked the same image meanwhile: use theirs.
            Err(_) if defaults_file.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(OciError::Io(format!("{}: {e}", entry.display()))),
        }
        Ok(CachedImage {
            rootfs: entry.join("rootfs"),
            defaults,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Removes unpacks that a crash interrupted.
pub fn clean_partial(cache: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(cache) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(".tmp-")
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    }
    removed
}
