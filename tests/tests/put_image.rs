//! `PutImage`, as a parent gives a microVM an image after it booted, here
//! against the real auraed over its socket: the image arrives blob by blob,
//! a cell runs from the answered layout, a second put is answered at once;
//! a corrupt, short or incomplete image (or an empty message) is refused
//! naming the field, and leaves nothing in the daemon's imports.

use std::path::Path;

use aurae_proto::runtime as pb;
use aurae_tests::image::{self, ImageConfig};
use aurae_tests::{require_root, Daemon};
use pb::put_image_request::Part;

/// The messages that put the layout at `dir`, blob by blob, in chunks of
/// `chunk` bytes; `corrupt` flips a byte of the last blob.
fn messages(dir: &Path, chunk: usize, corrupt: bool) -> Vec<pb::PutImageRequest> {
    let read = |p: &Path| std::fs::read(p).expect("read");
    let json = |p: &Path| -> serde_json::Value { serde_json::from_slice(&read(p)).expect("json") };
    let blob = |d: &serde_json::Value| {
        let digest = d["digest"].as_str().expect("digest").to_string();
        let hex = digest.trim_start_matches("sha256:").to_string();
        let desc = pb::BlobDescriptor {
            digest,
            size: d["size"].as_u64().expect("size"),
            media_type: d["mediaType"].as_str().unwrap_or_default().into(),
        };
        (desc, read(&dir.join("blobs/sha256").join(hex)))
    };
    let index = json(&dir.join("index.json"));
    let (manifest_desc, manifest_bytes) = blob(&index["manifests"][0]);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("manifest");
    let mut blobs = vec![(manifest_desc.clone(), manifest_bytes)];
    blobs.push(blob(&manifest["config"]));
    for l in manifest["layers"].as_array().expect("layers") {
        blobs.push(blob(l));
    }
    if corrupt {
        let last = blobs.last_mut().expect("a blob");
        last.1[0] ^= 0xff;
    }
    let part = |p| pb::PutImageRequest { part: Some(p) };
    let mut out = vec![part(Part::Manifest(manifest_desc))];
    for (desc, bytes) in blobs {
        out.push(part(Part::Blob(desc)));
        out.extend(bytes.chunks(chunk).map(|c| part(Part::Data(c.to_vec()))));
    }
    out
}

async fn put(
    d: &Daemon,
    msgs: Vec<pb::PutImageRequest>,
) -> Result<pb::PutImageResponse, tonic::Status> {
    d.client()
        .await
        .put_image(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// What the daemon's imports folder holds, as auraed sees it.
fn imports(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d.seen_by_auraed("state/imports"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_image_put_blob_by_blob_runs_as_a_cell_and_is_put_once() {
    require_root!();
    let d = Daemon::start().await;
    let layout = image::write_layout(
        &d.dir.join("img"),
        &[
            image::busybox_layer(),
            image::files_layer(&[("hello", b"put-image-says-hi")]),
        ],
        &ImageConfig::default(),
    );
    let first = put(&d, messages(&layout, 4096, false)).await.expect("put");
    assert!(first.received > 0);
    assert!(first.image.contains("/imports/sha256-"), "{}", first.image);
    let again = put(&d, messages(&layout, 4096, false))
        .await
        .expect("put again");
    assert_eq!(
        (again.image.as_str(), again.received),
        (first.image.as_str(), 0)
    );
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        name: "put".into(),
        image: first.image.clone(),
        executable: Some(pb::Executable {
            command: "/bin/busybox".into(),
            args: vec!["cat".into(), "/hello".into()],
            ..Default::default()
        }),
        executable_name: "put-main".into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("run_cell: {}", e.message()));
    let (status, out) = aurae_tests::exit_and_output(&mut c, "put-main", 20000).await;
    assert_eq!(status.exit_code, Some(0), "{out}");
    assert!(out.contains("put-image-says-hi"), "{out}");
    c.free(pb::FreeRequest { id: "put".into() })
        .await
        .expect("free");
}

#[tokio::test]
async fn a_corrupt_short_or_incomplete_image_is_refused_and_leaves_nothing() {
    require_root!();
    let d = Daemon::start().await;
    let layout = image::write_layout(
        &d.dir.join("img"),
        &[image::files_layer(&[("a", b"bytes of a layer")])],
        &ImageConfig::default(),
    );
    let refused = |r: Result<pb::PutImageResponse, tonic::Status>, field: &str| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    };
    // A layer whose bytes don't hash to its digest.
    refused(put(&d, messages(&layout, 5, true)).await, "data");
    // The last blob cut short.
    let mut short = messages(&layout, 5, false);
    short.pop();
    refused(put(&d, short).await, "data");
    // The layer never sent.
    let all = messages(&layout, 1 << 20, false);
    let without_layer: Vec<_> = all[..all.len() - 2].to_vec();
    refused(put(&d, without_layer).await, "blob");
    // No manifest first; a bad digest; an index instead of a manifest.
    refused(put(&d, all[1..].to_vec()).await, "manifest");
    let mut bad = all.clone();
    if let Some(Part::Manifest(m)) = &mut bad[0].part {
        m.digest = "sha256:../../etc".into();
    }
    refused(put(&d, bad).await, "manifest.digest");
    let mut index = all.clone();
    if let Some(Part::Manifest(m)) = &mut index[0].part {
        m.media_type = "application/vnd.oci.image.index.v1+json".into();
    }
    refused(put(&d, index).await, "manifest.media_type");
    // An empty data message: a stream that makes no progress.
    let mut empty = all.clone();
    empty.insert(
        2,
        pb::PutImageRequest {
            part: Some(Part::Data(Vec::new())),
        },
    );
    refused(put(&d, empty).await, "data");
    assert!(
        imports(&d).is_empty(),
        "left in the imports: {:?}",
        imports(&d)
    );
    // The daemon still takes a good one.
    put(&d, all).await.expect("put");
    assert_eq!(imports(&d).len(), 1, "{:?}", imports(&d));
}
