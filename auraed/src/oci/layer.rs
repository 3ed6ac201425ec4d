//! Applying one layer (a tar stream) onto a root filesystem, with OCI
//! whiteouts, without ever writing outside the root.

use std::io::Read;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::safe_path::{archive_components, resolve};
use super::OciError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Opens the (decompressed) layer stream; called once per pass.
pub type Opener<'a> = dyn Fn() -> std::io::Result<Box<dyn Read>> + 'a;

/// Applies the layer `name` to `root`. With `whiteouts`, `.wh.` entries
/// delete what lower layers put there; otherwise they are ordinary files.
pub fn apply(root: &Path, name: &str, open: &Opener<'_>, whiteouts: bool) -> Result<(), OciError> {
    let err = |reason: String| OciError::Layer {
        layer: name.to_string(),
        reason,
    };
    if whiteouts {
        apply_whiteouts(root, open).map_err(err)?;
    }
    let reader = open().map_err(|e| err(format!("opening: {e}")))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    let entries = archive
        .entries()
        .map_err(|e| err(format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| err(format!("reading the archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| err(format!("bad entry name: {e}")))?
            .into_owned();
        let parts = archive_components(&path).map_err(|e| err(format!("entry {e}")))?;
        let Some((last, dirs)) = parts.split_last() else {
            continue;
        };
        if whiteouts && last.to_string_lossy().starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let parent_rel: PathBuf = dirs.iter().collect();
        let parent =
            resolve(root, &parent_rel, true).map_err(|e| err(format!("entry {path:?}: {e}")))?;
        std::fs::create_dir_all(&parent).map_err(|e| err(format!("creating {parent:?}: {e}")))?;
        let dst = parent.join(last);
        let kind = entry.header().entry_type();
        if let Ok(meta) = std::fs::symlink_metadata(&dst) {
            let keep = meta.is_dir() && kind == EntryType::Directory;
            if !keep {
                let removed = if meta.is_dir() {
                    std::fs::remove_dir_all(&dst)
                } else {
                    std::fs::remove_file(&dst)
                };
                removed.map_err(|e| err(format!("replacing {dst:?}: {e}")))?;
            }
        }
        match kind {
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| err(format!("entry {path:?}: bad link name: {e}")))?
                    .ok_or_else(|| err(format!("entry {path:?}: hard link without a target")))?
                    .into_owned();
                let parts = archive_components(&target)
                    .map_err(|e| err(format!("hard link {path:?}: {e}")))?;
                let src = resolve(root, &parts.iter().collect::<PathBuf>(), false)
                    .map_err(|e| err(format!("hard link {path:?}: {e}")))?;
                std::fs::hard_link(&src, &dst)
                    .map_err(|e| err(format!("hard link {path:?} -> {target:?}: {e}")))?;
            }
            // Images don't get to create device nodes; /dev is provided.
            EntryType::Char | EntryType::Block => {}
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Fifo => {
                entry
                    .unpack(&dst)
                    .map_err(|e| err(format!("unpacking {path:?}: {e}")))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// First pass: whiteouts remove entries of lower layers.
fn apply_whiteouts(root: &Path, open: &Opener<'_>) -> Result<(), String> {
    let reader = open().map_err(|e| format!("opening: {e}"))?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .map_err(|e| format!("reading the archive: {e}"))?
    {
        let entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .into_owned();
        let parts = archive_components(&path).map_err(|e| format!("entry {e}"))?;
        let Some((last, dirs)) = parts.split_last() else {
            continue;
        };
        let last = last.to_string_lossy();
        let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) else {
            continue;
        };
        let parent = resolve(root, &dirs.iter().collect::<PathBuf>(), true)
            .map_err(|e| format!("whiteout {path:?}: {e}"))?;
        if last == OPAQUE {
            if let Ok(children) = std::fs::read_dir(&parent) {
                for child in children.filter_map(Result::ok) {
                    remove_any(&child.path())?;
                }
            }
        } else if !hidden.is_empty() {
            remove_any(&parent.join(hidden))?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), String> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(|e| format!("removing {path:?}: {e}"))
}
