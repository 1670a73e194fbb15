//! The step registry and the request steps that read the call as a whole:
//! `tool_result_scan`, `apply_compiled_policy`, `enforce_no_train` and
//! `upstream_allowed`.
//!
//! [`REGISTRY`] is the one list of the steps the gateway can run, with the
//! phase each belongs to. Every step applies to every wire format (OpenAI
//! chat, Anthropic messages, OpenAI Responses), streamed or not; a test
//! drives the real gateway through each combination and fails when a
//! configured step leaves no audit fragment on one of them.
//!
//! ## The `apply_compiled_policy` input document
//!
//! The agent's Rego entry points (its Compiled Policy's `rego.entrypoints`
//! and every step's `rego_entrypoints`) are prepared once when the gateway
//! state is built and evaluated once per call with this `input`:
//!
//! ```json
//! {
//!   "kind": "llm_call",
//!   "agent": "refund-bot", "org": "acme", "project": "support",
//!   "sandbox": null,
//!   "endpoint": "chat_completions",      // or "messages", "responses"
//!   "model": "gpt-4o-mini",              // as the caller named it
//!   "stream": true,
//!   "max_tokens": 512,                   // null when the caller set none
//!   "tools": ["get_weather", "..."],     // tool definitions offered
//!   "tool_results": 1,                   // tool results in the conversation
//!   "messages": 3,                       // messages / input items
//!   "prompt_bytes": 1234                 // bytes of prompt text
//! }
//! ```
//!
//! Entry points written for tool calls read `input.tool`, which a call's
//! input never has, so they stay neutral here. The strictest decision wins;
//! `deny` (and `require_approval`, which a call cannot wait for) refuses the
//! call with 403 `policy_denied` and the rules' reasons. An evaluation
//! error refuses it with `guardrail_failed`.

use serde_json::{json, Map, Value};
use tappass_detectors::Category;
use tappass_policies::RegoAction;

use crate::auth::ToolScope;
use crate::call_record::CallRecord;
use crate::config::GuardAction;
use crate::error::GatewayError;
use crate::pipeline::Guardrails;
use crate::providers::{glob_match, Target};
use crate::tool_governance::ToolPolicy;
use crate::wire::{Call, Endpoint};

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// On the request, before the upstream call.
    Request,
    /// When the call is routed to a provider.
    Route,
    /// On the response: whole bodies and streams.
    Response,
    /// On each tool call the model emits.
    ToolCall,
}

/// One step the gateway can run.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    /// The name in audit rows.
    pub name: &'static str,
    pub phase: Phase,
    /// What turns it on.
    pub enabled_by: &'static str,
}

/// Every wire format a step applies to.
pub const FORMATS: &[Endpoint] = &[
    Endpoint::ChatCompletions,
    Endpoint::AnthropicMessages,
    Endpoint::Responses,
];

const fn step(name: &'static str, phase: Phase, enabled_by: &'static str) -> StepSpec {
    StepSpec {
        name,
        phase,
        enabled_by,
    }
}

/// The step registry, in the order the steps run. Each step applies to
/// every format in [`FORMATS`], streamed and not.
pub const REGISTRY: &[StepSpec] = &[
    step("verify_identity", Phase::Request, "always"),
    step(
        "check_sandbox_active",
        Phase::Request,
        "a capability token naming a sandbox",
    ),
    step("validate_request", Phase::Request, "always"),
    step(
        "enforce_session_scope",
        Phase::Request,
        "a capability token with a tool scope (also on every tool call)",
    ),
    step("tools_denied", Phase::Request, "guardrails.tools_deny"),
    step("detect_secrets", Phase::Request, "guardrails.secrets"),
    step("detect_pii", Phase::Request, "guardrails.pii"),
    step(
        "redact_pii_in_prompt",
        Phase::Request,
        "guardrails.pii: redact (recorded when something was redacted)",
    ),
    step("detect_exfil", Phase::Request, "guardrails.exfil"),
    step(
        "detect_prompt_injection",
        Phase::Request,
        "guardrails.injection",
    ),
    step(
        "detect_jailbreak",
        Phase::Request,
        "guardrails.jailbreak (default: the injection setting)",
    ),
    step(
        "tool_result_scan",
        Phase::Request,
        "guardrails.tool_results",
    ),
    step(
        "apply_compiled_policy",
        Phase::Request,
        "a Compiled Policy with Rego entry points",
    ),
    step(
        "enforce_no_train",
        Phase::Request,
        "guardrails.no_train, policy step enforce_no_train, compliance tags",
    ),
    step(
        "model_allowed",
        Phase::Route,
        "a capability token with a model scope",
    ),
    step(
        "upstream_allowed",
        Phase::Route,
        "Compiled Policy network.allow_domains",
    ),
    step("route_model", Phase::Route, "always"),
    step(
        "enforce_rate_limit",
        Phase::Route,
        "budgets requests_per_minute",
    ),
    step(
        "enforce_token_budget",
        Phase::Route,
        "budgets tokens_per_day",
    ),
    step(
        "enforce_dollar_budget",
        Phase::Route,
        "budgets dollars_per_month",
    ),
    step("call_upstream", Phase::Route, "always"),
    step(
        "detect_secrets_in_response",
        Phase::Response,
        "guardrails.response_secrets",
    ),
    step(
        "detect_pii_in_response",
        Phase::Response,
        "guardrails.response_pii",
    ),
    step(
        "detect_exfil_in_response",
        Phase::Response,
        "guardrails.response_exfil",
    ),
    step("tools_allowed", Phase::ToolCall, "guardrails.tools.allow"),
    step(
        "tool_discovery",
        Phase::ToolCall,
        "guardrails.tools.discovery",
    ),
    step(
        "denied_tool_categories",
        Phase::ToolCall,
        "guardrails.tools.denied_categories",
    ),
    step(
        "tool_arg_validation",
        Phase::ToolCall,
        "guardrails.tools.validate_arguments",
    ),
    step("schemas_acl", Phase::ToolCall, "guardrails.tools.schemas"),
    step(
        "rego_policy",
        Phase::ToolCall,
        "a Compiled Policy with Rego entry points",
    ),
    step(
        "human_approval",
        Phase::ToolCall,
        "an entry point deciding require_approval",
    ),
    step("loop_guard", Phase::ToolCall, "guardrails.tools.loop_guard"),
];

