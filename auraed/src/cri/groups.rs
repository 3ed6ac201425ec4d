//! A container's supplementary groups: those its config asks for, plus the
//! groups its image's `/etc/group` lists its user in (as other runtimes
//! do).

use std::path::Path;

/// The most of `/etc/passwd` or `/etc/group` read from an image.
const FILE_CAP: u64 = 1 << 20;

/// The file, resolved inside the image's root (its symbolic links never
/// lead out of it) and read up to [`FILE_CAP`]; empty when it is missing,
/// not a regular file, or unreadable (logged).
fn read(rootfs: &Path, file: &str) -> String {
    let read = crate::oci::safe_path::resolve(rootfs, Path::new(file), true)
        .ok()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .map(|p| crate::oci::limits::read_capped("an image's user database", &p, FILE_CAP));
    match read {
        Some(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Some(Err(e)) => {
            tracing::warn!("reading {file} of an image: {}", crate::error::chain(&e));
            String::new()
        }
        None => String::new(),
    }
}

/// The name and primary group of `uid` in the image, if its passwd has
/// it.
fn passwd_entry(rootfs: &Path, uid: u32) -> Option<(String, u32)> {
    read(rootfs, "etc/passwd").lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.get(2)?.parse::<u32>().ok()? != uid {
            return None;
        }
        Some((f[0].to_string(), f.get(3)?.parse().ok()?))
    })
}

fn user_name(rootfs: &Path, uid: u32) -> Option<String> {
    passwd_entry(rootfs, uid).map(|(name, _)| name)
}

/// The container's (uid, primary gid): `run_as_username` resolved in the
/// image, else a numeric `run_as_user` with its passwd entry's group in the
/// image (0 without one, as containerd does); `None` without either.
pub fn run_as(
    rootfs: &Path,
    username: Option<&str>,
    uid: Option<u32>,
) -> Result<Option<(u32, u32)>, crate::oci::OciError> {
    match (username, uid) {
        (Some(name), _) => crate::oci::user::resolve(rootfs, name).map(Some),
        (None, Some(uid)) => Ok(Some((
            uid,
            passwd_entry(rootfs, uid).map_or(0, |(_, gid)| gid),
        ))),
        (None, None) => Ok(None),
    }
}

/// The groups of the image's `/etc/group` that list `uid`'s user.
pub fn image_groups(rootfs: &Path, uid: u32) -> Vec<u32> {
    let Some(name) = user_name(rootfs, uid) else {
        return Vec::new();
    };
    read(rootfs, "etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let gid = f.get(2)?.parse::<u32>().ok()?;
            f.get(3)?
                .split(',')
                .any(|m| m.trim() == name)
                .then_some(gid)
        })
        .collect()
}

/// `requested` then `from_image`, without repeats.
pub fn merged(requested: &[i64], from_image: &[u32]) -> Result<Vec<u32>, i64> {
    let mut out: Vec<u32> = Vec::new();
    for g in requested {
        let g = u32::try_from(*g).map_err(|_| *g)?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    for g in from_image {
        if !out.contains(g) {
            out.push(*g);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_groups_of_the_user_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nu:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nextra:x:50000:u,other\nnot:x:50001:other\n",
        )
        .unwrap();
        assert_eq!(image_groups(dir.path(), 1000), vec![50000]);
        assert!(image_groups(dir.path(), 4242).is_empty());
        assert_eq!(merged(&[7, 50000], &[50000, 9]).unwrap(), vec![7, 50000, 9]);
        assert_eq!(merged(&[-1], &[]).unwrap_err(), -1);
        // A numeric user takes its group from passwd, else 0; a name must
        // be there.
        assert_eq!(
            run_as(dir.path(), None, Some(1000)).unwrap(),
            Some((1000, 1000))
        );
        assert_eq!(
            run_as(dir.path(), None, Some(4242)).unwrap(),
            Some((4242, 0))
        );
        assert_eq!(
            run_as(dir.path(), Some("u"), Some(7)).unwrap(),
            Some((1000, 1000))
        );
        assert!(run_as(dir.path(), Some("nobody"), None).is_err());
        assert_eq!(run_as(dir.path(), None, None).unwrap(), None);
    }
}
