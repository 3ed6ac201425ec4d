//! A cell's own hostname, capabilities changed from the default set,
//! no_new_privs, mounts, seccomp profiles, a read-only root and masked and
//! read-only paths, as its processes see them.

use aurae_proto::runtime as pb;
use aurae_tests::{require_root, sh, Daemon};

/// `/proc/self/status`'s field `key` as the cell's first process sees it.
async fn status_field(d: &Daemon, req: pb::RunCellRequest, key: &str) -> String {
    let name = req.name.clone();
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        executable: Some(sh(&format!(
            "grep '^{key}:' /proc/self/status | cut -f2; hostname"
        ))),
        executable_name: format!("{name}-main"),
        ..req
    })
    .await
    .expect("run_cell");
    let (st, out) = aurae_tests::exit_and_output(&mut c, &format!("{name}-main"), 30000).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    out
}

fn caps(out: &str) -> u64 {
    u64::from_str_radix(out.lines().next().expect("a line").trim(), 16).expect("hex")
}

#[tokio::test]
async fn capabilities_hostname_and_no_new_privs_reach_the_cells_processes() {
    require_root!();
    let d = Daemon::start().await;
    let default = caps(
        &status_field(
            &d,
            pb::RunCellRequest {
                name: "plain".into(),
                ..Default::default()
            },
            "CapEff",
        )
        .await,
    );
    assert_eq!(default & (1 << 12), 0, "no CAP_NET_ADMIN by default");
    assert_ne!(default & (1 << 5), 0, "CAP_KILL by default");

    let out = status_field(
        &d,
        pb::RunCellRequest {
            name: "more".into(),
            cap_add: vec!["CAP_NET_ADMIN".into()],
            cap_drop: vec!["kill".into()],
            hostname: "box.example".into(),
            ..Default::default()
        },
        "CapEff",
    )
    .await;
    let more = caps(&out);
    assert_ne!(more & (1 << 12), 0, "CAP_NET_ADMIN added: {more:x}");
    assert_eq!(more & (1 << 5), 0, "CAP_KILL dropped: {more:x}");
    assert_eq!(out.lines().nth(1), Some("box.example"));

    let none = caps(
        &status_field(
            &d,
            pb::RunCellRequest {
                name: "none".into(),
                cap_drop: vec!["ALL".into()],
                ..Default::default()
            },
            "CapEff",
        )
        .await,
    );
    assert_eq!(none, 0);

    // Supplementary groups, replacing auraed's own.
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        name: "groups".into(),
        executable: Some(pb::Executable {
            groups: vec![1234, 5678],
            ..sh("grep '^Groups:' /proc/self/status | cut -f2")
        }),
        executable_name: "groups-main".into(),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    let (_, out) = aurae_tests::exit_and_output(&mut c, "groups-main", 30000).await;
    assert_eq!(out.trim(), "1234 5678");

    let nnp = status_field(
        &d,
        pb::RunCellRequest {
            name: "nnp".into(),
            no_new_privs: true,
            ..Default::default()
        },
        "NoNewPrivs",
    )
    .await;
    assert_eq!(nnp.lines().next(), Some("1"));
    let plain = status_field(
        &d,
        pb::RunCellRequest {
            name: "nnp-off".into(),
            ..Default::default()
        },
        "NoNewPrivs",
    )
    .await;
    assert_eq!(plain.lines().next(), Some("0"));

    // A name that isn't a capability is refused by field.
    let e = d
        .client()
        .await
        .run_cell(pb::RunCellRequest {
            name: "bad".into(),
            cap_add: vec!["CAP_NOPE".into()],
            executable: Some(sh("true")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("cap_add[0]"), "{}", e.message());
}

/// `/proc/self/status`'s capability sets (`CapInh`, `CapPrm`, `CapEff`,
/// `CapAmb`, by name) of a process run as `uid` in a cell asking for
/// `ambient`.
async fn caps_as(
    d: &Daemon,
    name: &str,
    uid: u32,
    ambient: &[&str],
) -> std::collections::BTreeMap<String, u64> {
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        name: name.into(),
        cap_ambient: ambient.iter().map(|a| a.to_string()).collect(),
        executable: Some(pb::Executable {
            uid: Some(uid),
            gid: Some(uid),
            ..sh("grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status")
        }),
        executable_name: format!("{name}-main"),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    let (st, out) = aurae_tests::exit_and_output(&mut c, &format!("{name}-main"), 30000).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), caps(v)))
        .collect()
}

#[tokio::test]
async fn ambient_capabilities_outlive_execve_as_a_user() {
    require_root!();
    let d = Daemon::start().await;
    let sets = |m: &std::collections::BTreeMap<String, u64>| {
        ["CapInh", "CapPrm", "CapEff", "CapAmb"].map(|k| m.get(k).copied().unwrap_or(u64::MAX))
    };
    // A user other than root has no capabilities...
    assert_eq!(sets(&caps_as(&d, "user", 1000, &[]).await), [0; 4]);
    // ...but those raised in the ambient set (NET_BIND_SERVICE is in the
    // default set), and nothing else inheritable.
    let bind = 1 << 10;
    assert_eq!(
        sets(&caps_as(&d, "ambient", 1000, &["CAP_NET_BIND_SERVICE"]).await),
        [bind; 4]
    );
    // Root keeps the cell's set; only the ambient ones are inheritable.
    let root = sets(&caps_as(&d, "root", 0, &["NET_BIND_SERVICE"]).await);
    assert_eq!([root[0], root[3]], [bind, bind], "{root:x?}");
    assert_ne!(root[2] & (1 << 5), 0, "root keeps CAP_KILL: {root:x?}");
}

