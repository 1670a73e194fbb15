//! Gateway configuration: YAML, strict (`deny_unknown_fields`), validated at
//! start with errors that name the file, the key and the problem.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The embedded default configuration: an offline gateway whose in-process
/// mock provider serves `mock-gpt` and `mock-claude`.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../config/default.yaml");
/// Name shown for the embedded default configuration in errors.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default config>";
/// The gateway API key of the embedded default configuration. It is only
/// accepted by gateways running that configuration, which binds to loopback
/// and reaches no real provider.
pub const DEFAULT_DEV_API_KEY: &str = "tp-local-dev-key";

/// A configuration error: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client listener, e.g. `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// TLS for the client listener (HTTP/2 is offered via ALPN).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS for the admin listener.
    #[serde(default)]
    pub admin_tls: Option<TlsConfig>,
    /// Accept cleartext HTTP/2 (prior knowledge) on the client listener.
    #[serde(default)]
    pub h2c: bool,
    /// Worker threads (default: number of CPUs).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Seconds to keep serving in-flight calls after SIGTERM.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_seconds: u64,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Gateway API keys accepted from clients (stored as SHA-256 hashes).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Standalone mode: signed Compiled Policies from a local directory.
    #[serde(default)]
    pub local_policies: Option<LocalPoliciesConfig>,
    /// Subscribe to a control plane for identity material and policies.
    #[serde(default)]
    pub control_plane: Option<ControlPlaneConfig>,
    /// Capability tokens accepted besides API keys. Off when absent.
    #[serde(default)]
    pub tokens: Option<TokenConfig>,
    /// The audit trail (a signed, hash-chained WAL). Off when absent.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Content guardrails on the request and response path. Off when absent
    /// (unless the control plane pushes a policy for the caller's agent).
    #[serde(default)]
    pub guardrails: Option<GuardrailsConfig>,
    /// Budgets and rate limits per org, project, agent and API key. Off
    /// when absent (unless a pushed policy sets an agent's budget).
    #[serde(default)]
    pub budgets: Option<BudgetsConfig>,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_grace() -> u64 {
    10
}

/// What a guardrail does with a finding.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    /// Refuse the call (403).
    Block,
    /// Replace the value and let the call through.
    Redact,
    /// Record the finding in the audit row only.
    Log,
    /// Do not run the step.
    Off,
}

/// How redacted values are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedactionStyle {
    /// `[REDACTED:EMAIL]`
    #[default]
    Mask,
    /// `<EMAIL_1>`
    Pseudonym,
    /// `****1234`, `j***@example.com`
    Partial,
}

/// The `guardrails:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Secrets in the prompt (default `block`).
    #[serde(default = "default_block")]
    pub secrets: GuardAction,
    /// Personal data in the prompt (default `redact`).
    #[serde(default = "default_redact")]
    pub pii: GuardAction,
    /// Prompt injection (default `block`; `redact` is not allowed).
    #[serde(default = "default_block")]
    pub injection: GuardAction,
    /// Injection score at or above which the prompt is refused.
    #[serde(default = "default_injection_threshold")]
    pub injection_threshold: f32,
    /// Jailbreaks (`detect_jailbreak`: personas such as DAN, developer
    /// modes, "no restrictions" claims), scored on the jailbreak families
    /// alone against `injection_threshold`: block, log or off. Default: the
    /// `injection` setting.
    #[serde(default)]
    pub jailbreak: Option<GuardAction>,
    #[serde(default)]
    pub redaction: RedactionStyle,
    /// Secrets in the model's output (default `redact`).
    #[serde(default = "default_redact")]
    pub response_secrets: GuardAction,
    /// Personal data in the model's output (default `redact`).
    #[serde(default = "default_redact")]
    pub response_pii: GuardAction,
    /// Tool definitions whose name matches one of these globs are removed
    /// from the request.
    #[serde(default)]
    pub tools_deny: Vec<String>,
    /// Governance of the tool calls the model returns (defaults apply when
    /// absent; see `tool_governance`).
    #[serde(default)]
    pub tools: Option<ToolsConfig>,
    /// Exfiltration channels in the prompt: paste / request-catcher /
    /// tunnel URLs, markdown images and links carrying data, `data:` URIs
    /// (`detect_exfil`; default `off`).
    #[serde(default = "default_off")]
    pub exfil: GuardAction,
    /// Exfiltration channels in the model's output
    /// (`detect_exfil_in_response`; default `off`).
    #[serde(default = "default_off")]
    pub response_exfil: GuardAction,
    /// Prompt injection and secrets in the tool results sent back in the
    /// conversation (`tool_result_scan`: `block`, `log` or `off`; default
    /// `off`).
    #[serde(default = "default_off")]
    pub tool_results: GuardAction,
    /// Ask the provider not to keep or train on the call
    /// (`enforce_no_train`; default `false`).
    #[serde(default)]
    pub no_train: bool,
    /// Values never reported as secrets, matched exactly: keys reviewed as
    /// public by design, such as a web app's Google API key. Applies to
    /// prompts, tool results, tool-call arguments and responses.
    #[serde(default)]
    pub allowed_secrets: Vec<String>,
}

