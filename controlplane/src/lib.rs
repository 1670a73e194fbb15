//! TapPass control plane: state in RocksDB, recompile + sign + push of
//! Compiled Policies, token-signing keys, revocations and API-key hashes
//! over the Envoy ADS protocol, and the admin API. The operator CLI
//! `tappass` is the binary in `src/bin/tappass/`; `tappass-control` is a
//! thin wrapper around [`ControlPlane`].
//!
//! ```no_run
//! # async fn run() -> Result<(), tappass_controlplane::ControlError> {
//! use tappass_controlplane::{ControlPlane, Options};
//! let cp = ControlPlane::open(std::path::Path::new(".tappass"), Options::default())?;
//! let bound = cp.bind().await?;
//! println!("admin API at {}", bound.admin_url());
//! cp.serve(bound, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod budget_leases;
pub mod crypto;
pub mod error;
pub mod fleet;
mod plane;
pub mod records;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use crypto::{MasterKey, MasterKeySource, MASTER_KEY_ENV};
pub use error::ControlError;
pub use plane::{
    ControlPlane, Options, API_KEYS_NAME, PUBLISHED_TYPES, REVOCATIONS_NAME, TRUST_BUNDLE_NAME,
};

/// Written to `<data dir>/control.json` when the listeners are bound, so
/// that the CLI finds a running control plane through `--data-dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Base URL of the admin API, e.g. `http://127.0.0.1:18001`.
    pub admin_url: String,
    /// ADS endpoint for gateways, e.g. `http://127.0.0.1:18000`.
    pub xds_url: String,
    /// Key id of the snapshot-signing key (`snapshot-key.pub`).
    pub snapshot_key_id: String,
    pub pid: u32,
}

/// Name of the discovery file in the data directory.
pub const DISCOVERY_FILE: &str = "control.json";
/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the snapshot public key file in the data directory.
pub const SNAPSHOT_KEY_FILE: &str = "snapshot-key.pub";

/// Both listeners, bound.
#[derive(Debug)]
pub struct Bound {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    xds: TcpListener,
    admin: TcpListener,
}

impl Bound {
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds_addr)
    }
}

impl ControlPlane {
    /// Binds the xDS and admin listeners (the addresses of
    /// [`Options`]; port 0 picks a free port) and writes the discovery file.
    pub async fn bind(&self) -> Result<Bound, ControlError> {
        let o = self.options();
        let xds = TcpListener::bind(o.xds_addr)
            .await
            .map_err(|e| ControlError::io(format!("xDS listener {}", o.xds_addr), e))?;
        let admin = TcpListener::bind(o.admin_addr)
            .await
            .map_err(|e| ControlError::io(format!("admin listener {}", o.admin_addr), e))?;
        self.bind_listeners(xds, admin)
    }

    /// Uses listeners bound by the caller and writes the discovery file.
    pub fn bind_listeners(
        &self,
        xds: TcpListener,
        admin: TcpListener,
    ) -> Result<Bound, ControlError> {
        let local = |l: &TcpListener| {
            l.local_addr()
                .map_err(|e| ControlError::io("listener address", e))
        };
        let bound = Bound {
            xds_addr: local(&xds)?,
            admin_addr: local(&admin)?,
            xds,
            admin,
        };
        let d = Discovery {
            admin_url: bound.admin_url(),
            xds_url: bound.xds_url(),
            snapshot_key_id: self.snapshot_public_key().key_id.clone(),
            pid: std::process::id(),
        };
        let path = self.data_dir().join(DISCOVERY_FILE);
        let text =
            serde_json::to_string_pretty(&d).map_err(|e| ControlError::Server(e.to_string()))?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| ControlError::io(path.display().to_string(), e))?;
        Ok(bound)
    }

    /// Serves ADS and the admin API, and runs the maintenance loop, until
    /// `shutdown` completes; then removes the discovery file and flushes
    /// the store.
    pub async fn serve(
        &self,
        bound: Bound,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
        let ads = self.ads().clone();
        let reports = tappass_xds::ReportsServer::new(std::sync::Arc::new(fleet::ReportService(
            self.clone(),
        )));
        let leases = tappass_xds::budgets::LeasesServer::new(std::sync::Arc::new(
            budget_leases::LeaseService(self.clone()),
        ));
        let xds =
            ads.serve_with_reports_and_leases(bound.xds, reports, leases, stopped(rx.clone()));
        let app = admin::router(self.clone());
        let admin = axum::serve(bound.admin, app).with_graceful_shutdown(stopped(rx.clone()));
        let cp = self.clone();
        let interval = self.options().maintenance_interval;
        let mrx = rx.clone();
        let maintenance = async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let c = cp.clone();
                        match tokio::task::spawn_blocking(move || c.maintain()).await {
                            Ok(Err(e)) => tracing::error!(error = %e, "maintenance failed"),
                            Err(e) => tracing::error!(error = %e, "maintenance task failed"),
                            Ok(Ok(())) => {}
                        }
                    }
                    _ = stopped(mrx.clone()) => break,
                }
            }
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let (x, a, ()) = tokio::join!(xds, admin, maintenance);
        let path = self.data_dir().join(DISCOVERY_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if serde_json::from_str::<Discovery>(&text).is_ok_and(|d| d.pid == std::process::id()) {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.flush()?;
        x.map_err(|e| ControlError::Server(format!("xDS: {e}")))?;
        a.map_err(|e| ControlError::Server(format!("admin API: {e}")))?;
        Ok(())
    }
}

/// Reads the discovery file and admin token of a data directory.
pub fn discover(data_dir: &Path) -> Result<(Discovery, String), ControlError> {
    let path = data_dir.join(DISCOVERY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ControlError::NotFound(format!(
                "no control plane is running on {} ({} is missing; start one with `tappass-control --data-dir {}`)",
                data_dir.display(),
                path.display(),
                data_dir.display()
            ))
        } else {
            ControlError::io(path.display().to_string(), e)
        }
    })?;
    let d: Discovery = serde_json::from_str(&text)
        .map_err(|e| ControlError::BadRequest(format!("{}: {e}", path.display())))?;
    let tpath = data_dir.join(ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&tpath)
        .map_err(|e| ControlError::io(tpath.display().to_string(), e))?;
    Ok((d, token.trim().to_string()))
}
