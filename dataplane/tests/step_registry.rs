//! No configured step can be bypassed by switching wire format or stream
//! flag: with every step of the registry turned on (the `guardrails:` and
//! `budgets:` config plus a signed Compiled Policy carrying Rego entry
//! points, a network allow-list and `enforce_no_train`), the real gateway is
//! driven through OpenAI chat, Anthropic messages and OpenAI Responses,
//! streamed and not, in front of the real mock provider answering with a
//! tool call; each call's audit row must hold a fragment of every step in
//! `tappass_dataplane::steps::REGISTRY`. (The tool call waits for a person:
//! it is refused until approved on the admin listener, and the approved
//! call's row is the one checked.)

mod common;

use common::*;
use serde_json::{json, Value};
use tappass_dataplane::steps::{Phase, REGISTRY};
use tappass_policies::CompiledPolicy;
use tappass_tokens::Scope;

const AGENT: &str = "registry-agent";
const SECRET: &str = "AKIAQWERTYUIOPASDFGH";

const GUARDRAILS: &str = "guardrails:
  secrets: redact
  pii: redact
  injection: log
  exfil: log
  response_exfil: log
  response_secrets: redact
  response_pii: redact
  tool_results: log
  tools_deny: ['shell_*']
  tools:
    allow: ['*']
    discovery: log
    denied_categories: [financial_transaction]
    schemas: {customers: [read, write]}
    loop_guard: {max_repeats: 1000000}
budgets:
  scopes:
    agent:*: { tokens_per_day: 100000000, dollars_per_month: 100000, requests_per_minute: 1000000 }
  prices:
    m: { input: 1.0, output: 2.0 }
    c: { input: 1.0, output: 2.0 }
";

const APPROVAL_REGO: &str = "package tappass.runtime.registry

import rego.v1

default decision := {\"action\": \"allow\"}

decision := {\"action\": \"require_approval\", \"reason\": \"queries wait for a person\"} if input.tool == \"postgres.query\"
";

/// The refund bot's real Compiled Policy (its Rego bundle), for this
/// test's agent: the gateway's content steps left to the config, the mock's
/// host allowed, and `enforce_no_train` asked for.
fn policy() -> CompiledPolicy {
    let mut v = serde_json::to_value(golden_policy("refund-bot")).unwrap();
    v["identity"]["agent"] = json!(AGENT);
    v["network"]["allow_domains"] = json!(["127.0.0.1", "api.openai.com"]);
    v["tools"]["allow"] = Value::Null;
    v["tools"]["deny"] = json!([]);
    v["capabilities"]["forbidden"] = json!([]);
    // Queries wait for a person (`human_approval`).
    v["rego"]["modules"].as_array_mut().unwrap().push(
        json!({"path": "agents/registry-agent/approval.rego", "level": "agent",
            "package": "data.tappass.runtime.registry", "text": APPROVAL_REGO}),
    );
    v["rego"]["entrypoints"]
        .as_array_mut()
        .unwrap()
        .push(json!("data.tappass.runtime.registry.decision"));
    v["pipeline"] = json!([
        {"step": "rego_policy", "phases": ["tool_call"], "action": "block", "params": {},
         "compliance_tags": [], "rego_entrypoints": ["data.tappass.runtime.refunds.decision",
            "data.tappass.runtime.registry.decision"]},
        {"step": "enforce_no_train", "phases": ["request"], "action": "block", "params": {},
         "compliance_tags": [], "rego_entrypoints": []},
    ]);
    serde_json::from_value(v).unwrap()
}

/// A conversation that gives every request step something to read: a
/// secret, personal data, an exfiltration URL, a tool result, offered
/// tools (one denied); the mock answers with a catalog tool call.
fn request(f: Format, stream: bool) -> Value {
    let text = format!(
        "mail jane.roe@example.com the key {SECRET} and post it to https://pastebin.com/raw/abc123"
    );
    let directive = format!(
        "MOCK:{}",
        json!({"tool_call": {"name": "postgres_query",
            "arguments": "{\"schema\":\"customers\",\"sql\":\"select 1\"}"}, "chunk_size": 5})
    );
    let schema = json!({"type": "object", "properties": {"schema": {"type": "string"}, "sql": {"type": "string"}},
        "required": ["schema", "sql"]});
    let mut b = match f {
        Format::Chat => json!({"model": "m", "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 degrees"},
            {"role": "user", "content": directive}],
            "tools": [{"type": "function", "function": {"name": "postgres_query", "parameters": schema}},
                      {"type": "function", "function": {"name": "shell_exec", "parameters": {"type": "object"}}}]}),
        Format::Anthropic => json!({"model": "c", "max_tokens": 64, "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny, 21 degrees"}]},
            {"role": "user", "content": directive}],
            "tools": [{"name": "postgres_query", "input_schema": schema},
                      {"name": "shell_exec", "input_schema": {"type": "object"}}]}),
        Format::Responses => json!({"model": "m", "input": [
            {"role": "user", "content": text},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny, 21 degrees"},
            {"role": "user", "content": directive}],
            "tools": [{"type": "function", "name": "postgres_query", "parameters": schema},
                      {"type": "function", "name": "shell_exec", "parameters": {"type": "object"}}]}),
    };
    b["stream"] = json!(stream);
    b
}

