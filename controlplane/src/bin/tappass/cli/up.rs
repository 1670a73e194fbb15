//! `tappass up`: the single-machine TapPass: the control plane and a gateway
//! in one process, with a local data directory, the default policy (the
//! OWASP LLM Top 10 pack), the offline mock provider, and an agent named
//! `default` whose gateway API key is printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use tappass_controlplane::records::{ApplyPack, CreateAgent};
use tappass_controlplane::{ControlPlane, Options};
use tappass_dataplane::config::Config;
use tappass_dataplane::server::GatewayServer;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the control plane's state, the audit trail and the gateway's
    /// persisted snapshots live.
    #[arg(long, default_value = ".tappass")]
    pub data_dir: PathBuf,
    /// The gateway's client listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The gateway's admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// The control plane's xDS listener.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_listen: SocketAddr,
    /// The control plane's admin API listener.
    #[arg(long, default_value = "127.0.0.1:18001")]
    pub control_listen: SocketAddr,
}

const DEFAULT_AGENT: &str = "default";
const DEFAULT_PACK: &str = "owasp-llm-top10";

/// The first start creates the default agent, its policy and its key; later
/// starts reuse them (the key is kept in the data directory, mode 0600, so
/// that the printed exports stay valid).
fn prepare(cp: &ControlPlane, data_dir: &Path) -> Result<String> {
    if cp.agent(DEFAULT_AGENT).is_err() {
        cp.create_agent(&CreateAgent {
            name: DEFAULT_AGENT.into(),
            project: None,
            function: None,
            tier: None,
        })
        .context("creating the default agent")?;
    }
    let has_pack = cp
        .packs()?
        .get("org")
        .is_some_and(|p| p.iter().any(|x| x == DEFAULT_PACK));
    if !has_pack {
        cp.apply_pack(&ApplyPack {
            level: "org".into(),
            pack: DEFAULT_PACK.into(),
            remove: false,
        })
        .context("applying the default policy pack")?;
    }
    let key_file = data_dir.join("default-agent.key");
    if let Ok(k) = std::fs::read_to_string(&key_file) {
        return Ok(k.trim().to_string());
    }
    let created = cp.create_api_key(DEFAULT_AGENT)?;
    write_private(&key_file, &created.key)?;
    Ok(created.key)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn gateway_config(a: &UpArgs, xds: SocketAddr, snapshot_key: &str) -> Result<Config> {
    let data = a.data_dir.display();
    let yaml = format!(
        "listen: {listen}\nadmin_listen: {admin}\n\
         control_plane:\n  url: http://{xds}\n  node_id: local\n  snapshot_public_keys: [\"{snapshot_key}\"]\n  state_dir: {data}/gateway\n\
         tokens: {{}}\n\
         audit:\n  dir: {data}/audit\n  gateway_id: local\n\
         providers:\n  - name: offline\n    kind: mock\n\
         models:\n  - name: mock-gpt\n    provider: offline\n  - name: mock-claude\n    provider: offline\n",
        listen = a.listen,
        admin = a.admin_listen,
    );
    let mut config = Config::from_yaml(&yaml, "<tappass up>")?;
    // The embedded default's budgets (priced mock models, per-agent
    // limits), with counters beside the other state.
    config.budgets = Config::embedded_default().budgets.map(|mut b| {
        b.state_dir = Some(a.data_dir.join("budgets"));
        b
    });
    Ok(config)
}

/// The local gateway has ACKed every type the control plane publishes.
fn synced(cp: &ControlPlane) -> bool {
    let Ok(status) = cp.status() else {
        return false;
    };
    status.gateways.iter().any(|g| {
        g.node_id == "local"
            && status.versions.iter().all(|(t, v)| {
                g.types.get(t).and_then(|i| i.acked_version.as_deref()) == Some(v.as_str())
            })
    })
}

pub fn run(a: &UpArgs) -> Result<u8> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tappass-control")
        .enable_all()
        .build()?;
    let opts = Options {
        xds_addr: a.xds_listen,
        admin_addr: a.control_listen,
        ..Options::default()
    };
    let cp = ControlPlane::open(&a.data_dir, opts)?;
    let key = prepare(&cp, &a.data_dir)?;
    let bound = rt.block_on(cp.bind())?;
    let (xds, admin_url) = (bound.xds_addr, bound.admin_url());
    let snapshot_key = hex::encode(cp.snapshot_verifying_key().as_bytes());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let cp = cp.clone();
        rt.spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            cp.serve(bound, stop).await
        })
    };
    let config = gateway_config(a, xds, &snapshot_key)?;
    let server = GatewayServer::build(&config)?;
    // The gateway's link to the control plane is already running: wait for
    // its first sync so that the printed key works at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !synced(&cp) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let base = format!("http://{}", a.listen);
    println!(
        "TapPass is up: gateway on {base}, control plane admin API on {admin_url} (xDS on {xds})."
    );
    println!("Data directory: {}. Models mock-gpt and mock-claude (offline). Paste these lines into your shell:", a.data_dir.display());
    println!("export OPENAI_BASE_URL={base}/v1");
    println!("export OPENAI_API_KEY={key}");
    println!("export ANTHROPIC_BASE_URL={base}");
    println!("export ANTHROPIC_API_KEY={key}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run();
    let _ = stop_tx.send(());
    match rt.block_on(serving) {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("control plane task: {e}")),
    }
}
