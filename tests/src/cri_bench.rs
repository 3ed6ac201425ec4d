//! What `cargo xtask bench cri` (cell backend, on this machine) and its
//! microVM half (`tests/tests/bench_cri_microvm.rs`, in the QEMU test host)
//! share: Debian's containerd as the peer, and one pod plus container
//! driven step by step with crictl to the container's line in its log file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::median;
use crate::cri::Crictl;

/// The image every pod's container runs.
pub const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// containerd's sandbox image.
pub const PAUSE: &str = "registry.k8s.io/pause:3.6";
/// The line the container logs.
pub const LINE: &str = "hello-bench";

/// containerd with its root, state, socket, CNI and registry mirror in
/// `dir`; killed on drop.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    /// Starts `containerd` (from `PATH`) and waits (30 s at most) until it
    /// answers crictl. `no_pivot_root`: runc enters a container's root
    /// without pivot_root(2), which a root on an initramfs (the QEMU test
    /// host's) refuses.
    pub fn start(
        dir: &Path,
        cni: &Path,
        registry_port: u16,
        no_pivot_root: bool,
    ) -> anyhow::Result<Containerd> {
        let hosts = dir.join("certs.d/registry.k8s.io");
        std::fs::create_dir_all(&hosts).with_context(|| format!("creating {}", hosts.display()))?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"https://registry.k8s.io\"\n\
                 [host.\"http://127.0.0.1:{registry_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .context("writing containerd's hosts.toml")?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n[grpc]\n  address = {socket:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {PAUSE:?}\n\
                 restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = {cni:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {certs:?}\n{runc}",
                runc = if no_pivot_root {
                    "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
                     runtime_type = \"io.containerd.runc.v2\"\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  \
                     NoPivotRoot = true\n"
                } else {
                    ""
                },
                root = dir.join("root").display().to_string(),
                state = dir.join("state").display().to_string(),
                socket = socket.display().to_string(),
                cni = cni.display().to_string(),
                certs = dir.join("certs.d").display().to_string(),
            ),
        )
        .context("writing containerd's config.toml")?;
        let log =
            std::fs::File::create(dir.join("containerd.log")).context("creating containerd.log")?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().context("containerd.log")?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let c = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        let crictl = Crictl::new(c.socket.clone());
        while !crictl.run(&["info"]).status.success() {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 30 s: {}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }
}

/// The time of each step of each pod, and in all.
#[derive(Default)]
pub struct Steps {
    pub runp: Vec<Duration>,
    pub create: Vec<Duration>,
    pub start: Vec<Duration>,
    pub line: Vec<Duration>,
    pub total: Vec<Duration>,
}

impl Steps {
    /// The medians, one line: runp, create, start, the log line, all.
    pub fn medians(&self) -> String {
        let m = |v: &Vec<Duration>| median(v.clone()).as_secs_f64() * 1000.0;
        format!(
            "runp {:>7.1}  create {:>6.1}  start {:>6.1}  log line {:>6.1}  all {:>7.1} ms",
            m(&self.runp),
            m(&self.create),
            m(&self.start),
            m(&self.line),
            m(&self.total)
        )
    }

    pub fn total(&self) -> Duration {
        median(self.total.clone())
    }

    /// One pod's instants: asked for, sandbox ready, container created,
    /// started, its line logged.
    fn record(&mut self, [t0, t1, t2, t3, t4]: [Instant; 5]) {
        self.runp.push(t1 - t0);
        self.create.push(t2 - t1);
        self.start.push(t3 - t2);
        self.line.push(t4 - t3);
        self.total.push(t4 - t0);
    }
}

/// The crictl calls each pod takes (`runp`, `create`, `start`).
pub const CRICTL_CALLS: u32 = 3;

/// What is left of a pod's `total` without crictl's own share, `floor`
/// (see [`crictl_floor`]) per call, in seconds (negative if crictl's share
/// was larger).
pub fn without_crictl(total: Duration, floor: Duration) -> f64 {
    total.as_secs_f64() - f64::from(CRICTL_CALLS) * floor.as_secs_f64()
}

