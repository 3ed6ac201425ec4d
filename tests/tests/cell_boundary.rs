//! Cells as a boundary, tried as an attacker would: each escape class in a
//! jailed cell and in an ordinary one (where the rule applies to both),
//! asserting the refusal and that nothing outside the cell changed.

use std::path::{Path, PathBuf};

use aurae_proto::runtime as pb;
use aurae_tests::{require_root, Daemon};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn probe(name: &str, jailed: bool, script: &str) -> pb::RunCellRequest {
    pb::RunCellRequest {
        name: name.into(),
        jailed,
        executable: Some(pb::Executable {
            command: "/bin/busybox".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![pb::EnvVar {
                name: "PATH".into(),
                value: PATH.into(),
            }],
            ..Default::default()
        }),
        executable_name: format!("{name}-probe"),
        ..Default::default()
    }
}

/// Runs the cell and returns its probe's output.
async fn run(d: &Daemon, req: pb::RunCellRequest) -> String {
    let id = req.executable_name.clone();
    let mut c = d.client().await;
    c.run_cell(req).await.expect("run_cell");
    let (status, out) = aurae_tests::exit_and_output(&mut c, &id, 30_000).await;
    assert_eq!(status.exit_code, Some(0), "{id}: {out}");
    out
}

/// The jailed and the ordinary variant of a probe, with their outputs.
async fn both(d: &Daemon, name: &str, script: &str) -> [(&'static str, String); 2] {
    [
        (
            "jailed",
            run(d, probe(&format!("{name}-j"), true, script)).await,
        ),
        (
            "ordinary",
            run(d, probe(&format!("{name}-o"), false, script)).await,
        ),
    ]
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Writes back the value it read, so a failing test changes nothing.
fn write_back(path: &str, tag: &str) -> String {
    format!(
        "v=$(cat {path}); if (echo \"$v\" > {path}) 2>/dev/null; then echo {tag}-written; \
         else echo {tag}-refused; fi; "
    )
}

#[tokio::test]
async fn no_cell_writes_proc_sys() {
    require_root!();
    let d = Daemon::start().await;
    let swappiness = read("/proc/sys/vm/swappiness");
    let core_pattern = read("/proc/sys/kernel/core_pattern");
    let script = write_back("/proc/sys/vm/swappiness", "swappiness")
        + "if (: >> /proc/sys/kernel/core_pattern) 2>/dev/null; then echo core-pattern-opened; \
           else echo core-pattern-refused; fi; "
        + "[ -e /proc/sysrq-trigger ] && ((echo h > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-written); \
           for f in keys timer_list sched_debug kcore; do \
           [ -e /proc/$f ] && echo masked-$f=$(cat /proc/$f | wc -c); done; true";
    let host_has = ["keys", "timer_list", "sched_debug", "kcore"]
        .iter()
        .filter(|f| Path::new("/proc").join(f).exists())
        .count();
    for (kind, out) in both(&d, "procsys", &script).await {
        assert!(out.contains("swappiness-refused"), "{kind}: {out}");
        assert!(out.contains("core-pattern-refused"), "{kind}: {out}");
        assert!(!out.contains("sysrq-written"), "{kind}: {out}");
        // Masked: /dev/null in their place.
        let masked: Vec<&str> = out.lines().filter(|l| l.starts_with("masked-")).collect();
        assert_eq!(masked.len(), host_has, "{kind}: {out}");
        assert!(masked.iter().all(|l| l.ends_with("=0")), "{kind}: {out}");
    }
    assert_eq!(read("/proc/sys/vm/swappiness"), swappiness);
    assert_eq!(read("/proc/sys/kernel/core_pattern"), core_pattern);
}

#[tokio::test]
async fn no_cell_writes_sys() {
    require_root!();
    let d = Daemon::start().await;
    let candidates = [
        "/sys/kernel/mm/ksm/run",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/module/printk/parameters/time",
    ];
    let Some(path) = candidates.into_iter().find(|p| Path::new(p).exists()) else {
        aurae_tests::report_skip(
            "no_cell_writes_sys",
            "none of the probed writable /sys files exists here",
        );
        return;
    };
    let before = read(path);
    let script = write_back(path, "sysfs") + "ls /sys/firmware | wc -l";
    for (kind, out) in both(&d, "sysfs", &script).await {
        assert!(out.contains("sysfs-refused"), "{kind}: {out}");
        assert_eq!(
            out.lines().last(),
            Some("0"),
            "{kind}: firmware masked: {out}"
        );
    }
    assert_eq!(read(path), before);
}

#[tokio::test]
async fn no_cell_names_or_joins_a_cgroup_outside_itself() {
    require_root!();
    let d = Daemon::start().await;
    let script = "for f in /sys/fs/cgroup/unified/cgroup.procs /sys/fs/cgroup/cpu/cgroup.procs \
                  /sys/fs/cgroup/systemd/cgroup.procs /sys/fs/cgroup/../cgroup.procs; do \
                  (echo $$ > $f) 2>/dev/null && echo joined $f; done; \
                  mkdir -p /tmp/cg; \
                  mount -t cgroup2 none /tmp/cg 2>/dev/null && echo v2-mounted; \
                  mount -t cgroup -o cpu none /tmp/cg 2>/dev/null && echo v1-mounted; \
                  echo cgroup=$(grep '^0::' /proc/self/cgroup); \
                  (mkdir /sys/fs/cgroup/escape) 2>/dev/null && echo made-cgroup; \
                  echo procs=$(wc -l < /sys/fs/cgroup/cgroup.procs)";
    for (kind, out) in both(&d, "cgroups", script).await {
        assert!(!out.contains("joined"), "{kind}: {out}");
        assert!(!out.contains("mounted"), "{kind}: {out}");
        assert!(!out.contains("made-cgroup"), "{kind}: {out}");
        assert!(
            out.contains("cgroup=0::/\n"),
            "{kind}: in its cgroup namespace's root: {out}"
        );
        // /sys/fs/cgroup is the cell's own subtree: its init and the probe.
        let procs: u32 = out
            .lines()
            .find_map(|l| l.strip_prefix("procs="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{kind}: {out}"));
        assert!((1..=4).contains(&procs), "{kind}: {out}");
    }
    // Nothing was made or moved outside the cells.
    let root = d.cgroup_dir().expect("cgroup root");
    let escape = root.parent().map(|p| p.join("escape"));
    assert!(!escape.is_some_and(|e| e.exists()));
}

/// Where this test keeps host files a jailed cell must see: cargo's
/// scratch folder, unless the clone is under a folder a jailed cell has of
/// its own (/tmp, /run: a clone in /tmp), then /var/tmp/aurae-tests.
fn host_scratch() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if ["/tmp", "/run"].iter().any(|own| target.starts_with(own)) {
        let dir = PathBuf::from("/var/tmp/aurae-tests");
        std::fs::create_dir_all(&dir).expect("/var/tmp/aurae-tests");
        dir
    } else {
        target.to_path_buf()
    }
}

/// A host folder a jailed cell may write to (not under /tmp, which a
/// jailed cell has of its own).
fn writable_dir(name: &str) -> PathBuf {
    let dir = host_scratch().join(format!("jail-writable-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("writable dir");
    std::fs::canonicalize(&dir).expect("canonical")
}

#[tokio::test]
async fn a_jailed_cell_sees_the_host_root_read_only() {
    require_root!();
    let d = Daemon::start().await;
    let writable = writable_dir("root");
    let marker = "/etc/aurae-jail-probe";
    let _ = std::fs::remove_file(marker);
    let state = d.seen_by_auraed("state");
    let script = format!(
        "(echo x > {marker}) 2>/dev/null && echo etc-written; \
         (echo x > /usr/aurae-jail-probe) 2>/dev/null && echo usr-written; \
         echo x > /tmp/own && echo tmp-written; \
         echo x > {w}/from-jail && echo named-written; \
         echo shadow=$(wc -c < /etc/shadow); \
         echo state=$(ls -A {state} | wc -l); \
         echo socket=$(ls -A {sock} | wc -l)",
        w = writable.display(),
        state = state.display(),
        sock = d.socket.parent().expect("socket dir").display(),
    );
    let mut req = probe("hostroot", true, &script);
    req.writable_paths = vec![writable.display().to_string()];
    let out = run(&d, req).await;
    assert!(!out.contains("etc-written"), "{out}");
    assert!(!out.contains("usr-written"), "{out}");
    assert!(out.contains("tmp-written"), "its own /tmp: {out}");
    assert!(out.contains("named-written"), "{out}");
    assert!(out.contains("shadow=0\n"), "/etc/shadow masked: {out}");
    assert!(out.contains("state=0\n"), "auraed's state hidden: {out}");
    assert!(out.contains("socket=0\n"), "auraed's socket hidden: {out}");
    assert!(!Path::new(marker).exists());
    assert!(writable.join("from-jail").exists());
    assert!(
        !Path::new("/tmp/own").exists(),
        "the cell's /tmp is its own"
    );
}

#[tokio::test]
async fn a_jailed_cell_gets_no_device_unless_named() {
    require_root!();
    let d = Daemon::start().await;
    let script = "ls /dev | tr '\\n' ' '; echo; \
                  if (exec 3</dev/kvm) 2>/dev/null; then echo kvm-opened; else echo kvm-refused; fi";
    let out = run(&d, probe("nodev", true, script)).await;
    assert!(out.contains("kvm-refused"), "{out}");
    let listed: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for name in &listed {
        assert!(
            [
                "null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout",
                "stderr", "pts", "shm", "ptmx"
            ]
            .contains(name),
            "/dev/{name} is beyond the minimal set: {out}"
        );
    }
    if !Path::new("/dev/kvm").exists() {
        aurae_tests::report_skip(
            "a_jailed_cell_gets_no_device_unless_named",
            "no /dev/kvm here: the named-device half is not run",
        );
        return;
    }
    let mut req = probe("kvmdev", true, script);
    req.devices = vec!["/dev/kvm".into()];
    let out = run(&d, req).await;
    assert!(out.contains("kvm-opened"), "{out}");
}

/// The io_uring probe, built static once.
fn io_uring_probe() -> Option<PathBuf> {
    let out = host_scratch().join("io_uring_probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("probes/io_uring.c");
    let built = std::process::Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    built.then_some(out)
}

#[tokio::test]
async fn a_jailed_cell_refuses_io_uring() {
    require_root!();
    let Some(bin) = io_uring_probe() else {
        aurae_tests::report_skip("a_jailed_cell_refuses_io_uring", "gcc -static failed");
        return;
    };
    let d = Daemon::start().await;
    let script = bin.display().to_string();
    let [(_, jailed), (_, ordinary)] = both(&d, "uring", &script).await;
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            jailed.contains(&format!("{call} errno 1\n")),
            "{call}: {jailed}"
        );
    }
    // The same probe outside the jail reaches the kernel (so it can fail):
    // enter and register on a bad fd answer EBADF.
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|v| v.trim() != "0")
        .unwrap_or(false);
    if !disabled {
        assert!(ordinary.contains("io_uring_setup ok"), "{ordinary}");
        assert!(ordinary.contains("io_uring_enter errno 9\n"), "{ordinary}");
    }
}

#[tokio::test]
async fn namespaced_settings_stay_usable_where_asked() {
    require_root!();
    let d = Daemon::start().await;
    let range = "/proc/sys/net/ipv4/ip_local_port_range";
    let host_range = read(range);
    let script = "if (echo '40000 50000' > /proc/sys/net/ipv4/ip_local_port_range) 2>/dev/null; \
                  then echo net-written; \
                  else echo net-refused; fi; \
                  if mkdir /sys/fs/cgroup/child 2>/dev/null; then echo cgroup-made; \
                  else echo cgroup-refused; fi";
    let out = run(&d, probe("plain", false, script)).await;
    assert!(out.contains("net-refused"), "{out}");
    assert!(out.contains("cgroup-refused"), "{out}");
    let mut req = probe("delegated", false, script);
    req.net_sysctls = true;
    req.delegate_cgroup = true;
    let out = run(&d, req).await;
    assert!(out.contains("net-written"), "{out}");
    assert!(out.contains("cgroup-made"), "{out}");
    assert_eq!(read(range), host_range);
    let cell = d.cgroup_dir().expect("cgroup root").join("delegated");
    assert!(
        cell.join("leaf/child").is_dir(),
        "made inside the cell's own subtree"
    );
    // Freeing the cell removes what was made inside it.
    let mut c = d.client().await;
    c.free(pb::FreeRequest {
        id: "delegated".into(),
    })
    .await
    .expect("free");
    assert!(!cell.exists());
}

#[tokio::test]
async fn privileged_lifts_the_defaults() {
    require_root!();
    let d = Daemon::start().await;
    let script = "grep CapEff /proc/self/status; \
                  awk '$5 == \"/proc/sys\" {print \"procsys-mounted\"}' /proc/self/mountinfo";
    let mut req = probe("priv", false, script);
    req.privileged = true;
    let out = run(&d, req).await;
    let caps = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert_ne!(caps & (1 << 21), 0, "CAP_SYS_ADMIN kept: {out}");
    assert!(
        !out.contains("procsys-mounted"),
        "/proc/sys not sealed: {out}"
    );
    let out = run(&d, probe("unpriv", false, script)).await;
    assert!(out.contains("CapEff:\t00000000800405fb"), "{out}");
    assert!(out.contains("procsys-mounted"), "{out}");
}