#[tokio::test]
async fn mounts_reach_an_image_cell_writable_or_read_only() {
    require_root!();
    let d = Daemon::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let image = aurae_tests::pods::busybox_image(work.path());
    let (rw, ro) = (work.path().join("rw"), work.path().join("ro"));
    std::fs::create_dir(&rw).expect("rw");
    std::fs::create_dir(&ro).expect("ro");
    std::fs::write(ro.join("f"), "read-me\n").expect("f");
    let mount = |source: &std::path::Path, destination: &str, read_only| pb::CellMount {
        source: source.display().to_string(),
        destination: destination.into(),
        read_only,
        ..Default::default()
    };
    let mut c = d.client().await;
    c.run_cell(pb::RunCellRequest {
        name: "vols".into(),
        image: image.display().to_string(),
        mounts: vec![mount(&rw, "/mnt/rw", false), mount(&ro, "/mnt/ro", true)],
        executable: Some(sh(
            "cat /mnt/ro/f; echo written > /mnt/rw/out; touch /mnt/ro/no 2>/dev/null || echo refused",
        )),
        executable_name: "vols-main".into(),
        ..Default::default()
    })
    .await
    .expect("run_cell");
    let (st, out) = aurae_tests::exit_and_output(&mut c, "vols-main", 30000).await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["read-me", "refused"]);
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).expect("out"),
        "written\n"
    );

    // Mounts need a root of the cell's own; a destination may not climb.
    for (req, field) in [
        (
            pb::RunCellRequest {
                name: "no-image".into(),
                mounts: vec![mount(&rw, "/mnt", false)],
                executable: Some(sh("true")),
                ..Default::default()
            },
            "mounts",
        ),
        (
            pb::RunCellRequest {
                name: "climb".into(),
                image: image.display().to_string(),
                mounts: vec![mount(&rw, "/mnt/../../x", false)],
                ..Default::default()
            },
            "mounts[0].destination",
        ),
    ] {
        let e = c.run_cell(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
}

#[tokio::test]
async fn seccomp_a_read_only_root_and_masks_confine_an_image_cell() {
    require_root!();
    let d = Daemon::start().await;
    let work = tempfile::tempdir().expect("tempdir");
    let image = aurae_tests::pods::busybox_image(work.path());
    let c = d.client().await;
    let image = image.display().to_string();
    let run = |name: &str, req: pb::RunCellRequest, script: &str| {
        let (mut c, name) = (c.clone(), name.to_string());
        let req = pb::RunCellRequest {
            name: name.clone(),
            image: image.clone(),
            executable: Some(sh(script)),
            executable_name: format!("{name}-main"),
            ..req
        };
        async move {
            c.run_cell(req).await.expect("run_cell");
            aurae_tests::exit_and_output(&mut c, &format!("{name}-main"), 30000).await
        }
    };
    // A custom profile: mkdir fails with the errno it names (EACCES, 13),
    // everything else runs; the runtime's default refuses unshare to a
    // process without CAP_SYS_ADMIN.
    let custom = pb::SeccompProfile {
        kind: pb::seccomp_profile::Kind::Custom as i32,
        json: r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#
            .into(),
    };
    let (st, out) = run(
        "sc-custom",
        pb::RunCellRequest {
            seccomp: Some(custom),
            ..Default::default()
        },
        "mkdir /tmp/d 2>&1; echo after",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert!(
        out.contains("Permission denied") && out.contains("after"),
        "{out}"
    );
    let default = pb::SeccompProfile {
        kind: pb::seccomp_profile::Kind::RuntimeDefault as i32,
        json: String::new(),
    };
    let (st, out) = run(
        "sc-default",
        pb::RunCellRequest {
            seccomp: Some(default),
            ..Default::default()
        },
        "unshare -U true 2>&1 || echo refused; mkdir /tmp/d && echo made",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert!(out.contains("refused") && out.contains("made"), "{out}");

    // A read-only root keeps /tmp writable; a masked file reads empty, a
    // masked folder is empty, a read-only path refuses writes.
    let (st, out) = run(
        "ro",
        pb::RunCellRequest {
            read_only_root: true,
            masked_paths: vec!["/etc/passwd".into(), "/home".into(), "/no/such".into()],
            readonly_paths: vec!["/tmp".into()],
            ..Default::default()
        },
        "touch /x 2>/dev/null || echo root-ro; touch /tmp/y 2>/dev/null || echo tmp-ro; \
         echo \"passwd[$(cat /etc/passwd)]\"; echo \"home[$(ls -A /home)]\"",
    )
    .await;
    assert_eq!(st.exit_code, Some(0), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["root-ro", "tmp-ro", "passwd[]", "home[]"],
        "{out}"
    );
}