/// The registry entry of `name`.
pub fn spec(name: &str) -> Option<&'static StepSpec> {
    REGISTRY.iter().find(|s| s.name == name)
}

fn failed(rec: &mut CallRecord, step: &'static str, aspect: &str, reason: String) -> GatewayError {
    rec.step(
        step,
        "error",
        aspect,
        "gateway",
        json!({"error": "guardrail_failed"}),
    );
    GatewayError::GuardrailFailed { step, reason }
}

// ---- tool_result_scan ----

/// The text of every tool result in the conversation: OpenAI `role: tool`
/// messages, Anthropic `tool_result` blocks, Responses
/// `function_call_output` items.
pub fn tool_results(body: &Map<String, Value>) -> Vec<String> {
    fn text_of(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(a) => a.iter().for_each(|x| text_of(x, out)),
            Value::Object(m) => {
                for k in ["text", "content", "output"] {
                    if let Some(x) = m.get(k) {
                        text_of(x, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for root in ["messages", "input"] {
        let Some(items) = body.get(root).and_then(Value::as_array) else {
            continue;
        };
        for item in items {
            if item.get("role").and_then(Value::as_str) == Some("tool") {
                let mut t = String::new();
                text_of(item.get("content").unwrap_or(&Value::Null), &mut t);
                out.push(t);
            }
            if item.get("type").and_then(Value::as_str) == Some("function_call_output") {
                let mut t = String::new();
                text_of(item.get("output").unwrap_or(&Value::Null), &mut t);
                out.push(t);
            }
            if let Some(blocks) = item.get("content").and_then(Value::as_array) {
                for b in blocks {
                    if b.get("type").and_then(Value::as_str) == Some("tool_result") {
                        let mut t = String::new();
                        text_of(b.get("content").unwrap_or(&Value::Null), &mut t);
                        out.push(t);
                    }
                }
            }
        }
    }
    out
}

/// `tool_result_scan`: tool results coming back in the conversation are
/// scanned for prompt injection (indirect injection) and secrets.
pub fn tool_result_scan(
    g: &Guardrails,
    call: &Call,
    rec: &mut CallRecord,
) -> Result<(), GatewayError> {
    let setting = g.tool_results;
    if setting.action == GuardAction::Off {
        return Ok(());
    }
    const STEP: &str = "tool_result_scan";
    let results = tool_results(call.body());
    let mut injection_rules: Vec<String> = Vec::new();
    let mut families: Vec<String> = Vec::new();
    let mut top_score = 0.0f32;
    let mut injected = 0usize;
    let mut secret_rules: Vec<String> = Vec::new();
    let mut secrets = 0usize;
    for text in &results {
        let score = g
            .rules()
            .score_injection(text)
            .map_err(|e| failed(rec, STEP, "content", e.to_string()))?;
        top_score = top_score.max(score.score);
        if score.exceeds(g.injection_threshold) {
            injected += 1;
            injection_rules.extend(score.rules.iter().map(|r| r.to_string()));
            families.extend(score.families.keys().map(|k| k.to_string()));
        }
        let found = g
            .rules()
            .scan(text)
            .map_err(|e| failed(rec, STEP, "content", e.to_string()))?;
        for f in found.iter().filter(|f| f.category == Category::Secret) {
            secrets += 1;
            secret_rules.push(f.rule_id.to_string());
        }
    }
    for v in [&mut injection_rules, &mut families, &mut secret_rules] {
        v.sort();
        v.dedup();
    }
    let hit = injected + secrets > 0;
    let decision = match (hit, setting.action) {
        (false, _) => "allow",
        (true, GuardAction::Block) => "deny",
        _ => "log",
    };
    rec.step(
        STEP,
        decision,
        "content",
        setting.provenance,
        json!({"tool_results": results.len(),
            "injection": {"results": injected, "score": top_score,
                "threshold": g.injection_threshold, "families": families, "rules": injection_rules},
            "secrets": {"count": secrets, "rules": secret_rules}}),
    );
    if decision == "deny" {
        let what = match (injected > 0, secrets > 0) {
            (true, true) => "a prompt injection and a secret",
            (true, false) => "a prompt injection",
            _ => "a secret",
        };
        return Err(GatewayError::GuardrailDenied {
            code: "tool_result_blocked",
            reason: format!(
                "a tool result in the conversation contains {what}; the call was refused"
            ),
        });
    }
    Ok(())
}

// ---- apply_compiled_policy ----

/// The `input` document of `apply_compiled_policy` (see the module docs).
pub fn policy_input(call: &Call, rec: &CallRecord) -> Value {
    let body = call.body();
    let tools: Vec<&str> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    t.get("name")
                        .or_else(|| t.pointer("/function/name"))
                        .and_then(Value::as_str)
                })
                .collect()
        })
        .unwrap_or_default();
    let items = ["messages", "input"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(|v| v.as_array().map_or(1, Vec::len))
        .sum::<usize>();
    let mut prompt_bytes = 0usize;
    for root in ["messages", "system", "instructions", "input", "prompt"] {
        if let Some(v) = body.get(root) {
            prompt_bytes += text_bytes(v);
        }
    }
    json!({
        "kind": "llm_call",
        "agent": rec.agent,
        "org": rec.org,
        "project": rec.project,
        "sandbox": rec.sandbox,
        "endpoint": call.endpoint.name(),
        "model": call.model,
        "stream": call.stream,
        "max_tokens": call.max_tokens,
        "tools": tools,
        "tool_results": tool_results(body).len(),
        "messages": items,
        "prompt_bytes": prompt_bytes,
    })
}

fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).sum(),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "content" | "text" | "output"))
            .map(|(_, x)| text_bytes(x))
            .sum(),
        _ => 0,
    }
}

