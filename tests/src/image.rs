//! Small OCI images for tests and benchmarks, built from Debian's
//! busybox-static: an image layout directory, an OCI archive, or a
//! `docker save` archive, plus deliberately broken variants.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "hostname", "sleep", "mount", "umount", "unshare", "nc", "ps",
    "pwd", "env", "true", "false", "mkdir", "touch", "head", "yes", "dd", "wc", "grep", "seq",
    "ip", "printf", "test", "kill",
];

/// What goes into the image config.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            entrypoint: vec![],
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo hello from busybox".into(),
            ],
            env: vec!["PATH=/bin".into(), "GREETING=from-image".into()],
            workdir: None,
            user: None,
        }
    }
}

pub fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

/// A tar layer with busybox, applet links, /etc/passwd and a user's home.
pub fn busybox_layer() -> Vec<u8> {
    busybox_layer_with(APPLETS)
}

/// [`busybox_layer`] with a link for every applet this busybox has (as
/// upstream busybox images have).
pub fn busybox_every_applet_layer() -> Vec<u8> {
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let applets: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
        .collect();
    busybox_layer_with(&applets)
}

fn busybox_layer_with(applets: &[&str]) -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("busybox-static is installed (/bin/busybox)");
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "tmp", "root", "home", "data"] {
        b.append(
            &header(dir, 0, 0o755, tar::EntryType::Directory),
            std::io::empty(),
        )
        .expect("dir");
    }
    let mut home = header("home/web", 0, 0o755, tar::EntryType::Directory);
    home.set_uid(1000);
    home.set_gid(1000);
    home.set_cksum();
    b.append(&home, std::io::empty()).expect("home");
    b.append(
        &header(
            "bin/busybox",
            busybox.len() as u64,
            0o755,
            tar::EntryType::Regular,
        ),
        &busybox[..],
    )
    .expect("busybox");
    for applet in applets {
        let mut h = header(&format!("bin/{applet}"), 0, 0o777, tar::EntryType::Symlink);
        h.set_link_name("busybox").expect("link");
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("applet");
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000:web:/home/web:/bin/sh\n\
                   nobody:x:65534:65534:nobody:/home:/bin/false\n";
    b.append(
        &header(
            "etc/passwd",
            passwd.len() as u64,
            0o644,
            tar::EntryType::Regular,
        ),
        &passwd[..],
    )
    .expect("passwd");
    let group = b"root:x:0:\nweb:x:1000:\nnogroup:x:65534:\n";
    b.append(
        &header(
            "etc/group",
            group.len() as u64,
            0o644,
            tar::EntryType::Regular,
        ),
        &group[..],
    )
    .expect("group");
    b.into_inner().expect("tar")
}

/// A layer from (path, contents) regular files.
pub fn files_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        b.append(
            &header(path, data.len() as u64, 0o644, tar::EntryType::Regular),
            *data,
        )
        .expect("file");
    }
    b.into_inner().expect("tar")
}

/// A layer whose single entry is named `raw_path` byte for byte, e.g.
/// "../../etc/evil" (which tar builders refuse to write).
pub fn raw_path_layer(raw_path: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..raw_path.len()].copy_from_slice(raw_path.as_bytes());
    }
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).expect("raw entry");
    b.into_inner().expect("tar")
}

/// A layer with a symlink `name` pointing at `target` (absolute, outside).
pub fn symlink_then_file_layer(name: &str, target: &Path, file: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(name, 0, 0o777, tar::EntryType::Symlink);
    h.set_link_name(target).expect("link");
    h.set_cksum();
    b.append(&h, std::io::empty()).expect("symlink");
    let data = b"pwned\n";
    b.append(
        &header(
            &format!("{name}/{file}"),
            data.len() as u64,
            0o644,
            tar::EntryType::Regular,
        ),
        &data[..],
    )
    .expect("file through link");
    b.into_inner().expect("tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::write(blobs.join(&digest), data).expect("blob");
    digest
}

fn config_json(cfg: &ImageConfig, diff_ids: &[String]) -> Vec<u8> {
    let mut c = json!({ "Env": cfg.env, "Cmd": cfg.cmd });
    if !cfg.entrypoint.is_empty() {
        c["Entrypoint"] = json!(cfg.entrypoint);
    }
    if let Some(w) = &cfg.workdir {
        c["WorkingDir"] = json!(w);
    }
    if let Some(u) = &cfg.user {
        c["User"] = json!(u);
    }
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": c,
        "rootfs": { "type": "layers", "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>() },
    }))
    .expect("config")
}

