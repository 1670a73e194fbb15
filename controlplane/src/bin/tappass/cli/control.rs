//! Reaching a control plane from the CLI: `--data-dir DIR` (the admin URL
//! and token a running control plane wrote there) or `--control URL` with
//! `--admin-token-file FILE`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// Data directory of a running control plane (default `./.tappass`).
    #[arg(long, conflicts_with = "control")]
    pub data_dir: Option<PathBuf>,
    /// Admin API URL of a control plane, e.g. `http://127.0.0.1:18001`.
    #[arg(long)]
    pub control: Option<String>,
    /// File holding the admin token (with --control; default: the
    /// `TAPPASS_ADMIN_TOKEN` environment variable).
    #[arg(long, requires = "control")]
    pub admin_token_file: Option<PathBuf>,
}

impl ControlArgs {
    pub fn client(&self) -> Result<Client> {
        let (url, token) = match &self.control {
            Some(url) => {
                let token = match &self.admin_token_file {
                    Some(p) => std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim()
                        .to_string(),
                    None => std::env::var("TAPPASS_ADMIN_TOKEN").map_err(|_| {
                        anyhow!("--control needs --admin-token-file FILE or TAPPASS_ADMIN_TOKEN")
                    })?,
                };
                (url.trim_end_matches('/').to_string(), token)
            }
            None => {
                let dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(".tappass"));
                let (d, token) = tappass_controlplane::discover(&dir)?;
                (d.admin_url, token)
            }
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(Client { url, token, http })
    }
}

pub struct Client {
    pub url: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body))
    }

    pub fn put(&self, path: &str, body: Value) -> Result<Value> {
        self.send(reqwest::Method::PUT, path, Some(body))
    }

    pub fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow!(
                    "the control plane at {} is not reachable (is `tappass-control` running?): {e}",
                    self.url
                )
            } else {
                anyhow!("request to {} failed: {e}", self.url)
            }
        })?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if !status.is_success() {
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or(text);
            bail!("control plane: {msg} (HTTP {})", status.as_u16());
        }
        Ok(v)
    }
}
