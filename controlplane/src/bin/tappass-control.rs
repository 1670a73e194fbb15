//! `tappass-control`: the TapPass control plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tappass_controlplane::{ControlPlane, MasterKeySource, Options};

#[derive(Debug, Parser)]
#[command(name = "tappass-control", version, about = "TapPass control plane")]
struct Args {
    /// State directory (RocksDB, keys, admin token).
    #[arg(long, default_value = ".tappass")]
    data_dir: PathBuf,
    /// ADS (xDS) listener for gateways.
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// Admin API listener.
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin_listen: SocketAddr,
    /// File holding the master key (64 hex digits). Without it:
    /// TAPPASS_MASTER_KEY, else DATA_DIR/master.key (created on first start).
    #[arg(long)]
    master_key_file: Option<PathBuf>,
    /// Require the master key in TAPPASS_MASTER_KEY.
    #[arg(long, conflicts_with = "master_key_file")]
    master_key_from_env: bool,
    /// Snapshot lifetime without fresh contact, in seconds.
    #[arg(long, default_value_t = 3600)]
    snapshot_ttl: u64,
    /// Longest token lifetime, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_token_ttl: u64,
    /// Default token lifetime, in seconds.
    #[arg(long, default_value_t = 300)]
    default_token_ttl: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let opts = Options {
        xds_addr: a.xds_listen,
        admin_addr: a.admin_listen,
        master_key: match (a.master_key_file, a.master_key_from_env) {
            (Some(p), _) => MasterKeySource::File(p),
            (None, true) => MasterKeySource::Env,
            (None, false) => MasterKeySource::EnvOrDataDir,
        },
        snapshot_ttl: Duration::from_secs(a.snapshot_ttl.max(2)),
        max_token_ttl: Duration::from_secs(a.max_token_ttl.max(1)),
        default_token_ttl: Duration::from_secs(
            a.default_token_ttl.clamp(1, a.max_token_ttl.max(1)),
        ),
        ..Options::default()
    };
    let cp = ControlPlane::open(&a.data_dir, opts)
        .with_context(|| format!("opening {}", a.data_dir.display()))?;
    let bound = cp.bind().await?;
    tracing::info!(
        xds = %bound.xds_url(),
        admin = %bound.admin_url(),
        snapshot_key_id = %cp.snapshot_public_key().key_id,
        data_dir = %a.data_dir.display(),
        "control plane listening"
    );
    cp.serve(bound, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await?;
    Ok(())
}
