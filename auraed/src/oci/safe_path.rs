//! Resolving paths inside a root directory the way the kernel would after a
//! chroot: `..` stops at the root, and symlinks (absolute or relative) are
//! followed relative to the root. The result never points outside it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up, as the kernel's MAXSYMLINKS.
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum SafePathError {
    #[error("{0:?} escapes the root with '..'")]
    Escapes(PathBuf),
    #[error("{0:?}: too many levels of symbolic links")]
    Loop(PathBuf),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The components of an archive path, with leading `/` and `.` removed.
/// A `..` component is an error: archive entries must not climb.
pub fn archive_components(path: &Path) -> Result<Vec<OsString>, SafePathError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(SafePathError::Escapes(path.to_path_buf())),
        }
    }
    Ok(out)
}

/// Resolves `rel` inside `root`, following every symlink on the way
/// (including the last component when `follow_last`).
pub fn resolve(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf, SafePathError> {
    let mut pending: VecDeque<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        let is_last = pending.is_empty();
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() && (follow_last || !is_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(SafePathError::Loop(rel.to_path_buf()));
                }
                let target =
                    std::fs::read_link(&candidate).map_err(|source| SafePathError::Io {
                        path: candidate.clone(),
                        source,
                    })?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut expanded: VecDeque<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                expanded.extend(pending.drain(..));
                pending = expanded;
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        symlink("/usr/bin", root.join("bin")).expect("abs link");
        symlink("../../../../etc", root.join("usr/evil")).expect("climbing link");
        assert_eq!(
            resolve(root, Path::new("bin/sh"), true).expect("ok"),
            root.join("usr/bin/sh")
        );
        assert_eq!(
            resolve(root, Path::new("usr/evil/passwd"), true).expect("ok"),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve(root, Path::new("../../x"), true).expect("ok"),
            root.join("x")
        );
        assert_eq!(
            resolve(root, Path::new("bin"), false).expect("ok"),
            root.join("bin")
        );
    }

    #[test]
    fn link_loops_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        symlink("b", dir.path().join("a")).expect("a");
        symlink("a", dir.path().join("b")).expect("b");
        assert!(matches!(
            resolve(dir.path(), Path::new("a/x"), true),
            Err(SafePathError::Loop(_))
        ));
    }

    #[test]
    fn archive_paths_must_not_climb() {
        assert!(archive_components(Path::new("../../etc/passwd")).is_err());
        assert_eq!(
            archive_components(Path::new("/./a/b")).expect("ok").len(),
            2
        );
    }
}
