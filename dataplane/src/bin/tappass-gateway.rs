//! `tappass-gateway`: the TapPass data plane.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tappass_dataplane::config::{Config, LogFormat, DEFAULT_DEV_API_KEY};
use tappass_dataplane::server::GatewayServer;

/// Every call allocates and frees many small buffers (parsed bodies, audit
/// rows, scan results) across worker threads; mimalloc's per-thread free
/// lists serve them without glibc's arena locks and consolidation passes.
/// It is built without transparent huge pages (`no_thp`): with them, each
/// connection's buffers held whole 2 MiB pages resident (2.5 times the
/// memory under 1,000 open streams).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The TapPass governed LLM gateway.
#[derive(Parser, Debug)]
#[command(name = "tappass-gateway", version)]
struct Args {
    /// Configuration file (YAML). Without it, the embedded default
    /// configuration is used: an offline gateway with a mock provider.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client listener address (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listener address (overrides `admin_listen`).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Validate FILE and exit (0 when valid, 1 with the error otherwise).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Print the SHA-256 of KEY for the `api_keys` section and exit.
    #[arg(long, value_name = "KEY")]
    hash_key: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(key) = &args.hash_key {
        println!("{}", tappass_dataplane::auth::hash_key(key));
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &args.check_config {
        return match Config::load(path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let embedded = args.config.is_none();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(l) = args.admin_listen {
        config.admin_listen = l;
    }
    // Re-validate after overrides so bad addresses are reported clearly.
    check_overrides(&config)?;
    init_logging(&config);

    let server = GatewayServer::build(&config)?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{}", config.listen);
    let key = if embedded {
        DEFAULT_DEV_API_KEY
    } else {
        "<your gateway API key>"
    };
    println!(
        "TapPass gateway listening on {base} (admin on {})",
        config.admin_listen
    );
    if embedded {
        println!("Embedded offline config: models mock-gpt and mock-claude. Paste these lines into your shell:");
    }
    println!("export OPENAI_BASE_URL={base}/v1");
    println!("export OPENAI_API_KEY={key}");
    println!("export ANTHROPIC_BASE_URL={base}");
    println!("export ANTHROPIC_API_KEY={key}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run();
    Ok(())
}

/// Address overrides from the command line get the same checks as the file.
fn check_overrides(config: &Config) -> anyhow::Result<()> {
    for (flag, addr) in [
        ("--listen", &config.listen),
        ("--admin-listen", &config.admin_listen),
    ] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("{flag} `{addr}` is not an address:port ({e})"))?;
    }
    if config.listen == config.admin_listen {
        anyhow::bail!("the client and admin listeners must use different addresses");
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
