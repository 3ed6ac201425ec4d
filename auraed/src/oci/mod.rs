//! OCI images from local files: parse with `oci-spec`, verify digests, and
//! unpack the layers (with whiteouts) into a cell's root filesystem.

pub mod cache;
pub mod layer;
pub mod minimal_dev;
pub mod safe_path;
pub mod source;
pub mod user;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image: {0}")]
    Source(String),
    #[error("image digest mismatch: {0}")]
    Digest(String),
    #[error("image layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
    #[error("image: {0}")]
    Io(String),
    #[error("image user: {0}")]
    User(String),
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

/// Unpacks the image at `src` into `rootfs` (which must not exist yet).
/// `scratch` is used for archives and removed afterwards.
pub fn unpack(src: &Path, rootfs: &Path, scratch: &Path) -> Result<ImageDefaults, OciError> {
    let result = unpack_inner(src, rootfs, scratch);
    let _ = std::fs::remove_dir_all(scratch);
    result
}

fn unpack_inner(src: &Path, rootfs: &Path, scratch: &Path) -> Result<ImageDefaults, OciError> {
    let image = source::open(src, scratch)?;
    std::fs::create_dir_all(rootfs)
        .map_err(|e| OciError::Io(format!("{}: {e}", rootfs.display())))?;
    for layer in &image.layers {
        let open = || source::open_layer(layer);
        layer::apply(rootfs, &layer.name, &open, true)?;
    }
    // What every cell needs, made once here rather than by every cell
    // start: the minimal /dev, and the mount points (an image that has
    // something at one of those keeps it).
    minimal_dev::populate(rootfs)
        .map_err(|e| OciError::Io(format!("{}/dev: {e}", rootfs.display())))?;
    for dir in ["proc", "tmp", "sys"] {
        let path = rootfs.join(dir);
        if std::fs::symlink_metadata(&path).is_err() {
            std::fs::create_dir(&path)
                .map_err(|e| OciError::Io(format!("{}: {e}", path.display())))?;
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
