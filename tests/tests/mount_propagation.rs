//! A cell's mounts propagate as asked: a host folder on a shared mount,
//! bound `BIDIRECTIONAL`, shows the host's later mounts in the cell and the
//! cell's mounts on the host; `HOST_TO_CELL` only the host's; `PRIVATE`
//! neither. A folder whose mount can't propagate is refused, naming the
//! field, and leaves nothing.

use std::path::Path;

use aurae_proto::runtime as pb;
use aurae_tests::leaks::Snapshot;
use aurae_tests::{exit_and_output, require_root, sh, Daemon};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Binds `dir` on itself with the propagation `flag` (as critest does).
fn own_mount(dir: &Path, flag: MsFlags) {
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .expect("bind the folder on itself");
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .expect("set its propagation");
}

/// Unmounts whatever the test mounted on the host, when it ends.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
    }
}

fn cell_mount(source: &Path, destination: &str, p: pb::MountPropagation) -> pb::CellMount {
    pb::CellMount {
        source: source.display().to_string(),
        destination: destination.into(),
        read_only: false,
        propagation: p as i32,
    }
}

#[tokio::test]
async fn mounts_propagate_both_ways_one_way_or_not_at_all_as_asked() {
    require_root!();
    let d = Daemon::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let image = aurae_tests::pods::busybox_image(work.path());
    let (vol, closed) = (work.path().join("vol"), work.path().join("closed"));
    std::fs::create_dir(&vol).expect("vol");
    std::fs::create_dir(&closed).expect("closed");
    let mut unmount = Unmount(Vec::new());
    own_mount(&vol, MsFlags::MS_SHARED);
    unmount.0.push(vol.clone());
    own_mount(&closed, MsFlags::MS_PRIVATE);
    unmount.0.push(closed.clone());

    let mut c = d.client().await;
    use pb::MountPropagation as P;
    c.run_cell(pb::RunCellRequest {
        name: "prop".into(),
        image: image.display().to_string(),
        privileged: true,
        mounts: vec![
            cell_mount(&vol, "/both", P::Bidirectional),
            cell_mount(&vol, "/down", P::HostToCell),
            cell_mount(&vol, "/none", P::Private),
        ],
        executable: Some(sh("exec sleep 300")),
        executable_name: "prop-main".into(),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    let run = |name: &str, script: &str| {
        let (mut c, name, script) = (c.clone(), name.to_string(), script.to_string());
        async move {
            c.run_executable(pb::RunExecutableRequest {
                name: name.clone(),
                cell: "prop".into(),
                executable: Some(sh(&script)),
            })
            .await
            .expect("run in the cell");
            exit_and_output(&mut c, &name, 30000).await
        }
    };

    // The host mounts after the cell started.
    let from_host = vol.join("from-host");
    std::fs::create_dir(&from_host).expect("from-host");
    mount(
        Some("tmpfs"),
        &from_host,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("a tmpfs on the host");
    unmount.0.push(from_host.clone());
    std::fs::write(from_host.join("marker"), "m").expect("marker");
    let (st, out) = run(
        "look",
        "for d in both down none; do echo $d:$(ls /$d/from-host); done",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["both:marker", "down:marker", "none:"],
        "the host's mount reaches the shared and slave binds only"
    );

    // The cell mounts: only what it mounts in the shared bind reaches the
    // host.
    let (st, out) = run(
        "mounts",
        "for d in both down none; do mkdir -p /$d/from-$d && mount -t tmpfs t /$d/from-$d \
         && touch /$d/from-$d/x || exit 1; done",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    for d in ["both", "down", "none"] {
        unmount.0.push(vol.join(format!("from-{d}")));
    }
    assert!(
        vol.join("from-both/x").exists(),
        "the cell's mount reached the host"
    );
    assert!(
        !vol.join("from-down/x").exists(),
        "a slave bind sent its mount out"
    );
    assert!(
        !vol.join("from-none/x").exists(),
        "a private bind sent its mount out"
    );

    // A folder on a private mount can't propagate: refused, naming the
    // field, leaving nothing.
    let before = Snapshot::settled(&d);
    for p in [P::HostToCell, P::Bidirectional] {
        let e = c
            .run_cell(pb::RunCellRequest {
                name: "refused".into(),
                image: image.display().to_string(),
                privileged: true,
                mounts: vec![cell_mount(&closed, "/x", p)],
                executable: Some(sh("true")),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with("mounts[0].propagation") && e.message().contains("private"),
            "{}",
            e.message()
        );
    }
    // Both ways needs a privileged cell; nothing may be mounted inside
    // such a bind (it would reach the host).
    let e = c
        .run_cell(pb::RunCellRequest {
            name: "unprivileged".into(),
            image: image.display().to_string(),
            mounts: vec![cell_mount(&vol, "/both", P::Bidirectional)],
            executable: Some(sh("true")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("mounts[0].propagation") && e.message().contains("privileged"),
        "{}",
        e.message()
    );
    let e = c
        .run_cell(pb::RunCellRequest {
            name: "nested".into(),
            image: image.display().to_string(),
            privileged: true,
            mounts: vec![
                cell_mount(&vol, "/both", P::Bidirectional),
                cell_mount(&closed, "/both/inner", P::Private),
            ],
            executable: Some(sh("true")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("mounts[1].destination"),
        "{}",
        e.message()
    );
    assert_eq!(Snapshot::settled(&d), before);
    c.free(pb::FreeRequest { id: "prop".into() })
        .await
        .expect("free");
}
