//! The artifact cache outside the clone (`$AURAE_CACHE`, or
//! `~/.cache/aurae`), keyed by hashes of the inputs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

pub fn root() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("AURAE_CACHE") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cache/aurae"),
            None => PathBuf::from("/var/cache/aurae"),
        },
    };
    usable(dir)
}

/// Checks that `dir` can hold the cache, creating it if needed.
pub fn usable(dir: PathBuf) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cache directory {} is not writable", dir.display()))?;
    let probe = dir.join(".write-test");
    if std::fs::write(&probe, b"").is_err() {
        bail!(
            "cache directory {} is not writable (set AURAE_CACHE to another place)",
            dir.display()
        );
    }
    let _ = std::fs::remove_file(probe);
    Ok(dir)
}

/// A short hex key over `parts`.
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..12])
}

pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_cache_is_named() {
        let err = usable(PathBuf::from("/proc/aurae-cache"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/proc/aurae-cache"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(usable(dir.path().join("c")).is_ok());
    }

    #[test]
    fn keys_depend_on_every_part() {
        assert_ne!(key(&[b"a", b"bc"]), key(&[b"ab", b"c"]));
        assert_eq!(key(&[b"x"]), key(&[b"x"]));
    }
}
