//! What one audit row says about one governed call.

use serde::{Deserialize, Serialize};

/// The final decision of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The call went through (possibly with redactions).
    Allow,
    /// The gateway refused the call or ended it.
    Deny,
    /// The call failed (upstream unavailable, timeouts, broken streams).
    Error,
}

/// One pipeline step's fragment of the audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDecision {
    /// Step name as operators see it (`verify_identity`, `route_model` …).
    pub step: String,
    /// `allow`, `redact`, `deny`, `error` or `info`.
    pub decision: String,
    /// What the step saw, never a detected secret value.
    pub evidence: serde_json::Value,
    /// Policy aspect (`identity`, `network`, `tools`, …).
    pub aspect: String,
    /// Where the rule came from (config key, policy rule, pack).
    pub provenance: String,
}

/// Token usage of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

/// Latencies in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub total_ms: u64,
    /// From the first upstream attempt to the end of the upstream response.
    pub upstream_ms: Option<u64>,
    /// Time to the first byte sent to the client (streams).
    pub ttft_ms: Option<u64>,
}

/// Stored prompt and response, only when the deployment asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub prompt: Option<String>,
    pub response: Option<String>,
}

/// The body of one audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub gateway_id: String,
    pub trace_id: String,
    pub session_id: Option<String>,
    pub org: Option<String>,
    pub project: Option<String>,
    pub agent_id: Option<String>,
    pub sandbox_id: Option<String>,
    pub policy_version: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    /// `chat_completions`, `messages`, `responses`, `embeddings`, `count_tokens`, `models`.
    pub endpoint: String,
    /// `openai` or `anthropic`.
    pub wire_format: String,
    pub stream: bool,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// HTTP status sent to the client.
    pub status: u16,
    pub decision: Decision,
    /// Machine-readable reason when not allowed.
    pub reason: Option<String>,
    pub step_decisions: Vec<StepDecision>,
    pub usage: Option<UsageRecord>,
    pub cost_usd: Option<f64>,
    pub latency: Latency,
    pub compliance_tags: Vec<String>,
    /// Bytes released to the client before a mid-stream block or failure.
    pub bytes_released_before_block: Option<u64>,
    pub content: Option<Content>,
}

impl AuditRecord {
    /// A record with the identity fields set and everything else empty.
    pub fn new(gateway_id: &str, trace_id: &str) -> AuditRecord {
        AuditRecord {
            gateway_id: gateway_id.into(),
            trace_id: trace_id.into(),
            session_id: None,
            org: None,
            project: None,
            agent_id: None,
            sandbox_id: None,
            policy_version: None,
            started_at_ms: 0,
            ended_at_ms: 0,
            endpoint: String::new(),
            wire_format: String::new(),
            stream: false,
            model: None,
            provider: None,
            status: 0,
            decision: Decision::Allow,
            reason: None,
            step_decisions: Vec::new(),
            usage: None,
            cost_usd: None,
            latency: Latency::default(),
            compliance_tags: Vec::new(),
            bytes_released_before_block: None,
            content: None,
        }
    }
}
