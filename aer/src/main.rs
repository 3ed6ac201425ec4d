//! aer: run and inspect workloads on an auraed.

use std::io::Write;
use std::path::PathBuf;

use aer::client::{Client, ClientConfig, InstanceRoute};
use aer::output;
use aer::process_args::ProcessArgs;
use aer::text::escape;
use aer::units::{parse_bytes, parse_millis};
use aurae_proto::runtime as pb;
use aurae_proto::runtime::runtime_client::RuntimeClient;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "aer", about = "Run and inspect workloads on auraed", version)]
struct Cli {
    /// Client config (default: ~/.aurae/config, then /etc/aurae/config).
    #[arg(long, global = true, env = "AURAE_CONFIG")]
    config: Option<PathBuf>,
    /// Connect over TCP to host:port instead of the Unix socket.
    #[arg(long, global = true, conflicts_with = "vsock")]
    tcp: Option<String>,
    /// Connect to a VM's auraed over vsock, through its VMM's vsock socket:
    /// SOCKET:PORT (as given to `aurae-vmm --vsock`, and the guest's
    /// `aurae.vsock=` port).
    #[arg(long, global = true)]
    vsock: Option<String>,
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Send the request to this spawned instance, routed hop by hop
    /// through each parent: `a`, or `a/b` for instance b of instance a.
    #[arg(long, global = true)]
    instance: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run an executable, in auraed's context or in a cell.
    Exec(ExecArgs),
    /// Cells: run, freeze, thaw.
    #[command(subcommand)]
    Cell(CellCmd),
    /// List workloads.
    Ls,
    /// Show one workload.
    Status { id: String },
    /// Print an executable's output (-f to follow until it exits).
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a workload: signal, wait out the grace period, then kill.
    Stop {
        id: String,
        /// Signal name or number.
        #[arg(long, default_value = "TERM")]
        signal: String,
        /// Grace period before SIGKILL, like 10s or 500ms.
        #[arg(long, default_value = "10s")]
        grace: String,
    },
    /// Release an exited executable, or destroy a cell.
    Free { id: String },
    /// Wait for a workload to exit; exits with its exit code.
    Wait {
        id: String,
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Check that auraed is serving.
    Health,
    /// Spawn a nested auraed instance (a microVM, or a cell running the
    /// same image).
    Spawn(aer::spawn_args::SpawnArgs),
    /// Pods: an instance running containers.
    #[command(subcommand)]
    Pod(aer::pod_args::PodCmd),
    /// Virtual machines: a kernel and disks of yours, no auraed inside.
    #[command(subcommand)]
    Vm(aer::vm_args::VmCmd),
    /// This instance's own record, as its parent keeps it (with --instance:
    /// that instance's).
    Metadata,
    /// The records of this auraed's instances.
    #[command(subcommand)]
    Meta(aer::meta_args::MetaCmd),
}

#[derive(Args)]
struct ExecArgs {
    #[arg(long)]
    cell: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Subcommand)]
enum CellCmd {
    /// Create a cell and run a command (or the image's entrypoint) in it.
    Run(Box<CellRunArgs>),
    Freeze {
        name: String,
    },
    Thaw {
        name: String,
    },
}

#[derive(Args)]
struct CellRunArgs {
    #[arg(long)]
    name: String,
    /// OCI image layout directory or OCI / docker-save archive.
    #[arg(long)]
    image: Option<PathBuf>,
    /// memory.max, like 64M.
    #[arg(long)]
    memory: Option<String>,
    /// memory.high, like 48M.
    #[arg(long)]
    memory_high: Option<String>,
    /// CPU limit in cores (cpu.max), like 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    cpu_weight: Option<u32>,
    #[arg(long)]
    pids: Option<u64>,
    #[arg(long)]
    cpuset_cpus: Option<String>,
    #[arg(long)]
    cpuset_mems: Option<String>,
    /// Seal the cell: no new or joined namespaces, no mounts, no ptrace,
    /// a syscall allowlist; without an image, the host's root read-only.
    #[arg(long)]
    jailed: bool,
    /// Lift the container defaults: every capability, /proc and /sys
    /// writable and unmasked.
    #[arg(long, conflicts_with = "jailed")]
    privileged: bool,
    /// A host path that stays writable in a jailed cell's read-only root
    /// (repeatable).
    #[arg(long = "writable", value_name = "PATH")]
    writable_paths: Vec<String>,
    /// A host device added to the cell's minimal /dev, like /dev/kvm
    /// (repeatable).
    #[arg(long = "device", value_name = "PATH")]
    devices: Vec<String>,
    /// Make the cell's own cgroup subtree writable inside it.
    #[arg(long)]
    delegate_cgroup: bool,
    /// Make the sysctls of the cell's own network namespace writable.
    #[arg(long)]
    net_sysctls: bool,
    /// Host namespaces to share: mount,pid,net,ipc,uts,cgroup.
    #[arg(long, value_delimiter = ',')]
    share: Vec<String>,
    #[command(flatten)]
    confine: aer::confine_args::ConfineArgs,
    #[command(flatten)]
    process: ProcessArgs,
}

