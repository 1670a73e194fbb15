//! Tool-call governance on the real gateway in front of the real mock
//! provider: tool calls the model returns are held until complete and
//! checked; a denied call never reaches the client in any format (the
//! stream ends with a well-formed error event), an allowed one passes byte
//! for byte; the loop guard ends a session; `/v1/tools/check` and
//! `/v1/tools/execute` answer with the same steps; a signed Compiled Policy
//! (the catalog steward) drives `schemas_acl`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use serde_json::{json, Value};
use tappass_audit::AuditRecord;

const TOOLS: &str = "guardrails:\n  injection: off\n  tools_deny: ['shell_*']\n  tools:\n    schemas: {customers: [read, write], finance: [read], pii_archive: []}\n    constraints: {stripe.create_refund: {max_amount: 1000}}\n    loop_guard: {max_repeats: 3}\n";

fn config(mock: &Proc, dir: &Path, guardrails: &str) -> String {
    format!(
        "audit:\n  dir: {}\n  gateway_id: gw-tools\n{guardrails}providers:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\n  - name: a\n    kind: anthropic\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n  - name: c\n    provider: a\n",
        dir.display(),
        mock.url(),
        mock.url()
    )
}

/// The tool definitions the request offers, in the format's shape.
fn tools(f: Format) -> Value {
    let defs = [
        (
            "postgres_query",
            json!({"type": "object", "properties": {"schema": {"type": "string"}, "sql": {"type": "string"}},
                "required": ["schema", "sql"], "additionalProperties": false}),
        ),
        ("shell_exec", json!({"type": "object"})),
        ("get_weather", json!({"type": "object"})),
        ("stripe_create_refund", json!({"type": "object"})),
    ];
    Value::Array(
        defs.iter()
            .map(|(n, s)| match f {
                Format::Chat => {
                    json!({"type": "function", "function": {"name": n, "parameters": s}})
                }
                Format::Anthropic => json!({"name": n, "input_schema": s}),
                Format::Responses => json!({"type": "function", "name": n, "parameters": s}),
            })
            .collect(),
    )
}

/// A request whose answer is the scripted tool call.
fn request(f: Format, name: &str, args: &str, chunk: usize, stream: bool) -> Value {
    let directive = format!(
        "MOCK:{}",
        json!({"tool_call": {"name": name, "arguments": args}, "chunk_size": chunk})
    );
    let mut b = match f {
        Format::Chat => json!({"model": "m", "messages": [{"role": "user", "content": directive}],
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }}),
        Format::Anthropic => json!({"model": "c", "max_tokens": 64,
            "messages": [{"role": "user", "content": directive}]}),
        Format::Responses => json!({"model": "m", "input": directive}),
    };
    if b.get("stream_options") == Some(&Value::Null) {
        b.as_object_mut().unwrap().remove("stream_options");
    }
    b["stream"] = json!(stream);
    b["tools"] = tools(f);
    b
}

static SESSION: AtomicU64 = AtomicU64::new(0);

fn fresh_session() -> String {
    format!("test-session-{}", SESSION.fetch_add(1, Ordering::Relaxed))
}

async fn send(gw: &Gateway, f: Format, body: &Value, session: &str) -> (u16, String, String) {
    send_as(gw, f, body, KEY, Some(session)).await
}

/// `send` with another bearer credential (an agent key, a capability
/// token), in a session of the gateway's choosing when `session` is `None`.
async fn send_as(
    gw: &Gateway,
    f: Format,
    body: &Value,
    bearer: &str,
    session: Option<&str>,
) -> (u16, String, String) {
    let mut req = request_as(gw, path(f), bearer).header("anthropic-version", "2023-06-01");
    if let Some(s) = session {
        req = req.header("x-tappass-session", s);
    }
    let r = req.json(body).send().await.unwrap();
    let (status, code) = (r.status().as_u16(), error_code(&r));
    (status, code, r.text().await.unwrap())
}

