//! Reproducible newc cpio archives for initramfs images.
//!
//! A [`Manifest`] lists files, directories, symlinks and device nodes;
//! [`Manifest::write`] emits them sorted by path, with missing parent
//! directories added, fixed ownership (root), fixed mtimes and sequential
//! inode numbers, so the same manifest always gives the same bytes.
//!
//! Linux unpacks archives that are concatenated (compressed or not), later
//! entries replacing earlier ones. That is how per-instance data (identity,
//! config) is added as an *overlay* archive after a shared base image,
//! without rebuilding the base: see [`concat`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use cpio::newc::{Builder, ModeFileType};

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("manifest: {path:?} appears twice")]
    Duplicate { path: String },
    #[error("manifest: {path:?} escapes the archive root")]
    Escapes { path: String },
    #[error("manifest: {path:?} is not a valid archive path: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("manifest: source file {source_path} for {path:?}: {err}")]
    Source {
        path: String,
        source_path: PathBuf,
        err: std::io::Error,
    },
    #[error("manifest: {path:?} is {size} bytes, more than a newc archive can hold")]
    TooLarge { path: String, size: u64 },
    #[error("writing the archive: {0}")]
    Write(#[from] std::io::Error),
}

/// Where a file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Bytes(Vec<u8>),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { contents: Contents, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
    BlockDevice { mode: u32, major: u32, minor: u32 },
}

/// The entries of an archive, by normalized path ("a/b", no leading "/").
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    entries: BTreeMap<String, Node>,
}

/// Normalizes `path` to "a/b/c"; refuses "..", NUL and the empty path.
pub fn normalize(path: &str) -> Result<String, CpioError> {
    if path.contains('\0') {
        return Err(CpioError::BadPath {
            path: path.into(),
            reason: "contains a NUL byte",
        });
    }
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CpioError::Escapes { path: path.into() })
            }
        }
    }
    if parts.is_empty() {
        return Err(CpioError::BadPath {
            path: path.into(),
            reason: "names the root itself",
        });
    }
    Ok(parts.join("/"))
}

impl Manifest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `node` at `path`. A path may appear only once.
    pub fn add(&mut self, path: &str, node: Node) -> Result<&mut Self, CpioError> {
        let key = normalize(path)?;
        if self.entries.contains_key(&key) {
            return Err(CpioError::Duplicate { path: key });
        }
        self.entries.insert(key, node);
        Ok(self)
    }

    pub fn file(
        &mut self,
        path: &str,
        source: impl Into<PathBuf>,
        mode: u32,
    ) -> Result<&mut Self, CpioError> {
        self.add(
            path,
            Node::File {
                contents: Contents::File(source.into()),
                mode,
            },
        )
    }

    pub fn bytes(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, CpioError> {
        self.add(
            path,
            Node::File {
                contents: Contents::Bytes(data.into()),
                mode,
            },
        )
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, CpioError> {
        self.add(path, Node::Dir { mode })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.add(
            path,
            Node::Symlink {
                target: target.into(),
            },
        )
    }

    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.add(path, Node::CharDevice { mode, major, minor })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry plus the parent directories it needs, sorted so that a
    /// directory always precedes its contents.
    fn complete(&self) -> BTreeMap<String, Node> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut cur = Path::new(path).parent();
            while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty()) {
                all.entry(p.to_string_lossy().into_owned())
                    .or_insert(Node::Dir { mode: 0o755 });
                cur = p.parent();
            }
        }
        all
    }

    /// Writes the archive (uncompressed newc, with its trailer).
    pub fn write<W: Write>(&self, mut out: W) -> Result<W, CpioError> {
        let all = self.complete();
        // Sort by path components, so "a" < "a/b" < "a-b" is never an issue.
        let mut paths: Vec<&String> = all.keys().collect();
        paths.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        for (i, path) in paths.into_iter().enumerate() {
            let node = &all[path];
            let base = Builder::new(path)
                .ino(i as u32 + 1)
                .uid(0)
                .gid(0)
                .mtime(0)
                .nlink(1);
            let (builder, data): (Builder, Vec<u8>) = match node {
                Node::Dir { mode } => (
                    base.mode(mode & 0o7777)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2),
                    vec![],
                ),
                Node::Symlink { target } => (
                    base.mode(0o777).set_mode_file_type(ModeFileType::Symlink),
                    target.as_bytes().to_vec(),
                ),
                Node::CharDevice { mode, major, minor } => (
                    base.mode(mode & 0o7777)
                        .set_mode_file_type(ModeFileType::Char)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    vec![],
                ),
                Node::BlockDevice { mode, major, minor } => (
                    base.mode(mode & 0o7777)
                        .set_mode_file_type(ModeFileType::Block)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    vec![],
                ),
                Node::File { contents, mode } => {
                    let data = match contents {
                        Contents::Bytes(b) => b.clone(),
                        Contents::File(src) => {
                            std::fs::read(src).map_err(|err| CpioError::Source {
                                path: path.clone(),
                                source_path: src.clone(),
                                err,
                            })?
                        }
                    };
                    (
                        base.mode(mode & 0o7777)
                            .set_mode_file_type(ModeFileType::Regular),
                        data,
                    )
                }
            };
            let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
                path: path.clone(),
                size: data.len() as u64,
            })?;
            let mut w = builder.write(out, size);
            w.write_all(&data)?;
            out = w.finish()?;
        }
        Ok(cpio::newc::trailer(out)?)
    }

    /// The archive, zstd-compressed at `level` (1 to 22). The kernel
    /// unpacks zstd several times faster than gzip, which matters most
    /// where the guest's own boot is slowest (nested, or emulated); the
    /// level only changes the size, not the unpacking speed.
    pub fn write_zstd<W: Write>(&self, out: W, level: i32) -> Result<W, CpioError> {
        let mut enc = zstd::stream::write::Encoder::new(out, level)?;
        // A checksum, so that the kernel detects a corrupt archive.
        enc.include_checksum(true)?;
        Ok(self.write(enc)?.finish()?)
    }

    /// Writes the zstd archive to `path` through a temporary file and a
    /// rename, so a failure never leaves a half-written archive.
    pub fn write_zstd_file(&self, path: &Path, level: i32) -> Result<(), CpioError> {
        let tmp = path.with_extension("tmp");
        let result = (|| {
            let file = std::fs::File::create(&tmp)?;
            let file = self.write_zstd(std::io::BufWriter::new(file), level)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// A base archive followed by overlay archives, as one initrd. Each part may
/// be compressed on its own; the kernel unpacks them in order.
pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
        // newc archives are 4-byte aligned; pad so the next header is too.
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests;