/// The `guardrails.tools:` section: checks on the tool calls a model emits
/// and on `/v1/tools/check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// `block` (default) refuses a failing tool call, `log` only records it,
    /// `off` turns tool-call governance off.
    #[serde(default = "default_block")]
    pub action: GuardAction,
    /// Globs of tool names (or catalog ids) the model may call; absent: any.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Globs of tool names (or catalog ids) the model may not call (added to
    /// `tools_deny`).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Catalog capabilities no called tool may exercise.
    #[serde(default)]
    pub denied_categories: Vec<String>,
    /// Access per data schema: `customers: [read, write]`, `pii_archive: []`.
    #[serde(default)]
    pub schemas: std::collections::BTreeMap<String, Vec<String>>,
    /// Ceilings and destination lists per catalog tool.
    #[serde(default)]
    pub constraints: std::collections::BTreeMap<String, ToolConstraintConfig>,
    /// A tool the catalog does not know: `block` (default), `log` or `off`.
    #[serde(default = "default_block")]
    pub discovery: GuardAction,
    /// Check arguments against the tool's declared JSON schema.
    #[serde(default = "default_true")]
    pub validate_arguments: bool,
    #[serde(default)]
    pub loop_guard: LoopGuardConfig,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            action: GuardAction::Block,
            allow: None,
            deny: Vec::new(),
            denied_categories: Vec::new(),
            schemas: Default::default(),
            constraints: Default::default(),
            discovery: GuardAction::Block,
            validate_arguments: true,
            loop_guard: LoopGuardConfig::default(),
        }
    }
}

/// Constraints on one catalog tool, bound to the catalog's argument slots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConstraintConfig {
    #[serde(default)]
    pub max_amount: Option<u64>,
    #[serde(default)]
    pub allowed_destinations: Option<Vec<String>>,
    #[serde(default)]
    pub denied_destinations: Vec<String>,
    #[serde(default)]
    pub max_content_bytes: Option<u64>,
}

/// Repeated and runaway tool calls within a session (0 turns a limit off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopGuardConfig {
    /// The same tool with the same arguments at most this many times.
    #[serde(default = "default_max_repeats")]
    pub max_repeats: u32,
    /// At most this many destructive calls in a row.
    #[serde(default = "default_max_destructive")]
    pub max_destructive_in_a_row: u32,
    /// At most this many tool calls in one model response.
    #[serde(default = "default_max_per_turn")]
    pub max_tool_calls_per_turn: u32,
    /// A session idle this long is forgotten (an ended one too).
    #[serde(default = "default_session_idle")]
    pub session_idle_seconds: u64,
}