/// Writes `text` to stdout. A stdout nobody reads any more (as in
/// `aer ls | head -1`) ends aer with status 1 instead of a panic.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
macro_rules! say {
    ($($arg:tt)*) => {
        emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes a line to stderr; a failing stderr is ignored (unlike `eprintln!`,
/// which panics).
fn warn(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "aer: {msg}");
}

fn fail(msg: impl std::fmt::Display) -> ! {
    warn(msg);
    std::process::exit(1)
}

fn status_error(s: tonic::Status) -> ! {
    // The message comes from the server: escaped like table cells.
    warn(format_args!(
        "{:?}: {}",
        s.code(),
        aer::text::escape(s.message())
    ));
    std::process::exit(match s.code() {
        tonic::Code::NotFound => 3,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => 4,
        tonic::Code::Unavailable => 5,
        _ => 1,
    })
}

trait OrExit<T> {
    fn or_exit(self) -> T;
}

impl<T> OrExit<T> for Result<tonic::Response<T>, tonic::Status> {
    fn or_exit(self) -> T {
        self.map(tonic::Response::into_inner)
            .unwrap_or_else(|s| status_error(s))
    }
}

mod meta_cmd;
mod pod_vm;

fn print_status(out: Output, s: &pb::WorkloadStatus) {
    match out {
        Output::Json => say!("{}", output::status_json(s)),
        Output::Table => emit(&output::details(s)),
    }
}

/// Passes our stdin to `id` in a task of its own. A process that ended
/// (its stdin closed) before our stdin did is no error: its exit code says
/// how it went.
fn pass_stdin(client: &Client, id: &str) {
    let input = aer::process_args::send_stdin(client.clone(), id.to_string());
    tokio::spawn(async move {
        if let Err(s) = input.await {
            if s.code() != tonic::Code::FailedPrecondition {
                warn(format_args!("passing stdin: {}", escape(s.message())));
            }
        }
    });
}

/// Streams the output of `id` to our stdout/stderr, then waits for its exit
/// and exits with its code.
async fn follow_and_exit(client: &mut Client, id: &str) -> ! {
    stream_logs(client, id, true).await;
    let status = client
        .wait(pb::WaitRequest {
            id: id.into(),
            timeout_ms: None,
        })
        .await
        .or_exit();
    std::process::exit(output::process_exit_code(&status))
}

async fn stream_logs(client: &mut Client, id: &str, follow: bool) {
    let mut stream = client
        .logs(pb::LogsRequest {
            id: id.into(),
            follow,
            wait_for_start: false,
            new_only: false,
        })
        .await
        .or_exit();
    while let Some(entry) = stream.next().await {
        let entry = entry.unwrap_or_else(|s| status_error(s));
        if entry.dropped_before > 0 {
            warn(format_args!("[{} lines dropped]", entry.dropped_before));
        }
        // The workload's own output, raw: that is the user's data.
        let mut line = entry.line;
        line.push(b'\n');
        if entry.stream == pb::LogStream::Stderr as i32 {
            let _ = std::io::stderr().write_all(&line);
        } else if std::io::stdout().write_all(&line).is_err() {
            // Nobody reads our output any more: stop following.
            std::process::exit(1);
        }
    }
    let _ = std::io::stdout().flush();
}

fn limits(a: &CellRunArgs) -> pb::CellLimits {
    let bytes = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_bytes(s).unwrap_or_else(|e| fail(format!("--{flag}: {e}"))))
    };
    pb::CellLimits {
        cpu_quota_us: a.cpus.map(|c| {
            if !(c.is_finite() && c > 0.0) {
                fail("--cpus: must be a positive number of cores");
            }
            (c * 100_000.0).round() as u64
        }),
        cpu_period_us: a.cpus.map(|_| 100_000),
        cpu_weight: a.cpu_weight,
        memory_max_bytes: bytes("memory", &a.memory),
        memory_high_bytes: bytes("memory-high", &a.memory_high),
        pids_max: a.pids,
        cpuset_cpus: a.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: a.cpuset_mems.clone().unwrap_or_default(),
    }
}