/// The same request straight to a mock (the reference for byte identity).
async fn direct(mock: &Proc, f: Format, body: &Value) -> String {
    let mut body = body.clone();
    if f == Format::Chat {
        body["model"] = json!("m");
    }
    client()
        .post(format!("{}{}", mock.url(), path(f)))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Assert that a client stream ends with exactly one well-formed error event
/// in the format's own shape, with `code`, and holds no tool-call frame.
fn assert_denied_stream(f: Format, body: &str, code: &str) {
    for leak in [
        "\"tool_calls\"",
        "tool_use",
        "input_json_delta",
        "\"function_call\"",
        "rm -rf",
    ] {
        assert!(
            !body.contains(leak),
            "{f:?}: `{leak}` reached the client: {body}"
        );
    }
    assert!(body.ends_with("\n\n"), "{f:?}: {body}");
    let frames: Vec<&str> = body.split("\n\n").filter(|s| !s.is_empty()).collect();
    let last = frames.last().expect("an event");
    let data = last
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    let v: Value = serde_json::from_str(data).expect("the error event is JSON");
    match f {
        Format::Chat => {
            assert!(last.starts_with("data: {\"error\":"), "{last}");
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["type"], "permission_error");
            assert!(!body.contains("[DONE]"));
        }
        Format::Anthropic => {
            assert!(last.starts_with("event: error\n"), "{last}");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "permission_error");
            assert!(v["error"]["message"].as_str().unwrap().contains("refused"));
            assert!(!body.contains("message_stop"));
        }
        Format::Responses => {
            assert!(last.starts_with("event: response.failed\n"), "{last}");
            assert_eq!(v["type"], "response.failed");
            assert_eq!(v["response"]["status"], "failed");
            assert_eq!(v["response"]["error"]["code"], code);
            assert!(!body.contains("response.completed"));
        }
    }
}

#[tokio::test]
async fn denied_streamed_tool_calls_never_reach_the_client() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let gw = Gateway::start(&config(&mock, &dir, TOOLS));
    let args = "{\"cmd\":\"rm -rf /\"}";
    for f in FORMATS {
        // Every fragment size: the arguments split at every offset.
        for chunk in 1..=args.len() {
            let body = request(f, "shell_exec", args, chunk, true);
            let (status, _, text) = send(&gw, f, &body, &fresh_session()).await;
            assert_eq!(status, 200, "{f:?}");
            assert_denied_stream(f, &text, "tool_denied");
        }
        // Unknown to the catalog: discovered and blocked.
        let body = request(f, "get_weather", "{\"city\":\"Paris\"}", 4, true);
        let (_, _, text) = send(&gw, f, &body, &fresh_session()).await;
        assert_denied_stream(f, &text, "tool_denied");
        // An amount above the catalog ceiling.
        let body = request(f, "stripe_create_refund", "{\"amount\": 5000}", 3, true);
        let (_, _, text) = send(&gw, f, &body, &fresh_session()).await;
        assert_denied_stream(f, &text, "tool_denied");
        // A schema the policy grants no access to.
        let body = request(
            f,
            "postgres_query",
            "{\"schema\":\"pii_archive\",\"sql\":\"select 1\"}",
            5,
            true,
        );
        let (_, _, text) = send(&gw, f, &body, &fresh_session()).await;
        assert_denied_stream(f, &text, "tool_denied");
    }
    // The audit rows say which step refused and how much was released.
    let rows = audit_rows(&dir);
    let denied: Vec<&AuditRecord> = rows
        .iter()
        .filter(|r| r.reason.as_deref() == Some("tool_denied"))
        .collect();
    assert_eq!(
        denied.len(),
        3 * (args.len() + 3),
        "every denied stream has a row"
    );
    for r in &denied {
        assert!(r.bytes_released_before_block.is_some(), "{r:?}");
        let tool_steps: Vec<(&str, &str)> = r
            .step_decisions
            .iter()
            .filter(|s| s.aspect == "tools")
            .map(|s| (s.step.as_str(), s.decision.as_str()))
            .collect();
        assert!(
            tool_steps.iter().any(|(_, d)| *d == "deny"),
            "{tool_steps:?}"
        );
        let text = serde_json::to_string(&r.step_decisions).unwrap();
        assert!(!text.contains("rm -rf"), "evidence holds an argument value");
    }
    let steps: std::collections::BTreeSet<&str> = denied
        .iter()
        .flat_map(|r| r.step_decisions.iter())
        .filter(|s| s.decision == "deny")
        .map(|s| s.step.as_str())
        .collect();
    for s in [
        "tools_denied",
        "tool_discovery",
        "tool_arg_validation",
        "schemas_acl",
    ] {
        assert!(steps.contains(s), "{s} missing from {steps:?}");
    }
}

