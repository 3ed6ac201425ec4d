//! A content-addressed cache of unpacked images.
//!
//! An image is unpacked (and verified) once, into
//! `<cache>/<key>/rootfs`, where the key is the digest of its manifest (for
//! an image layout) or of the archive file. Cells mount an overlay with the
//! cached rootfs as the read-only lower layer, so starting a cell from a
//! cached image copies nothing.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use sha2::Digest as _;

use super::limits::{read_capped, Budget, DOCUMENT_CAP};
use super::{source, ImageDefaults, OciError};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The layout of an unpacked entry (bumped when unpacking adds something,
/// such as the minimal /dev); entries of other layouts are not used.
const FORMAT: &str = "v2";

/// An unpacked image in the cache.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub rootfs: PathBuf,
    pub defaults: ImageDefaults,
}

/// Which version of a file: a source whose identifying file (the index or
/// manifest of a directory, or the archive itself) has the same identity
/// still has the same cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn identity(src: &Path) -> Option<FileIdentity> {
    let meta = std::fs::metadata(src).ok()?;
    let file = if meta.is_dir() {
        ["index.json", "manifest.json"]
            .iter()
            .find_map(|f| std::fs::metadata(src.join(f)).ok().filter(|m| m.is_file()))?
    } else {
        meta
    };
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Some(FileIdentity {
        dev: file.dev(),
        ino: file.ino(),
        size: file.size(),
        mtime_ns: ns(file.mtime(), file.mtime_nsec()),
        ctime_ns: ns(file.ctime(), file.ctime_nsec()),
    })
}

type Memo = HashMap<(PathBuf, PathBuf), (FileIdentity, CachedImage)>;

/// Sources already resolved to a cache entry, so that a cell start does not
/// parse the index or hash an archive again while the file is unchanged.
fn memo() -> std::sync::MutexGuard<'static, Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The cache key of the image at `src`, without unpacking it.
fn key(src: &Path) -> Result<String, OciError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Read { path, source }
    };
    let meta = std::fs::metadata(src).map_err(read(src))?;
    if meta.is_dir() {
        if let Some(digest) = source::layout_manifest_digest(src)? {
            return Ok(digest.replace(':', "-"));
        }
        // A docker-save directory: its manifest.json names everything by
        // digest, so its hash identifies the image.
        let manifest = src.join("manifest.json");
        let text = read_capped("manifest.json", &manifest, DOCUMENT_CAP)?;
        return Ok(format!(
            "docker-{}",
            hex::encode(sha2::Sha256::digest(&text))
        ));
    }
    let mut file = std::fs::File::open(src).map_err(read(src))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(read(src))?;
    Ok(format!("archive-{}", hex::encode(hasher.finalize())))
}

/// Returns the unpacked image at `src`, unpacking it into `cache` first if
/// needed, writing at most `limit` bytes (and less when the cache's file
/// system has less free space). A failed unpack leaves nothing in the
/// cache, and nothing is remembered of it.
pub fn get(src: &Path, cache: &Path, limit: u64) -> Result<CachedImage, OciError> {
    if let Some(unpacked) = already_unpacked(src, Path::new(crate::pods::IMAGES))? {
        return Ok(unpacked);
    }
    let memo_key = (src.to_path_buf(), cache.to_path_buf());
    let id = identity(src);
    if let Some(id) = id {
        if let Some((known, cached)) = memo().get(&memo_key) {
            if *known == id && cached.rootfs.is_dir() {
                return Ok(cached.clone());
            }
        }
    }
    let cached = get_uncached(src, cache, limit)?;
    if let Some(id) = id {
        memo().insert(memo_key, (id, cached.clone()));
    }
    Ok(cached)
}

/// `src` itself, if it is an image its parent already unpacked and
/// verified: an entry of the parent's cache (`defaults.json` and a
/// `rootfs/` folder, not a symlink), under `shared` (where a cell-backed
/// pod instance sees its images), on a read-only mount, as the parent binds
/// it. It is used in place. Anything else is an image to unpack and check.
pub fn already_unpacked(src: &Path, shared: &Path) -> Result<Option<CachedImage>, OciError> {
    let defaults = src.join(DEFAULTS);
    let rootfs = src.join("rootfs");
    let is_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let read_only = || {
        nix::sys::statvfs::statvfs(src)
            .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    };
    if !src.starts_with(shared) || !defaults.is_file() || !is_dir(&rootfs) || !read_only() {
        return Ok(None);
    }
    Ok(Some(CachedImage {
        defaults: super::limits::read_json("defaults.json", &defaults)?,
        rootfs,
    }))
}

/// The file of an entry that holds the image's defaults.
const DEFAULTS: &str = "defaults.json";

fn get_uncached(src: &Path, cache: &Path, limit: u64) -> Result<CachedImage, OciError> {
    let entry = cache.join(format!("{FORMAT}-{}", key(src)?));
    let defaults_file = entry.join(DEFAULTS);
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
        let mut budget = Budget::for_dir(limit, cache)?;
        let defaults = super::unpack(src, &tmp.join("rootfs"), &tmp.join("archive"), &mut budget)?;
        let json = serde_json::to_vec(&defaults).map_err(|source| OciError::Encode { source })?;
        let defaults_tmp = tmp.join(DEFAULTS);
        std::fs::write(&defaults_tmp, json).map_err(|source| OciError::Cache {
            op: "writing",
            path: defaults_tmp,
            source,
        })?;
        match std::fs::rename(&tmp, &entry) {
            Ok(()) => {}
            // Another request unpacked the same image meanwhile: use theirs.
            Err(_) if defaults_file.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(source) => {
                return Err(OciError::Cache {
                    op: "renaming into",
                    path: entry.clone(),
                    source,
                })
            }
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

/// Removes unpacks that a crash interrupted, and entries of an older
/// layout.
pub fn clean_partial(cache: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let current = format!("{FORMAT}-");
    if let Ok(entries) = std::fs::read_dir(cache) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.starts_with(".tmp-") || !name.starts_with(&current))
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    }
    removed
}
