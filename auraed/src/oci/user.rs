//! Resolving an image's `User` ("name", "uid", "name:group", "uid:gid")
//! against the image's own /etc/passwd and /etc/group.

use std::path::Path;

use super::limits::{read_capped, DOCUMENT_CAP};
use super::safe_path::resolve as resolve_path;
use super::OciError;

/// Finds the entry whose field `key` (0: name, 2: id) is `value`, and
/// returns its id and (for passwd) primary group. A missing or unreadable
/// file has no entries; one larger than the cap is refused.
fn lookup_by(
    rootfs: &Path,
    file: &'static str,
    key: usize,
    value: &str,
) -> Result<Option<(u32, u32)>, OciError> {
    let Ok(path) = resolve_path(rootfs, Path::new(file), true) else {
        return Ok(None);
    };
    let bytes = match read_capped(file, &path, DOCUMENT_CAP) {
        Ok(b) => b,
        Err(e @ OciError::TooLarge { .. }) => return Err(e),
        Err(_) => return Ok(None),
    };
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.get(key) != Some(&value) {
            return None;
        }
        let id = fields.get(2)?.parse().ok()?;
        let gid = fields.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
        Some((id, gid))
    }))
}

fn lookup(rootfs: &Path, file: &'static str, name: &str) -> Result<Option<(u32, u32)>, OciError> {
    lookup_by(rootfs, file, 0, name)
}

/// Returns (uid, gid) for `user`.
pub fn resolve(rootfs: &Path, user: &str) -> Result<(u32, u32), OciError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup_by(rootfs, "etc/passwd", 2, u)?
                .map(|(_, g)| g)
                .unwrap_or(uid),
        ),
        Err(_) => lookup(rootfs, "etc/passwd", u)?.ok_or_else(|| OciError::UnknownUser {
            name: u.to_string(),
        })?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(rootfs, "etc/group", g)?
                .map(|(gid, _)| gid)
                .ok_or_else(|| OciError::UnknownGroup {
                    name: g.to_string(),
                })?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        assert_eq!(resolve(dir.path(), "web").expect("web"), (1000, 1001));
        assert_eq!(
            resolve(dir.path(), "web:staff").expect("web:staff"),
            (1000, 50)
        );
        assert_eq!(resolve(dir.path(), "7:8").expect("7:8"), (7, 8));
        assert_eq!(resolve(dir.path(), "1000").expect("1000"), (1000, 1001));
        assert!(resolve(dir.path(), "nobody")
            .unwrap_err()
            .to_string()
            .contains("nobody"));
    }
}