#[tokio::test]
async fn malformed_arguments_are_refused_in_every_format() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&mock, &data.path().join("audit"), TOOLS));
    for args in ["{\"schema\":\"finance\",", "[1, 2]", "{\"schema\": }"] {
        for f in FORMATS {
            let body = request(f, "postgres_query", args, 2, true);
            let (status, _, text) = send(&gw, f, &body, &fresh_session()).await;
            assert_eq!(status, 200);
            assert_denied_stream(f, &text, "tool_denied");
            assert!(text.contains("tool_arg_validation"), "{text}");
            // Anthropic bodies carry arguments as a JSON object: the mock
            // cannot send malformed ones without streaming.
            if f != Format::Anthropic {
                let body = request(f, "postgres_query", args, 2, false);
                let (status, code, text) = send(&gw, f, &body, &fresh_session()).await;
                assert_eq!((status, code.as_str()), (403, "tool_denied"), "{text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("tool_arg_validation"));
            }
        }
    }
}

#[tokio::test]
async fn allowed_tool_calls_pass_byte_identical() {
    let mock = start_mock(&[]);
    let reference = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&mock, &data.path().join("audit"), TOOLS));
    let args = "{\"schema\":\"finance\",\"sql\":\"select count(*) from invoices\"}";
    for f in FORMATS {
        for stream in [true, false] {
            for chunk in [1, 3, 7, 64] {
                let body = request(f, "postgres_query", args, chunk, stream);
                let (status, code, through) = send(&gw, f, &body, &fresh_session()).await;
                assert_eq!(status, 200, "{f:?} {stream} {code}: {through}");
                // The reference mock answers its n-th call like the
                // gateway's mock answered its n-th call.
                let expected = direct(&reference, f, &body).await;
                assert_eq!(through, expected, "{f:?} stream={stream} chunk={chunk}");
            }
        }
    }
}

#[tokio::test]
async fn non_streamed_denied_tool_calls_get_a_403_in_the_callers_format() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&mock, &data.path().join("audit"), TOOLS));
    for f in FORMATS {
        let body = request(f, "shell_exec", "{\"cmd\":\"rm -rf /\"}", 8, false);
        let (status, code, text) = send(&gw, f, &body, &fresh_session()).await;
        assert_eq!((status, code.as_str()), (403, "tool_denied"), "{f:?}");
        assert!(!text.contains("rm -rf"));
        let v: Value = serde_json::from_str(&text).unwrap();
        match f {
            Format::Anthropic => {
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "permission_error");
            }
            _ => assert_eq!(v["error"]["code"], "tool_denied"),
        }
    }
}

