//! Tier 4 (e2e), inside the QEMU test host: a CRI pod sandbox on the
//! microVM backend (RuntimeClass handler `aurae-microvm`), driven by the
//! upstream crictl. The container's image, pulled through the registry
//! mirror, reaches the booted VM over its link (`PutImage`), checked blob by
//! blob; then its logs, exec (ExecSync and the streaming server), a host
//! port and port-forward work, the container runs under the VM's kernel,
//! and the clean-up leaves no instance, VMM, TAP or host port. A
//! container's host paths reach it through the VMM's virtio-fs folder,
//! both ways, read-only where asked, and go with the container. What a
//! microVM pod can't have yet is refused, naming it, leaving nothing; its
//! DNS settings reach the container's /etc/resolv.conf, and its sysctls the
//! VM's kernel (a sysctl that kernel lacks stops the boot, named).
//! Twice: on auraed's bridge (no CNI configuration), and on a CNI network
//! (Debian's bridge and host-local plugins), which the VMM's namespace joins
//! before the guest boots: the pod's address is then CNI's, reached from
//! the host directly, and released when the pod is removed; a second pod
//! there gets an IPv6 network's address (and its default route). There the pod
//! also outlives a `kill -9` and a SIGTERM of auraed: its VM runs on, and
//! the restarted auraed takes it back (its listing, log, exec and host
//! port); its keys are not left on disk.

use std::path::Path;
use std::time::{Duration, Instant};

use aurae_tests::cri::{
    daemon_options, page_through_port_forward, pod_ip, requirements, workloads, write_json, Crictl,
    Registry, BUSYBOX,
};
use aurae_tests::guest::e2e_kvm;
use aurae_tests::pods::{busybox_image, free_port, http_get};
use aurae_tests::{report_skip, Daemon};

const HANDLER: &str = "aurae-microvm";

/// A container's host paths in a microVM pod, through the VMM's virtio-fs
/// folder: a folder read and written both ways, a file read-only; bound in
/// the VMM's mount namespace only, and taken out with the container (the
/// host's files stay). Bidirectional propagation is refused, naming it.
/// Answers the container, stopped, for [`unbound_with_rm`].
fn volumes(crictl: &Crictl, work: &Path, pod_id: &str, pod: &str, vmm: u32, auraed: u32) -> String {
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    std::fs::write(shared.join("from-host.txt"), "host-data\n").expect("file");
    let config = work.join("app.conf");
    std::fs::write(&config, "config-data\n").expect("config");
    let mounts = serde_json::json!([
        {"host_path": shared.display().to_string(), "container_path": "/data"},
        {"host_path": config.display().to_string(), "container_path": "/etc/app.conf",
         "readonly": true},
    ]);
    let vol = write_json(
        work,
        "volume.json",
        serde_json::json!({
            "metadata": {"name": "vol"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/busybox", "sleep", "3600"],
            "mounts": mounts,
        }),
    );
    let cid = crictl.ok(&["create", pod_id, &vol, pod]);
    crictl.ok(&["start", &cid]);
    let sh = |script: &str| crictl.ok(&["exec", "-s", &cid, "/bin/busybox", "sh", "-c", script]);
    assert_eq!(
        sh("cat /data/from-host.txt /etc/app.conf"),
        "host-data\nconfig-data"
    );
    sh("echo guest-data > /data/from-guest.txt && mkdir /data/d && echo x > /data/d/y");
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest.txt"))
            .ok()
            .as_deref(),
        Some("guest-data\n")
    );
    assert!(shared.join("d/y").is_file());
    // The host changes a file: the guest sees it (its cache lasts 1 s).
    std::fs::write(shared.join("from-host.txt"), "host-data-2\n").expect("rewrite");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sh("cat /data/from-host.txt"), "host-data-2");
    let refused = sh("echo no > /etc/app.conf || echo refused");
    assert!(
        refused.contains("Read-only file system") && refused.lines().any(|l| l == "refused"),
        "{refused}"
    );
    // The binds are in the VMM's mount namespace, never in the host's; the
    // folder they are in is read-only there (the guest can put nothing in
    // it).
    assert_eq!(binds_in(&vmm.to_string()), 2);
    let mountinfo = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).expect("mountinfo");
    let folder = mountinfo.lines().find_map(|l| {
        let mut fields = l.split(' ').skip(4);
        let point = fields.next()?;
        point.ends_with("/volumes").then(|| fields.next()).flatten()
    });
    assert!(
        folder.is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "the VMM's volumes folder: {folder:?}"
    );
    for pid in ["self".to_string(), auraed.to_string()] {
        assert_eq!(binds_in(&pid), 0, "in {pid}'s");
    }
    crictl.ok(&["stop", "-t", "0", &cid]);

    let both_ways = write_json(
        work,
        "both-ways.json",
        serde_json::json!({
            "metadata": {"name": "both-ways"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/busybox", "true"],
            "linux": {"security_context": {"privileged": true}},
            "mounts": [{"host_path": "/", "container_path": "/host", "propagation": 2}],
        }),
    );
    let refused = crictl.refused(&["create", pod_id, &both_ways, pod]);
    assert!(
        refused.contains("config.mounts[0].propagation"),
        "{refused}"
    );
    cid
}

