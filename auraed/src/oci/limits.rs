//! Bounds on reading and unpacking an image: a cap on each JSON document,
//! and a budget for everything an unpack writes (the configured limit, or
//! less when the cache's file system has less free space).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::OciError;

/// The default of `runtime.image_unpack_limit_bytes`.
pub const DEFAULT_UNPACK_LIMIT: u64 = 4 << 30;

/// The largest `index.json`, manifest, config, `manifest.json` (or image
/// `/etc/passwd`) read.
pub const DOCUMENT_CAP: u64 = 4 << 20;

/// What each archive entry costs besides its contents (the size of a tar
/// header), so that millions of empty files are bounded too.
pub const ENTRY_COST: u64 = 512;

/// Free space an unpack leaves to the host: 5% of the file system, at
/// most this much (so that a small file system, such as a guest's tmpfs,
/// is not all reserve).
pub const FREE_SPACE_RESERVE: u64 = 256 << 20;

/// The reserve of a file system of `total` bytes.
fn reserve(total: u64) -> u64 {
    (total / 20).min(FREE_SPACE_RESERVE)
}

/// Reads the file at `path` (a `what`), refusing one larger than `cap`.
pub fn read_capped(what: &'static str, path: &Path, cap: u64) -> Result<Vec<u8>, OciError> {
    let read = |source| OciError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut buf = Vec::new();
    file.take(cap + 1).read_to_end(&mut buf).map_err(read)?;
    if buf.len() as u64 > cap {
        return Err(OciError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit: cap,
        });
    }
    Ok(buf)
}

/// Reads and parses the JSON document `what` at `path`, capped.
pub fn read_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    path: &Path,
) -> Result<T, OciError> {
    let bytes = read_capped(what, path, DOCUMENT_CAP)?;
    serde_json::from_slice(&bytes).map_err(|source| OciError::Parse {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Which bound a budget enforces.
#[derive(Debug, Clone)]
enum Bound {
    /// The configured limit.
    Configured,
    /// The free space of `dir`'s file system, below the configured limit.
    FreeSpace {
        dir: PathBuf,
        free: u64,
        reserve: u64,
    },
}

/// The bytes an unpack may still write.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u64,
    used: u64,
    bound: Bound,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0,
            bound: Bound::Configured,
        }
    }

    /// A budget of `limit` bytes, or of the free space of `dir`'s file
    /// system less a reserve when that is smaller. Fails when there is no
    /// free space beyond the reserve.
    pub fn for_dir(limit: u64, dir: &Path) -> Result<Self, OciError> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(|source| OciError::FreeSpace {
            path: dir.to_path_buf(),
            source,
        })?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        let total = st.blocks().saturating_mul(st.fragment_size());
        Self::with_free(limit, dir, free, reserve(total))
    }

    fn with_free(limit: u64, dir: &Path, free: u64, reserve: u64) -> Result<Self, OciError> {
        let usable = free.saturating_sub(reserve);
        if usable == 0 {
            return Err(OciError::NoSpace {
                layer: None,
                path: dir.to_path_buf(),
                free,
                reserve,
            });
        }
        if usable >= limit {
            return Ok(Self::new(limit));
        }
        Ok(Self {
            limit: usable,
            used: 0,
            bound: Bound::FreeSpace {
                dir: dir.to_path_buf(),
                free,
                reserve,
            },
        })
    }

    /// Counts `bytes` about to be written for `layer`; fails (naming the
    /// layer and the bound) when that would cross the budget.
    pub fn charge(&mut self, layer: &str, bytes: u64) -> Result<(), OciError> {
        let used = self.used.saturating_add(bytes);
        if used > self.limit {
            return Err(match &self.bound {
                Bound::Configured => OciError::UnpackLimit {
                    layer: layer.to_string(),
                    limit: self.limit,
                },
                Bound::FreeSpace { dir, free, reserve } => OciError::NoSpace {
                    layer: Some(layer.to_string()),
                    path: dir.clone(),
                    free: *free,
                    reserve: *reserve,
                },
            });
        }
        self.used = used;
        Ok(())
    }

    /// The bytes counted so far.
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_limit_and_free_space_bounds_the_budget() {
        let dir = Path::new("/cache");
        let r = FREE_SPACE_RESERVE;
        let mut b = Budget::with_free(1000, dir, r + 10_000, r).expect("budget");
        b.charge("l1", 600).expect("within");
        let e = b.charge("l2", 401).expect_err("crosses the limit");
        assert!(
            matches!(&e, OciError::UnpackLimit { layer, limit: 1000 } if layer == "l2"),
            "{e}"
        );
        assert_eq!(b.used(), 600, "a refused charge is not counted");
        b.charge("l2", 400).expect("exactly the limit");

        let mut b = Budget::with_free(1 << 40, dir, r + 100, r).expect("budget");
        let e = b.charge("l3", 101).expect_err("crosses the free space");
        assert!(matches!(e, OciError::NoSpace { layer: Some(_), .. }), "{e}");
        assert!(e.to_string().contains("/cache"), "{e}");

        let e = Budget::with_free(1000, dir, r, r).expect_err("no space");
        assert!(matches!(e, OciError::NoSpace { layer: None, .. }), "{e}");

        // 5% of a small file system, 256 MiB of a large one.
        assert_eq!(reserve(100 << 20), 5 << 20);
        assert_eq!(reserve(1 << 40), FREE_SPACE_RESERVE);
    }

    #[test]
    fn documents_are_read_with_a_cap_and_named_when_bad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.json");
        std::fs::write(&path, vec![b' '; DOCUMENT_CAP as usize + 1]).expect("write");
        let e = read_json::<serde_json::Value>("index.json", &path).expect_err("too large");
        let msg = e.to_string();
        assert!(matches!(e, OciError::TooLarge { .. }), "{msg}");
        assert!(
            msg.contains("index.json") && msg.contains(&DOCUMENT_CAP.to_string()),
            "{msg}"
        );
        std::fs::write(&path, b"{\"schemaVersion\": 2,\n  \"manifests\": [}").expect("write");
        let e = read_json::<serde_json::Value>("index.json", &path).expect_err("bad json");
        let msg = e.to_string();
        assert!(matches!(e, OciError::Parse { .. }), "{msg}");
        assert!(
            msg.contains("index.json") && msg.contains("line 2 column"),
            "{msg}"
        );
        std::fs::write(&path, vec![b' '; 10]).expect("write");
        assert!(read_capped("index.json", &path, 10).is_ok(), "at the cap");
    }
}