/// `apply_compiled_policy`: the agent's prepared Rego entry points, once
/// per call.
pub fn apply_compiled_policy(
    g: &Guardrails,
    call: &Call,
    rec: &mut CallRecord,
) -> Result<(), GatewayError> {
    let Some(rego) = g.rego.as_ref() else {
        return Ok(());
    };
    const STEP: &str = "apply_compiled_policy";
    let input = policy_input(call, rec);
    let d = rego
        .decide(&input)
        .map_err(|e| failed(rec, STEP, "policy", e.to_string()))?;
    let decision = match d.action {
        RegoAction::Allow => "allow",
        RegoAction::RequireApproval | RegoAction::Deny => "deny",
    };
    rec.step(
        STEP,
        decision,
        "policy",
        "policy:rego",
        json!({"entrypoints": rego.entrypoints(), "action": d.action, "reasons": d.reasons}),
    );
    if decision == "deny" {
        let reason = if d.reasons.is_empty() {
            "the agent's policy denies this call".to_string()
        } else {
            format!(
                "the agent's policy denies this call: {}",
                d.reasons.join("; ")
            )
        };
        return Err(GatewayError::GuardrailDenied {
            code: "policy_denied",
            reason,
        });
    }
    Ok(())
}

// ---- enforce_session_scope ----

/// `enforce_session_scope` on the request: the tools offered to the model
/// that the caller's capability token does not scope in are removed (the
/// tool calls the model returns are held to the same scope by
/// [`crate::tool_governance`]).
pub fn enforce_session_scope(
    scope: &ToolScope,
    catalog: Option<&ToolPolicy>,
    call: &mut Call,
    rec: &mut CallRecord,
) {
    // A tool is known by its name and by its catalog id.
    let (total, removed) = crate::pipeline::remove_offered_tools(call, |n| {
        let id = catalog.and_then(|c| c.resolve(n)).map(|t| t.id.as_str());
        let names: Vec<&str> = std::iter::once(n).chain(id).collect();
        scope.refuses(&names).is_some()
    });
    let (decision, evidence) = if removed.is_empty() {
        ("allow", json!({"tools": total}))
    } else {
        ("redact", json!({"removed": removed, "tools": total}))
    };
    rec.step(
        "enforce_session_scope",
        decision,
        "tools",
        "token:scope",
        evidence,
    );
}

