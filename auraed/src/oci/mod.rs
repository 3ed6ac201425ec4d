//! OCI images from local files: parse with `oci-spec`, verify digests, and
//! unpack the layers (with whiteouts) into a cell's root filesystem.

pub mod cache;
pub mod error;
pub mod import;
pub mod layer;
pub mod limits;
pub mod minimal_dev;
pub mod safe_path;
pub mod source;
#[cfg(test)]
mod unpack_tests;
pub mod user;

use std::path::Path;

pub use error::OciError;
use limits::Budget;

/// The hex of a `sha256:<64 lowercase hex digits>` digest, the only form
/// a blob's file is named by here.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// What the image's config asks for when a process starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

fn cache_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OciError + 'a {
    move |source| OciError::Cache {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks the image at `src` into `rootfs` (which must not exist yet),
/// writing no more than `budget` allows. `scratch` is used for archives
/// and removed afterwards.
pub fn unpack(
    src: &Path,
    rootfs: &Path,
    scratch: &Path,
    budget: &mut Budget,
) -> Result<ImageDefaults, OciError> {
    let result = unpack_inner(src, rootfs, scratch, budget);
    let _ = std::fs::remove_dir_all(scratch);
    result
}

fn unpack_inner(
    src: &Path,
    rootfs: &Path,
    scratch: &Path,
    budget: &mut Budget,
) -> Result<ImageDefaults, OciError> {
    let image = source::open(src, scratch, budget)?;
    std::fs::create_dir_all(rootfs).map_err(cache_err("creating", rootfs))?;
    for layer in &image.layers {
        let open = || source::open_layer(layer);
        layer::apply(rootfs, &layer.name, &open, true, budget)?;
    }
    // What every cell needs, made once here rather than by every cell
    // start: the minimal /dev, and the mount points (an image that has
    // something at one of those keeps it).
    let dev = rootfs.join("dev");
    minimal_dev::populate(rootfs).map_err(cache_err("making the minimal /dev in", &dev))?;
    for dir in ["proc", "tmp", "sys"] {
        let path = rootfs.join(dir);
        if std::fs::symlink_metadata(&path).is_err() {
            std::fs::create_dir(&path).map_err(cache_err("creating", &path))?;
        }
    }
    let cfg = image.config.config().clone().unwrap_or_default();
    let (uid, gid) = match cfg.user().as_deref() {
        Some(u) if !u.is_empty() => {
            let (uid, gid) = user::resolve(rootfs, u)?;
            (Some(uid), Some(gid))
        }
        _ => (None, None),
    };
    Ok(ImageDefaults {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
        uid,
        gid,
    })
}
