//! RunVirtualMachine on the development machine, with tiny PVH guests on
//! the real /dev/kvm: the console as a log stream, disks, the TAP on the
//! bridge, stop and its exit reason, a guest that halts, refusals that
//! name the field and leave nothing, and a restart after `kill -9`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aurae_proto::runtime as pb;
use aurae_tests::instances::{daemon, image, imds_in, line_has};
use aurae_tests::{leaks::Snapshot, require_root, Daemon, DaemonOptions};
use vmm::boot::test_elf::TestElf;

/// `pause; jmp` back to it: a guest that runs until stopped.
const SPIN: &[u8] = &[0xf3, 0x90, 0xeb, 0xfc];
/// A reset through the i8042 controller (`out 0x64, 0xfe`), then spin.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf3, 0x90, 0xeb, 0xfc];

/// A PVH kernel that writes `text` to the serial port, then runs `then`.
fn guest(text: &str, then: &[u8]) -> Vec<u8> {
    let mut code = Vec::new();
    for b in text.bytes() {
        // mov dx, 0x3f8; mov al, b; out dx, al
        code.extend([0x66, 0xba, 0xf8, 0x03, 0xb0, b, 0xee]);
    }
    code.extend(then);
    TestElf::pvh(&code).build()
}

fn kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

macro_rules! require_kvm {
    () => {
        if !kvm() {
            aurae_tests::report_skip(aurae_tests::function_name!(), "/dev/kvm is not usable");
            return;
        }
    };
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn vm_req(name: &str, kernel: &Path) -> pb::RunVirtualMachineRequest {
    pb::RunVirtualMachineRequest {
        name: name.into(),
        kernel: kernel.display().to_string(),
        memory_mib: 64,
        vcpus: 1,
        ..Default::default()
    }
}

async fn vm_daemon() -> Daemon {
    daemon(
        image().unwrap_or_else(|| PathBuf::from("/nonexistent")),
        None,
    )
    .await
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The console until a line contains `marker` (10 s at most).
async fn console_until(d: &Daemon, id: &str, marker: &str) -> String {
    let mut c = d.client().await;
    let (text, found) = aurae_tests::logs::until(&mut c, id, marker, Duration::from_secs(10)).await;
    assert!(found, "no {marker:?} on {id}'s console:\n{text}");
    text
}

#[tokio::test]
async fn a_vm_boots_streams_its_console_and_stops() {
    require_root!();
    require_kvm!();
    let d = vm_daemon().await;
    let mut c = d.client().await;
    let before = Snapshot::settled(&d);
    let kernel = write(&d.dir, "spin.elf", &guest("login: aurae-vm\n", SPIN));
    let root = write(&d.dir, "root.img", &vec![0u8; 1 << 20]);
    let data = write(&d.dir, "data.img", &vec![7u8; 512 << 10]);
    let r = c
        .run_virtual_machine(pb::RunVirtualMachineRequest {
            root_disk: Some(pb::VmDisk {
                path: root.display().to_string(),
                read_only: false,
            }),
            disks: vec![pb::VmDisk {
                path: data.display().to_string(),
                read_only: true,
            }],
            ..vm_req("db", &kernel)
        })
        .await
        .unwrap_or_else(|e| panic!("run_virtual_machine: {}\n{}", e.message(), d.log_text()))
        .into_inner();
    let vm = r.vm.expect("vm status");
    assert!(
        vm.address.starts_with("fd") && vm.address.ends_with("/64"),
        "{vm:?}"
    );
    let master = std::fs::read_link(format!("/sys/class/net/{}/master", vm.tap)).expect("master");
    assert_eq!(
        master.file_name().map(|n| n.to_string_lossy().into_owned()),
        Some(d.bridge()),
        "the TAP is on auraed's bridge"
    );
    console_until(&d, "db", "login: aurae-vm").await;

    let s = c
        .status(pb::StatusRequest { id: "db".into() })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.kind, pb::WorkloadKind::VirtualMachine as i32);
    assert_eq!(s.state, pb::WorkloadState::Running as i32);
    let argv = std::fs::read(format!("/proc/{}/cmdline", s.pid)).expect("the VMM runs");
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        argv.contains(&root.display().to_string()),
        "root read-write: {argv:?}"
    );
    assert!(argv.contains(&format!("{}:ro", data.display())), "{argv:?}");

    // This guest ignores its keyboard: asked, it runs on through the grace.
    let stopped = c
        .stop(pb::StopRequest {
            id: "db".into(),
            grace_period_ms: Some(300),
            ..Default::default()
        })
        .await
        .expect("stop")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(stopped.state, pb::WorkloadState::Exited as i32);
    assert_eq!(
        stopped.vm.map(|v| v.exit_reason).as_deref(),
        Some("stopped by auraed, asked to shut down")
    );
    c.free(pb::FreeRequest { id: "db".into() })
        .await
        .expect("free");
    assert!(!link_exists(&vm.tap), "the TAP went with the VM");
    before.assert_unchanged(&d);
}