// ---- enforce_no_train ----

/// `enforce_no_train`: ask the provider not to keep the call. OpenAI chat
/// completions and Responses get `store: false`; the Anthropic Messages API
/// has no such field (its API data is not used for training by default), so
/// the call passes unchanged and the fragment says so.
pub fn enforce_no_train(g: &Guardrails, call: &mut Call, rec: &mut CallRecord) {
    let Some(provenance) = g.no_train else {
        return;
    };
    const STEP: &str = "enforce_no_train";
    match call.endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses => {
            let was = call.body().get("store").cloned();
            let rewrite = was != Some(Value::Bool(false));
            if rewrite {
                call.body_mut().insert("store".into(), Value::Bool(false));
            }
            rec.step(
                STEP,
                if rewrite { "redact" } else { "allow" },
                "compliance",
                provenance,
                json!({"field": "store", "set": false, "caller_value": was.map(|v| v.is_boolean().then_some(v)).unwrap_or(None)}),
            );
        }
        _ => rec.step(
            STEP,
            "allow",
            "compliance",
            provenance,
            json!({"field": null, "note": "the provider API has no retention flag"}),
        ),
    }
}

// ---- upstream_allowed ----

/// Whether `host` matches one of `allow` (`api.openai.com`,
/// `*.example.com`, which also matches `example.com`'s subdomains only).
pub fn host_allowed(allow: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allow.iter().any(|p| {
        let p = p.trim().to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
            None => glob_match(&p, &host),
        }
    })
}

/// Whether `host` is this machine (`localhost`, `127.0.0.0/8`, `::1`; a
/// provider on a Unix socket reports `localhost`).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `upstream_allowed`: the targets whose provider host the agent's
/// `network.allow_domains` allows (in order; `None` when that is all of
/// them). A provider on this machine (loopback, Unix socket) is always
/// allowed: the call does not leave the host. No allowed target refuses the
/// call with `upstream_not_allowed` before any upstream call.
pub fn upstream_allowed(
    g: Option<&Guardrails>,
    targets: &[Target],
    rec: &mut CallRecord,
) -> Result<Option<Vec<Target>>, GatewayError> {
    let Some(allow) = g.and_then(|g| g.allow_domains.as_ref()) else {
        return Ok(None);
    };
    let (ok, refused): (Vec<&Target>, Vec<&Target>) = targets
        .iter()
        .partition(|t| is_loopback(t.provider.host()) || host_allowed(allow, t.provider.host()));
    let hosts = |ts: &[&Target]| -> Vec<String> {
        ts.iter()
            .map(|t| format!("{}:{}", t.provider.name, t.provider.host()))
            .collect()
    };
    let decision = if ok.is_empty() { "deny" } else { "allow" };
    rec.step(
        "upstream_allowed",
        decision,
        "network",
        "policy:network.allow_domains",
        json!({"allowed": hosts(&ok), "refused": hosts(&refused)}),
    );
    if ok.is_empty() {
        return Err(GatewayError::GuardrailDenied {
            code: "upstream_not_allowed",
            reason: format!(
                "the agent's network policy does not allow the provider host{} {}",
                if refused.len() == 1 { "" } else { "s" },
                refused
                    .iter()
                    .map(|t| t.provider.host().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if refused.is_empty() {
        return Ok(None);
    }
    Ok(Some(ok.into_iter().cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|s| s.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
        assert!(spec("apply_compiled_policy").is_some());
        assert!(spec("nope").is_none());
    }

    #[test]
    fn tool_results_of_every_format() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "c1", "content": "R1"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "R2"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "NO"},
                    {"type": "tool_result", "tool_use_id": "t", "content": "R3"},
                    {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": "R4"}]}]}],
            "input": [{"type": "function_call_output", "call_id": "c", "output": "R5"},
                      {"role": "user", "content": "NO"}],
        }))
        .unwrap();
        let got: Vec<String> = tool_results(&body)
            .into_iter()
            .map(|s| s.trim().to_string())
            .collect();
        assert_eq!(got, ["R1", "R2", "R3", "R4", "R5"]);
    }

    #[test]
    fn host_patterns() {
        let allow = vec!["api.openai.com".to_string(), "*.acme.com".to_string()];
        assert!(host_allowed(&allow, "api.openai.com"));
        assert!(host_allowed(&allow, "API.OpenAI.com."));
        assert!(host_allowed(&allow, "llm.acme.com"));
        assert!(!host_allowed(&allow, "acme.com"));
        assert!(!host_allowed(&allow, "evilacme.com"));
        assert!(!host_allowed(&allow, "api.anthropic.com"));
        assert!(!host_allowed(&[], "api.openai.com"));
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("localhost.evil.com"));
    }
}
