//! Cells from OCI images: layouts, OCI archives, docker-save archives, the
//! image config, whiteouts, and corrupt or hostile input.

use aurae_proto::runtime as pb;
use aurae_tests::image::{self, ImageConfig};
use aurae_tests::{require_root, Daemon};

async fn run_image(
    d: &Daemon,
    name: &str,
    image: &std::path::Path,
    exe: Option<pb::Executable>,
) -> Result<pb::RunCellResponse, tonic::Status> {
    d.client()
        .await
        .run_cell(pb::RunCellRequest {
            name: name.into(),
            image: image.display().to_string(),
            executable: exe,
            executable_name: format!("{name}-main"),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn output(d: &Daemon, id: &str) -> (pb::WorkloadStatus, String) {
    aurae_tests::exit_and_output(&mut d.client().await, id, 20000).await
}

/// Paths of `rel` inside every cached image rootfs.
fn cached_rootfs(d: &Daemon, rel: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(d.dir.join("state/images"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("rootfs").join(rel))
                .filter(|p| p.exists() || p.is_symlink())
                .collect()
        })
        .unwrap_or_default()
}

fn sh(script: &str) -> pb::Executable {
    pb::Executable {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_image_cell_runs_the_entrypoint_in_its_own_root() {
    require_root!();
    let d = Daemon::start().await;
    let layout = image::write_layout(
        &d.dir.join("img"),
        &[image::busybox_layer()],
        &ImageConfig::default(),
    );
    run_image(&d, "bb", &layout, None).await.expect("run_cell");
    let (st, out) = output(&d, "bb-main").await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(out, "hello from busybox\n");
    let script = "echo $GREETING; ls /; cat /proc/1/comm; ls /dev | tr '\\n' ' '; echo; touch /tmp/x && echo tmp-ok";
    d.client()
        .await
        .run_executable(pb::RunExecutableRequest {
            name: "look".into(),
            cell: "bb".into(),
            executable: Some(sh(script)),
        })
        .await
        .expect("exec in image cell");
    let (st, out) = output(&d, "look").await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "from-image",
        "image env applies to later executables"
    );
    assert!(
        !out.contains("\nusr\n"),
        "the host root is not visible: {out}"
    );
    assert!(
        out.contains("\ncell-init\n"),
        "a fresh /proc of the cell's pid namespace: {out}"
    );
    assert!(
        out.contains("null") && out.contains("urandom"),
        "minimal /dev: {out}"
    );
    assert!(out.contains("tmp-ok"));
    // The image was unpacked once into the cache; the cell's root is an
    // overlay mounted only inside its mount namespace.
    assert_eq!(cached_rootfs(&d, "bin/busybox").len(), 1);
    // The cell's own files (its writable layer) are on auraed's private
    // tmpfs: auraed sees them, the host's file systems don't hold them.
    let cell_dir = d.seen_by_auraed("state/cells/bb");
    assert!(cell_dir.join("upper").is_dir(), "the cell's writable layer");
    assert!(
        !d.dir.join("state/cells/bb").exists(),
        "nothing on the host's disk"
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !host_mounts.contains("state/cells"),
        "no host-visible mount"
    );
    // The minimal /dev comes with the cached image: the character devices
    // and nothing the image had there.
    let dev = cached_rootfs(&d, "dev/null");
    assert_eq!(dev.len(), 1);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&dev[0])
        .expect("dev/null")
        .file_type()
        .is_char_device());
    d.client()
        .await
        .free(pb::FreeRequest { id: "bb".into() })
        .await
        .expect("free");
    assert!(
        !cell_dir.exists(),
        "free removes the cell's root filesystem"
    );
}

#[tokio::test]
async fn the_config_sets_user_workdir_env_and_entrypoint() {
    require_root!();
    let d = Daemon::start().await;
    let cfg = ImageConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["echo default cmd".into()],
        env: vec!["PATH=/bin".into(), "MODE=image".into()],
        workdir: Some("/home/web".into()),
        user: Some("web".into()),
    };
    let layout = image::write_layout(&d.dir.join("img"), &[image::busybox_layer()], &cfg);
    // Args replace cmd; entrypoint stays; request env overrides image env.
    let exe = pb::Executable {
        args: vec!["echo $(id -u):$(id -g) $(pwd) $MODE".into()],
        env: vec![pb::EnvVar {
            name: "MODE".into(),
            value: "request".into(),
        }],
        ..Default::default()
    };
    run_image(&d, "cfg", &layout, Some(exe))
        .await
        .expect("run_cell");
    let (_, out) = output(&d, "cfg-main").await;
    assert_eq!(out, "1000:1000 /home/web request\n");
}