impl Default for LoopGuardConfig {
    fn default() -> Self {
        LoopGuardConfig {
            max_repeats: default_max_repeats(),
            max_destructive_in_a_row: default_max_destructive(),
            max_tool_calls_per_turn: default_max_per_turn(),
            session_idle_seconds: default_session_idle(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_repeats() -> u32 {
    5
}
fn default_max_destructive() -> u32 {
    10
}
fn default_max_per_turn() -> u32 {
    20
}
fn default_session_idle() -> u64 {
    3600
}

fn default_block() -> GuardAction {
    GuardAction::Block
}
fn default_redact() -> GuardAction {
    GuardAction::Redact
}
fn default_off() -> GuardAction {
    GuardAction::Off
}
fn default_injection_threshold() -> f32 {
    0.5
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        GuardrailsConfig {
            secrets: GuardAction::Block,
            pii: GuardAction::Redact,
            injection: GuardAction::Block,
            injection_threshold: default_injection_threshold(),
            jailbreak: None,
            redaction: RedactionStyle::Mask,
            response_secrets: GuardAction::Redact,
            response_pii: GuardAction::Redact,
            tools_deny: Vec::new(),
            tools: None,
            exfil: GuardAction::Off,
            response_exfil: GuardAction::Off,
            tool_results: GuardAction::Off,
            no_train: false,
            allowed_secrets: Vec::new(),
        }
    }
}

impl GuardrailsConfig {
    /// Every step off (the base when only a pushed policy selects steps).
    pub fn all_off() -> Self {
        GuardrailsConfig {
            secrets: GuardAction::Off,
            pii: GuardAction::Off,
            injection: GuardAction::Off,
            response_secrets: GuardAction::Off,
            response_pii: GuardAction::Off,
            ..GuardrailsConfig::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tappass_dataplane=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body.
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: usize,
    /// Largest buffered (non-streaming) upstream response.
    #[serde(default = "default_max_response")]
    pub max_response_body_bytes: usize,
    /// Largest amount of stream output held back for inspection.
    #[serde(default = "default_max_hold")]
    pub max_stream_hold_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: default_max_body(),
            max_response_body_bytes: default_max_response(),
            max_stream_hold_bytes: default_max_hold(),
        }
    }
}

fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_max_response() -> usize {
    64 * 1024 * 1024
}
fn default_max_hold() -> usize {
    1024 * 1024
}

/// Upstream timeouts in milliseconds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    #[serde(default = "d_connect")]
    pub connect_ms: u64,
    /// From request sent to response headers.
    #[serde(default = "d_first_byte")]
    pub first_byte_ms: u64,
    /// Longest silence between two reads of a response body (stream events).
    #[serde(default = "d_idle")]
    pub idle_ms: u64,
    /// The whole call, from request to last byte.
    #[serde(default = "d_total")]
    pub total_ms: u64,
}

fn d_connect() -> u64 {
    5_000
}
fn d_first_byte() -> u64 {
    120_000
}
fn d_idle() -> u64 {
    120_000
}
fn d_total() -> u64 {
    900_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: d_connect(),
            first_byte_ms: d_first_byte(),
            idle_ms: d_idle(),
            total_ms: d_total(),
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
}

/// Per-provider timeout overrides.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    pub connect_ms: Option<u64>,
    pub first_byte_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub total_ms: Option<u64>,
}

impl TimeoutOverrides {
    pub fn over(&self, base: Timeouts) -> Timeouts {
        Timeouts {
            connect_ms: self.connect_ms.unwrap_or(base.connect_ms),
            first_byte_ms: self.first_byte_ms.unwrap_or(base.first_byte_ms),
            idle_ms: self.idle_ms.unwrap_or(base.idle_ms),
            total_ms: self.total_ms.unwrap_or(base.total_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key (shown in logs, never the key itself).
    pub name: String,
    /// Hex SHA-256 of the key (`tappass-gateway --hash-key KEY` prints it).
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    AzureOpenai,
    OpenaiCompatible,
    /// The built-in offline mock provider, served in-process on a private
    /// Unix socket.
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL including the API version path, e.g.
    /// `https://api.openai.com/v1`. Defaults per kind where one exists.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the provider API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the provider API key (trailing whitespace is trimmed).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Azure OpenAI `api-version`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Verify the upstream TLS certificate (default true).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    #[serde(default)]
    pub timeouts: TimeoutOverrides,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    #[serde(default = "d_failures")]
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe call is let through.
    #[serde(default = "d_cooldown")]
    pub cooldown_ms: u64,
}

fn d_failures() -> u32 {
    5
}
fn d_cooldown() -> u64 {
    30_000
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: d_failures(),
            cooldown_ms: d_cooldown(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name as clients send it; `*` and `?` make it a glob.
    pub name: String,
    pub provider: String,
    /// Model name sent upstream (default: the requested name).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Tried in order on connect errors, timeouts, 429 and 5xx before the
    /// first byte reaches the client.
    #[serde(default)]
    pub fallbacks: Vec<FallbackConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    pub provider: String,
    #[serde(default)]
    pub upstream_model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPoliciesConfig {
    /// Directory of signed Compiled Policy files (`*.json`), watched for changes.
    pub dir: PathBuf,
    /// The public key that signed them (`tappass keys generate` writes it as `FILE.pub`).
    pub public_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// The control plane's xDS (ADS) endpoint, e.g. `http://127.0.0.1:18000`.
    pub url: String,
    /// This gateway's node id (default: the audit gateway id or the host name).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Hex Ed25519 public keys that sign the control plane's snapshots.
    pub snapshot_public_keys: Vec<String>,
    /// Where the last good snapshot is kept, so a restart serves at once.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub protocol: XdsProtocol,
    /// What to do when the control plane is out of reach past the TTL.
    #[serde(default)]
    pub on_stale: OnStale,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XdsProtocol {
    #[default]
    Delta,
    Sotw,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Refuse calls with 503 until the control plane is back.
    #[default]
    FailClosed,
    /// Keep serving with the last good configuration.
    FailOpen,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token issuer's public keys (JWKS). Without it, the key set comes
    /// from the control plane.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// `aud` a token must carry.
    #[serde(default = "d_audience")]
    pub audience: String,
    /// When set, `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Longest accepted token lifetime (`exp - iat`).
    #[serde(default = "d_max_ttl")]
    pub max_ttl_seconds: u64,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "d_leeway")]
    pub leeway_seconds: u64,
    /// Revoked token ids and sandboxes: `{"jti": [...], "sandboxes": [...]}`.
    #[serde(default)]
    pub revocations_file: Option<PathBuf>,
}

impl TokenConfig {
    /// Token settings when only the control plane supplies the key set.
    pub fn from_control_plane() -> TokenConfig {
        TokenConfig {
            jwks_file: None,
            audience: d_audience(),
            issuer: None,
            max_ttl_seconds: d_max_ttl(),
            leeway_seconds: d_leeway(),
            revocations_file: None,
        }
    }
}

fn d_audience() -> String {
    "tappass-gateway".into()
}
fn d_max_ttl() -> u64 {
    900
}
fn d_leeway() -> u64 {
    5
}

/// Budgets and rate limits (see `policies/pricing/README.md` for prices).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// IANA time zone of the calendar windows (days, months).
    #[serde(default = "d_time_zone")]
    pub time_zone: String,
    /// RocksDB directory of the counters. Absent: counters are kept in
    /// memory and start from zero after a restart.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Output cap reserved for a call that names none; the gateway then
    /// sets it on the request so that the provider enforces it too.
    #[serde(default = "d_default_max_tokens")]
    pub default_max_tokens: u64,
    /// Org of callers whose credential names none.
    #[serde(default)]
    pub default_org: Option<String>,
    /// Price overrides and additions: model pattern → dollars per 1M tokens.
    #[serde(default)]
    pub prices: BTreeMap<String, tappass_policies::pricing::Price>,
    /// Scope (`org:NAME`, `project:NAME`, `agent:NAME`, `api_key:NAME`;
    /// `NAME` may be `*` for each one separately) → its limits.
    #[serde(default)]
    pub scopes: BTreeMap<String, ScopeLimitsConfig>,
    /// Share day and month limits with the other gateways of the control
    /// plane (needs `control_plane`).
    #[serde(default)]
    pub fleet: Option<FleetBudgetsConfig>,
}

/// Limits shared by every gateway of a control plane, spent within leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetBudgetsConfig {
    /// Scopes whose day and month limits are shared (`org:*`, `project:x`).
    pub scopes: Vec<String>,
    /// A lease renewal asks for this fraction of the limit.
    #[serde(default = "d_lease_fraction")]
    pub lease_fraction: f64,
    /// Leases are renewed this often, and whenever one runs short.
    #[serde(default = "d_renew_ms")]
    pub renew_every_ms: u64,
    /// A call whose lease runs short waits this long for a renewal before
    /// it is refused.
    #[serde(default = "d_wait_for_lease_ms")]
    pub wait_for_lease_ms: u64,
    /// Leases held give back what is unspent after this long without a call.
    #[serde(default = "d_release_idle_ms")]
    pub release_idle_ms: u64,
    #[serde(default)]
    pub on_unreachable: OnLeaseUnreachable,
}

fn d_lease_fraction() -> f64 {
    0.05
}
fn d_renew_ms() -> u64 {
    1000
}
fn d_wait_for_lease_ms() -> u64 {
    250
}
fn d_release_idle_ms() -> u64 {
    30_000
}

/// What a gateway does with shared limits while the control plane is out
/// of reach.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnLeaseUnreachable {
    /// Keep spending the leases it holds, then refuse.
    #[default]
    WithinLease,
    /// Refuse calls on shared limits at once.
    Refuse,
}

fn d_time_zone() -> String {
    "UTC".into()
}
fn d_default_max_tokens() -> u64 {
    4096
}

/// The limits of one scope.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeLimitsConfig {
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub dollars_per_month: Option<f64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tool_calls_per_minute: Option<u64>,
    /// Ceilings for calls to models matching a pattern.
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimitsConfig>,
}

/// Per-model ceilings within a scope.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimitsConfig {
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub dollars_per_month: Option<f64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the WAL, its signing key and the published `jwks.json`.
    pub dir: PathBuf,
    /// Gateway id written in every row (default: the host name).
    #[serde(default)]
    pub gateway_id: Option<String>,
    #[serde(default)]
    pub signing: AuditSigning,
    /// With `checkpoint` signing: sign the chain head every this many rows…
    #[serde(default = "d_cp_rows")]
    pub checkpoint_every_rows: u64,
    /// …or this many milliseconds, whichever comes first.
    #[serde(default = "d_cp_ms")]
    pub checkpoint_every_ms: u64,
    /// Ed25519 seed file (hex); created when missing. Default: `<dir>/signing.key`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    #[serde(default)]
    pub durability: AuditDurability,
    /// Store the prompt and response in each row.
    #[serde(default)]
    pub store_content: bool,
    #[serde(default)]
    pub retention: AuditRetention,
}

