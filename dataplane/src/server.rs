//! Assembling the Pingora server: the client listener (TCP or TLS, HTTP/1.1
//! and HTTP/2), the admin listener, the in-process mock provider when the
//! configuration uses one, and graceful shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;

use crate::admin::Admin;
use crate::audit_sink::AuditSink;
use crate::config::{Config, ProviderKind, TlsConfig};
use crate::gateway::{Gateway, GatewayState};
use crate::metrics::Metrics;
use crate::mock::{MockLlm, MockOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot prepare the mock provider socket {path}: {source}")]
    MockSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    State(String),
    #[error("cannot open the audit log in {dir}: {detail}")]
    Audit { dir: PathBuf, detail: String },
    #[error("TLS setup for {listener} failed: {detail}")]
    Tls { listener: String, detail: String },
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Listen {
        listener: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// Fail now, with the reason, when an address cannot be listened on (most
/// often: another process holds the port). Left to itself the server would
/// keep retrying a port in use for half a minute before giving up.
fn check_can_listen(listener: &'static str, addr: &str) -> Result<(), ServerError> {
    let Ok(sock) = addr.parse::<std::net::SocketAddr>() else {
        // Not an address:port; the listener reports it when it binds.
        return Ok(());
    };
    std::net::TcpListener::bind(sock)
        .map(drop)
        .map_err(|source| ServerError::Listen {
            listener,
            addr: addr.to_string(),
            source,
        })
}

/// Shared run state: whether the gateway is draining, and how many calls are
/// in flight.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
    /// Count a call in flight for as long as the guard lives.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// SIGTERM drains: readiness turns to 503 and new responses close their
/// connections, calls in flight get up to the configured time to finish,
/// then the listeners stop. SIGINT stops at once.
struct DrainingSignals {
    lifecycle: Arc<Lifecycle>,
    drain_for: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
            _ = quit.recv() => {}
        }
        self.lifecycle.draining.store(true, Ordering::Release);
        tracing::info!(
            in_flight = self.lifecycle.in_flight(),
            "draining before shutdown"
        );
        let start = Instant::now();
        while self.lifecycle.in_flight() > 0 && start.elapsed() < self.drain_for {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
        tracing::info!(in_flight = self.lifecycle.in_flight(), "drained; stopping");
        ShutdownSignal::GracefulTerminate
    }
}

fn tls_settings(listener: &str, tls: &TlsConfig) -> Result<TlsSettings, ServerError> {
    let err = |detail: String| ServerError::Tls {
        listener: listener.into(),
        detail,
    };
    let cert = tls
        .cert_file
        .to_str()
        .ok_or_else(|| err("cert path is not UTF-8".into()))?;
    let key = tls
        .key_file
        .to_str()
        .ok_or_else(|| err("key path is not UTF-8".into()))?;
    let mut settings = TlsSettings::intermediate(cert, key).map_err(|e| err(e.to_string()))?;
    settings.enable_h2();
    Ok(settings)
}

/// Where the in-process mock provider listens for this process.
fn mock_socket_path() -> PathBuf {
    std::env::temp_dir()
        .join(format!("tappass-{}", std::process::id()))
        .join("mock-llm.sock")
}

/// A gateway ready to run.
pub struct GatewayServer {
    server: Server,
    lifecycle: Arc<Lifecycle>,
    drain_for: Duration,
    mock_socket: Option<PathBuf>,
    /// The control-plane link and the runtime it runs on.
    _control: Option<(crate::control::ControlLink, tokio::runtime::Runtime)>,
}

impl GatewayServer {
    /// Build the Pingora server for `config`.
    pub fn build(config: &Config) -> Result<GatewayServer, ServerError> {
        check_can_listen("listen", &config.listen)?;
        check_can_listen("admin_listen", &config.admin_listen)?;
        let conf = ServerConf {
            threads: config
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        let metrics = Arc::new(Metrics::new());
        let lifecycle = Arc::new(Lifecycle::default());

        let mock_socket = if config
            .providers
            .iter()
            .any(|p| p.kind == ProviderKind::Mock)
        {
            let path = mock_socket_path();
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            std::fs::create_dir_all(&dir).map_err(|source| ServerError::MockSocket {
                path: dir.clone(),
                source,
            })?;
            if path.exists() {
                let _ = std::fs::remove_file(&path);
            }
            let mut mock = Service::new("mock-llm".into(), MockLlm::new(MockOptions::default()));
            let path_str = path.to_str().ok_or_else(|| ServerError::MockSocket {
                path: path.clone(),
                source: std::io::Error::other("path is not UTF-8"),
            })?;
            mock.add_uds(path_str, None);
            server.add_service(mock);
            Some(path)
        } else {
            None
        };

        let audit = match &config.audit {
            Some(cfg) => Some(Arc::new(AuditSink::open(cfg).map_err(|e| {
                ServerError::Audit {
                    dir: cfg.dir.clone(),
                    detail: e.to_string(),
                }
            })?)),
            None => None,
        };
        let router = Arc::new(
            crate::providers::Router::from_config(config, mock_socket.as_ref())
                .map_err(ServerError::State)?,
        );
        let initial = GatewayState::compose(config, router.clone(), &Default::default())
            .map_err(ServerError::State)?;
        let state = Arc::new(arc_swap::ArcSwap::from_pointee(initial));
        if let Some(local) = &config.local_policies {
            let cfg = config.clone();
            let router = router.clone();
            let rebuild = Box::new(move |pushed: &crate::control::Pushed| {
                GatewayState::compose(&cfg, router.clone(), pushed)
            });
            crate::local_policy::start(local, state.clone(), rebuild)
                .map_err(ServerError::State)?;
        }
        if config.control_plane.is_some()
            || config.local_policies.is_some()
            || config.tokens.is_some()
        {
            crate::pipeline::warm_rules_in_background();
        }
        let ledger =
            crate::budget::open_ledger(config.budgets.as_ref()).map_err(ServerError::State)?;
        let mut fleet = None;
        let (control, control_runtime) = match &config.control_plane {
            None => (None, None),
            Some(cp) => {
                // The link runs on a small runtime of its own: it must be up
                // (and the persisted snapshot installed) before Pingora starts.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("tappass-control-link")
                    .enable_all()
                    .build()
                    .map_err(|e| ServerError::State(format!("control-plane link runtime: {e}")))?;
                let node_id = cp
                    .node_id
                    .clone()
                    .or_else(|| config.audit.as_ref().and_then(|a| a.gateway_id.clone()))
                    .unwrap_or_else(crate::audit_sink::default_gateway_id);
                let cfg = config.clone();
                let rebuild = Box::new(move |pushed: &crate::control::Pushed| {
                    GatewayState::compose(&cfg, router.clone(), pushed)
                });
                let link = rt
                    .block_on(async {
                        crate::control::ControlLink::start(cp, &node_id, state.clone(), rebuild)
                    })
                    .map_err(ServerError::State)?;
                if let (Some(sink), Some(ch)) = (&audit, link.channel_watch()) {
                    rt.spawn(crate::reports::run(ch, sink.clone()));
                }
                let shared = config.budgets.as_ref().and_then(|b| b.fleet.clone());
                if let (Some(cfg), Some(ch)) = (shared, link.channel_watch()) {
                    let leases =
                        crate::budget_fleet::FleetLeases::new(ledger.clone(), cfg, node_id.clone());
                    rt.spawn(leases.clone().run(ch));
                    fleet = Some(leases);
                }
                (Some(link), Some(rt))
            }
        };
        let gateway = Gateway::new(
            state.clone(),
            control.as_ref().map(|l| l.health.clone()),
            metrics.clone(),
            lifecycle.clone(),
            audit.clone(),
            config.h2c,
        )
        .with_ledger(ledger.clone());
        let gateway = match fleet {
            Some(f) => gateway.with_fleet(f),
            None => gateway,
        };
        let mut service = Service::new("tappass-gateway".into(), gateway);
        match &config.tls {
            Some(tls) => {
                service.add_tls_with_settings(&config.listen, None, tls_settings("listen", tls)?)
            }
            None => service.add_tcp(&config.listen),
        }
        server.add_service(service);

        let mut admin = Service::new(
            "tappass-admin".into(),
            Admin::new(metrics, lifecycle.clone(), audit).with_budgets(ledger, state),
        );
        match &config.admin_tls {
            Some(tls) => admin.add_tls_with_settings(
                &config.admin_listen,
                None,
                tls_settings("admin_listen", tls)?,
            ),
            None => admin.add_tcp(&config.admin_listen),
        }
        server.add_service(admin);

        Ok(GatewayServer {
            server,
            lifecycle,
            drain_for: Duration::from_secs(config.graceful_shutdown_seconds),
            mock_socket,
            _control: control.zip(control_runtime),
        })
    }

    /// Run until SIGTERM (drain) or SIGINT (stop now). Blocks.
    pub fn run(mut self) {
        self.server.bootstrap();
        let signals = DrainingSignals {
            lifecycle: self.lifecycle.clone(),
            drain_for: self.drain_for,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(signals),
        });
        if let Some(path) = &self.mock_socket {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Run the mock LLM provider alone on a TCP address (TLS when `tls` is
/// given) until SIGTERM/SIGINT. Blocks.
pub fn run_mock_server(
    listen: &str,
    tls: Option<&TlsConfig>,
    options: MockOptions,
    threads: usize,
) -> Result<(), ServerError> {
    check_can_listen("listen", listen)?;
    let conf = ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut service = Service::new("mock-llm".into(), MockLlm::new(options));
    match tls {
        Some(tls) => service.add_tls_with_settings(listen, None, tls_settings("listen", tls)?),
        None => service.add_tcp(listen),
    }
    server.add_service(service);
    server.bootstrap();
    server.run(RunArgs::default());
    Ok(())
}
