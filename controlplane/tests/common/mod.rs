//! A control plane on 127.0.0.1 (free ports) over a temporary data
//! directory, plus an admin HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tappass_controlplane::{ControlPlane, MasterKeySource, Options};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn test_options() -> Options {
    Options {
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        master_key: MasterKeySource::File(PathBuf::new()),
        maintenance_interval: Duration::from_millis(200),
        token_leeway: Duration::ZERO,
        ..Options::default()
    }
}

pub struct Running {
    pub cp: ControlPlane,
    pub admin_url: String,
    pub xds_url: String,
    pub token: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Opens and serves a control plane over `dir` (a master key file is
    /// created beside the data directory).
    pub async fn start(dir: &Path, mut opts: Options) -> Running {
        let mk = dir.with_extension("master.key");
        if !mk.exists() {
            std::fs::write(&mk, hex::encode([0x5au8; 32])).unwrap();
        }
        if opts.master_key == MasterKeySource::File(PathBuf::new()) {
            opts.master_key = MasterKeySource::File(mk);
        }
        let mut last = None;
        let mut cp = None;
        // A previous instance may still be releasing the store's lock.
        for _ in 0..50 {
            match ControlPlane::open(dir, opts.clone()) {
                Ok(c) => {
                    cp = Some(c);
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let cp = cp.unwrap_or_else(|| panic!("open: {last:?}"));
        let bound = cp.bind().await.unwrap();
        let admin_url = bound.admin_url();
        let xds_url = bound.xds_url();
        let (tx, rx) = oneshot::channel();
        let c = cp.clone();
        let task = tokio::spawn(async move {
            c.serve(bound, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running {
            token: cp.admin_token().to_string(),
            cp,
            admin_url,
            xds_url,
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// An admin request with the admin token; returns (status, JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.token), method, path, body).await
    }

    pub async fn call_as(
        &self,
        bearer: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, format!("{}{path}", self.admin_url));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }
}

/// Waits (at most 20 s) until something listens on `port`.
pub fn wait_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another binary of the workspace, built beside this package's.
pub fn sibling(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_tappass"))
        .parent()
        .unwrap()
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (make test does)",
        p.display()
    );
    p
}