/// Polls the i8042 until the keyboard sends Delete's make code (0x71,
/// scan code set 2), then says so and resets: a guest that shuts down
/// when asked. 32-bit code (PVH starts in protected mode).
const ON_CTRL_ALT_DEL: &[u8] = &[
    0xe4, 0x64, // top: in al, 0x64
    0xa8, 0x01, // test al, 1 (output buffer full)
    0x74, 0xfa, // jz top
    0xe4, 0x60, // in al, 0x60
    0x3c, 0x71, // cmp al, 0x71
    0x75, 0xf4, // jne top
];

#[tokio::test]
async fn stop_asks_the_guest_to_shut_down_first() {
    require_root!();
    require_kvm!();
    let d = vm_daemon().await;
    let mut c = d.client().await;
    let mut then = ON_CTRL_ALT_DEL.to_vec();
    for b in b"ctrl-alt-del pressed\n" {
        then.extend([0x66, 0xba, 0xf8, 0x03, 0xb0, *b, 0xee]);
    }
    then.extend(RESET);
    let kernel = write(&d.dir, "polite.elf", &guest("up\n", &then));
    let path = kernel.display().to_string();
    d.aer_ok(&[
        "vm", "run", "--name", "polite", "--kernel", &path, "--mem", "64M",
    ]);
    console_until(&d, "polite", "up").await;
    let asked = std::time::Instant::now();
    // A grace far longer than the guest needs: Stop returns when it's done.
    let out = d.aer_ok(&["-o", "json", "stop", "--grace", "20s", "polite"]);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "Stop waited for the grace, not the guest: {:?}",
        asked.elapsed()
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["vm"]["exit_reason"], "guest reset (i8042), asked to shut down",
        "{out}"
    );
    let logs = d.aer_ok(&["logs", "polite"]);
    assert!(logs.contains("ctrl-alt-del pressed"), "{logs}");
    d.aer_ok(&["free", "polite"]);

    // SIGKILL doesn't ask; a signal a VM can't take is refused by name.
    d.aer_ok(&[
        "vm", "run", "--name", "polite", "--kernel", &path, "--mem", "64M",
    ]);
    let stop = |signal| pb::StopRequest {
        id: "polite".into(),
        signal,
        ..Default::default()
    };
    let e = c.stop(stop(libc::SIGHUP)).await.expect_err("SIGHUP");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("signal"), "{}", e.message());
    let stopped = c
        .stop(stop(libc::SIGKILL))
        .await
        .expect("stop")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(
        stopped.vm.map(|v| v.exit_reason).as_deref(),
        Some("stopped by auraed")
    );
    let logs = d.aer_ok(&["logs", "polite"]);
    assert!(!logs.contains("ctrl-alt-del pressed"), "{logs}");
    d.aer_ok(&["free", "polite"]);
}

