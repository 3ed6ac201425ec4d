//! Tests of unpacking: the limit, whiteouts of `.` and `..`, device nodes
//! and FIFOs, and that a bad image is never cached.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::Digest as _;
use tar::EntryType;

use super::layer;
use super::limits::{Budget, DOCUMENT_CAP};
use super::{cache, OciError};

const MIB: u64 = 1 << 20;

fn header(path: &str, size: u64, kind: EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_size(size);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o640
    });
    h.set_entry_type(kind);
    h.set_mtime(0);
    // Owned by whoever runs the test, so that it needs no root.
    h.set_uid(nix::unistd::geteuid().as_raw().into());
    h.set_gid(nix::unistd::getegid().as_raw().into());
    h.set_cksum();
    h
}

/// A tar layer of (path, type, contents).
fn tar_layer(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = header(path, data.len() as u64, *kind);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
            h.set_cksum();
        }
        b.append(&h, *data).expect("entry");
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// `count` files of `size` zero bytes.
fn zeros_layer(count: usize, size: usize) -> Vec<u8> {
    let zeros = vec![0u8; size];
    let names: Vec<String> = (0..count).map(|i| format!("zero{i}")).collect();
    let entries: Vec<(&str, EntryType, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), EntryType::Regular, &zeros[..]))
        .collect();
    tar_layer(&entries)
}

fn apply_gzip(
    root: &Path,
    gz: &[u8],
    whiteouts: bool,
    budget: &mut Budget,
) -> Result<(), OciError> {
    let open = || -> std::io::Result<Box<dyn std::io::Read>> {
        Ok(Box::new(flate2::read::GzDecoder::new(
            std::io::Cursor::new(gz.to_vec()),
        )))
    };
    layer::apply(root, "sha256:test", &open, whiteouts, budget)
}

/// Bytes of the regular files under `dir`.
fn written(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = std::fs::symlink_metadata(e.path()).expect("meta");
        total += if meta.is_dir() {
            written(&e.path())
        } else {
            meta.len()
        };
    }
    total
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("blobs");
    std::fs::write(dir.join("blobs/sha256").join(&digest), data).expect("blob");
    format!("sha256:{digest}")
}

/// An OCI image layout of gzip `layers` in `dir`; returns the layers'
/// digests.
fn write_layout(dir: &Path, layers: &[Vec<u8>]) -> Vec<String> {
    let gz: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
    let digests: Vec<String> = gz.iter().map(|g| put_blob(dir, g)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", sha256(l))).collect::<Vec<_>>()},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(dir, &config), "size": config.len()},
        "layers": gz.iter().zip(&digests).map(|(g, d)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": g.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put_blob(dir, &manifest), "size": manifest.len()
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    digests
}

#[test]
fn a_gzip_layer_past_the_limit_is_refused_before_the_limit_is_written() {
    // 8 MiB of zeros, a few KiB compressed, against a 3 MiB limit.
    let gz = gzip(&zeros_layer(8, MIB as usize));
    assert!(gz.len() < 64 * 1024, "{}", gz.len());
    let limit = 3 * MIB;

    // Without whiteouts (an archive's scratch copy) entries are written
    // until the next one would cross the limit.
    let root = tempfile::tempdir().expect("tempdir");
    let e = apply_gzip(root.path(), &gz, false, &mut Budget::new(limit)).expect_err("limit");
    assert!(
        matches!(&e, OciError::UnpackLimit { layer, limit: l } if layer == "sha256:test" && *l == limit),
        "{e}"
    );
    assert!(e.to_string().contains("sha256:test"), "{e}");
    let n = written(root.path());
    assert!(n < limit, "{n} bytes written");
    assert_eq!(n, 2 * MIB, "stops at the third file, not before");

    // With whiteouts, the first pass finds the crossing: nothing written.
    let root = tempfile::tempdir().expect("tempdir");
    let e = apply_gzip(root.path(), &gz, true, &mut Budget::new(limit)).expect_err("limit");
    assert!(matches!(e, OciError::UnpackLimit { .. }), "{e}");
    assert_eq!(written(root.path()), 0);

    // Many empty files are bounded by the cost per entry.
    let root = tempfile::tempdir().expect("tempdir");
    let gz = gzip(&zeros_layer(5000, 0));
    let e = apply_gzip(root.path(), &gz, true, &mut Budget::new(MIB)).expect_err("entries");
    assert!(matches!(e, OciError::UnpackLimit { .. }), "{e}");

    // Within the limit, all of it.
    let root = tempfile::tempdir().expect("tempdir");
    let gz = gzip(&zeros_layer(2, MIB as usize));
    apply_gzip(root.path(), &gz, true, &mut Budget::new(limit)).expect("within the limit");
    assert_eq!(written(root.path()), 2 * MIB);
}

#[test]
fn the_limit_covers_all_layers_and_names_the_one_that_crosses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let digests = write_layout(
        &layout,
        &[zeros_layer(1, MIB as usize), zeros_layer(4, MIB as usize)],
    );
    let rootfs = dir.path().join("rootfs");
    let limit = 3 * MIB;
    let e = super::unpack(
        &layout,
        &rootfs,
        &dir.path().join("scratch"),
        &mut Budget::new(limit),
    )
    .expect_err("limit");
    assert!(
        matches!(&e, OciError::UnpackLimit { layer, .. } if *layer == digests[1]),
        "{e}"
    );
    let n = written(&rootfs);
    assert_eq!(n, MIB, "the first layer only");
    assert!(n < limit);
}

#[test]
fn whiteouts_of_dot_and_dotdot_are_refused_at_any_depth() {
    for bad in [".wh..", ".wh...", "a/b/.wh..", "a/b/.wh..."] {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
        std::fs::write(root.path().join("a/b/x"), b"x").expect("x");
        std::fs::write(root.path().join("y"), b"y").expect("y");
        let gz = gzip(&tar_layer(&[
            (bad, EntryType::Regular, b""),
            ("a/.wh.b", EntryType::Regular, b""),
        ]));
        let e = apply_gzip(root.path(), &gz, true, &mut Budget::new(MIB)).expect_err(bad);
        assert!(
            matches!(&e, OciError::Whiteout { layer, entry } if layer == "sha256:test" && entry == Path::new(bad)),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains(bad), "{e}");
        assert!(root.path().join("a/b/x").exists() && root.path().join("y").exists());
    }
    // An ordinary whiteout still removes what it names.
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
    let gz = gzip(&tar_layer(&[("a/.wh.b", EntryType::Regular, b"")]));
    apply_gzip(root.path(), &gz, true, &mut Budget::new(MIB)).expect("whiteout");
    assert!(!root.path().join("a/b").exists());
    assert!(root.path().join("a").is_dir());
}

#[test]
fn fifos_are_fifos_and_devices_only_under_dev_are_skipped() {
    let root = tempfile::tempdir().expect("tempdir");
    let gz = gzip(&tar_layer(&[
        ("dev/console", EntryType::Char, b""),
        ("dev/sda", EntryType::Block, b""),
        ("run/pipe", EntryType::Fifo, b""),
    ]));
    apply_gzip(root.path(), &gz, true, &mut Budget::new(MIB)).expect("layer");
    assert!(!root.path().join("dev/console").exists());
    assert!(!root.path().join("dev/sda").exists());
    let pipe = std::fs::symlink_metadata(root.path().join("run/pipe")).expect("pipe");
    assert!(pipe.file_type().is_fifo(), "{pipe:?}");
    assert_eq!(pipe.permissions().mode() & 0o7777, 0o640);

    for (path, kind) in [("usr/null", EntryType::Char), ("disk", EntryType::Block)] {
        let root = tempfile::tempdir().expect("tempdir");
        let gz = gzip(&tar_layer(&[(path, kind, b"")]));
        let e = apply_gzip(root.path(), &gz, true, &mut Budget::new(MIB)).expect_err(path);
        assert!(
            matches!(&e, OciError::Device { entry, .. } if entry == Path::new(path)),
            "{e}"
        );
        assert!(std::fs::symlink_metadata(root.path().join(path)).is_err());
    }
}

fn cache_entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_bad_image_is_never_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("cache");

    let big = dir.path().join("big");
    let digests = write_layout(&big, &[zeros_layer(1, 100), zeros_layer(4, MIB as usize)]);
    let hostile = dir.path().join("hostile");
    write_layout(
        &hostile,
        &[tar_layer(&[("etc/.wh...", EntryType::Regular, b"")])],
    );
    for _ in 0..2 {
        let e = cache::get(&big, &cache, 2 * MIB).expect_err("past the limit");
        assert!(
            matches!(&e, OciError::UnpackLimit { layer, .. } if *layer == digests[1]),
            "{e}"
        );
        assert_eq!(cache_entries(&cache), Vec::<PathBuf>::new(), "{e}");
        let e = cache::get(&hostile, &cache, 2 * MIB).expect_err("hostile");
        assert!(matches!(e, OciError::Whiteout { .. }), "{e}");
        assert_eq!(cache_entries(&cache), Vec::<PathBuf>::new(), "{e}");
    }
    // The same image is cached once a limit lets it through.
    cache::get(&big, &cache, 8 * MIB).expect("within the limit");
    assert_eq!(cache_entries(&cache).len(), 1);
}