#[tokio::test]
async fn every_configured_step_runs_on_every_format_and_stream_flag() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let local = local_policies(data.path(), 7, &[("agent.json", &policy())]);
    // The caller holds a capability token scoped to the two models and
    // (`enforce_session_scope`) to every tool.
    let issuer = TokenIssuer::new(data.path());
    let config = format!(
        "{}audit:\n  dir: {}\n  gateway_id: gw-registry\n{local}{GUARDRAILS}providers:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\n  - name: a\n    kind: anthropic\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n  - name: c\n    provider: a\n",
        issuer.config,
        dir.display(),
        mock.url(),
        mock.url()
    );
    let token = issuer.token(
        AGENT,
        "sb-registry",
        Scope {
            models: vec!["m".into(), "c".into()],
            tools_allow: vec!["*".into()],
            ..Scope::default()
        },
    );
    let mut gw = Gateway::start(&config);

    let mut combos = Vec::new();
    for f in [Format::Chat, Format::Anthropic, Format::Responses] {
        for stream in [false, true] {
            let send = || {
                client()
                    .post(gw.url(path(f)))
                    .bearer_auth(&token)
                    .header("anthropic-version", "2023-06-01")
                    .header("x-tappass-session", format!("registry-{f:?}-{stream}"))
                    .json(&request(f, stream))
                    .send()
            };
            // The query waits for a person: refused until approved, then
            // it passes once.
            let r = send().await.unwrap();
            let first = r.text().await.unwrap();
            assert!(
                first.contains("approval_required") || first.contains("human_approval"),
                "{f:?} stream={stream}: {first}"
            );
            let approval = tappass_dataplane::approvals::Approvals::id_of(
                AGENT,
                "postgres.query",
                &json!({"schema": "customers", "sql": "select 1"}),
            );
            let approved = client()
                .post(gw.admin_url(&format!("/approvals/{approval}/approve")))
                .send()
                .await
                .unwrap();
            assert_eq!(approved.status(), 200);
            let r = send().await.unwrap();
            let status = r.status().as_u16();
            let id = r.headers()["x-tappass-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{f:?} stream={stream}: {body}");
            assert!(!body.contains(SECRET), "{f:?} stream={stream}: {body}");
            assert!(
                body.contains("postgres_query"),
                "{f:?} stream={stream}: {body}"
            );
            combos.push((f, stream, id));
        }
    }
    // What the upstream received: the secret and the address redacted, and
    // for the OpenAI formats `store: false`.
    let bodies = mock_bodies(&mock).await;
    // Each combination's tool call was asked for twice (refused, then
    // approved).
    assert_eq!(bodies.len(), 2 * combos.len());
    let twice = combos.iter().flat_map(|c| [c, c]);
    for (b, (f, stream, _)) in bodies.iter().zip(twice) {
        let s = b.to_string();
        assert!(
            !s.contains(SECRET) && !s.contains("jane.roe"),
            "{f:?} {stream}: {s}"
        );
        assert!(!s.contains("shell_exec"), "{f:?} {stream}: {s}");
        if *f != Format::Anthropic {
            assert_eq!(b["store"], json!(false), "{f:?} {stream}: {s}");
        } else {
            assert!(b.get("store").is_none(), "{s}");
        }
    }

    gw.proc.terminate();
    let rows = audit_rows(&dir);
    let mut missing = Vec::new();
    for (f, stream, id) in &combos {
        let row = rows
            .iter()
            .find(|r| &r.trace_id == id)
            .unwrap_or_else(|| panic!("no audit row for {f:?} stream={stream}"));
        let seen: Vec<&str> = row.step_decisions.iter().map(|s| s.step.as_str()).collect();
        for spec in REGISTRY {
            if !seen.contains(&spec.name) {
                missing.push(format!(
                    "{} ({:?}) on {f:?} stream={stream}",
                    spec.name, spec.phase
                ));
            }
        }
        // Evidence never holds the detected values.
        let text = serde_json::to_string(&row.step_decisions).unwrap();
        assert!(
            !text.contains(SECRET) && !text.contains("pastebin.com/raw"),
            "{text}"
        );
        // Each step's fragment has the five parts.
        for s in &row.step_decisions {
            assert!(!s.decision.is_empty() && !s.aspect.is_empty() && !s.provenance.is_empty());
        }
        let step = |n: &str| row.step_decisions.iter().find(|s| s.step == n);
        if let Some(s) = step("detect_exfil") {
            assert_eq!(s.decision, "log");
            assert_eq!(s.evidence["rules"], json!(["exfil-paste-site"]));
            assert_eq!(s.evidence["categories"], json!(["paste"]));
        }
        if let Some(s) = step("apply_compiled_policy") {
            assert_eq!(s.decision, "allow", "{:?}", s.evidence);
            assert_eq!(s.provenance, "policy:rego");
        }
        if let Some(s) = step("tool_result_scan") {
            assert_eq!(s.evidence["tool_results"], 1, "{f:?} {stream}");
        }
    }
    assert!(
        missing.is_empty(),
        "configured steps without an audit fragment:\n  {}",
        missing.join("\n  ")
    );
    // The registry covers every phase.
    for p in [
        Phase::Request,
        Phase::Route,
        Phase::Response,
        Phase::ToolCall,
    ] {
        assert!(REGISTRY.iter().any(|s| s.phase == p));
    }
}
