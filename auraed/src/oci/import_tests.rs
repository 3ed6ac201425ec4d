use super::*;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn desc(bytes: &[u8], media_type: &str) -> Descriptor {
    Descriptor {
        digest: digest(bytes),
        size: bytes.len() as u64,
        media_type: media_type.into(),
    }
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A manifest naming `config` and `layers`.
fn manifest_of(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let d = |b: &[u8], t: &str| serde_json::json!({ "mediaType": t, "digest": digest(b), "size": b.len() });
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": d(config, "application/vnd.oci.image.config.v1+json"),
        "layers": layers.iter().map(|l| d(l, "application/vnd.oci.image.layer.v1.tar")).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

fn begin(dir: &Path, manifest: &[u8]) -> Import {
    match Import::begin(dir, desc(manifest, MANIFEST), 1 << 20).expect("begin") {
        Begun::Import(i) => *i,
        Begun::Here(p) => panic!("already here: {}", p.display()),
    }
}

fn send(i: &mut Import, blob: &[u8], chunk: usize) -> Result<(), ImportError> {
    i.blob(desc(blob, "x"))?;
    for c in blob.chunks(chunk) {
        i.data(c)?;
    }
    Ok(())
}

/// Nothing but finished layouts in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_image_arrives_as_a_layout_that_opens_and_a_second_put_is_answered_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let layer = vec![7u8; 3000];
    let manifest = manifest_of(config, &[&layer]);
    let mut i = begin(dir.path(), &manifest);
    send(&mut i, &manifest, 100).expect("manifest");
    send(&mut i, config, 7).expect("config");
    send(&mut i, &layer, 1024).expect("layer");
    let (layout, received) = i.finish().expect("finish");
    assert_eq!(
        received,
        (manifest.len() + config.len() + layer.len()) as u64
    );
    let named = crate::oci::source::layout_manifest_digest(&layout).expect("index");
    assert_eq!(named.as_deref(), Some(digest(&manifest).as_str()));
    assert!(leftovers(dir.path()).is_empty());
    match Import::begin(dir.path(), desc(&manifest, MANIFEST), 1 << 20).expect("again") {
        Begun::Here(p) => assert_eq!(p, layout),
        Begun::Import(_) => panic!("the image was received again"),
    }
}

#[test]
fn a_corrupt_short_long_missing_or_repeated_blob_is_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = b"{}".as_slice();
    let layer = b"layer bytes".as_slice();
    let manifest = manifest_of(config, &[layer]);

    // Bytes that don't hash to the declared digest.
    let mut i = begin(dir.path(), &manifest);
    i.blob(desc(layer, "x")).expect("blob");
    i.data(b"LAYER BYTES").expect("data");
    assert!(matches!(
        i.blob(desc(config, "x")),
        Err(ImportError::Mismatch { .. })
    ));
    drop(i);

    // Fewer bytes than declared.
    let mut i = begin(dir.path(), &manifest);
    i.blob(desc(layer, "x")).expect("blob");
    i.data(&layer[..3]).expect("data");
    assert!(matches!(i.finish(), Err(ImportError::Short { got: 3, .. })));

    // More.
    let mut i = begin(dir.path(), &manifest);
    i.blob(desc(layer, "x")).expect("blob");
    let mut long = layer.to_vec();
    long.push(b'!');
    assert!(matches!(i.data(&long), Err(ImportError::Overflow { .. })));
    drop(i);

    // A blob the manifest names, never sent.
    let mut i = begin(dir.path(), &manifest);
    send(&mut i, &manifest, 64).expect("manifest");
    send(&mut i, config, 64).expect("config");
    assert!(matches!(i.finish(), Err(ImportError::Missing(d)) if d == digest(layer)));

    // No manifest at all.
    let mut i = begin(dir.path(), &manifest);
    send(&mut i, config, 64).expect("config");
    assert!(matches!(i.finish(), Err(ImportError::Missing(d)) if d == digest(&manifest)));

    // The same blob twice; data before any blob.
    let mut i = begin(dir.path(), &manifest);
    send(&mut i, config, 64).expect("config");
    assert!(matches!(
        send(&mut i, config, 64),
        Err(ImportError::Duplicate(_))
    ));
    drop(i);
    let mut i = begin(dir.path(), &manifest);
    assert!(matches!(i.data(b"x"), Err(ImportError::Order(_))));
    drop(i);

    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn bad_descriptors_and_an_image_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = manifest_of(b"{}", &[]);
    let mut bad = desc(&manifest, MANIFEST);
    bad.digest = "sha256:ABC".into();
    assert!(matches!(
        Import::begin(dir.path(), bad, 1 << 20),
        Err(ImportError::Digest {
            field: "manifest.digest",
            ..
        })
    ));
    let index = desc(&manifest, "application/vnd.oci.image.index.v1+json");
    assert!(matches!(
        Import::begin(dir.path(), index, 1 << 20),
        Err(ImportError::ManifestType(_))
    ));
    let mut huge = desc(&manifest, MANIFEST);
    huge.size = DOCUMENT_CAP + 1;
    assert!(matches!(
        Import::begin(dir.path(), huge, 1 << 20),
        Err(ImportError::ManifestSize { .. })
    ));
    let Begun::Import(mut i) =
        Import::begin(dir.path(), desc(&manifest, MANIFEST), 100).expect("begin")
    else {
        panic!("already here");
    };
    let big = vec![0u8; 101];
    let e = i.blob(desc(&big, "x")).expect_err("over the limit");
    assert!(matches!(e, ImportError::OverLimit { .. }) && e.is_no_space());
    let mut wrong = desc(&manifest, MANIFEST);
    wrong.size += 1;
    assert!(matches!(
        i.blob(wrong),
        Err(ImportError::ManifestSizeOf { .. })
    ));
    drop(i);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn a_layout_that_lists_a_layer_twice_is_sent_once_and_arrives_whole() {
    let src = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = b"{}".as_slice();
    let layer = b"the same layer".as_slice();
    let manifest = manifest_of(config, &[layer, layer]);
    let blobs = src.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    for b in [config, layer, manifest.as_slice()] {
        let hex = digest(b).trim_start_matches("sha256:").to_string();
        std::fs::write(blobs.join(hex), b).expect("blob");
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": MANIFEST, "digest": digest(&manifest), "size": manifest.len()}],
    });
    std::fs::write(src.path().join("index.json"), index.to_string()).expect("index");
    let listed = crate::oci::source::layout_blobs(src.path()).expect("blobs");
    assert_eq!(listed.len(), 3, "manifest, config, and the layer once");
    let mut i = begin(dir.path(), &manifest);
    for b in &listed {
        let bytes = std::fs::read(&b.path).expect("read");
        send(&mut i, &bytes, 4).expect("send");
    }
    i.finish().expect("finish");
}
