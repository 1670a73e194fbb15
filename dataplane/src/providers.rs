//! Providers (where calls go), their credentials, circuit breakers, and the
//! model router that maps a requested model to an ordered list of targets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::config::{is_glob, BreakerConfig, Config, ProviderConfig, ProviderKind, Timeouts};
use crate::wire::{ApiFamily, Endpoint};

/// A parsed upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without trailing slash (may be empty).
    pub base_path: String,
}

impl UpstreamUrl {
    /// Parse `http[s]://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        if rest.contains(['?', '#', '@']) {
            return Err(format!(
                "`{url}` must not contain credentials, a query or a fragment"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}` has an unterminated IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{url}` has a bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{url}` has a bad authority")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{url}` has a bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// Read a provider's API key from its env var or file. `Ok(None)` when the
/// provider has no credential configured.
pub fn load_credential(p: &ProviderConfig) -> Result<Option<String>, String> {
    if let Some(var) = &p.api_key_env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            Ok(_) => Err(format!("environment variable {var} is empty")),
            Err(_) => Err(format!("environment variable {var} is not set")),
        };
    }
    if let Some(path) = &p.api_key_file {
        return match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
            Ok(_) => Err(format!("file {} is empty", path.display())),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
    }
    Ok(None)
}

/// A credential that never shows up in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a provider is reached.
#[derive(Debug, Clone)]
pub enum UpstreamAddr {
    Url(UpstreamUrl),
    /// The in-process mock provider's Unix socket.
    Unix(PathBuf),
}

/// State of a circuit breaker, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A lock-free circuit breaker: opens after `failure_threshold`
/// consecutive failures, lets one probe through after the cool-down
/// (half-open), closes on its success and re-opens on its failure.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since the epoch until which the circuit is open; 0 = closed.
    open_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        CircuitBreaker {
            threshold: cfg.failure_threshold.max(1),
            cooldown: Duration::from_millis(cfg.cooldown_ms),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
        }
    }

    /// May a call go to this provider now? In half-open state only one
    /// probe is admitted at a time.
    pub fn try_acquire(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if crate::call_record::wall_ms() < until {
            return false;
        }
        self.probe_in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn on_success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.store(0, Ordering::Release);
        self.probe_in_flight.store(false, Ordering::Release);
    }

    pub fn on_failure(&self) {
        let was_probe = self.probe_in_flight.swap(false, Ordering::AcqRel);
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if was_probe || failures >= self.threshold {
            self.open_until_ms.store(
                crate::call_record::wall_ms() + self.cooldown.as_millis() as u64,
                Ordering::Release,
            );
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.open_until_ms.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if crate::call_record::wall_ms() < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// A configured provider, ready to be called.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub addr: UpstreamAddr,
    pub credential: Option<Secret>,
    pub api_version: Option<String>,
    pub tls_verify: bool,
    pub timeouts: Timeouts,
    pub breaker: CircuitBreaker,
    resolved: ArcSwapOption<(Instant, SocketAddr)>,
}

const DNS_TTL: Duration = Duration::from_secs(30);

impl Provider {
    /// Build from config; `mock_socket` is where the in-process mock listens.
    pub fn from_config(
        p: &ProviderConfig,
        global: Timeouts,
        mock_socket: Option<&PathBuf>,
    ) -> Result<Provider, String> {
        let addr = match p.kind {
            ProviderKind::Mock => UpstreamAddr::Unix(
                mock_socket
                    .cloned()
                    .ok_or("the mock provider's socket is not set up")?,
            ),
            kind => {
                let url = p.base_url.clone().unwrap_or_else(|| match kind {
                    ProviderKind::Anthropic => "https://api.anthropic.com/v1".into(),
                    _ => "https://api.openai.com/v1".into(),
                });
                UpstreamAddr::Url(UpstreamUrl::parse(&url)?)
            }
        };
        Ok(Provider {
            name: p.name.clone(),
            kind: p.kind,
            addr,
            credential: load_credential(p)?.map(Secret),
            api_version: p.api_version.clone(),
            tls_verify: p.tls_verify,
            timeouts: p.timeouts.over(global),
            breaker: CircuitBreaker::new(p.circuit_breaker),
            resolved: ArcSwapOption::empty(),
        })
    }

    /// Whether this provider serves `endpoint` natively.
    pub fn speaks(&self, endpoint: Endpoint) -> bool {
        match self.kind {
            ProviderKind::Mock => true,
            ProviderKind::Anthropic => endpoint.family() == ApiFamily::Anthropic,
            _ => endpoint.family() == ApiFamily::OpenAi,
        }
    }

    /// Human name of the API this provider speaks, for errors.
    pub fn api_name(&self) -> &'static str {
        match self.kind {
            ProviderKind::Anthropic => "the Anthropic Messages API",
            ProviderKind::Mock => "every supported API",
            _ => "the OpenAI API",
        }
    }

    /// Host header / TLS SNI.
    pub fn host(&self) -> &str {
        match &self.addr {
            UpstreamAddr::Url(u) => &u.host,
            UpstreamAddr::Unix(_) => "localhost",
        }
    }

    /// Request path (and query) for `endpoint` with `upstream_model`.
    pub fn request_path(&self, endpoint: Endpoint, upstream_model: &str) -> String {
        let base = match &self.addr {
            UpstreamAddr::Url(u) => u.base_path.as_str(),
            UpstreamAddr::Unix(_) => "/v1",
        };
        match self.kind {
            ProviderKind::AzureOpenai => {
                let version = self.api_version.as_deref().unwrap_or("");
                match endpoint {
                    Endpoint::Responses => {
                        format!("{base}/openai/responses?api-version={version}")
                    }
                    _ => format!(
                        "{base}/openai/deployments/{}{}?api-version={version}",
                        percent_encode_segment(upstream_model),
                        endpoint.upstream_suffix()
                    ),
                }
            }
            _ => format!("{base}{}", endpoint.upstream_suffix()),
        }
    }

    /// Authentication headers for the upstream request.
    pub fn auth_headers(&self) -> Vec<(&'static str, String)> {
        let Some(key) = &self.credential else {
            return Vec::new();
        };
        match self.kind {
            ProviderKind::Anthropic => vec![("x-api-key", key.expose().to_string())],
            ProviderKind::AzureOpenai => vec![("api-key", key.expose().to_string())],
            _ => vec![("authorization", format!("Bearer {}", key.expose()))],
        }
    }

    /// Resolve the provider's socket address, cached for a short TTL.
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        let UpstreamAddr::Url(url) = &self.addr else {
            return Err("a Unix-socket provider has no network address".into());
        };
        if let Some(cached) = self.resolved.load().as_deref() {
            if cached.0.elapsed() < DNS_TTL {
                return Ok(cached.1);
            }
        }
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let addr = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, url.port),
            Err(_) => tokio::net::lookup_host((host, url.port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} resolves to no address"))?,
        };
        self.resolved.store(Some(Arc::new((Instant::now(), addr))));
        Ok(addr)
    }
}

fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One place a call for a model can go.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream.
    pub upstream_model: Option<String>,
}

#[derive(Debug)]
struct Route {
    pattern: String,
    targets: Vec<Target>,
}

/// Maps requested model names to ordered target lists.
#[derive(Debug)]
pub struct Router {
    exact: std::collections::HashMap<String, Route>,
    globs: Vec<Route>,
    providers: Vec<Arc<Provider>>,
}

impl Router {
    pub fn from_config(config: &Config, mock_socket: Option<&PathBuf>) -> Result<Router, String> {
        let mut providers = Vec::new();
        for p in &config.providers {
            providers.push(Arc::new(Provider::from_config(
                p,
                config.timeouts,
                mock_socket,
            )?));
        }
        let find = |name: &str| {
            providers
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| format!("unknown provider `{name}`"))
        };
        let mut exact = std::collections::HashMap::new();
        let mut globs = Vec::new();
        for m in &config.models {
            let mut targets = vec![Target {
                provider: find(&m.provider)?,
                upstream_model: m.upstream_model.clone(),
            }];
            for f in &m.fallbacks {
                targets.push(Target {
                    provider: find(&f.provider)?,
                    upstream_model: f.upstream_model.clone(),
                });
            }
            let route = Route {
                pattern: m.name.clone(),
                targets,
            };
            if is_glob(&m.name) {
                globs.push(route);
            } else {
                exact.insert(m.name.clone(), route);
            }
        }
        Ok(Router {
            exact,
            globs,
            providers,
        })
    }

    /// Targets for a requested model: an exact name first, then the first
    /// matching glob in config order.
    pub fn resolve(&self, model: &str) -> Option<&[Target]> {
        if let Some(r) = self.exact.get(model) {
            return Some(&r.targets);
        }
        self.globs
            .iter()
            .find(|r| glob_match(&r.pattern, model))
            .map(|r| r.targets.as_slice())
    }

    /// Exactly named models, sorted (for `GET /v1/models`).
    pub fn model_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.exact.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }
}

/// `*` matches any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = UpstreamUrl::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        let u = UpstreamUrl::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((u.tls, u.port, u.base_path.as_str()), (false, 8000, ""));
        let u = UpstreamUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        for bad in [
            "ftp://x",
            "http://",
            "http://h:notaport",
            "https://u:p@h",
            "http://h/?q",
            "http://[::1",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(glob_match("*", ""));
        assert!(glob_match("claude-?-*", "claude-3-opus"));
        assert!(!glob_match("gpt-*", "claude"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            cooldown_ms: 50,
        });
        assert!(b.try_acquire());
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.try_acquire(), "one probe after the cool-down");
        assert!(!b.try_acquire(), "only one probe at a time");
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.try_acquire());
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire() && b.try_acquire());
    }

    fn provider(kind: ProviderKind, base: Option<&str>) -> Provider {
        let cfg = ProviderConfig {
            name: "p".into(),
            kind,
            base_url: base.map(str::to_owned),
            api_key_env: None,
            api_key_file: None,
            api_version: Some("2024-10-21".into()),
            tls_verify: true,
            timeouts: Default::default(),
            circuit_breaker: Default::default(),
        };
        Provider::from_config(&cfg, Timeouts::default(), None).unwrap()
    }

    #[test]
    fn request_paths() {
        let o = provider(ProviderKind::Openai, None);
        assert_eq!(
            o.request_path(Endpoint::ChatCompletions, "m"),
            "/v1/chat/completions"
        );
        let a = provider(ProviderKind::Anthropic, None);
        assert_eq!(
            a.request_path(Endpoint::AnthropicMessages, "m"),
            "/v1/messages"
        );
        assert!(a.speaks(Endpoint::AnthropicMessages) && !a.speaks(Endpoint::Responses));
        let z = provider(
            ProviderKind::AzureOpenai,
            Some("https://r.openai.azure.com"),
        );
        assert_eq!(
            z.request_path(Endpoint::ChatCompletions, "my dep"),
            "/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        assert_eq!(format!("{:?}", Secret("sk-123".into())), "Secret(***)");
    }
}
