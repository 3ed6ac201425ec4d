//! `cargo xtask`: the project's build, test and benchmark entry points.

mod bench_cells;
mod cache;
mod demo;
mod deps;
mod kernel;
mod stats;
mod test_tiers;

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
    Kernel,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchTarget {
    Cells,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test { tier } => test_tiers::run(&tier),
        Command::Bench {
            target: BenchTarget::Cells,
            runs,
        } => bench_cells::run(runs),
        Command::Demo => demo::run(),
        Command::Kernel => kernel::build().map(|_| ()),
    }
}