#[tokio::test]
async fn each_vm_reads_its_own_record_at_the_link_local_address() {
    require_root!();
    require_kvm!();
    let d = vm_daemon().await;
    let before = Snapshot::settled(&d);
    let kernel = write(&d.dir, "spin.elf", &guest("up\n", SPIN));
    let path = kernel.display().to_string();
    let mut c = d.client().await;
    let mut pids = Vec::new();
    for (name, role) in [("one", "role=db"), ("two", "role=cache")] {
        d.aer_ok(&[
            "vm", "run", "--name", name, "--kernel", &path, "--mem", "64M", "--meta", role,
        ]);
        pids.push(
            c.status(pb::StatusRequest { id: name.into() })
                .await
                .expect("status")
                .into_inner()
                .pid,
        );
    }
    // Asked from each VM's network namespace (where its TAP is), each gets
    // its own record, and the protocol's refusals.
    for (pid, (name, role)) in pids.iter().zip([("one", "db"), ("two", "cache")]) {
        let out = imds_in(*pid);
        assert!(out.contains("token-length=48"), "{name}: {out}");
        assert!(out.contains(&format!("role={role}")), "{name}: {out}");
        assert!(out.contains(&format!("path={name}")), "{name}: {out}");
        assert!(line_has(&out, "untokened:", "401"), "{name}: {out}");
        assert!(line_has(&out, "forwarded:", "403"), "{name}: {out}");
    }
    // The host's own namespace holds no such address (a cloud host's own
    // metadata service stays reachable).
    let bound = std::net::TcpListener::bind("169.254.169.254:0");
    assert!(bound.is_err(), "169.254.169.254 is local on the host");
    // The admin's record is the VM's: a Set is what the guest reads next.
    let got = d.aer_ok(&["-o", "json", "meta", "get", "one"]);
    let v: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(
        (v["backend"].as_str(), v["path"].as_str()),
        (Some("vm"), Some("one")),
        "{got}"
    );
    d.aer_ok(&["meta", "set", "one", "role=primary"]);
    assert!(imds_in(pids[0]).contains("role=primary"));
    for name in ["one", "two"] {
        d.aer_ok(&["stop", "--signal", "KILL", name]);
        d.aer_ok(&["free", name]);
    }
    let e = c
        .run_virtual_machine(pb::RunVirtualMachineRequest {
            metadata: [("k".to_string(), "v".repeat(70_000))].into(),
            ..vm_req("big", &kernel)
        })
        .await
        .expect_err("metadata over the limit");
    assert!(e.message().starts_with("metadata"), "{}", e.message());
    before.assert_unchanged(&d);
}