#[test]
fn index_json_is_read_with_a_cap_and_named_when_malformed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).expect("cache");
    let layout = dir.path().join("layout");
    write_layout(&layout, &[zeros_layer(1, 10)]);
    let index = layout.join("index.json");
    std::fs::write(&index, vec![b' '; DOCUMENT_CAP as usize + 1]).expect("big index");
    let e = cache::get(&layout, &cache, MIB).expect_err("too large");
    let msg = e.to_string();
    assert!(matches!(e, OciError::TooLarge { .. }), "{msg}");
    assert!(
        msg.contains("index.json") && msg.contains(&DOCUMENT_CAP.to_string()),
        "{msg}"
    );
    std::fs::write(&index, b"{\"schemaVersion\": 2, \"manifests\": 7}").expect("bad index");
    let e = cache::get(&layout, &cache, MIB).expect_err("malformed");
    let msg = e.to_string();
    assert!(matches!(e, OciError::Parse { .. }), "{msg}");
    assert!(
        msg.contains("index.json") && msg.contains("line 1 column"),
        "{msg}"
    );
    assert!(cache_entries(&cache).is_empty());
}

#[test]
fn only_a_read_only_entry_under_the_shared_folder_is_used_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (parent, child) = (dir.path().join("parent"), dir.path().join("child"));
    std::fs::create_dir(&parent).expect("parent");
    std::fs::create_dir(&child).expect("child");
    let layout = dir.path().join("layout");
    write_layout(&layout, &[zeros_layer(1, 10)]);
    let shared = cache::get(&layout, &parent, MIB).expect("unpacked by the parent");
    let entry = shared.rootfs.parent().expect("entry").to_path_buf();
    // Under the shared folder but writable (a bind that is not read-only,
    // or a folder anyone made): not used in place, so an image is looked
    // for there, and there is none.
    assert!(cache::already_unpacked(&entry, &parent)
        .expect("checked")
        .is_none());
    assert!(cache::get(&entry, &child, MIB).is_err());
    assert_eq!(cache_entries(&child), Vec::<PathBuf>::new());
    // Outside it, never.
    assert!(cache::already_unpacked(&entry, &child)
        .expect("checked")
        .is_none());
}