/// crictl's own share of each step: the median of `rounds` runs of
/// `crictl version` (start, connect, the one `Version` call every crictl
/// command makes first, exit). Each pod takes three crictl calls.
pub fn crictl_floor(crictl: &Crictl, rounds: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        call(crictl, &["version"])?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

/// `crictl args`: its output, or an error with what crictl said.
fn call(crictl: &Crictl, args: &[&str]) -> anyhow::Result<String> {
    let out = crictl.run(args);
    if !out.status.success() {
        bail!(
            "crictl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One pod sandbox (on the runtime `handler`, or the default) and
/// container to its log line, within `deadline` of asking for the pod;
/// removed after (not timed).
pub fn one_pod(
    crictl: &Crictl,
    dir: &Path,
    round: &str,
    handler: Option<&str>,
    deadline: Duration,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let logs = dir.join(format!("logs-{round}"));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let pod = dir.join(format!("pod-{round}.json"));
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": format!("bench-{round}"), "namespace": "bench",
                         "uid": format!("uid-{round}"), "attempt": 0},
            "log_directory": logs.display().to_string(),
            "linux": {},
        })
        .to_string(),
    )
    .with_context(|| format!("writing {}", pod.display()))?;
    let container = dir.join(format!("container-{round}.json"));
    std::fs::write(
        &container,
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": IMAGE},
            "command": ["/bin/sh", "-c", format!("echo {LINE}; exec sleep 60")],
            "log_path": "main.log",
            "linux": {},
        })
        .to_string(),
    )
    .with_context(|| format!("writing {}", container.display()))?;
    let (pod, container) = (pod.display().to_string(), container.display().to_string());
    let mut runp = vec!["runp"];
    if let Some(handler) = handler {
        runp.extend(["--runtime", handler]);
    }
    runp.push(&pod);
    let t0 = Instant::now();
    let pod_id = call(crictl, &runp)?;
    let timed = || -> anyhow::Result<[Instant; 4]> {
        let t1 = Instant::now();
        let id = call(crictl, &["create", &pod_id, &container, &pod])?;
        let t2 = Instant::now();
        call(crictl, &["start", &id])?;
        let t3 = Instant::now();
        let log = logs.join("main.log");
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(LINE)) {
            if t0.elapsed() > deadline {
                bail!("no {LINE:?} in {} within {deadline:?}", log.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok([t1, t2, t3, Instant::now()])
    };
    let result = timed();
    // The pod goes whatever happened to it.
    let stopped = call(crictl, &["stopp", &pod_id]);
    let removed = call(crictl, &["rmp", &pod_id]);
    let [t1, t2, t3, t4] = result?;
    stopped?;
    removed?;
    steps.record([t0, t1, t2, t3, t4]);
    Ok(())
}

/// [`one_pod`] through the CRI directly (a gRPC client connected before
/// the clock starts), not crictl: the runtime's own time for each step,
/// without a process started per call.
pub async fn one_pod_grpc(
    socket: &Path,
    dir: &Path,
    round: &str,
    deadline: Duration,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    use aurae_proto::cri;
    let mut client = crate::cri::cri_client(socket).await;
    let logs = dir.join(format!("logs-{round}"));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{round}"),
            namespace: "bench".into(),
            uid: format!("uid-{round}"),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(Default::default()),
        ..Default::default()
    };
    let container = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo {LINE}; exec sleep 60"),
        ],
        log_path: "main.log".into(),
        linux: Some(Default::default()),
        ..Default::default()
    };
    let t0 = Instant::now();
    let pod_id = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let t1 = Instant::now();
    let timed = async {
        let id = client
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container),
                sandbox_config: Some(config),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        let t2 = Instant::now();
        client
            .start_container(cri::StartContainerRequest { container_id: id })
            .await
            .context("StartContainer")?;
        let t3 = Instant::now();
        let log = logs.join("main.log");
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(LINE)) {
            if t0.elapsed() > deadline {
                bail!("no {LINE:?} in {} within {deadline:?}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, anyhow::Error>([t2, t3, Instant::now()])
    }
    .await;
    // The pod goes whatever happened to it.
    let stopped = client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .context("StopPodSandbox");
    let removed = client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .context("RemovePodSandbox");
    let [t2, t3, t4] = timed?;
    stopped?;
    removed?;
    steps.record([t0, t1, t2, t3, t4]);
    Ok(())
}