fn share(list: &[String]) -> pb::HostNamespaces {
    let mut s = pb::HostNamespaces::default();
    for ns in list {
        match ns.as_str() {
            "mount" | "mnt" => s.mount = true,
            "pid" => s.pid = true,
            "net" => s.net = true,
            "ipc" => s.ipc = true,
            "uts" => s.uts = true,
            "cgroup" => s.cgroup = true,
            other => fail(format!(
                "--share: unknown namespace {other:?} (use mount,pid,net,ipc,uts,cgroup)"
            )),
        }
    }
    s
}

fn signal_number(s: &str) -> i32 {
    if let Ok(n) = s.parse() {
        return n;
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    match name.as_str() {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => fail(format!("--signal: unknown signal {s:?}")),
    }
}

/// The channel to auraed: over --vsock, --tcp, or the Unix socket.
async fn connect(cfg: &ClientConfig, cli: &Cli) -> Channel {
    let connected = match &cli.vsock {
        Some(v) => {
            let Some((socket, port)) = v
                .rsplit_once(':')
                .and_then(|(s, p)| Some((s, p.parse::<u32>().ok()?)))
            else {
                fail(format!("--vsock: {v:?} is not SOCKET:PORT"));
            };
            cfg.connect_vsock(std::path::Path::new(socket), port).await
        }
        None => cfg.connect(cli.tcp.as_deref()).await,
    };
    connected.unwrap_or_else(|e| fail(e))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let cfg = ClientConfig::find(cli.config.as_deref()).unwrap_or_else(|e| fail(e));
    let route = InstanceRoute::new(cli.instance.as_deref()).unwrap_or_else(|e| fail(e));
    let mut client: Client =
        RuntimeClient::with_interceptor(connect(&cfg, &cli).await, route.clone());
    let out = cli.output;
    if matches!(cli.command, Command::Metadata | Command::Meta(_)) {
        let channel = connect(&cfg, &cli).await;
        meta_cmd::run(
            cli.command,
            channel,
            cli.instance.clone(),
            out == Output::Json,
        )
        .await;
        return;
    }
    match cli.command {
        Command::Exec(a) => {
            if a.process.command.is_empty() {
                fail("exec: give the command after --, like: aer exec -- echo hi");
            }
            let r = client
                .run_executable(pb::RunExecutableRequest {
                    name: a.name.unwrap_or_default(),
                    cell: a.cell.unwrap_or_default(),
                    executable: Some(a.process.executable().unwrap_or_else(|e| fail(e))),
                })
                .await
                .or_exit();
            if a.process.waits() {
                if a.process.stdin {
                    pass_stdin(&client, &r.id);
                }
                follow_and_exit(&mut client, &r.id).await;
            }
            match out {
                Output::Json => say!("{}", serde_json::json!({"id": r.id, "pid": r.pid})),
                Output::Table => say!("{}  pid {}", escape(&r.id), r.pid),
            }
        }
        Command::Cell(CellCmd::Run(a)) => {
            let has_command = !a.process.command.is_empty();
            let r = client
                .run_cell(pb::RunCellRequest {
                    name: a.name.clone(),
                    limits: Some(limits(&a)),
                    share_host: Some(share(&a.share)),
                    user_namespace: false,
                    jailed: a.jailed,
                    image: a
                        .image
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    executable: has_command
                        .then(|| a.process.executable().unwrap_or_else(|e| fail(e))),
                    privileged: a.privileged,
                    writable_paths: a.writable_paths.clone(),
                    devices: a.devices.clone(),
                    delegate_cgroup: a.delegate_cgroup,
                    net_sysctls: a.net_sysctls,
                    seccomp: a.confine.seccomp().unwrap_or_else(|e| fail(e)),
                    read_only_root: a.confine.read_only_root,
                    masked_paths: a.confine.masked_paths.clone(),
                    readonly_paths: a.confine.readonly_paths.clone(),
                    ..Default::default()
                })
                .await
                .or_exit();
            if a.process.waits() && !r.executable_id.is_empty() {
                if a.process.stdin {
                    pass_stdin(&client, &r.executable_id);
                }
                follow_and_exit(&mut client, &r.executable_id).await;
            }
            match out {
                Output::Json => say!(
                    "{}",
                    serde_json::json!({"name": r.name, "executable_id": r.executable_id, "pid": r.pid})
                ),
                Output::Table if r.executable_id.is_empty() => say!("{}", escape(&r.name)),
                Output::Table => say!(
                    "{}  executable {}  pid {}",
                    escape(&r.name),
                    escape(&r.executable_id),
                    r.pid
                ),
            }
        }
        Command::Cell(CellCmd::Freeze { name }) => {
            let r = client
                .freeze(pb::FreezeRequest { id: name })
                .await
                .or_exit();
            print_status(out, &r.status.unwrap_or_default());
        }
        Command::Cell(CellCmd::Thaw { name }) => {
            let r = client.thaw(pb::FreezeRequest { id: name }).await.or_exit();
            print_status(out, &r.status.unwrap_or_default());
        }
        Command::Ls => {
            // The whole tree: this auraed's workloads, then each instance's.
            let workloads = aer::tree::list(connect(&cfg, &cli).await, cli.instance.clone(), 0)
                .await
                .unwrap_or_else(|s| status_error(s));
            match out {
                Output::Json => say!(
                    "{}",
                    serde_json::Value::Array(workloads.iter().map(output::status_json).collect())
                ),
                Output::Table => emit(&output::table(&workloads)),
            }
        }
        Command::Status { id } => print_status(
            out,
            &client.status(pb::StatusRequest { id }).await.or_exit(),
        ),
        Command::Logs { id, follow } => stream_logs(&mut client, &id, follow).await,
        Command::Stop { id, signal, grace } => {
            let grace = parse_millis(&grace).unwrap_or_else(|e| fail(format!("--grace: {e}")));
            let r = client
                .stop(pb::StopRequest {
                    id,
                    signal: signal_number(&signal),
                    grace_period_ms: Some(grace),
                })
                .await
                .or_exit();
            print_status(out, &r.status.unwrap_or_default());
        }
        Command::Free { id } => {
            client
                .free(pb::FreeRequest { id: id.clone() })
                .await
                .or_exit();
            if out == Output::Json {
                say!("{}", serde_json::json!({"freed": id}));
            }
        }
        Command::Wait { id, timeout } => {
            let timeout_ms = timeout
                .map(|t| parse_millis(&t).unwrap_or_else(|e| fail(format!("--timeout: {e}"))));
            let s = client
                .wait(pb::WaitRequest { id, timeout_ms })
                .await
                .or_exit();
            print_status(out, &s);
            std::process::exit(output::process_exit_code(&s));
        }
        Command::Spawn(a) => {
            let req = a.request().unwrap_or_else(|e| fail(e));
            let r = client.spawn(req).await.or_exit();
            let i = r.instance.unwrap_or_default();
            match out {
                Output::Json => say!("{}", output::instance_json(&i)),
                Output::Table => say!(
                    "{}  {}  {}  ready in {} ms ({})",
                    escape(&i.name),
                    escape(&i.spiffe_id),
                    escape(&i.address),
                    i.ready_ms,
                    escape(&i.backend_reason)
                ),
            }
        }
        Command::Pod(cmd) => pod_vm::pod(cmd, &mut client, out == Output::Json).await,
        Command::Vm(cmd) => pod_vm::vm(cmd, &mut client, out == Output::Json).await,
        // Answered above, on a channel of their own.
        Command::Metadata | Command::Meta(_) => {}
        Command::Health => {
            let channel = connect(&cfg, &cli).await;
            let mut health =
                tonic_health::pb::health_client::HealthClient::with_interceptor(channel, route);
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .or_exit();
            let serving =
                r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            match out {
                Output::Json => say!("{}", serde_json::json!({"serving": serving})),
                Output::Table => say!("{}", if serving { "SERVING" } else { "NOT_SERVING" }),
            }
            if !serving {
                std::process::exit(1);
            }
        }
    }
}
