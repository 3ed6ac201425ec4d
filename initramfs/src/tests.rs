use super::*;

fn names(mut archive: &[u8]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    loop {
        // Skip the padding between concatenated archives.
        while archive.first() == Some(&0) {
            archive = &archive[1..];
        }
        if archive.is_empty() {
            return out;
        }
        let reader = cpio::newc::Reader::new(archive).expect("header");
        let entry = (reader.entry().name().to_string(), reader.entry().mode());
        archive = reader.finish().expect("entry");
        if entry.0 != "TRAILER!!!" {
            out.push(entry);
        }
    }
}

/// One step that adds an entry to a manifest.
type AddEntry = Box<dyn Fn(&mut Manifest)>;

fn sample(order_reversed: bool) -> Manifest {
    let mut m = Manifest::new();
    let mut ops: Vec<AddEntry> = vec![
        Box::new(|m| {
            m.bytes("/init", b"#!/bin/sh\n".to_vec(), 0o755)
                .expect("init");
        }),
        Box::new(|m| {
            m.symlink("bin/sh", "busybox").expect("link");
        }),
        Box::new(|m| {
            m.char_device("dev/console", 0o600, 5, 1).expect("dev");
        }),
        Box::new(|m| {
            m.dir("etc/aurae", 0o700).expect("dir");
        }),
    ];
    if order_reversed {
        ops.reverse();
    }
    for op in ops {
        op(&mut m);
    }
    m
}

#[test]
fn output_is_byte_identical_for_the_same_input() {
    let a = sample(false).write(Vec::new()).expect("a");
    let b = sample(false).write(Vec::new()).expect("b");
    let c = sample(true).write(Vec::new()).expect("c");
    assert_eq!(a, b);
    assert_eq!(a, c, "insertion order does not matter");
    let za = sample(false).write_zstd(Vec::new(), 3).expect("zstd");
    let zb = sample(true).write_zstd(Vec::new(), 3).expect("zstd");
    assert_eq!(za, zb);
    let unpacked = zstd::decode_all(za.as_slice()).expect("a valid zstd frame");
    assert_eq!(unpacked, a, "the compressed archive holds the same cpio");
}

#[test]
fn parents_are_added_before_their_children() {
    let archive = sample(false).write(Vec::new()).expect("write");
    let listed: Vec<String> = names(&archive).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        listed,
        [
            "bin",
            "bin/sh",
            "dev",
            "dev/console",
            "etc",
            "etc/aurae",
            "init"
        ]
    );
    let modes: BTreeMap<String, u32> = names(&archive).into_iter().collect();
    assert_eq!(modes["dev/console"], 0o020600);
    assert_eq!(modes["etc/aurae"], 0o040700);
    assert_eq!(modes["init"], 0o100755);
    assert_eq!(modes["bin/sh"] & 0o170000, 0o120000);
}

#[test]
fn bad_manifests_name_the_path() {
    let mut m = Manifest::new();
    m.bytes("a", b"1".to_vec(), 0o644).expect("a");
    let e = m.bytes("/a", b"2".to_vec(), 0o644).unwrap_err();
    assert!(
        matches!(e, CpioError::Duplicate { ref path } if path == "a"),
        "{e}"
    );
    let e = m.dir("x/../../etc", 0o755).unwrap_err();
    assert!(e.to_string().contains("escapes"), "{e}");
    assert!(m.dir("/", 0o755).is_err());
    assert!(m.dir("a\0b", 0o755).is_err());
    m.file("missing", "/definitely/not/here", 0o644)
        .expect("added");
    let e = m.write(Vec::new()).unwrap_err().to_string();
    assert!(
        e.contains("/definitely/not/here") && e.contains("\"missing\""),
        "{e}"
    );
}

#[test]
fn overlays_follow_the_base_archive() {
    let base = sample(false).write(Vec::new()).expect("base");
    let mut overlay = Manifest::new();
    overlay
        .bytes("etc/aurae/identity", b"id".to_vec(), 0o600)
        .expect("id");
    let overlay = overlay.write(Vec::new()).expect("overlay");
    let both = concat(&[&base[..base.len() - 1], &overlay]);
    assert_eq!(both.len() % 4, 0);
    let listed: Vec<String> = names(&concat(&[&base, &overlay]))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        listed.last().map(String::as_str),
        Some("etc/aurae/identity")
    );
    assert!(listed.contains(&"init".to_string()));
}

#[test]
fn files_come_from_disk_and_the_compressed_file_is_written_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("payload");
    std::fs::write(&src, b"payload").expect("write");
    let mut m = Manifest::new();
    m.file("bin/payload", &src, 0o755).expect("file");
    let out = dir.path().join("initramfs.cpio.zst");
    m.write_zstd_file(&out, 3).expect("zstd");
    assert!(out.exists());
    assert!(!out.with_extension("tmp").exists());
    let mut bad = Manifest::new();
    bad.file("x", dir.path().join("nope"), 0o644)
        .expect("added");
    let target = dir.path().join("bad.cpio.zst");
    assert!(bad.write_zstd_file(&target, 3).is_err());
    assert!(
        !target.exists() && !target.with_extension("tmp").exists(),
        "nothing half-written"
    );
}
