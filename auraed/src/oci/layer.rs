//! Applying one layer (a tar stream) onto a root filesystem, with OCI
//! whiteouts, without ever writing outside the root and within a budget.
//!
//! Entry types: files, directories, symbolic and hard links are unpacked;
//! FIFOs are created as FIFOs; device nodes under `/dev` are skipped (the
//! cached root filesystem gets the minimal `/dev` instead, see
//! `minimal_dev`), and anywhere else refused, as is any other type.

use std::io::Read;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::limits::{Budget, ENTRY_COST};
use super::safe_path::{archive_components, resolve};
use super::OciError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Opens the (decompressed) layer stream; called once per pass.
pub type Opener<'a> = dyn Fn() -> std::io::Result<Box<dyn Read>> + 'a;

/// What an entry costs in the budget: its contents (as the header says:
/// the tar crate writes no more than that) plus a fixed cost.
fn cost<R: Read>(entry: &tar::Entry<'_, R>) -> u64 {
    let link = entry.link_name_bytes().map_or(0, |l| l.len() as u64);
    ENTRY_COST.saturating_add(entry.size()).saturating_add(link)
}

fn read_err(layer: &str) -> impl Fn(std::io::Error) -> OciError + '_ {
    move |source| OciError::LayerRead {
        layer: layer.to_string(),
        source,
    }
}

fn write_err<'a>(
    layer: &'a str,
    op: &'static str,
    entry: &'a Path,
) -> impl FnOnce(std::io::Error) -> OciError + 'a {
    move |source| OciError::Write {
        layer: layer.to_string(),
        op,
        entry: entry.to_path_buf(),
        source,
    }
}

/// Applies the layer `layer` to `root`, charging every entry to `budget`
/// before it is written. With `whiteouts`, `.wh.` entries delete what
/// lower layers put there; otherwise they are ordinary files.
pub fn apply(
    root: &Path,
    layer: &str,
    open: &Opener<'_>,
    whiteouts: bool,
    budget: &mut Budget,
) -> Result<(), OciError> {
    if whiteouts {
        // The first pass charges the same entries as the second, on a copy
        // of the budget: a layer that crosses it is refused before any of
        // its entries is written.
        apply_whiteouts(root, layer, open, &mut budget.clone())?;
    }
    let reader = open().map_err(read_err(layer))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(read_err(layer))? {
        let mut entry = entry.map_err(read_err(layer))?;
        budget.charge(layer, cost(&entry))?;
        let path = entry.path().map_err(read_err(layer))?.into_owned();
        let parts = archive_components(&path).map_err(|source| OciError::EntryPath {
            layer: layer.to_string(),
            source,
        })?;
        let Some((last, dirs)) = parts.split_last() else {
            continue;
        };
        if whiteouts && last.to_string_lossy().starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Char | EntryType::Block if dirs.first().is_some_and(|d| d == "dev") => {
                continue
            }
            EntryType::Char | EntryType::Block => {
                return Err(OciError::Device {
                    layer: layer.to_string(),
                    entry: path,
                })
            }
            // Metadata for the entries that follow.
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            other => {
                return Err(OciError::EntryType {
                    layer: layer.to_string(),
                    entry: path,
                    kind: other,
                })
            }
        }
        let parent_rel: PathBuf = dirs.iter().collect();
        let parent = resolve(root, &parent_rel, true).map_err(|source| OciError::EntryPath {
            layer: layer.to_string(),
            source,
        })?;
        std::fs::create_dir_all(&parent).map_err(write_err(
            layer,
            "creating the directories of",
            &path,
        ))?;
        let dst = parent.join(last);
        if let Ok(meta) = std::fs::symlink_metadata(&dst) {
            let keep = meta.is_dir() && kind == EntryType::Directory;
            if !keep {
                let removed = if meta.is_dir() {
                    std::fs::remove_dir_all(&dst)
                } else {
                    std::fs::remove_file(&dst)
                };
                removed.map_err(write_err(layer, "replacing", &path))?;
            }
        }
        match kind {
            EntryType::Link => {
                let link_err = || OciError::LinkTarget {
                    layer: layer.to_string(),
                    entry: path.clone(),
                };
                let target = entry
                    .link_name()
                    .map_err(|_| link_err())?
                    .ok_or_else(link_err)?
                    .into_owned();
                let parts = archive_components(&target).map_err(|source| OciError::EntryPath {
                    layer: layer.to_string(),
                    source,
                })?;
                let src =
                    resolve(root, &parts.iter().collect::<PathBuf>(), false).map_err(|source| {
                        OciError::EntryPath {
                            layer: layer.to_string(),
                            source,
                        }
                    })?;
                std::fs::hard_link(&src, &dst).map_err(|source| OciError::HardLink {
                    layer: layer.to_string(),
                    entry: path.clone(),
                    target,
                    source,
                })?;
            }
            // The tar crate would write a FIFO as a regular file.
            EntryType::Fifo => make_fifo(&dst, entry.header()).map_err(write_err(
                layer,
                "creating the FIFO",
                &path,
            ))?,
            _ => {
                entry
                    .unpack(&dst)
                    .map_err(write_err(layer, "unpacking", &path))?;
            }
        }
    }
    Ok(())
}

/// Creates a FIFO with the entry's mode and owner.
fn make_fifo(dst: &Path, header: &tar::Header) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = header.mode()? & 0o7777;
    nix::unistd::mkfifo(dst, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let id = |n: u64| u32::try_from(n).map_err(|_| std::io::ErrorKind::InvalidData);
    std::os::unix::fs::lchown(dst, Some(id(header.uid()?)?), Some(id(header.gid()?)?))?;
    // After chown, which clears set-id bits; mkfifo applied the umask.
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
}

/// First pass: whiteouts remove entries of lower layers. A whiteout of
/// `.` or `..` (`.wh..`, `.wh...`) is refused.
fn apply_whiteouts(
    root: &Path,
    layer: &str,
    open: &Opener<'_>,
    budget: &mut Budget,
) -> Result<(), OciError> {
    let reader = open().map_err(read_err(layer))?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(read_err(layer))? {
        let entry = entry.map_err(read_err(layer))?;
        budget.charge(layer, cost(&entry))?;
        let path = entry.path().map_err(read_err(layer))?.into_owned();
        let parts = archive_components(&path).map_err(|source| OciError::EntryPath {
            layer: layer.to_string(),
            source,
        })?;
        let Some((last, dirs)) = parts.split_last() else {
            continue;
        };
        let last = last.to_string_lossy();
        let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) else {
            continue;
        };
        if hidden == "." || hidden == ".." {
            return Err(OciError::Whiteout {
                layer: layer.to_string(),
                entry: path,
            });
        }
        let parent = resolve(root, &dirs.iter().collect::<PathBuf>(), true).map_err(|source| {
            OciError::EntryPath {
                layer: layer.to_string(),
                source,
            }
        })?;
        if last == OPAQUE {
            if let Ok(children) = std::fs::read_dir(&parent) {
                for child in children.filter_map(Result::ok) {
                    remove_any(&child.path()).map_err(write_err(layer, "whiteout", &path))?;
                }
            }
        } else if !hidden.is_empty() {
            remove_any(&parent.join(hidden)).map_err(write_err(layer, "whiteout", &path))?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}