#[tokio::test]
async fn loop_guard_ends_the_session_at_the_limit() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let gw = Gateway::start(&config(&mock, &dir, TOOLS));
    let args = "{\"schema\":\"finance\",\"sql\":\"select 1\"}";
    for (i, f) in FORMATS.into_iter().enumerate() {
        let session = format!("loop-{i}");
        // max_repeats: 3 — three identical calls pass, streamed or not.
        for n in 0..3 {
            let body = request(f, "postgres_query", args, 4, n % 2 == 0);
            let (status, code, _) = send(&gw, f, &body, &session).await;
            assert_eq!((status, code.as_str()), (200, ""), "{f:?} call {n}");
        }
        // The fourth ends the session, in the stream's own format.
        let body = request(f, "postgres_query", args, 4, true);
        let (status, _, text) = send(&gw, f, &body, &session).await;
        assert_eq!(status, 200);
        assert_denied_stream(f, &text, "loop_guard");
        // Any further call in the session is refused before the upstream.
        let before = mock_calls(&mock).await;
        let body = request(
            f,
            "postgres_query",
            "{\"schema\":\"finance\",\"sql\":\"select 2\"}",
            4,
            false,
        );
        let (status, code, _) = send(&gw, f, &body, &session).await;
        assert_eq!((status, code.as_str()), (403, "loop_guard"));
        assert_eq!(
            mock_calls(&mock).await,
            before,
            "the upstream was not called"
        );
        // Another session is not affected.
        let (status, _, _) = send(&gw, f, &body, &format!("other-{i}")).await;
        assert_eq!(status, 200);
    }
    let rows = audit_rows(&dir);
    let ended = rows
        .iter()
        .filter(|r| r.reason.as_deref() == Some("loop_guard"))
        .count();
    assert_eq!(ended, 6, "three session ends and three refused calls");
}