/// The volume binds in the mount namespace of process `pid`.
fn binds_in(pid: &str) -> usize {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    mountinfo
        .lines()
        .filter(|l| l.contains("/volumes/c-"))
        .count()
}

/// Removing the container of [`volumes`] takes its binds out of the VMM's
/// namespace; the host's files stay.
fn unbound_with_rm(crictl: &Crictl, work: &Path, cid: &str, vmm: u32) {
    crictl.ok(&["rm", cid]);
    assert_eq!(binds_in(&vmm.to_string()), 0);
    assert!(work.join("shared/from-guest.txt").is_file() && work.join("app.conf").is_file());
}

/// Waits until `crictl logs` of `cid` holds `text`.
fn logs_with(crictl: &Crictl, cid: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = crictl.run(&["logs", cid]);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "crictl logs {cid}: {log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The VMM processes running on this host.
fn vmms() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "aurae-vmm")
        })
        .collect()
}

fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The CNI network of the second run: a bridge of its own with an IPv4
/// subnet, inside the test host.
const CNI_SUBNET: &str = "10.99.0.0/24";
/// The IPv6 network's (a ULA prefix of the test's).
const CNI_SUBNET6: &str = "fd00:99::/64";
const CNI_BRIDGE: &str = "cni-vm0";

/// What the CNI network's IPAM holds (host-local: a file per address).
fn allocations(ipam: &Path) -> Vec<String> {
    std::fs::read_dir(ipam.join("vmnet"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect()
}

#[tokio::test]
async fn a_microvm_pod_sandbox_runs_a_pulled_image_through_crictl_and_leaves_nothing() {
    scenario(aurae_tests::function_name!(), false).await;
}

#[tokio::test]
async fn a_microvm_pod_sandbox_on_a_cni_network_has_the_address_cni_gave() {
    scenario(aurae_tests::function_name!(), true).await;
}

async fn scenario(name: &str, cni: bool) {
    let Some((_, vmm)) = e2e_kvm(name) else {
        return;
    };
    if let Some(why) = requirements() {
        report_skip(name, why);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    registry.push(
        &busybox_image(work.path()),
        "e2e-test-images/busybox:1.29-2",
    );
    let (mut options, crictl) = daemon_options(&registry, "keep");
    // A microVM boots slowly under the test host's TCG.
    options.extra_config = options.extra_config.replacen(
        "[cri]\n",
        &format!(
            "[cri]\nsandbox_ready_timeout_s = {}\n",
            aurae_tests::critest::TEST_HOST_READY_TIMEOUT_S
        ),
        1,
    );
    options.vmm = Some(vmm);
    let mut d = Daemon::start_with(options.clone()).await;
    let ipam = work.path().join("ipam");
    if cni {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "vmnet",
            "plugins": [{
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": CNI_SUBNET}]],
                    "dataDir": ipam.display().to_string(),
                },
            }],
        });
        let dir = aurae_tests::cri::cni_dir(&crictl.socket);
        std::fs::create_dir_all(&dir).expect("net.d");
        write_json(&dir, "10-vmnet.conflist", conf);
    }
    let pulled = crictl.run(&["pull", BUSYBOX]);
    assert!(
        pulled.status.success(),
        "pull: {}\nauraed log:\n{}",
        String::from_utf8_lossy(&pulled.stderr),
        d.log_text()
    );

    let host_port = free_port();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let pod = write_json(
        work.path(),
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "vm-pod", "namespace": "default", "uid": "vm-pod-uid"},
            "log_directory": logs.display().to_string(),
            "port_mappings": [{"container_port": 8080, "host_port": host_port}],
            // The pod's resources, as a kubelet sums them: the VM's size.
            "linux": {"resources": {"memory_limit_in_bytes": 256 << 20}},
        }),
    );
    let asked = Instant::now();
    let out = crictl.run(&["runp", "--runtime", HANDLER, &pod]);
    assert!(
        out.status.success(),
        "runp: {}\nauraed log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    let pod_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!(
        "BENCH cri microvm: {:.1} s to RunPodSandbox's answer",
        asked.elapsed().as_secs_f64()
    );
    let mut c = d.client().await;
    let instances = workloads(&mut c).await;
    let [instance] = instances.as_slice() else {
        panic!("one instance: {instances:?}")
    };
    let vm = instance.instance.as_ref().expect("an instance");
    // The VM is the pod's size: its limits plus the guest's 128 MiB.
    let vmm_cmdline = std::fs::read(format!("/proc/{}/cmdline", instance.pid)).expect("cmdline");
    let args: Vec<String> = vmm_cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mem = args
        .iter()
        .position(|a| a == "--mem")
        .and_then(|i| args.get(i + 1));
    assert_eq!(mem.map(String::as_str), Some("384"), "{args:?}");
    assert_eq!(
        vm.backend,
        aurae_proto::runtime::SpawnBackend::Microvm as i32
    );
    let inspect = crictl.ok(&["inspectp", "-o", "json", &pod_id]);
    assert!(inspect.contains(HANDLER), "{inspect}");
    let ip = pod_ip(&crictl, &pod_id);
    if cni {
        assert!(ip.starts_with("10.99.0."), "the pod's IP is CNI's: {ip}");
        assert_eq!(allocations(&ipam), vec![ip.clone()]);
    } else {
        let vm_ip = vm
            .address
            .rsplit_once(':')
            .map(|(a, _)| a.trim_matches(['[', ']']));
        assert_eq!(vm_ip, Some(ip.as_str()), "the pod's IP is its VM's");
    }

    let with_volumes = volumes(&crictl, work.path(), &pod_id, &pod, instance.pid, d.pid());
    // A kept pod's is removed after auraed's restarts, below.
    if !cni {
        unbound_with_rm(&crictl, work.path(), &with_volumes, instance.pid);
    }

    let server = write_json(
        work.path(),
        "web.json",
        serde_json::json!({
            "metadata": {"name": "web"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/busybox", "sh", "-c",
                "echo hello-from-the-vm; mkdir -p /tmp/www && echo pod-says-hi > /tmp/www/index.html; \
                 (while :; do [ -f /tmp/say ] && cat /tmp/say && rm /tmp/say; sleep 0.2; done) & \
                 exec /bin/busybox httpd -f -p 8080 -h /tmp/www"],
            "log_path": "web.log",
        }),
    );
    let cid = crictl.ok(&["create", &pod_id, &server, &pod]);
    crictl.ok(&["start", &cid]);
    logs_with(&crictl, &cid, "hello-from-the-vm");
    // Under the VM's kernel: another boot than the host's.
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
    let vm_boot = crictl.ok(&[
        "exec",
        "-s",
        &cid,
        "/bin/busybox",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert_eq!(vm_boot.len(), host_boot.trim().len(), "{vm_boot}");
    assert_ne!(
        vm_boot,
        host_boot.trim(),
        "the container runs under the host's kernel"
    );
    let streamed = crictl.ok(&["exec", &cid, "/bin/busybox", "echo", "streamed-exec"]);
    assert!(streamed.contains("streamed-exec"), "{streamed}");
    assert!(http_get(&format!("127.0.0.1:{host_port}")).contains("pod-says-hi"));
    if cni {
        // The guest answers at CNI's address, on the CNI bridge.
        assert!(http_get(&format!("{ip}:8080")).contains("pod-says-hi"));
        let routes = crictl.ok(&["exec", "-s", &cid, "/bin/busybox", "ip", "route"]);
        assert!(routes.contains("default via 10.99.0.1"), "{routes}");
        // A second pod, on an IPv6 network of the same bridge (the first
        // configuration by name is the network, read at each RunPodSandbox):
        // an address and a MAC (its CNI device's) of its own, its default
        // route CNI's gateway, and both answer.
        let dir = aurae_tests::cri::cni_dir(&crictl.socket);
        let v6 = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "vmnet6",
            "plugins": [{
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": CNI_SUBNET6}]],
                    "dataDir": ipam.display().to_string(),
                },
            }],
        });
        let v6_conf = write_json(&dir, "05-vmnet6.conflist", v6);
        let logs2 = work.path().join("logs2");
        std::fs::create_dir_all(&logs2).expect("logs2");
        let pod2 = write_json(
            work.path(),
            "pod2.json",
            serde_json::json!({
                "metadata": {"name": "vm-pod-2", "namespace": "default", "uid": "vm-pod-2-uid"},
                "log_directory": logs2.display().to_string(),
                // Its resolv.conf reaches the VM in its initrd.
                "dns_config": {"servers": ["10.99.0.53"], "searches": ["pods.test"]},
                // Its sysctls are set in the VM by guest-init at boot.
                "linux": {"sysctls": {
                    "kernel.shm_rmid_forced": "1",
                    "net.ipv4.ping_group_range": "0 2147483647",
                }},
            }),
        );
        let pod2_id = crictl.ok(&["runp", "--runtime", HANDLER, &pod2]);
        std::fs::remove_file(&v6_conf).expect("the IPv6 network's configuration");
        let cid2 = crictl.ok(&["create", &pod2_id, &server, &pod2]);
        crictl.ok(&["start", &cid2]);
        let ip2 = pod_ip(&crictl, &pod2_id);
        assert!(ip2.starts_with("fd00:99::"), "the pod's IP is CNI's: {ip2}");
        assert!(http_get(&format!("[{ip2}]:8080")).contains("pod-says-hi"));
        let routes = crictl.ok(&["exec", "-s", &cid2, "/bin/busybox", "ip", "-6", "route"]);
        assert!(
            routes.contains("default via fd00:99::1 dev eth1"),
            "{routes}"
        );
        assert!(http_get(&format!("{ip}:8080")).contains("pod-says-hi"));
        let mac = |c: &str| {
            crictl.ok(&[
                "exec",
                "-s",
                c,
                "/bin/busybox",
                "cat",
                "/sys/class/net/eth1/address",
            ])
        };
        assert_ne!(mac(&cid), mac(&cid2), "each guest has its CNI device's MAC");
        let resolv = crictl.ok(&[
            "exec",
            "-s",
            &cid2,
            "/bin/busybox",
            "cat",
            "/etc/resolv.conf",
        ]);
        assert!(
            resolv.contains("nameserver 10.99.0.53") && resolv.contains("search pods.test"),
            "{resolv}"
        );
        let sysctl = |key: &str| {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            crictl.ok(&["exec", "-s", &cid2, "/bin/busybox", "cat", &path])
        };
        assert_eq!(sysctl("kernel.shm_rmid_forced"), "1");
        assert_eq!(sysctl("net.ipv4.ping_group_range"), "0\t2147483647");
        // The first pod asked for none: the guest kernel's defaults.
        let first = crictl.ok(&[
            "exec",
            "-s",
            &cid,
            "/bin/busybox",
            "cat",
            "/proc/sys/kernel/shm_rmid_forced",
        ]);
        assert_eq!(first, "0");
        crictl.ok(&["stopp", &pod2_id]);
        crictl.ok(&["rmp", &pod2_id]);

        // Kept: its folder on disk has the VM's console, the VMM's messages
        // and the record, but no initrd (its keys), whose folder on auraed's
        // own tmpfs went once the guest ran.
        let name = format!("cri-{}", &pod_id[..12]);
        let folder = d.dir.join("state/instances").join(&name);
        for f in ["console", "vmm", "instance.json"] {
            assert!(folder.join(f).is_file(), "{}: no {f}", folder.display());
        }
        assert!(!folder.join("initrd").exists());
        let boot = d.seen_by_auraed(&format!("state/cells/.instances/{name}"));
        assert!(d.seen_by_auraed("state/cells/.instances").is_dir());
        assert!(!boot.exists(), "{} is left", boot.display());
        // A crash of auraed, then a graceful stop: each time the VM runs on,
        // and the restarted auraed lists the pod and its container again,
        // follows the log on (no line twice), serves exec and relays the
        // host port again.
        let vmm_pid = instance.pid;
        for (round, how) in ["kill -9", "SIGTERM"].into_iter().enumerate() {
            if round == 0 {
                d.crash();
            } else {
                d.stop();
            }
            assert!(
                vmms().contains(&vmm_pid),
                "{how} of auraed ended the pod's VMM"
            );
            d = d.restart(&options).await;
            c = d.client().await;
            let ready = crictl.ok(&["pods", "-q", "--state", "ready"]);
            assert_eq!(
                ready,
                pod_id,
                "after {how}; auraed's log:\n{}",
                d.log_text()
            );
            assert_eq!(crictl.ok(&["ps", "-q", "--state", "running"]), cid);
            let word = format!("after-restart-{round}");
            let script = format!("echo {word} > /tmp/say");
            crictl.ok(&["exec", "-s", &cid, "/bin/busybox", "sh", "-c", &script]);
            let log = logs_with(&crictl, &cid, &word);
            assert_eq!(log.matches("hello-from-the-vm").count(), 1, "{log}");
            let addrs = [format!("127.0.0.1:{host_port}"), format!("{ip}:8080")];
            for addr in addrs {
                assert!(
                    http_get(&addr).contains("pod-says-hi"),
                    "{addr} after {how}"
                );
            }
            assert_eq!(allocations(&ipam), vec![ip.clone()]);
            assert!(vmms().contains(&vmm_pid), "the same VMM after {how}");
            let log_text = d.log_text();
            assert!(
                log_text.contains("took back an instance left running"),
                "{log_text}"
            );
        }
        // The restarted auraed unbinds a container's volumes, bound by the
        // first.
        unbound_with_rm(&crictl, work.path(), &with_volumes, vmm_pid);
    }
    page_through_port_forward(&crictl, &pod_id, 8080);
    let file_log = std::fs::read_to_string(logs.join("web.log")).expect("the CRI log file");
    assert!(
        file_log.contains(" stdout F hello-from-the-vm"),
        "{file_log}"
    );

    crictl.ok(&["stop", "--timeout", "5", &cid]);
    crictl.ok(&["rm", &cid]);
    crictl.ok(&["stopp", &pod_id]);
    crictl.ok(&["rmp", &pod_id]);
    assert!(crictl.ok(&["pods", "-q"]).is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vmms().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vmms().is_empty(), "VMMs left: {:?}", vmms());
    assert!(workloads(&mut c).await.is_empty());
    assert!(
        bridge_ports(&d.bridge()).is_empty(),
        "{:?}",
        bridge_ports(&d.bridge())
    );
    assert!(
        bridge_ports(CNI_BRIDGE).is_empty(),
        "{:?}",
        bridge_ports(CNI_BRIDGE)
    );
    assert!(allocations(&ipam).is_empty(), "{:?}", allocations(&ipam));
    assert!(
        std::net::TcpListener::bind(("::", host_port)).is_ok(),
        "the host port is free again"
    );

    // A sysctl that isn't a pod's is refused before anything is made; one
    // the guest's kernel doesn't have stops its boot, and the refusal names
    // it.
    for (key, expected) in [
        ("kernel.panic", "config.linux.sysctls"),
        ("net.ipv4.aurae_no_such", "aurae_no_such"),
    ] {
        let with_sysctl = write_json(
            work.path(),
            "sysctl.json",
            serde_json::json!({
                "metadata": {"name": "sysctl-pod", "namespace": "default", "uid": "sysctl-uid"},
                "linux": {"sysctls": {key: "1"}},
            }),
        );
        let refused = crictl.refused(&["runp", "--runtime", HANDLER, &with_sysctl]);
        assert!(refused.contains(expected), "{key}: {refused}");
        assert!(crictl.ok(&["pods", "-q"]).is_empty());
        assert!(workloads(&mut c).await.is_empty());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !vmms().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(vmms().is_empty(), "{key}: VMMs left: {:?}", vmms());
        assert!(allocations(&ipam).is_empty(), "{:?}", allocations(&ipam));
        if !cni {
            // The refused boot runs once: on the CNI network, whose
            // address must come back too.
            break;
        }
    }
}
