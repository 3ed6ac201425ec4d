//! The root of a cell-backed instance: the image's initramfs (zstd or
//! plain newc cpio), unpacked once into a content-addressed cache
//! (`<cache>/<sha256 of the file>/root`, with the minimal /dev of a cell),
//! shared read-only by every instance as the lower layer of its overlay.

use std::io::{BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

/// An initramfs larger than this is not read (ours is about 3 MiB).
pub const MAX_IMAGE_FILE: u64 = 512 << 20;
/// The most an unpacked initramfs may write (ours is about 7 MiB).
pub const MAX_UNPACKED: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("reading the initramfs {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initramfs {path} is {size} bytes, over the {MAX_IMAGE_FILE}-byte limit")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("the initramfs {path} is not a newc cpio archive (plain or zstd)")]
    Format {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initramfs {path} holds {entry:?}, a path that leaves its root")]
    BadPath { path: PathBuf, entry: String },
    #[error("the initramfs {path} holds {entry:?} of an unsupported type (mode {mode:o})")]
    BadType {
        path: PathBuf,
        entry: String,
        mode: u32,
    },
    #[error("the initramfs {path} unpacks to more than {MAX_UNPACKED} bytes")]
    Unpacked { path: PathBuf },
    #[error("writing {path} of the unpacked initramfs")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The relative path of a cpio entry, or None for the archive's root.
fn relative(name: &str) -> Option<Result<PathBuf, ()>> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Some(Err(())),
        }
    }
    (!out.as_os_str().is_empty()).then_some(Ok(out))
}

/// Unpacks `archive` (a newc cpio stream) into `root`, counting what it
/// writes against [`MAX_UNPACKED`]. Device nodes are skipped: the cell's
/// minimal /dev replaces them.
fn unpack(image: &Path, archive: impl Read, root: &Path) -> Result<(), RootError> {
    let format = |source| RootError::Format {
        path: image.to_path_buf(),
        source,
    };
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootError::Write { path, source }
    };
    let mut inner = archive;
    let mut written: u64 = 0;
    loop {
        let mut reader = cpio::NewcReader::new(inner).map_err(format)?;
        let entry = reader.entry();
        if entry.is_trailer() {
            return Ok(());
        }
        let name = entry.name().to_string();
        let mode = entry.mode();
        written = written.saturating_add(entry.file_size() as u64 + 512);
        if written > MAX_UNPACKED {
            return Err(RootError::Unpacked {
                path: image.to_path_buf(),
            });
        }
        let rel = match relative(&name) {
            None => {
                inner = reader.finish().map_err(format)?;
                continue;
            }
            Some(Err(())) => {
                return Err(RootError::BadPath {
                    path: image.to_path_buf(),
                    entry: name,
                })
            }
            Some(Ok(rel)) => rel,
        };
        let target = root.join(&rel);
        let perm = mode & 0o7777;
        match mode & libc::S_IFMT {
            libc::S_IFDIR => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(perm)
                .create(&target)
                .map_err(write(&target))?,
            libc::S_IFREG => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(perm)
                    .open(&target)
                    .map_err(write(&target))?;
                std::io::copy(&mut reader, &mut file).map_err(write(&target))?;
            }
            libc::S_IFLNK => {
                let mut link = String::new();
                reader.read_to_string(&mut link).map_err(format)?;
                std::os::unix::fs::symlink(&link, &target).map_err(write(&target))?;
            }
            libc::S_IFCHR | libc::S_IFBLK => {}
            _ => {
                return Err(RootError::BadType {
                    path: image.to_path_buf(),
                    entry: name,
                    mode,
                })
            }
        }
        inner = reader.finish().map_err(format)?;
    }
}