fn d_cp_rows() -> u64 {
    1000
}
fn d_cp_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditSigning {
    /// Signed checkpoints over the chain head (every N rows or T ms).
    #[default]
    Checkpoint,
    /// An Ed25519 signature on every row.
    PerRow,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditDurability {
    /// A call's last byte is sent only once its row is on disk.
    #[default]
    BeforeResponse,
    /// Rows are queued and written shortly after the response.
    Async,
}

#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditRetention {
    pub max_rows: Option<u64>,
    pub max_age_hours: Option<u64>,
}

/// Whether a model name is a glob pattern.
pub fn is_glob(name: &str) -> bool {
    name.contains(['*', '?'])
}

impl Config {
    /// Parse and validate YAML text; `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_norway::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde's messages start with the path to the offending key.
            let (key, problem) = match msg.split_once(": ") {
                Some((k, p)) if !k.contains(' ') => (k.to_string(), p.to_string()),
                _ => ("(document)".to_string(), msg),
            };
            ConfigError {
                file: file.into(),
                key,
                problem,
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Config::from_yaml(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::from_yaml(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_NAME)
            .expect("the embedded default config is valid")
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, problem: String| ConfigError {
            file: file.into(),
            key,
            problem,
        };
        for (key, addr) in [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
        ] {
            addr.parse::<SocketAddr>()
                .map_err(|e| err(key.into(), format!("`{addr}` is not an address:port ({e})")))?;
        }
        if self.listen == self.admin_listen {
            return Err(err(
                "admin_listen".into(),
                "must differ from `listen`".into(),
            ));
        }
        if self.threads == Some(0) {
            return Err(err("threads".into(), "must be at least 1".into()));
        }
        for (key, t) in [("tls", &self.tls), ("admin_tls", &self.admin_tls)] {
            if let Some(t) = t {
                for (k, p) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
                    if !p.is_file() {
                        return Err(err(
                            format!("{key}.{k}"),
                            format!("file {} does not exist", p.display()),
                        ));
                    }
                }
            }
        }
        if self.limits.max_request_body_bytes == 0 {
            return Err(err(
                "limits.max_request_body_bytes".into(),
                "must be greater than 0".into(),
            ));
        }
        check_timeouts(&self.timeouts, "timeouts", &err)?;
        if let Some(g) = &self.guardrails {
            if g.injection == GuardAction::Redact {
                return Err(err(
                    "guardrails.injection".into(),
                    "must be block, log or off (an injection cannot be redacted)".into(),
                ));
            }
            if g.jailbreak == Some(GuardAction::Redact) {
                return Err(err(
                    "guardrails.jailbreak".into(),
                    "must be block, log or off (a jailbreak cannot be redacted)".into(),
                ));
            }
            if g.tool_results == GuardAction::Redact {
                return Err(err(
                    "guardrails.tool_results".into(),
                    "must be block, log or off (a tool result is not redacted)".into(),
                ));
            }
            if !(0.0..=1.0).contains(&g.injection_threshold) {
                return Err(err(
                    "guardrails.injection_threshold".into(),
                    "must be between 0 and 1".into(),
                ));
            }
            for (i, p) in g.tools_deny.iter().enumerate() {
                if p.trim().is_empty() {
                    return Err(err(
                        format!("guardrails.tools_deny[{i}]"),
                        "must not be empty".into(),
                    ));
                }
            }
        }
        if let Some(t) = &self.tokens {
            if t.jwks_file.is_none() && self.control_plane.is_none() {
                return Err(err(
                    "tokens.jwks_file".into(),
                    "is required unless a control plane supplies the key set".into(),
                ));
            }
            crate::auth::TokenAuth::from_config(t, None, None)
                .map_err(|problem| err("tokens".into(), problem))?;
        }
        if let Some(l) = &self.local_policies {
            if self.control_plane.is_some() {
                return Err(err(
                    "local_policies".into(),
                    "cannot be used together with control_plane".into(),
                ));
            }
            if !l.dir.is_dir() {
                return Err(err(
                    "local_policies.dir".into(),
                    format!("{} is not a directory", l.dir.display()),
                ));
            }
            if !l.public_key_file.is_file() {
                return Err(err(
                    "local_policies.public_key_file".into(),
                    format!("file {} does not exist", l.public_key_file.display()),
                ));
            }
        }
        if let Some(c) = &self.control_plane {
            crate::providers::UpstreamUrl::parse(&c.url)
                .map_err(|problem| err("control_plane.url".into(), problem))?;
            if c.snapshot_public_keys.is_empty() {
                return Err(err(
                    "control_plane.snapshot_public_keys".into(),
                    "at least one key is required".into(),
                ));
            }
            for (i, k) in c.snapshot_public_keys.iter().enumerate() {
                if k.trim().len() != 64 || !k.trim().bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err(
                        format!("control_plane.snapshot_public_keys[{i}]"),
                        "must be 64 hex digits (an Ed25519 public key)".into(),
                    ));
                }
            }
        }
        if let Some(b) = &self.budgets {
            crate::budget::validate(b).map_err(|(key, problem)| err(key, problem))?;
            if b.fleet.is_some() && self.control_plane.is_none() {
                return Err(err(
                    "budgets.fleet".into(),
                    "shared limits need a control plane (the `control_plane` section)".into(),
                ));
            }
        }
        if let Some(a) = &self.audit {
            if a.checkpoint_every_rows == 0 {
                return Err(err(
                    "audit.checkpoint_every_rows".into(),
                    "must be at least 1".into(),
                ));
            }
            if a.checkpoint_every_ms == 0 {
                return Err(err(
                    "audit.checkpoint_every_ms".into(),
                    "must be at least 1".into(),
                ));
            }
            if a.retention.max_rows == Some(0) {
                return Err(err(
                    "audit.retention.max_rows".into(),
                    "must be at least 1".into(),
                ));
            }
        }
        let mut key_names = HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    format!("api_keys[{i}].sha256"),
                    "must be 64 hex characters (the SHA-256 of the key)".into(),
                ));
            }
            if !key_names.insert(k.name.as_str()) {
                return Err(err(
                    format!("api_keys[{i}].name"),
                    format!("duplicate key name `{}`", k.name),
                ));
            }
        }
        let mut providers = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |k: &str| format!("providers[{i}].{k}");
            if p.name.is_empty() {
                return Err(err(at("name"), "must not be empty".into()));
            }
            if !providers.insert(p.name.as_str()) {
                return Err(err(at("name"), format!("duplicate provider `{}`", p.name)));
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err(err(
                    at("api_key_env"),
                    "set either api_key_env or api_key_file, not both".into(),
                ));
            }
            match p.kind {
                ProviderKind::AzureOpenai | ProviderKind::OpenaiCompatible
                    if p.base_url.is_none() =>
                {
                    return Err(err(
                        at("base_url"),
                        "is required for this provider kind".into(),
                    ))
                }
                ProviderKind::Mock if p.base_url.is_some() => {
                    return Err(err(
                        at("base_url"),
                        "the mock provider runs in-process and takes no base_url".into(),
                    ))
                }
                _ => {}
            }
            if p.kind == ProviderKind::AzureOpenai && p.api_version.is_none() {
                return Err(err(
                    at("api_version"),
                    "is required for azure-openai".into(),
                ));
            }
            if let Some(url) = &p.base_url {
                crate::providers::UpstreamUrl::parse(url)
                    .map_err(|problem| err(at("base_url"), problem))?;
            }
            if p.circuit_breaker.failure_threshold == 0 {
                return Err(err(
                    at("circuit_breaker.failure_threshold"),
                    "must be at least 1".into(),
                ));
            }
            check_timeouts(&p.timeouts.over(self.timeouts), &at("timeouts"), &err)?;
            crate::providers::load_credential(p).map_err(|problem| {
                let key = if p.api_key_file.is_some() {
                    at("api_key_file")
                } else {
                    at("api_key_env")
                };
                err(key, problem)
            })?;
        }
        if self.models.is_empty() {
            return Err(err(
                "models".into(),
                "at least one model is required".into(),
            ));
        }
        let mut exact = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty() {
                return Err(err(format!("models[{i}].name"), "must not be empty".into()));
            }
            if !is_glob(&m.name) && !exact.insert(m.name.as_str()) {
                return Err(err(
                    format!("models[{i}].name"),
                    format!("model `{}` is listed twice", m.name),
                ));
            }
            let targets = std::iter::once(("provider".to_string(), &m.provider)).chain(
                m.fallbacks
                    .iter()
                    .enumerate()
                    .map(|(j, f)| (format!("fallbacks[{j}].provider"), &f.provider)),
            );
            for (key, provider) in targets {
                if !providers.contains(provider.as_str()) {
                    return Err(err(
                        format!("models[{i}].{key}"),
                        format!("unknown provider `{provider}`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_timeouts(
    t: &Timeouts,
    key: &str,
    err: &dyn Fn(String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    for (name, v) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("idle_ms", t.idle_ms),
        ("total_ms", t.total_ms),
    ] {
        if v == 0 {
            return Err(err(
                format!("{key}.{name}"),
                "must be greater than 0".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, "test.yaml")
    }

    const MIN: &str =
        "providers:\n  - name: m\n    kind: mock\nmodels:\n  - name: a\n    provider: m\n";

    #[test]
    fn embedded_default_is_valid_and_serves_mock_models() {
        let c = Config::embedded_default();
        let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"mock-gpt") && names.contains(&"mock-claude"));
        assert_eq!(c.listen, "127.0.0.1:8080");
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(DEFAULT_DEV_API_KEY.as_bytes()));
        assert!(c.api_keys.iter().any(|k| k.sha256 == hash));
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.admin_listen, "127.0.0.1:9090");
    }

    #[test]
    fn unknown_key_names_file_key_and_problem() {
        let e = parse(&MIN.replace("kind: mock", "kind: mock\n    bse_url: x")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("test.yaml: providers[0]"), "{s}");
        assert!(s.contains("unknown field `bse_url`"), "{s}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            (
                MIN.replace("provider: m", "provider: nope"),
                "models[0].provider",
            ),
            (format!("listen: nowhere\n{MIN}"), "listen"),
            (
                format!("api_keys:\n  - name: a\n    sha256: abc\n{MIN}"),
                "api_keys[0].sha256",
            ),
            (
                MIN.replace(
                    "kind: mock",
                    "kind: azure-openai\n    base_url: https://x.example",
                ),
                "providers[0].api_version",
            ),
            (
                MIN.replace("kind: mock", "kind: openai-compatible"),
                "providers[0].base_url",
            ),
            (
                MIN.replace("kind: mock", "kind: openai\n    base_url: ftp://x"),
                "providers[0].base_url",
            ),
            (
                MIN.replace(
                    "kind: mock",
                    "kind: openai\n    api_key_env: TAPPASS_TEST_SURELY_UNSET_VAR",
                ),
                "providers[0].api_key_env",
            ),
            (
                format!("timeouts:\n  idle_ms: 0\n{MIN}"),
                "timeouts.idle_ms",
            ),
            (
                format!("{MIN}  - name: a\n    provider: m\n"),
                "models[1].name",
            ),
        ];
        for (yaml, key) in cases {
            let e = parse(&yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}\n=> {e}");
            assert_eq!(e.file, "test.yaml");
        }
    }

    #[test]
    fn garbage_yaml_is_an_error_not_a_panic() {
        for text in ["", ":", "[1,2", "providers: 5", "\u{0}\u{1}", "- - -"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
