//! `cargo xtask`: the project's build, test and benchmark entry points.

mod bench_cells;
mod bench_cri;
mod bench_image;
mod bench_pod;
mod bench_spawn;
mod bench_vmm;
mod cache;
mod cri_tier;
mod demo;
mod deps;
mod image;
mod kernel;
mod stats;
mod test_tiers;
mod testhost;
mod testhost_critest;
mod testhost_watch;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the test tiers (all of them by default), installing what they need.
    Test {
        #[arg(long, value_enum)]
        tier: Vec<test_tiers::Tier>,
    },
    /// Measure against a peer in the same run and print the ratios.
    Bench {
        #[arg(value_enum)]
        target: BenchTarget,
        /// Iterations per measurement.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// The main job: start auraed and run workloads through it.
    Demo,
    /// Build the guest kernel (cached outside the clone).
    Kernel {
        /// The bench host's kernel instead (the guest's plus
        /// kernel-config/bench-host.config).
        #[arg(long)]
        bench_host: bool,
    },
    /// Build the guest image into target/aurae-image.
    Image,
    /// Boot the QEMU test host and run integration tests inside it
    /// (default: the cell tests, whose limits need a pure cgroup v2).
    Testvm {
        /// Test binaries of aurae-tests to run, e.g. cells or jail.
        tests: Vec<String>,
    },
    /// The cri tier's inside, in its own network namespace (run by
    /// `test --tier cri`).
    #[command(hide = true)]
    CriInNetns,
    /// `bench cri`'s measurement, in its own namespaces.
    #[command(hide = true)]
    BenchCriInNetns {
        #[arg(long)]
        runs: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchTarget {
    Cells,
    Image,
    Spawn,
    Pod,
    Vmm,
    Cri,
}

/// Benchmarks measure our own client code too (the gRPC client of the
/// cell benchmark, the launchers of the VMM benchmark), so they run from a
/// release build of xtask, as every peer they are compared with is an
/// optimized binary.
fn rerun_in_release() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    println!("==> building xtask in release for benchmarking");
    if !deps::cargo(&["build", "--release", "-p", "xtask"], &[])? {
        anyhow::bail!("building xtask in release failed");
    }
    let exe = deps::target_dir().join("release/xtask");
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(anyhow::anyhow!("running {}: {err}", exe.display()))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test { tier } => test_tiers::run(&tier),
        Command::Bench { .. } if cfg!(debug_assertions) => rerun_in_release(),
        Command::Bench {
            target: BenchTarget::Cells,
            runs,
        } => bench_cells::run(runs),
        Command::Bench {
            target: BenchTarget::Image,
            runs,
        } => bench_image::run(runs),
        Command::Bench {
            target: BenchTarget::Spawn,
            runs,
        } => bench_spawn::run(runs),
        Command::Bench {
            target: BenchTarget::Pod,
            runs,
        } => bench_pod::run(runs),
        Command::Bench {
            target: BenchTarget::Vmm,
            runs,
        } => bench_vmm::run(runs),
        Command::Demo => demo::run(),
        Command::CriInNetns => cri_tier::run_in_netns(),
        Command::BenchCriInNetns { runs } => bench_cri::run_in_netns(runs),
        Command::Bench {
            target: BenchTarget::Cri,
            runs,
        } => bench_cri::run(runs),
        Command::Kernel { bench_host } => kernel::build_flavour(if bench_host {
            kernel::Flavour::BenchHost
        } else {
            kernel::Flavour::Guest
        })
        .map(|_| ()),
        Command::Image => image::build().map(|_| ()),
        Command::Testvm { tests } => {
            let img = image::build()?;
            let runs = if tests.is_empty() {
                testhost::default_runs()
            } else {
                // A test of the default runs keeps its programs and
                // environment.
                let defaults = testhost::default_runs();
                let mut runs = Vec::new();
                for t in tests {
                    runs.push(if t == testhost_critest::TEST {
                        testhost_critest::run(testhost_critest::Specs::Passing)?
                    } else {
                        defaults.iter().find(|r| r.test == t).cloned().unwrap_or(
                            testhost::TestRun {
                                test: t,
                                ..Default::default()
                            },
                        )
                    });
                }
                runs
            };
            if testhost::run(&img.bzimage, Some(&img.dir), &runs)?.passed {
                Ok(())
            } else {
                anyhow::bail!("tests failed inside the test host")
            }
        }
    }
}