#[tokio::test]
async fn oci_archives_docker_save_archives_and_whiteouts() {
    require_root!();
    let d = Daemon::start().await;
    let upper = image::files_layer(&[("etc/motd", b"upper\n"), ("bin/.wh.hostname", b"")]);
    let layers = [image::busybox_layer(), upper];
    let cfg = ImageConfig {
        cmd: vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /etc/motd; test -e /bin/hostname && echo has-hostname || echo whited-out".into(),
        ],
        ..Default::default()
    };
    let layout = image::write_layout(&d.dir.join("layout"), &layers, &cfg);
    let oci_tar = image::tar_dir(&layout, &d.dir.join("image.oci.tar"));
    let docker_tar = image::write_docker_save(&d.dir.join("image.docker.tar"), &layers, &cfg);
    for (name, path) in [("ocitar", oci_tar), ("dockertar", docker_tar)] {
        run_image(&d, name, &path, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (st, out) = output(&d, &format!("{name}-main")).await;
        assert_eq!(st.exit_code, Some(0), "{name}: {out}");
        assert_eq!(out, "upper\nwhited-out\n", "{name}");
        let scratch = std::fs::read_dir(d.dir.join("state/images"))
            .expect("cache")
            .filter_map(Result::ok)
            .any(|e| e.path().join("archive").exists());
        assert!(!scratch, "archive scratch space removed");
    }
}

fn assert_clean(d: &Daemon, name: &str) {
    assert!(
        !d.seen_by_auraed(&format!("state/cells/{name}")).exists(),
        "no state left for {name}"
    );
    let partial = std::fs::read_dir(d.dir.join("state/images"))
        .map(|e| {
            e.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(partial, 0, "no partial unpack left for {name}");
    if let Some(root) = d.cgroup_dir() {
        assert!(!root.join(name).exists(), "no cgroup left for {name}");
    }
}

#[tokio::test]
async fn corrupt_and_hostile_images_are_refused_without_leftovers() {
    require_root!();
    let d = Daemon::start().await;
    let bb = image::busybox_layer();

    let bad_digest = image::write_layout(
        &d.dir.join("bad-digest"),
        std::slice::from_ref(&bb),
        &ImageConfig::default(),
    );
    image::corrupt_layers(&bad_digest);
    let e = run_image(&d, "baddigest", &bad_digest, None)
        .await
        .expect_err("bad digest");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("image:") && e.message().contains("digest"),
        "{}",
        e.message()
    );
    assert_clean(&d, "baddigest");

    let truncated = image::write_truncated_layout(&d.dir.join("truncated"), &bb);
    let e = run_image(&d, "truncated", &truncated, None)
        .await
        .expect_err("truncated");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("layer"), "{}", e.message());
    assert_clean(&d, "truncated");

    let traversal = image::write_layout(
        &d.dir.join("traversal"),
        &[
            bb.clone(),
            image::raw_path_layer("../../../../../../tmp/aurae-evil", b"x"),
        ],
        &ImageConfig::default(),
    );
    let e = run_image(&d, "traversal", &traversal, None)
        .await
        .expect_err("traversal");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("escapes the root"), "{}", e.message());
    assert!(!std::path::Path::new("/tmp/aurae-evil").exists());
    assert_clean(&d, "traversal");

    // A symlink to a host directory, then a file "through" it: the file
    // lands inside the rootfs, never in the host directory.
    let host_dir = tempfile::tempdir().expect("host dir");
    let through = image::write_layout(
        &d.dir.join("through"),
        &[
            bb,
            image::symlink_then_file_layer("escape", host_dir.path(), "pwned"),
        ],
        &ImageConfig::default(),
    );
    run_image(&d, "through", &through, None)
        .await
        .expect("symlinks resolve inside the rootfs");
    assert!(
        !host_dir.path().join("pwned").exists(),
        "wrote through a symlink onto the host"
    );
    let inside = host_dir
        .path()
        .strip_prefix("/")
        .expect("abs")
        .join("pwned");
    assert_eq!(
        cached_rootfs(&d, &inside.to_string_lossy()).len(),
        1,
        "the file is inside the image's rootfs"
    );

    let e = run_image(
        &d,
        "missing",
        std::path::Path::new("/nonexistent/image"),
        None,
    )
    .await
    .expect_err("missing");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().starts_with("image:"));
    let junk = d.dir.join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").expect("junk");
    let e = run_image(&d, "junk", &junk, None).await.expect_err("junk");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert_clean(&d, "junk");
}