/// Writes an OCI image layout with gzip layers into `dir`.
pub fn write_layout(dir: &Path, layers: &[Vec<u8>], cfg: &ImageConfig) -> PathBuf {
    std::fs::create_dir_all(dir).expect("layout dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let gz = gzip(l);
            let d = put_blob(dir, &gz);
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{d}"), "size": gz.len()})
        })
        .collect();
    let config = config_json(cfg, &diff_ids);
    let config_digest = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": layer_descs,
    }))
    .expect("manifest");
    let manifest_digest = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_digest}"), "size": manifest.len()}],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index");
    dir.to_path_buf()
}

/// Tars a directory (an OCI archive when it holds a layout).
pub fn tar_dir(dir: &Path, out: &Path) -> PathBuf {
    let file = std::fs::File::create(out).expect("archive");
    let mut b = tar::Builder::new(file);
    b.append_dir_all(".", dir).expect("tar dir");
    b.finish().expect("tar");
    out.to_path_buf()
}

/// Writes a `docker save` archive (legacy layout: manifest.json, a config
/// named by its digest, and uncompressed layer.tar files).
pub fn write_docker_save(out: &Path, layers: &[Vec<u8>], cfg: &ImageConfig) -> PathBuf {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = config_json(cfg, &diff_ids);
    let config_name = format!("{}.json", sha256(&config));
    let file = std::fs::File::create(out).expect("archive");
    let mut b = tar::Builder::new(file);
    let mut layer_paths = Vec::new();
    for (l, id) in layers.iter().zip(&diff_ids) {
        let path = format!("{id}/layer.tar");
        b.append(
            &header(&path, l.len() as u64, 0o644, tar::EntryType::Regular),
            &l[..],
        )
        .expect("layer");
        layer_paths.push(path);
    }
    b.append(
        &header(
            &config_name,
            config.len() as u64,
            0o644,
            tar::EntryType::Regular,
        ),
        &config[..],
    )
    .expect("config");
    let manifest = serde_json::to_vec(
        &json!([{"Config": config_name, "RepoTags": ["busybox:test"], "Layers": layer_paths}]),
    )
    .expect("manifest");
    b.append(
        &header(
            "manifest.json",
            manifest.len() as u64,
            0o644,
            tar::EntryType::Regular,
        ),
        &manifest[..],
    )
    .expect("manifest");
    b.finish().expect("tar");
    out.to_path_buf()
}

/// Flips one byte of every layer blob of a layout (their digests no longer
/// match).
pub fn corrupt_layers(layout: &Path) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("json");
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(m)).expect("manifest")).expect("json");
    for l in manifest["layers"].as_array().expect("layers") {
        let path = blob(l["digest"].as_str().expect("digest"));
        let mut data = std::fs::read(&path).expect("layer");
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        std::fs::write(&path, data).expect("write");
    }
}

/// A layout whose (correctly digested) gzip layer is cut short.
pub fn write_truncated_layout(dir: &Path, layer: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let gz = gzip(layer);
    let cut = &gz[..gz.len() / 2];
    let d = put_blob(dir, cut);
    let config = config_json(&ImageConfig::default(), &[sha256(layer)]);
    let cd = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cd}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{d}"), "size": cut.len()}],
    }))
    .expect("manifest");
    let md = put_blob(dir, &manifest);
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{md}"), "size": manifest.len()}]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index");
    dir.to_path_buf()
}

/// Unpacks a (plain tar) layer into `dir`, e.g. to make a runc/crun bundle's
/// rootfs from the same bytes as an image.
pub fn unpack_into(layer: &[u8], dir: &Path) {
    std::fs::create_dir_all(dir).expect("rootfs");
    let mut a = tar::Archive::new(layer);
    a.set_preserve_permissions(true);
    a.unpack(dir).expect("unpack layer");
}
