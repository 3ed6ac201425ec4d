//! What the Spawn tests share: the image, a daemon that spawns from it,
//! a request, and the host links an instance leaves.

use std::path::{Path, PathBuf};

use aurae_proto::runtime as pb;

use crate::{Daemon, DaemonOptions};

/// The image's initramfs (from `cargo xtask image`, or the initramfs-only
/// build `cargo xtask test` makes).
pub fn image() -> Option<PathBuf> {
    let dir = std::env::var_os("AURAE_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::binary("auraed")
                .parent()
                .and_then(Path::parent)
                .map(|t| t.join("aurae-image"))
                .unwrap_or_default()
        });
    dir.join("initramfs.cpio.zst").is_file().then_some(dir)
}

#[macro_export]
macro_rules! require_image {
    () => {
        match $crate::instances::image() {
            Some(dir) => dir,
            None => {
                $crate::report_skip(
                    $crate::function_name!(),
                    "no image: target/aurae-image/initramfs.cpio.zst (cargo xtask image)",
                );
                return;
            }
        }
    };
}

pub async fn daemon(image: PathBuf, fail_at: Option<&str>) -> Daemon {
    Daemon::start_with(DaemonOptions {
        image_dir: Some(image),
        spawn_fail_at: fail_at.map(str::to_string),
        ..Default::default()
    })
    .await
}

pub fn spawn_req(name: &str) -> pb::SpawnRequest {
    pb::SpawnRequest {
        name: name.into(),
        backend: pb::SpawnBackend::Auto as i32,
        ready_timeout_ms: Some(30_000),
        ..Default::default()
    }
}

/// The host ends (and not yet moved peers) of `d`'s instance veths.
pub fn veths(d: &Daemon) -> Vec<String> {
    let bridge = d.bridge();
    let mut found = links(&format!("{bridge}v"));
    found.extend(links(&format!("{bridge}p")));
    found
}

/// The host's links whose names start with `prefix`.
pub fn links(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Asks the link-local endpoint, from inside the instance at `path`, for a
/// token, then for `tags/role` with it, without it, and through a "proxy".
pub fn imds_from(d: &Daemon, path: &str) -> String {
    const SCRIPT: &str = r#"
# stdin stays open until the answer is in: busybox nc stops at its EOF.
req() { { printf "$1"; /bin/busybox sleep 1; } | /bin/busybox nc 169.254.169.254 80; }
T=$(req 'PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n' | /bin/busybox tail -n 1)
echo "token-length=${#T}"
echo "role=$(req "GET /latest/meta-data/tags/role HTTP/1.0\r\nX-aws-ec2-metadata-token: $T\r\n\r\n" | /bin/busybox tail -n 1)"
echo "path=$(req "GET /latest/meta-data/path HTTP/1.0\r\nX-aws-ec2-metadata-token: $T\r\n\r\n" | /bin/busybox tail -n 1)"
echo "untokened: $(req 'GET /latest/meta-data/tags/role HTTP/1.0\r\n\r\n' | /bin/busybox head -n 1)"
echo "forwarded: $(req "GET /latest/meta-data/name HTTP/1.0\r\nX-Forwarded-For: 192.0.2.1\r\nX-aws-ec2-metadata-token: $T\r\n\r\n" | /bin/busybox head -n 1)"
"#;
    d.aer_ok(&[
        "--instance",
        path,
        "exec",
        "--wait",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        SCRIPT,
    ])
}