async fn check(gw: &Gateway, what: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(gw.url(&format!("/v1/tools/{what}")))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn tools_check_and_execute() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let gw = Gateway::start(&config(&mock, &dir, TOOLS));

    let (s, v) = check(
        &gw,
        "check",
        json!({"tool": "postgres_query", "arguments": {"schema": "finance", "sql": "select 1"}, "session_id": "c1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["catalog_id"], "postgres.query");
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "tools_denied",
            "tool_discovery",
            "tool_arg_validation",
            "schemas_acl",
            "detect_secrets_in_response",
            "loop_guard"
        ]
    );
    for s in v["steps"].as_array().unwrap() {
        assert_eq!(s["aspect"], "tools");
        assert!(s.get("provenance").is_some() && s.get("evidence").is_some());
    }

    for (body, step, code) in [
        (
            json!({"tool": "shell_exec", "arguments": {"cmd": "ls"}}),
            "tools_denied",
            "tool_denied",
        ),
        (json!({"tool": "made_up"}), "tool_discovery", "tool_denied"),
        (
            json!({"tool": "postgres_query", "arguments": {"schema": "pii_archive"}}),
            "schemas_acl",
            "tool_denied",
        ),
        (
            json!({"tool": "stripe_create_refund", "arguments": {"amount": 1001}}),
            "tool_arg_validation",
            "tool_denied",
        ),
        (
            json!({"tool": "postgres_query", "arguments": "{\"schema\": "}),
            "tool_arg_validation",
            "tool_denied",
        ),
        (
            json!({"tool": "postgres_query", "arguments": {"x": 1},
            "schema": {"type": "object", "required": ["sql"]}}),
            "tool_arg_validation",
            "tool_denied",
        ),
    ] {
        let (s, v) = check(&gw, "check", body.clone()).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["decision"], "deny", "{body}");
        assert_eq!(v["code"], code);
        let last = v["steps"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (last["step"].as_str(), last["decision"].as_str()),
            (Some(step), Some("deny")),
            "{v}"
        );
        assert!(v["reason"].as_str().unwrap().contains(step));
        // execute refuses it as an error in the OpenAI format.
        let (s, e) = check(&gw, "execute", body).await;
        assert_eq!(s, 403);
        assert_eq!(e["error"]["code"], code);
    }

    // Loop guard through check: the fourth identical check ends the session.
    let same = json!({"tool": "postgres_query", "arguments": {"schema": "customers"}, "session_id": "c-loop"});
    for _ in 0..3 {
        assert_eq!(
            check(&gw, "check", same.clone()).await.1["decision"],
            "allow"
        );
    }
    let (_, v) = check(&gw, "check", same.clone()).await;
    assert_eq!(
        (v["decision"].as_str(), v["code"].as_str()),
        (Some("deny"), Some("loop_guard"))
    );

    // An allowed call has no executor here: a clear 501.
    let (s, e) = check(
        &gw,
        "execute",
        json!({"tool": "postgres_query", "arguments": {"schema": "finance"}}),
    )
    .await;
    assert_eq!(s, 501);
    assert_eq!(e["error"]["code"], "tool_executor_unavailable");

    // Bad requests: OpenAI-format errors.
    for bad in [
        json!({}),
        json!({"tool": 3}),
        json!({"tool": "x", "extra": 1}),
        json!([1]),
    ] {
        let (s, e) = check(&gw, "check", bad).await;
        assert_eq!(s, 400);
        assert_eq!(e["error"]["code"], "invalid_request");
    }
    let r = client()
        .post(gw.url("/v1/tools/check"))
        .json(&json!({"tool": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(gw.url("/v1/tools/check"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Every check has an audit row with its fragments.
    let rows = audit_rows(&dir);
    assert!(rows.iter().filter(|r| r.endpoint == "tools_check").count() >= 10);
}

/// The catalog steward's signed Compiled Policy: `pii_archive: deny` drops
/// a catalog update on that schema (`schemas_acl`), in a check and in a
/// streamed tool call.
#[tokio::test]
async fn compiled_policy_schemas_acl_drops_pii_archive() {
    let mock = start_mock(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut p = golden_policy("catalog-steward");
    // This test is about tools: no prices are configured for a dollar budget.
    p.budget.dollars_per_month = None;
    p.budget.tokens_per_day = None;
    let local = local_policies(dir.path(), 7, &[("catalog-steward.json", &p)]);
    let agent_key = "tp-catalog-steward-key";
    let gw = Gateway::start_with_keys(
        &format!(
            "{local}providers:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n",
            mock.url()
        ),
        &[("catalog-steward", agent_key)],
    );
    let check_as = |body: Value| {
        let url = gw.url("/v1/tools/check");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(agent_key)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let v =
        check_as(json!({"tool": "collibra_update_asset", "arguments": {"domain": "pii_archive"}}))
            .await;
    assert_eq!(v["decision"], "deny", "{v}");
    let last = v["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["step"], "schemas_acl");
    assert_eq!(last["provenance"], "policy:tools.schemas_acl");
    let v =
        check_as(json!({"tool": "collibra_update_asset", "arguments": {"domain": "customers"}}))
            .await;
    assert_eq!(v["decision"], "allow", "{v}");
    // A tool off the agent's allow-list.
    let v = check_as(json!({"tool": "gmail_send", "arguments": {}})).await;
    assert_eq!(v["decision"], "deny", "{v}");

    // The same call streamed by the model.
    let directive = format!(
        "MOCK:{}",
        json!({"tool_call": {"name": "collibra_update_asset", "arguments": "{\"domain\":\"pii_archive\"}"}, "chunk_size": 3})
    );
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": directive}],
        "tools": [{"type": "function", "function": {"name": "collibra_update_asset", "parameters": {"type": "object"}}}]});
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(agent_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_denied_stream(Format::Chat, &text, "tool_denied");
    assert!(text.contains("schemas_acl"), "{text}");
}

/// `enforce_session_scope`: a capability token's tool scope governs a
/// caller that has no guardrails at all. Offered tools outside the scope are
/// removed before the upstream sees them; tool calls the model returns
/// outside it (by name, by denied pattern, or on a schema the token does not
/// grant) never reach the client in any format, streamed or not; calls
/// inside it pass byte for byte; `/v1/tools/check` answers the same.
#[tokio::test]
async fn a_tokens_tool_scope_holds_without_guardrails() {
    let mock = start_mock(&[]);
    // The reference answers come from a mock of their own, so that the
    // gateway's mock records only what the gateway sent.
    let reference = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let issuer = TokenIssuer::new(data.path());
    let mut gw = Gateway::start(&format!("{}{}", issuer.config, config(&mock, &dir, "")));
    let token = issuer.token(
        "scoped-agent",
        "sb-scope",
        tappass_tokens::Scope {
            tools_allow: vec!["postgres.*".into(), "get_weather".into()],
            tools_deny: vec!["postgres.execute".into()],
            schemas_acl: [("customers".to_string(), vec!["read".to_string()])].into(),
            models: Vec::new(),
        },
    );
    let send = |f: Format, body: Value| {
        let (gw, token) = (&gw, token.clone());
        async move { send_as(gw, f, &body, &token, None).await }
    };
    let mut rows_expected = 0;
    for f in FORMATS {
        for stream in [false, true] {
            // Outside the scope by name (the catalog knows it), by denied
            // pattern, and on a schema the token does not grant.
            for (name, args) in [
                ("stripe_create_refund", "{\"amount\": 10}"),
                (
                    "postgres_execute",
                    "{\"schema\":\"customers\",\"sql\":\"delete\"}",
                ),
                (
                    "postgres_query",
                    "{\"schema\":\"pii_archive\",\"sql\":\"select 1\"}",
                ),
            ] {
                let (status, code, text) = send(f, request(f, name, args, 3, stream)).await;
                rows_expected += 1;
                if stream {
                    assert_eq!(status, 200, "{f:?} {name}");
                    assert_denied_stream(f, &text, "tool_denied");
                } else {
                    assert_eq!(
                        (status, code.as_str()),
                        (403, "tool_denied"),
                        "{f:?} {name}: {text}"
                    );
                    assert!(text.contains("enforce_session_scope"), "{text}");
                }
            }
            // Inside it: byte for byte what the provider sent.
            let body = request(
                f,
                "postgres_query",
                "{\"schema\":\"customers\",\"sql\":\"select 1\"}",
                3,
                stream,
            );
            let (status, _, text) = send(f, body.clone()).await;
            rows_expected += 1;
            assert_eq!(status, 200, "{f:?}: {text}");
            if !stream {
                let want: Value =
                    serde_json::from_str(&direct(&reference, f, &body).await).unwrap();
                let got: Value = serde_json::from_str(&text).unwrap();
                let calls = |v: &Value| match f {
                    Format::Chat => v["choices"][0]["message"]["tool_calls"][0]["function"].clone(),
                    Format::Anthropic => v["content"][0]["input"].clone(),
                    Format::Responses => v["output"][0]["arguments"].clone(),
                };
                assert_eq!(calls(&got), calls(&want), "{f:?}");
            } else {
                assert!(text.contains("postgres_query"), "{f:?}: {text}");
            }
        }
    }
    // The upstream never saw the tools outside the scope.
    let bodies = mock_bodies(&mock).await;
    assert_eq!(bodies.len(), 24);
    for body in bodies {
        let offered: Vec<&str> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["name"]
                    .as_str()
                    .or(t["function"]["name"].as_str())
                    .unwrap()
            })
            .collect();
        assert_eq!(offered, ["postgres_query", "get_weather"], "{body}");
    }
    // `/v1/tools/check` holds the same scope.
    let check = |tool: &str, args: Value| {
        let token = token.clone();
        let url = gw.url("/v1/tools/check");
        let body = json!({"tool": tool, "arguments": args});
        async move {
            let r = client()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let v = check("shell_exec", json!({})).await;
    assert_eq!(v["decision"], "deny", "{v}");
    let v = check(
        "postgres_query",
        json!({"schema": "customers", "sql": "select 1"}),
    )
    .await;
    assert_eq!(v["decision"], "allow", "{v}");
    rows_expected += 2;

    gw.proc.terminate();
    let rows = audit_rows(&dir);
    assert_eq!(rows.len(), rows_expected);
    for (i, row) in rows.iter().enumerate() {
        let steps: Vec<(&str, &str)> = row
            .step_decisions
            .iter()
            .map(|s| (s.step.as_str(), s.decision.as_str()))
            .collect();
        // The model calls (the two tool checks come last).
        if i < rows.len() - 2 {
            assert!(
                steps.contains(&("check_sandbox_active", "allow")),
                "{steps:?}"
            );
        }
        assert!(
            steps.iter().any(|(s, _)| *s == "enforce_session_scope"),
            "{steps:?}"
        );
    }
    // The offered tools outside the scope were removed, and the audit says so.
    let removed = rows[0]
        .step_decisions
        .iter()
        .find(|s| s.step == "enforce_session_scope" && s.decision == "redact")
        .expect("removal recorded");
    assert_eq!(
        removed.evidence["removed"],
        json!(["shell_exec", "stripe_create_refund"])
    );
}

/// `rego_policy` and `human_approval` on tool calls, with the refund bot's
/// signed Compiled Policy (its `refunds.rego`: refunds over 200 need a
/// person), in every format, streamed or not: a small refund passes the
/// Rego; a larger one is refused with `approval_required` and an approval
/// id; once an operator approves it on the admin listener the same call
/// passes once (the approval is used up); a denied one is refused with
/// `approval_denied`.
#[tokio::test]
async fn tool_calls_needing_approval_wait_for_a_person() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let mut p = golden_policy("refund-bot");
    // This test is about approvals: no budget (its tool-call rate would
    // end the run).
    p.budget.dollars_per_month = None;
    p.budget.tokens_per_day = None;
    p.budget.tool_calls_per_minute = None;
    p.budget.requests_per_minute = None;
    let local = local_policies(data.path(), 9, &[("refund-bot.json", &p)]);
    let agent_key = "tp-refund-bot-key";
    let gw = Gateway::start_with_keys(
        &format!("{local}{}", config(&mock, &dir, "")),
        &[("refund-bot", agent_key)],
    );
    let send = |f: Format, body: Value| {
        let gw = &gw;
        async move { send_as(gw, f, &body, agent_key, Some(&fresh_session())).await }
    };
    let admin = |path: String| {
        let url = gw.admin_url(&path);
        async move {
            let r = client().post(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let refused = |f: Format, stream: bool, got: &(u16, String, String), code: &str| {
        if stream {
            assert_eq!(got.0, 200, "{f:?}");
            assert_denied_stream(f, &got.2, code);
        } else {
            assert_eq!((got.0, got.1.as_str()), (403, code), "{f:?}: {}", got.2);
        }
    };
    let passed = |f: Format, got: &(u16, String, String)| {
        assert_eq!(got.0, 200, "{f:?}: {}", got.2);
        assert!(got.2.contains("stripe_create_refund"), "{f:?}: {}", got.2);
        assert!(!got.2.contains("\"error\""), "{f:?}: {}", got.2);
    };
    for f in FORMATS {
        for stream in [false, true] {
            let small = "{\"amount\": 120, \"charge\": \"ch_small\"}";
            passed(
                f,
                &send(f, request(f, "stripe_create_refund", small, 4, stream)).await,
            );
            // A refund needing approval: refused with an approval id.
            let charge = format!("ch_{f:?}_{stream}");
            let args = format!("{{\"amount\": 450, \"charge\": \"{charge}\"}}");
            let body = request(f, "stripe_create_refund", &args, 4, stream);
            let got = send(f, body.clone()).await;
            refused(f, stream, &got, "approval_required");
            let id = tappass_dataplane::approvals::Approvals::id_of(
                "refund-bot",
                "stripe.create_refund",
                &serde_json::from_str(&args).unwrap(),
            );
            assert!(got.2.contains(&id), "{f:?}: {}", got.2);
            // Still waiting: refused again.
            refused(f, stream, &send(f, body.clone()).await, "approval_required");
            let listed = get_json(&gw.admin_url("/approvals")).await;
            let entry = listed["approvals"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["id"] == id.as_str())
                .cloned()
                .expect("the request is listed");
            assert_eq!(entry["state"], "pending");
            assert_eq!(entry["tool"], "stripe.create_refund");
            assert!(!entry.to_string().contains(&charge), "no arguments listed");
            // Approved: the same call passes once.
            assert_eq!(admin(format!("/approvals/{id}/approve")).await.0, 200);
            assert_eq!(admin(format!("/approvals/{id}/approve")).await.0, 409);
            passed(f, &send(f, body.clone()).await);
            refused(f, stream, &send(f, body.clone()).await, "approval_required");
            // Denied: refused as such.
            assert_eq!(admin(format!("/approvals/{id}/deny")).await.0, 200);
            refused(f, stream, &send(f, body).await, "approval_denied");
        }
    }
    assert_eq!(admin("/approvals/apr-none/approve".into()).await.0, 404);

    drop(gw);
    let rows = audit_rows(&dir);
    let steps = |row: &AuditRecord| -> Vec<(String, String)> {
        row.step_decisions
            .iter()
            .filter(|s| s.step == "rego_policy" || s.step == "human_approval")
            .map(|s| (s.step.clone(), s.decision.clone()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    // Per combination: small, waiting, waiting, approved, used up, denied.
    assert_eq!(rows.len(), 36);
    for chunk in rows.chunks(6) {
        assert_eq!(steps(&chunk[0]), pairs(&[("rego_policy", "allow")]));
        for i in [1, 2, 4, 5] {
            assert_eq!(
                steps(&chunk[i]),
                pairs(&[("rego_policy", "log"), ("human_approval", "deny")])
            );
        }
        assert_eq!(
            steps(&chunk[3]),
            pairs(&[("rego_policy", "log"), ("human_approval", "allow")])
        );
    }
}

/// A tool call passes the same content steps as text: a secret in its
/// arguments is refused under the response setting (arguments are never
/// rewritten, so `redact` refuses too), in every format, streamed or not,
/// and never reaches the client; the same call without it passes.
#[tokio::test]
async fn secrets_in_tool_call_arguments_never_reach_the_client() {
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let mut gw = Gateway::start(&config(
        &mock,
        &dir,
        // The prompt (the mock's script) carries the secret too: the
        // request step is off so that the model's tool call is what is
        // checked.
        "guardrails:\n  injection: off\n  secrets: off\n  response_secrets: redact\n",
    ));
    let secret = "AKIAQWERTYUIOPASDFGH";
    let leaking =
        format!("{{\"schema\":\"customers\",\"sql\":\"insert into keys values ('{secret}')\"}}");
    let clean = "{\"schema\":\"customers\",\"sql\":\"select 1\"}";
    for f in FORMATS {
        for stream in [false, true] {
            let body = request(f, "postgres_query", &leaking, 5, stream);
            let (status, code, text) = send(&gw, f, &body, &fresh_session()).await;
            assert!(!text.contains(secret), "{f:?} {stream}: {text}");
            if stream {
                assert_eq!(status, 200, "{f:?}");
                assert_denied_stream(f, &text, "secret_blocked");
            } else {
                assert_eq!((status, code.as_str()), (403, "secret_blocked"), "{text}");
            }
            let body = request(f, "postgres_query", clean, 5, stream);
            let (status, _, text) = send(&gw, f, &body, &fresh_session()).await;
            assert_eq!(status, 200, "{f:?} {stream}: {text}");
            assert!(text.contains("postgres_query"), "{f:?} {stream}: {text}");
            assert!(!text.contains("secret_blocked"), "{f:?} {stream}: {text}");
        }
    }
    gw.proc.terminate();
    let rows = audit_rows(&dir);
    let found = rows
        .iter()
        .flat_map(|r| &r.step_decisions)
        .filter(|s| {
            s.step == "detect_secrets_in_response"
                && s.decision == "deny"
                && s.evidence["tool_call"] == true
        })
        .count();
    assert_eq!(found, 6);
    for r in &rows {
        assert!(!serde_json::to_string(r).unwrap().contains(secret));
    }
}
