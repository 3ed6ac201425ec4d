//! The auraed binary: the daemon and its `pki` helpers.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "auraed", about = "The Aurae runtime daemon", version)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, default_value = auraed::config::DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Certificates: a CA and SPIFFE X.509-SVIDs.
    #[command(subcommand)]
    Pki(Pki),
}

#[derive(Subcommand)]
enum Pki {
    /// Create a CA, a server and a client SVID, and configs that use them.
    Init {
        #[arg(long, default_value = "aurae.local")]
        trust_domain: String,
        #[arg(long)]
        out: PathBuf,
        /// The socket the generated configs point at.
        #[arg(long, default_value = auraed::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Overwrite an existing CA key (and the certificates and configs
        /// next to it). Without it, init writes nothing if one exists.
        #[arg(long)]
        force: bool,
    },
    /// Issue another SVID from an existing CA.
    Issue {
        /// Directory with ca.crt and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        #[arg(long)]
        out: PathBuf,
        /// File name stem: writes <name>.crt and <name>.key.
        #[arg(long)]
        name: String,
        /// DNS names to add (for server certificates).
        #[arg(long)]
        dns: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Pki(Pki::Init {
            trust_domain,
            out,
            socket,
            force,
        }) => {
            use auraed::pki::{Overwrite, PkiError};
            let overwrite = if force {
                Overwrite::Replace
            } else {
                Overwrite::Refuse
            };
            let o = auraed::pki::init(&trust_domain, &out, &socket, overwrite).map_err(
                |e| match e {
                    PkiError::Exists { path } => anyhow::anyhow!(
                        "{} already exists: pki init does not overwrite an existing CA key, \
                         certificates or configs (pass --force to replace them; certificates \
                         of the old CA will no longer be trusted)",
                        path.display()
                    ),
                    e => e.into(),
                },
            )?;
            println!(
                "wrote CA, server ({}) and client ({}) certificates to {}",
                o.server_id,
                o.client_id,
                o.dir.display()
            );
            println!("daemon config: {}", o.dir.join("auraed.toml").display());
            println!("client config: {}", o.dir.join("config").display());
            Ok(())
        }
        Command::Pki(Pki::Issue {
            ca_dir,
            spiffe_id,
            out,
            name,
            dns,
        }) => {
            let ca = auraed::pki::Authority::load(&ca_dir)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (crt, key) = ca.issue(&spiffe_id, &dns, &[])?.save(
                &out,
                &name,
                auraed::pki::Overwrite::Replace,
            )?;
            println!("wrote {} and {}", crt.display(), key.display());
            Ok(())
        }
    }
}

fn run(config: PathBuf) -> anyhow::Result<()> {
    let cfg = auraed::config::Config::load(&config)?;
    // Before the runtime starts any thread.
    if let Err(e) = auraed::sys::mount_ns::enter_own() {
        tracing::warn!("staying in the host's mount namespace (cells start slower): {e}");
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    Ok(rt.block_on(auraed::daemon::run(cfg))?)
}
