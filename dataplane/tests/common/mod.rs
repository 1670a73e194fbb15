//! Test harness: real `tappass-gateway` and `tappass-mock-llm` processes on
//! ephemeral loopback ports, stopped when dropped.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "tp-test-key";

pub fn key_hash() -> String {
    tappass_dataplane::auth::hash_key(KEY)
}

pub use tappass_testkit::free_port;

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tappass-gateway"))
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} exited early with {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on port {port} within 20 s");
}

/// A running process killed on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Send SIGTERM (graceful drain) and wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("process exit")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tappass-mock-llm` with extra arguments.
pub fn start_mock(args: &[&str]) -> Proc {
    let path = bin_dir().join("tappass-mock-llm");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p tappass-benches` (make test does)",
        path.display()
    );
    let port = free_port();
    let mut child = Command::new(path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tappass-mock-llm");
    wait_for_port(port, &mut child, "tappass-mock-llm");
    Proc { child, port }
}

/// A gateway started from a YAML config body (listen addresses are added).
pub struct Gateway {
    pub proc: Proc,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(config_body: &str) -> Gateway {
        Self::start_with_env(config_body, &[])
    }

    pub fn start_with_env(config_body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_full(config_body, env, &[])
    }

    /// Start with further API keys: (key name = agent, key).
    pub fn start_with_keys(config_body: &str, keys: &[(&str, &str)]) -> Gateway {
        Self::start_full(config_body, &[], keys)
    }

    fn start_full(config_body: &str, env: &[(&str, &str)], keys: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let admin_port = free_port();
        let extra: String = keys
            .iter()
            .map(|(name, key)| {
                format!(
                    "  - name: {name}\n    sha256: {}\n",
                    tappass_dataplane::auth::hash_key(key)
                )
            })
            .collect();
        let config = format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\ngraceful_shutdown_seconds: 10\napi_keys:\n  - name: tests\n    sha256: {}\n{extra}{config_body}",
            key_hash()
        );
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tappass-gateway"));
        cmd.arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tappass-gateway");
        wait_for_port(port, &mut child, "tappass-gateway");
        wait_for_port(admin_port, &mut child, "tappass-gateway admin");
        Gateway {
            proc: Proc { child, port },
            admin_port,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proc.url())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// An OpenAI chat request body.
pub fn chat(model: &str, text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
}

/// POST a JSON body with the test key.
pub async fn post(gw: &Gateway, path: &str, body: &serde_json::Value) -> reqwest::Response {
    request_as(gw, path, KEY)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// A POST to the gateway's `path` with `bearer` as the credential (an API
/// key, an agent key or a capability token).
pub fn request_as(gw: &Gateway, path: &str, bearer: &str) -> reqwest::RequestBuilder {
    client().post(gw.url(path)).bearer_auth(bearer)
}

/// The gateway's `x-tappass-error-code` header, empty when it is absent.
pub fn error_code(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-tappass-error-code")
        .map(|v| v.to_str().expect("an ASCII error code").to_string())
        .unwrap_or_default()
}

/// Number of calls a mock has answered.
pub async fn mock_calls(mock: &Proc) -> u64 {
    let v: serde_json::Value = client()
        .get(format!("{}/__mock/requests", mock.url()))
        .send()
        .await
        .expect("mock reachable")
        .json()
        .await
        .expect("json");
    v["calls"].as_u64().expect("calls")
}

/// The text of an OpenAI chat SSE body, and whether it ended with [DONE].
pub fn chat_stream_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("chunk is JSON");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, done)
}

/// The three wire formats of LLM calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Chat,
    Anthropic,
    Responses,
}

pub const FORMATS: [Format; 3] = [Format::Chat, Format::Anthropic, Format::Responses];

/// The endpoint of a format.
pub fn path(f: Format) -> &'static str {
    match f {
        Format::Chat => "/v1/chat/completions",
        Format::Anthropic => "/v1/messages",
        Format::Responses => "/v1/responses",
    }
}

/// Every row of the audit WAL in `dir`, in order.
pub fn audit_rows(dir: &std::path::Path) -> Vec<tappass_audit::AuditRecord> {
    let reader = tappass_audit::WalReader::open(dir).unwrap();
    reader
        .rows(0)
        .unwrap()
        .map(|r| serde_json::from_str(r.unwrap().body.unwrap().get()).unwrap())
        .collect()
}

/// What the mock provider received, one object per request (`path`,
/// `body`, ...), oldest first.
pub async fn mock_requests(mock: &Proc) -> Vec<serde_json::Value> {
    let v = get_json(&format!("{}/__mock/requests", mock.url())).await;
    v["requests"].as_array().cloned().unwrap_or_default()
}

/// GET a URL and parse its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON body")
}

/// GET `url` and read the body as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("request sent")
        .text()
        .await
        .expect("a text body")
}

/// Give the mock provider its next replies (`POST /__mock/script`).
pub async fn mock_script(mock: &Proc, scripts: serde_json::Value) {
    let r = client()
        .post(format!("{}/__mock/script", mock.url()))
        .json(&scripts)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// The text of a streamed response in any of the three formats (OpenAI
/// chat deltas, Anthropic text deltas, Responses output-text deltas).
pub fn stream_text(body: &str) -> String {
    let mut text = String::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(serde_json::Value::as_str)
        {
            text.push_str(t);
        }
        if let Some(t) = v.pointer("/delta/text").and_then(serde_json::Value::as_str) {
            text.push_str(t);
        }
        if v["type"] == "response.output_text.delta" {
            text.push_str(v["delta"].as_str().unwrap_or(""));
        }
    }
    text
}

/// The request bodies the mock received, parsed.
pub async fn mock_bodies(mock: &Proc) -> Vec<serde_json::Value> {
    mock_requests(mock)
        .await
        .iter()
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect()
}

/// Sign `policies` (file name, policy) with the key of `seed` into
/// `dir/policies`; returns the gateway's `local_policies:` config lines.
pub fn local_policies(
    dir: &std::path::Path,
    seed: u8,
    policies: &[(&str, &tappass_policies::CompiledPolicy)],
) -> String {
    let (secret, public) = tappass_policies::keypair_from_seed([seed; 32]);
    let out = dir.join("policies");
    std::fs::create_dir_all(&out).unwrap();
    let public_file = dir.join("policy.pub");
    std::fs::write(&public_file, serde_json::to_string(&public).unwrap()).unwrap();
    for (name, p) in policies {
        let signed = tappass_policies::sign(p, &secret).unwrap();
        std::fs::write(out.join(name), serde_json::to_string(&signed).unwrap()).unwrap();
    }
    format!(
        "local_policies:\n  dir: {}\n  public_key_file: {}\n",
        out.display(),
        public_file.display()
    )
}

/// A capability-token issuer the gateway trusts: its key set is written
/// to `dir`, `config` holds the gateway's `tokens:` lines.
pub struct TokenIssuer {
    key: tappass_keys::SigningKeyPair,
    pub config: String,
}

impl TokenIssuer {
    pub fn new(dir: &std::path::Path) -> TokenIssuer {
        let key = tappass_keys::SigningKeyPair::generate();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, key.jwks().to_string()).unwrap();
        TokenIssuer {
            key,
            config: format!(
                "tokens:\n  jwks_file: {}\n  issuer: tappass-control\n",
                jwks.display()
            ),
        }
    }

    /// A five-minute token for agent `sub` in `sandbox`, with `scope`.
    pub fn token(&self, sub: &str, sandbox: &str, scope: tappass_tokens::Scope) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = tappass_tokens::Claims {
            iss: "tappass-control".into(),
            aud: tappass_tokens::Audience::One("tappass-gateway".into()),
            sub: sub.into(),
            org: Some("acme".into()),
            project: Some("support".into()),
            sandbox: Some(sandbox.into()),
            tier: Some("worker".into()),
            scope,
            policy_version: Some(1),
            iat: now,
            nbf: None,
            exp: now + 300,
            jti: format!("tok-{sub}-{now}"),
        };
        tappass_tokens::mint(&claims, &self.key)
    }
}

/// A reference agent's golden Compiled Policy (`policies/examples/golden`).
pub fn golden_policy(agent: &str) -> tappass_policies::CompiledPolicy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../policies/examples/golden/{agent}/compiled.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