#[tokio::test]
async fn a_guest_that_resets_reports_why_it_stopped() {
    require_root!();
    require_kvm!();
    let d = vm_daemon().await;
    let kernel = write(&d.dir, "reset.elf", &guest("bye\n", RESET));
    let out = d.aer_ok(&[
        "vm",
        "run",
        "--name",
        "brief",
        "--kernel",
        &kernel.display().to_string(),
        "--mem",
        "64M",
    ]);
    assert!(out.contains("brief"), "{out}");
    let out = d.aer_ok(&["-o", "json", "wait", "--timeout", "10s", "brief"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vm"]["exit_reason"], "guest reset (i8042)", "{out}");
    let logs = d.aer_ok(&["logs", "brief"]);
    assert!(logs.contains("bye"), "{logs}");
    let ls = d.aer_ok(&["vm", "ls"]);
    assert!(ls.contains("brief") && ls.contains("guest reset"), "{ls}");
    d.aer_ok(&["free", "brief"]);
}

#[tokio::test]
async fn bad_vm_requests_name_the_field_and_leave_nothing() {
    require_root!();
    let d = vm_daemon().await;
    let mut c = d.client().await;
    c.list(pb::ListRequest {}).await.expect("list");
    let before = Snapshot::settled(&d);
    let kernel = write(&d.dir, "k.elf", &guest("x", SPIN));
    let text = write(&d.dir, "notes.txt", b"not a kernel at all");
    let odd = write(&d.dir, "odd.img", &[0u8; 1000]);
    let disk = |p: &Path| pb::VmDisk {
        path: p.display().to_string(),
        read_only: true,
    };
    let cases: Vec<(&str, pb::RunVirtualMachineRequest)> = vec![
        ("name", vm_req("Bad Name", &kernel)),
        ("kernel", vm_req("v", Path::new("/no/such/kernel"))),
        ("kernel", vm_req("v", Path::new("relative/kernel"))),
        ("kernel", vm_req("v", &text)),
        (
            "initramfs[1]",
            pb::RunVirtualMachineRequest {
                initramfs: vec![text.display().to_string(), "/no/such/initrd".into()],
                ..vm_req("v", &kernel)
            },
        ),
        (
            "root_disk.path",
            pb::RunVirtualMachineRequest {
                root_disk: Some(disk(Path::new("/no/such/disk"))),
                ..vm_req("v", &kernel)
            },
        ),
        (
            "disks[0].path",
            pb::RunVirtualMachineRequest {
                disks: vec![disk(&odd)],
                ..vm_req("v", &kernel)
            },
        ),
        (
            "cmdline",
            pb::RunVirtualMachineRequest {
                cmdline: "console=ttyS0 ".repeat(200),
                ..vm_req("v", &kernel)
            },
        ),
        (
            "vcpus",
            pb::RunVirtualMachineRequest {
                vcpus: 1000,
                ..vm_req("v", &kernel)
            },
        ),
        (
            "memory_mib",
            pb::RunVirtualMachineRequest {
                memory_mib: u64::MAX,
                ..vm_req("v", &kernel)
            },
        ),
    ];
    for (field, req) in cases {
        let err = c.run_virtual_machine(req).await.expect_err(field);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            err.message()
        );
    }
    // An ELF that is no kernel: the VMM refuses it at once; the status
    // says so, with the console's tail, and nothing is left.
    if kvm() {
        let mut bad = b"\x7fELF".to_vec();
        bad.resize(4096, 0xff);
        let bad = write(&d.dir, "bad.elf", &bad);
        let err = c
            .run_virtual_machine(vm_req("v", &bad))
            .await
            .expect_err("a kernel that does not boot");
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{}",
            err.message()
        );
        assert!(
            err.message().starts_with("kernel: the VM did not boot"),
            "{}",
            err.message()
        );
        let stem: String = d.bridge().chars().take(9).collect();
        let taps: Vec<String> = std::fs::read_dir("/sys/class/net")
            .expect("links")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{stem}t")))
            .collect();
        assert!(taps.is_empty(), "the refused VM's TAP is gone: {taps:?}");
    } else {
        aurae_tests::report_skip(
            aurae_tests::function_name!(),
            "/dev/kvm is not usable: the refused-kernel case did not run",
        );
    }
    before.assert_unchanged(&d);
    let list = c.list(pb::ListRequest {}).await.expect("list").into_inner();
    assert!(list.workloads.is_empty(), "{:?}", list.workloads);
}

/// Whatever happens in a restart test, the spinning VMM and its TAP go.
struct Leftovers(u32, String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.1])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn a_restarted_auraed_takes_back_the_vms_it_left_running() {
    require_root!();
    require_kvm!();
    let image = image().unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let opts = |reuse: Option<PathBuf>| DaemonOptions {
        reuse,
        image_dir: Some(image.clone()),
        vm_restart: Some("adopt"),
        ..Default::default()
    };
    let mut d = Daemon::start_with(opts(None)).await;
    let kernel = write(&d.dir, "spin.elf", &guest("login: kept\n", SPIN));
    let mut c = d.client().await;
    let vm = c
        .run_virtual_machine(vm_req("kept", &kernel))
        .await
        .expect("run")
        .into_inner()
        .vm
        .expect("vm");
    console_until(&d, "kept", "login: kept").await;
    let status = |s: pb::WorkloadStatus| (s.state, s.pid);
    let (_, pid) = status(
        c.status(pb::StatusRequest { id: "kept".into() })
            .await
            .expect("status")
            .into_inner(),
    );
    drop(c);
    let _leftovers = Leftovers(pid, vm.tap.clone());
    let running = pb::WorkloadState::Running as i32;
    // An admin's change to its record outlives auraed with it.
    d.aer_ok(&["meta", "set", "kept", "tier=gold"]);