/// The unpacked root of the initramfs at `image`, from the cache under
/// `cache` (unpacked now if it is not there yet). A failed unpack leaves
/// nothing in the cache.
pub fn unpacked(image: &Path, cache: &Path) -> Result<PathBuf, RootError> {
    let read = |source| RootError::Read {
        path: image.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(image).map_err(read)?.len();
    if size > MAX_IMAGE_FILE {
        return Err(RootError::TooLarge {
            path: image.to_path_buf(),
            size,
        });
    }
    let data = std::fs::read(image).map_err(read)?;
    let key = hex::encode(sha2::Sha256::digest(&data));
    let entry = cache.join(&key);
    let root = entry.join("root");
    if root.is_dir() {
        return Ok(root);
    }
    let tmp = cache.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        let tmp_root = tmp.join("root");
        std::fs::create_dir_all(&tmp_root).map_err(|e| RootError::Write {
            path: tmp_root.clone(),
            source: e,
        })?;
        if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let decoder =
                zstd::Decoder::new(data.as_slice()).map_err(|source| RootError::Format {
                    path: image.to_path_buf(),
                    source,
                })?;
            unpack(image, BufReader::new(decoder), &tmp_root)?;
        } else {
            unpack(image, data.as_slice(), &tmp_root)?;
        }
        crate::oci::minimal_dev::populate(&tmp_root).map_err(|source| RootError::Write {
            path: tmp_root.join("dev"),
            source,
        })?;
        match std::fs::rename(&tmp, &entry) {
            Ok(()) => Ok(()),
            // Another spawn unpacked the same image meanwhile.
            Err(_) if root.is_dir() => Ok(()),
            Err(source) => Err(RootError::Write {
                path: entry.clone(),
                source,
            }),
        }
    })();
    if result.is_err() || tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (name, mode, data)) in entries.iter().enumerate() {
            let mut w = cpio::newc::Builder::new(name)
                .ino(i as u32 + 1)
                .mode(*mode)
                .nlink(1)
                .write(out, data.len() as u32);
            std::io::Write::write_all(&mut w, data).expect("data");
            out = w.finish().expect("entry");
        }
        cpio::newc::trailer(out).expect("trailer")
    }

    #[test]
    fn unpacks_once_into_the_cache_with_a_minimal_dev() {
        let t = tempfile::tempdir().expect("tempdir");
        let image = t.path().join("initramfs.cpio.zst");
        let raw = archive(&[
            (".", libc::S_IFDIR | 0o755, b""),
            ("init", libc::S_IFREG | 0o755, b"#!/bin/sh\n"),
            ("etc/aurae", libc::S_IFDIR | 0o755, b""),
            ("bin", libc::S_IFLNK | 0o777, b"usr/bin"),
            ("dev/console", libc::S_IFCHR | 0o600, b""),
        ]);
        std::fs::write(&image, zstd::encode_all(raw.as_slice(), 3).expect("zstd")).expect("write");
        let cache = t.path().join("cache");
        std::fs::create_dir_all(&cache).expect("cache");
        let root = unpacked(&image, &cache).expect("unpack");
        assert_eq!(
            std::fs::read(root.join("init")).expect("init"),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("bin")).expect("link"),
            PathBuf::from("usr/bin")
        );
        assert!(root.join("dev/null").exists(), "minimal /dev");
        assert!(!root.join("dev/console").exists(), "device nodes skipped");
        // The second time comes from the cache.
        assert_eq!(unpacked(&image, &cache).expect("again"), root);
        let entries: Vec<_> = std::fs::read_dir(&cache).expect("ls").collect();
        assert_eq!(entries.len(), 1, "one entry, no leftovers");
    }

    #[test]
    fn an_entry_that_climbs_out_is_refused_and_nothing_is_cached() {
        let t = tempfile::tempdir().expect("tempdir");
        let image = t.path().join("bad.cpio");
        std::fs::write(
            &image,
            archive(&[("../escape", libc::S_IFREG | 0o644, b"x")]),
        )
        .expect("write");
        let cache = t.path().join("cache");
        std::fs::create_dir_all(&cache).expect("cache");
        let err = unpacked(&image, &cache).expect_err("refused");
        assert!(matches!(err, RootError::BadPath { .. }), "{err}");
        assert!(!t.path().join("escape").exists());
        assert_eq!(std::fs::read_dir(&cache).expect("ls").count(), 0);
        std::fs::write(&image, b"not an archive").expect("write");
        assert!(matches!(
            unpacked(&image, &cache),
            Err(RootError::Format { .. })
        ));
    }
}