#[tokio::test]
async fn an_image_rewritten_at_the_same_path_is_read_again() {
    require_root!();
    let d = Daemon::start().await;
    let dir = d.dir.join("img");
    let with_cmd = |cmd: &str| ImageConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec![cmd.into()],
        ..Default::default()
    };
    let layout = image::write_layout(&dir, &[image::busybox_layer()], &with_cmd("echo first"));
    run_image(&d, "one", &layout, None).await.expect("run_cell");
    let (_, out) = output(&d, "one-main").await;
    assert_eq!(out, "first\n");
    // Same path, new image: the remembered cache key must not be reused.
    std::fs::remove_dir_all(&dir).expect("remove");
    let layout = image::write_layout(&dir, &[image::busybox_layer()], &with_cmd("echo second"));
    run_image(&d, "two", &layout, None).await.expect("run_cell");
    let (_, out) = output(&d, "two-main").await;
    assert_eq!(out, "second\n");
}

#[tokio::test]
async fn an_image_past_the_unpack_limit_is_refused_naming_the_layer() {
    require_root!();
    let d = Daemon::start_with(aurae_tests::DaemonOptions {
        image_unpack_limit_bytes: Some(4 << 20),
        ..Default::default()
    })
    .await;
    // Busybox (2 MiB) fits under the limit.
    let fits = image::write_layout(
        &d.dir.join("fits"),
        &[image::busybox_layer()],
        &ImageConfig::default(),
    );
    run_image(&d, "fits", &fits, None)
        .await
        .expect("an image under the limit");
    let (st, out) = output(&d, "fits-main").await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    let before = aurae_tests::leaks::Snapshot::settled(&d);

    // A gzip layer of a few KiB that expands to 16 MiB of zeros.
    let zeros = vec![0u8; 16 << 20];
    let bomb = image::files_layer(&[("zeros", &zeros[..])]);
    let bomb_gz = image::gzip(&bomb);
    assert!(bomb_gz.len() < 256 << 10, "{}", bomb_gz.len());
    use sha2::Digest as _;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bomb_gz)));
    let big = image::write_layout(
        &d.dir.join("big"),
        &[image::busybox_layer(), bomb],
        &ImageConfig::default(),
    );
    for attempt in 0..2 {
        let e = run_image(&d, "big", &big, None)
            .await
            .expect_err("past the limit");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(&format!(
                "image: layer {digest}: the unpacked image crosses the limit of 4194304 bytes"
            )),
            "attempt {attempt}: {}",
            e.message()
        );
        assert_clean(&d, "big");
    }

    // A whiteout of "..": refused, naming the entry.
    let dotdot = image::write_layout(
        &d.dir.join("dotdot"),
        &[
            image::busybox_layer(),
            image::files_layer(&[("bin/.wh...", b"")]),
        ],
        &ImageConfig::default(),
    );
    let e = run_image(&d, "dotdot", &dotdot, None)
        .await
        .expect_err("whiteout of ..");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("bin/.wh..."), "{}", e.message());
    assert_clean(&d, "dotdot");

    // Only the image that fits is cached; nothing else leaked.
    let cached: Vec<_> = std::fs::read_dir(d.dir.join("state/images"))
        .expect("cache")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    before.assert_unchanged(&d);
}