    // A crash, then a graceful restart: each time the VM runs on and the
    // next auraed takes it back, console and all.
    d.crash();
    let dir = aurae_tests::KeptDir(d.keep_dir());
    drop(d);
    for round in ["after kill -9", "after SIGTERM"] {
        let mut d = Daemon::start_with(opts(Some(dir.0.clone()))).await;
        let mut c = d.client().await;
        let s = c
            .status(pb::StatusRequest { id: "kept".into() })
            .await
            .unwrap_or_else(|e| panic!("{round}: {}\n{}", e.message(), d.log_text()))
            .into_inner();
        assert_eq!(s.kind, pb::WorkloadKind::VirtualMachine as i32, "{round}");
        assert_eq!(status(s), (running, pid), "{round}: the same VMM, running");
        assert!(link_exists(&vm.tap), "{round}: its TAP stays");
        let logs = d.aer_ok(&["logs", "kept"]);
        assert!(logs.contains("login: kept"), "{round}: the console: {logs}");
        let record = d.aer_ok(&["-o", "json", "meta", "get", "kept"]);
        assert!(record.contains("\"tier\":\"gold\""), "{round}: {record}");
        assert!(
            imds_in(pid).contains("path=kept"),
            "{round}: its link-local endpoint is back"
        );
        assert!(
            d.log_text().contains("took back a VM left running"),
            "{round}:\n{}",
            d.log_text()
        );
        d.stop();
        assert!(
            !aurae_tests::dead(pid),
            "{round}: SIGTERM leaves it running"
        );
    }

    // The last auraed stops and frees it as any VM.
    let d = Daemon::start_with(opts(Some(dir.0.clone()))).await;
    let out = d.aer_ok(&["-o", "json", "stop", "--grace", "300ms", "kept"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["vm"]["exit_reason"],
        "stopped by auraed, asked to shut down",
        "{out}\n{}",
        d.log_text()
    );
    d.aer_ok(&["free", "kept"]);
    assert!(aurae_tests::dead(pid), "the VMM is gone");
    assert!(!link_exists(&vm.tap), "its TAP went with it");
}

#[tokio::test]
async fn a_restart_after_kill_9_removes_the_vm_and_its_tap() {
    require_root!();
    require_kvm!();
    let image = image().unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let mut d = daemon(image.clone(), None).await;
    let mut c = d.client().await;
    let kernel = write(&d.dir, "spin.elf", &guest("up\n", SPIN));
    let vm = c
        .run_virtual_machine(vm_req("left", &kernel))
        .await
        .expect("run")
        .into_inner()
        .vm
        .expect("vm");
    let pid = c
        .status(pb::StatusRequest { id: "left".into() })
        .await
        .expect("status")
        .into_inner()
        .pid;
    drop(c);
    let _leftovers = Leftovers(pid, vm.tap.clone());
    d.crash();
    assert!(link_exists(&vm.tap), "the crash left the TAP");
    let dir = aurae_tests::KeptDir(d.keep_dir());
    drop(d);
    let d2 = Daemon::start_with(DaemonOptions {
        reuse: Some(dir.0.clone()),
        image_dir: Some(image),
        ..Default::default()
    })
    .await;
    let mut c = d2.client().await;
    c.list(pb::ListRequest {}).await.expect("list");
    // Killed through its cell's cgroup as the restart began; bounded wait.
    for _ in 0..100 {
        if aurae_tests::dead(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(aurae_tests::dead(pid), "the VMM left behind was killed");
    // Its uplink went with its network namespace (its TAP is in there).
    for _ in 0..100 {
        if !link_exists(&vm.tap) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!link_exists(&vm.tap), "its link on the bridge was removed");
    let log = d2.log_text();
    assert!(
        log.contains("vm.left, left by a previous run"),
        "the restart says what it removed:\n{log}"
    );
}
