//! What the gateway knows about one call: for the access log, the metrics
//! and the call's audit row.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tappass_audit::{AuditRecord, Content, Decision, Latency, StepDecision, UsageRecord};

use crate::events::Usage;
use crate::wire::ErrorStyle;

pub struct CallRecord {
    pub request_id: String,
    pub endpoint: &'static str,
    pub style: ErrorStyle,
    /// A configured model (only those become metric labels).
    pub model: String,
    pub provider: String,
    pub status: u16,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub error: Option<String>,
    /// Machine-readable code of a gateway error.
    pub error_code: Option<&'static str>,
    pub started: Instant,
    pub started_wall_ms: u64,
    pub first_byte: Option<Instant>,
    pub upstream_started: Option<Instant>,
    pub upstream_ended: Option<Instant>,
    /// The caller's identity (the API key's name or the token's subject).
    pub agent: Option<String>,
    pub org: Option<String>,
    pub project: Option<String>,
    pub sandbox: Option<String>,
    /// Version of the agent's compiled policy, when the control plane pushed one.
    pub policy_version: Option<u64>,
    pub steps: Vec<StepDecision>,
    /// Bytes the client had received when a stream ended with an error.
    pub bytes_released_before_block: Option<u64>,
    pub prompt: Option<String>,
    pub response: Option<String>,
    /// What the call holds of its budgets until it settles.
    pub budget: Option<crate::budget::CallBudget>,
    /// The call's cost, once settled.
    pub cost_micro_dollars: Option<u64>,
    /// The call is on an LLM endpoint and gets an audit row.
    pub governed: bool,
    pub audited: bool,
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CallRecord {
    pub fn new(request_id: String) -> CallRecord {
        CallRecord {
            request_id,
            endpoint: "unknown",
            style: ErrorStyle::OpenAi,
            model: String::new(),
            provider: String::new(),
            status: 0,
            stream: false,
            usage: None,
            error: None,
            error_code: None,
            started: Instant::now(),
            started_wall_ms: wall_ms(),
            first_byte: None,
            upstream_started: None,
            upstream_ended: None,
            agent: None,
            org: None,
            project: None,
            sandbox: None,
            policy_version: None,
            steps: Vec::new(),
            bytes_released_before_block: None,
            prompt: None,
            response: None,
            budget: None,
            cost_micro_dollars: None,
            governed: false,
            audited: false,
        }
    }

    /// Record a step's decision.
    pub fn step(
        &mut self,
        step: &str,
        decision: &str,
        aspect: &str,
        provenance: &str,
        evidence: Value,
    ) {
        self.steps.push(StepDecision {
            step: step.into(),
            decision: decision.into(),
            evidence,
            aspect: aspect.into(),
            provenance: provenance.into(),
        });
    }

    fn decision(&self) -> Decision {
        match self.error_code {
            Some(_) if self.status >= 500 => Decision::Error,
            Some(_) => Decision::Deny,
            None if self.error.is_some() => Decision::Error,
            None => Decision::Allow,
        }
    }

    /// The call's audit row. The step decisions move into it: the row is
    /// written once, at the call's end.
    pub fn to_audit_record(&mut self, gateway_id: &str, store_content: bool) -> AuditRecord {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_millis() as u64;
        let now = Instant::now();
        let mut r = AuditRecord::new(gateway_id, &self.request_id);
        r.agent_id = self.agent.clone();
        r.org = self.org.clone();
        r.project = self.project.clone();
        r.sandbox_id = self.sandbox.clone();
        r.policy_version = self.policy_version;
        r.started_at_ms = self.started_wall_ms;
        r.ended_at_ms = wall_ms();
        r.endpoint = self.endpoint.into();
        r.wire_format = match self.style {
            ErrorStyle::OpenAi => "openai".into(),
            ErrorStyle::Anthropic => "anthropic".into(),
        };
        r.stream = self.stream;
        r.model = (!self.model.is_empty()).then(|| self.model.clone());
        r.provider = (!self.provider.is_empty()).then(|| self.provider.clone());
        r.status = self.status;
        r.decision = self.decision();
        r.reason = self
            .error_code
            .map(str::to_owned)
            .or_else(|| self.error.clone());
        r.step_decisions = std::mem::take(&mut self.steps);
        r.usage = self.usage.map(|u| UsageRecord {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
        });
        r.cost_usd = self.cost_micro_dollars.map(|m| m as f64 / 1_000_000.0);
        r.latency = Latency {
            total_ms: ms(self.started, now),
            upstream_ms: self
                .upstream_started
                .map(|s| ms(s, self.upstream_ended.unwrap_or(now))),
            ttft_ms: self.first_byte.map(|f| ms(self.started, f)),
        };
        r.bytes_released_before_block = self.bytes_released_before_block;
        if store_content {
            r.content = Some(Content {
                prompt: self.prompt.clone(),
                response: self.response.clone(),
            });
        }
        r
    }
}
