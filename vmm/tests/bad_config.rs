//! Bad configuration gets an error naming the option, and leaves no TAP,
//! thread or file descriptor behind.

mod guest;

use std::path::PathBuf;

use vmm::{Console, DiskConfig, FsConfig, Vm, VmConfig, VsockConfig};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn share(tag: &str, path: &str) -> FsConfig {
    FsConfig {
        tag: tag.into(),
        path: path.into(),
    }
}

fn option_of(cfg: VmConfig) -> (&'static str, String) {
    match Vm::new(cfg) {
        Err(e) => match e.config_option() {
            Some(option) => (option, vmm::error_chain(&e)),
            None => panic!("expected a config error, got {}", vmm::error_chain(&e)),
        },
        Ok(_) => panic!("accepted a bad config"),
    }
}

#[test]
fn each_bad_option_is_named_and_nothing_leaks() {
    if !guest::kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk");
    let old_log = dir.path().join("old.log");
    std::fs::write(&old_log, "the last boot's log\n").expect("log");
    std::fs::write(&junk, vec![0x5a; 4096]).expect("junk");
    let tiny_kernel = dir.path().join("flat");
    std::fs::write(&tiny_kernel, [0xf4u8]).expect("flat");
    let big_initrd = dir.path().join("big-initrd");
    std::fs::write(&big_initrd, vec![0u8; 40 << 20]).expect("initrd");
    let base = VmConfig {
        kernel: tiny_kernel.clone(),
        mem_mib: 64,
        flat_entry: Some(guest::CODE),
        debug_exit: true,
        rng: false,
        ..VmConfig::default()
    };
    // Warm up once so lazily created process state is not counted.
    drop(Vm::new(base.clone()).expect("a good config builds"));
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");

    let cases: Vec<(&str, VmConfig)> = vec![
        (
            "kernel",
            VmConfig {
                kernel: PathBuf::from("/no/such/kernel"),
                ..base.clone()
            },
        ),
        (
            "kernel",
            VmConfig {
                kernel: junk.clone(),
                flat_entry: None,
                ..base.clone()
            },
        ),
        (
            "kernel",
            VmConfig {
                kernel: dir.path().to_path_buf(),
                ..base.clone()
            },
        ),
        (
            "vcpus",
            VmConfig {
                vcpus: 0,
                ..base.clone()
            },
        ),
        (
            "vcpus",
            VmConfig {
                vcpus: 255,
                ..base.clone()
            },
        ),
        (
            "mem",
            VmConfig {
                mem_mib: 1,
                ..base.clone()
            },
        ),
        (
            "mem",
            VmConfig {
                mem_mib: 1 << 20,
                ..base.clone()
            },
        ),
        (
            "mem",
            VmConfig {
                mem_mib: 32,
                initrds: vec![big_initrd.clone()],
                ..base.clone()
            },
        ),
        (
            "initrd",
            VmConfig {
                initrds: vec![PathBuf::from("/no/such/initrd")],
                ..base.clone()
            },
        ),
        (
            "tap",
            VmConfig {
                taps: vec!["aurae-no-such-tap".into()],
                ..base.clone()
            },
        ),
        (
            "tap",
            VmConfig {
                taps: vec!["x".repeat(40)],
                ..base.clone()
            },
        ),
        (
            "mac",
            VmConfig {
                macs: vec![("not-a-tap-of-it".into(), [2, 0, 0, 0, 0, 1])],
                ..base.clone()
            },
        ),
        (
            "disk",
            VmConfig {
                disks: vec![DiskConfig {
                    path: "/no/such/disk".into(),
                    read_only: true,
                }],
                ..base.clone()
            },
        ),
        (
            "disk",
            VmConfig {
                disks: vec![DiskConfig {
                    path: dir.path().to_path_buf(),
                    read_only: true,
                }],
                ..base.clone()
            },
        ),
        (
            "fs",
            VmConfig {
                shares: vec![share("volumes", "/no/such/folder")],
                ..base.clone()
            },
        ),
        (
            "fs",
            VmConfig {
                shares: vec![share("volumes", &junk.display().to_string())],
                ..base.clone()
            },
        ),
        (
            "fs",
            VmConfig {
                shares: vec![share(&"t".repeat(37), &dir.path().display().to_string())],
                ..base.clone()
            },
        ),
        (
            "fs",
            VmConfig {
                shares: vec![share("volumes", &dir.path().display().to_string()); 2],
                ..base.clone()
            },
        ),
        // One interrupt each: 20 disks and an rng don't fit the IOAPIC.
        (
            "disk",
            VmConfig {
                disks: vec![
                    DiskConfig {
                        path: tiny_kernel.clone(),
                        read_only: true,
                    };
                    20
                ],
                rng: true,
                ..base.clone()
            },
        ),
        (
            "cmdline",
            VmConfig {
                cmdline: "x".repeat(5000),
                ..base.clone()
            },
        ),
        (
            "vsock",
            VmConfig {
                vsock: Some(VsockConfig {
                    cid: 2,
                    uds_path: dir.path().join("v1.sock"),
                }),
                ..base.clone()
            },
        ),
        (
            "vsock",
            VmConfig {
                vsock: Some(VsockConfig {
                    cid: 3,
                    uds_path: junk.clone(),
                }),
                ..base.clone()
            },
        ),
        (
            "vsock",
            VmConfig {
                vsock: Some(VsockConfig {
                    cid: 3,
                    uds_path: "/no/such/dir/v.sock".into(),
                }),
                ..base.clone()
            },
        ),
        // A bad kernel is found before any device is made: no socket is
        // bound, and an existing console log is left as it was.
        (
            "kernel",
            VmConfig {
                kernel: junk.clone(),
                flat_entry: None,
                vsock: Some(VsockConfig {
                    cid: 3,
                    uds_path: dir.path().join("v2.sock"),
                }),
                console: Console::File(old_log.clone()),
                ..base.clone()
            },
        ),
    ];
    for (want, cfg) in cases {
        let (option, reason) = option_of(cfg);
        assert_eq!(option, want, "{reason}");
    }
    assert!(
        !std::path::Path::new("/sys/class/net/aurae-no-such-tap").exists(),
        "no TAP was created"
    );
    assert!(
        !dir.path().join("v2.sock").exists(),
        "the vsock socket file was removed"
    );
    assert_eq!(
        std::fs::read_to_string(&old_log).expect("log"),
        "the last boot's log\n",
        "the console log of a VM that never ran is untouched"
    );
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
}
