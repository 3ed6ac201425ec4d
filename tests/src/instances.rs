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
/// token, then for `tags/role` and `path` with it, without it, and through
/// a "proxy"; one line each.
///
/// Check a refusal with [`line_has`]: its line holds the HTTP status.
pub fn imds_from(d: &Daemon, path: &str) -> String {
    sh_in(d, path, IMDS_SCRIPT)
}

/// Runs `script` with busybox's sh in instance `path` (`aer --instance
/// path exec --wait`), which must succeed; its output.
pub fn sh_in(d: &Daemon, path: &str, script: &str) -> String {
    d.aer_ok(&[
        "--instance",
        path,
        "exec",
        "--wait",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ])
}

/// [`imds_from`] in the network namespace of process `pid` (a plain VM's
/// VMM), through nsenter on this host.
pub fn imds_in(pid: u32) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["/bin/busybox", "sh", "-c", IMDS_SCRIPT])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "nsenter: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads the link-local metadata endpoint, printing a line per check.
/// The token by PUT over nc (busybox wget has no PUT; nc stops at its
/// input's end, so the input stays open for the local answer); the GETs by
/// wget, which waits for the answer (in a microVM it comes from the parent,
/// over the bridge) and names a refusal's status.
pub const IMDS_SCRIPT: &str = r#"
W='/bin/busybox timeout 20 /bin/busybox wget -O-'
U='http://169.254.169.254/latest/meta-data'
T=$({ printf 'PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n'; /bin/busybox sleep 1; } | /bin/busybox nc 169.254.169.254 80 | /bin/busybox tail -n 1)
echo "token-length=${#T}"
echo "role=$($W -q --header "X-aws-ec2-metadata-token: $T" $U/tags/role)"
echo "path=$($W -q --header "X-aws-ec2-metadata-token: $T" $U/path)"
echo "untokened: $($W $U/tags/role 2>&1 | /bin/busybox grep 'server returned')"
echo "forwarded: $($W --header "X-aws-ec2-metadata-token: $T" --header 'X-Forwarded-For: 192.0.2.1' $U/name 2>&1 | /bin/busybox grep 'server returned')"
"#;

/// Whether a line of `out` starts with `start` and contains `status`.
pub fn line_has(out: &str, start: &str, status: &str) -> bool {
    out.lines()
        .any(|l| l.starts_with(start) && l.contains(status))
}

/// A host bridge a test made, for a pod's `networks`: up, with no address
/// and no port besides what the test puts on it. Deleted when dropped.
pub struct TestBridge(pub String);

impl TestBridge {
    /// `tag` tells tests apart; the process id tells runs apart.
    pub fn new(tag: &str) -> TestBridge {
        let name = format!("aur{tag}{}", std::process::id() % 100_000);
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
        };
        let ip = |args: &[&str]| {
            let out = run("ip", args);
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // busybox's ip (the test host's) makes no bridges; its brctl does.
        let made = run("ip", &["link", "add", &name, "type", "bridge"]);
        if !made.status.success() {
            let out = run("brctl", &["addbr", &name]);
            assert!(
                out.status.success(),
                "ip link add {name} type bridge: {}; brctl addbr {name}: {}",
                String::from_utf8_lossy(&made.stderr),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bridge = TestBridge(name);
        // No IPv6 of its own: nothing but the test's frames on it.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", bridge.0),
            "1",
        );
        ip(&["link", "set", &bridge.0, "up"]);
        bridge
    }

    /// The names of its ports.
    pub fn ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.0))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}
