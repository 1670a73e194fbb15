//! Budgets and rate limits against the real gateway and mock provider
//! processes: reservations before the upstream call, 429s in the caller's
//! format, streams ended at their reservation, counters across `kill -9`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use tappass_budget::TokenCounter;

fn mock_provider(mock: &Proc) -> String {
    format!(
        "providers:\n  - name: m\n    kind: openai-compatible\n    base_url: {0}/v1\n  - name: a\n    kind: anthropic\n    base_url: {0}/v1\n",
        mock.url()
    )
}

const MODELS: &str =
    "models:\n  - name: mock-gpt\n    provider: m\n  - name: claude-haiku-4-5\n    provider: a\n";

async fn budgets(gw: &Gateway) -> Value {
    get_json(&gw.admin_url("/budgets")).await
}

fn line<'a>(report: &'a Value, scope: &str, limit: &str) -> &'a Value {
    report["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["scope"] == scope && l["limit"] == limit)
        .unwrap_or_else(|| panic!("no {scope} {limit} in {report}"))
}

/// What the gateway reserves for `body` (prompt estimate plus max_tokens).
fn reservation(body: &Value) -> u64 {
    let map = body.as_object().expect("object");
    let prompt = TokenCounter::for_model("mock-gpt").prompt_tokens(map);
    prompt + body["max_tokens"].as_u64().expect("max_tokens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_streams_against_a_budget_for_fifty() {
    // ~40 chunks 20 ms apart: every stream is still open when the last
    // request arrives.
    let reply = "abcd".repeat(40);
    let mock = start_mock(&[
        "--reply",
        &reply,
        "--chunk-size",
        "4",
        "--chunk-delay-ms",
        "20",
    ]);
    let body = json!({
        "model": "mock-gpt", "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "count the budget"}],
    });
    let per_call = reservation(&body);
    let budget = 50 * per_call;
    let config = format!(
        "budgets:\n  scopes:\n    org:acme: {{ tokens_per_day: {budget} }}\n  default_org: acme\n{}{MODELS}",
        mock_provider(&mock)
    );
    let gw = Arc::new(Gateway::start(&config));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (gw, body, admitted) = (gw.clone(), body.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let r = post(&gw, "/v1/chat/completions", &body).await;
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let text = r.text().await.expect("body");
            match status {
                200 => {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    let (reply, done) = chat_stream_text(&text);
                    assert!(done, "stream did not finish: {text}");
                    reply
                }
                429 => {
                    let v: Value = serde_json::from_str(&text).expect("OpenAI error JSON");
                    assert_eq!(v["error"]["code"], "token_budget_exceeded", "{v}");
                    assert_eq!(v["error"]["type"], "rate_limit_error");
                    let msg = v["error"]["message"].as_str().unwrap();
                    assert!(
                        msg.contains("org:acme") && msg.contains("tokens_per_day"),
                        "{msg}"
                    );
                    let secs: u64 = retry
                        .expect("retry-after")
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!((1..=86_400).contains(&secs), "{secs}");
                    String::new()
                }
                s => panic!("unexpected status {s}: {text}"),
            }
        }));
    }
    for t in tasks {
        let reply = t.await.expect("task");
        assert!(reply.is_empty() || reply == "abcd".repeat(40));
    }
    let admitted = admitted.load(Ordering::Relaxed);
    // Every refusal came before any upstream call.
    assert_eq!(mock_calls(&mock).await, admitted);
    assert!(
        admitted >= 50,
        "the budget covers 50 calls, {admitted} admitted"
    );
    assert!(admitted < 200, "nothing was refused");
    let report = budgets(&gw).await;
    let org = line(&report, "org:acme", "tokens_per_day");
    let used = org["used"].as_u64().unwrap();
    assert_eq!(org["reserved"], 0, "{org}");
    // Settled with the usage the mock reported, which is below each
    // call's reservation: spend never passes the budget.
    assert!(used <= budget, "spent {used} of {budget}");
    assert_eq!(used % admitted, 0, "every call settled the same usage");
    assert!(used / admitted < per_call);
}

#[tokio::test]
async fn a_stream_that_outgrows_its_reservation_is_ended_in_its_own_format() {
    // The mock ignores max_tokens and streams ~500 tokens.
    let reply = "lorem ipsum ".repeat(170);
    let mock = start_mock(&["--reply", &reply, "--chunk-size", "12"]);
    let config = format!(
        "budgets:\n  scopes:\n    agent:*: {{ tokens_per_day: 1000000 }}\n{}{MODELS}",
        mock_provider(&mock)
    );
    let gw = Gateway::start(&config);
    let chat = json!({"model": "mock-gpt", "stream": true, "max_tokens": 10,
        "messages": [{"role": "user", "content": "write a lot"}]});
    let text = post(&gw, "/v1/chat/completions", &chat)
        .await
        .text()
        .await
        .unwrap();
    let last = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .expect("events");
    let v: Value = serde_json::from_str(last).expect("error event is JSON");
    assert_eq!(v["error"]["code"], "token_budget_exceeded", "{text}");
    let (released, _) = chat_stream_text(
        &text
            .lines()
            .filter(|l| !l.contains("\"error\""))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        released.len() < reply.len() / 4,
        "{} bytes released",
        released.len()
    );

    let msg = json!({"model": "claude-haiku-4-5", "stream": true, "max_tokens": 10,
        "messages": [{"role": "user", "content": "write a lot"}]});
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&msg)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("event: message_stop"), "{text}");
    let err = text
        .split("event: error\ndata: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .expect("error data");
    let v: Value = serde_json::from_str(err).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // The settled spend is what was delivered, not the whole reply.
    let report = budgets(&gw).await;
    let used: u64 = report["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["used"].as_u64().unwrap())
        .sum();
    assert!(used > 0 && used < 200, "{used}");
}

#[tokio::test]
async fn requests_per_minute_refuses_in_the_callers_format() {
    let mock = start_mock(&[]);
    let config = format!(
        "budgets:\n  scopes:\n    api_key:tests: {{ requests_per_minute: 5 }}\n{}{MODELS}",
        mock_provider(&mock)
    );
    let gw = Gateway::start(&config);
    let msg = json!({"model": "claude-haiku-4-5", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]});
    let send = || {
        client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&msg)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    let r = send().await.unwrap();
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api_key:tests requests_per_minute"));
    assert_eq!(mock_calls(&mock).await, 5);
    let report = budgets(&gw).await;
    assert_eq!(
        line(&report, "api_key:tests", "requests_per_minute")["used"],
        5
    );
}

#[tokio::test]
async fn dollar_budgets_price_calls_and_fail_closed_without_a_price() {
    let mock = start_mock(&["--reply", "fine"]);
    // mock-gpt at $1 / $1 per 1M tokens: a call reserves about $0.001 per
    // 1000 output tokens it may produce.
    let config = format!(
        "budgets:\n  prices:\n    mock-gpt: {{ input: 1.0, output: 1.0 }}\n  scopes:\n    agent:*: {{ dollars_per_month: 0.0015 }}\n{}{}  - name: unpriced-model\n    provider: m\n",
        mock_provider(&mock),
        MODELS
    );
    let gw = Gateway::start(&config);
    let body = |max: u64| {
        json!({"model": "mock-gpt", "max_tokens": max,
            "messages": [{"role": "user", "content": "hello"}]})
    };
    assert_eq!(
        post(&gw, "/v1/chat/completions", &body(1000))
            .await
            .status(),
        200
    );
    // Its reservation (~$0.002) cannot fit, however little was spent.
    let r = post(&gw, "/v1/chat/completions", &body(2000)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "dollar_budget_exceeded", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("agent:tests dollars_per_month"));
    // The first call settled at its real usage, so another small one fits.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &body(1000))
            .await
            .status(),
        200
    );
    let report = budgets(&gw).await;
    let l = line(&report, "agent:tests", "dollars_per_month");
    assert_eq!(l["max"], 1500);
    let used = l["used"].as_u64().unwrap();
    assert!(used > 0 && used < 100, "{l}");
    assert_eq!(mock_calls(&mock).await, 2);

    let unpriced = json!({"model": "unpriced-model", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hello"}]});
    let r = post(&gw, "/v1/chat/completions", &unpriced).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "guardrail_failed");
    assert!(v["error"]["message"].as_str().unwrap().contains("no price"));
    assert_eq!(mock_calls(&mock).await, 2);
}

#[tokio::test]
async fn a_call_without_max_tokens_gets_the_default_cap_upstream() {
    let mock = start_mock(&[]);
    let config = format!(
        "budgets:\n  default_max_tokens: 321\n  scopes:\n    agent:*: {{ tokens_per_day: 100000 }}\n{}{MODELS}",
        mock_provider(&mock)
    );
    let gw = Gateway::start(&config);
    let r = post(
        &gw,
        "/v1/chat/completions",
        &chat("mock-gpt", "cap me", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = mock_bodies(&mock).await[0].clone();
    assert_eq!(sent["max_tokens"], 321, "{sent}");

    // A cap that is not a number is not replaced: the provider judges it.
    let mut odd = chat("mock-gpt", "odd cap", false);
    odd["max_tokens"] = json!("lots");
    post(&gw, "/v1/chat/completions", &odd).await;
    let sent = mock_bodies(&mock).await[1].clone();
    assert_eq!(sent["max_tokens"], "lots", "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_a_load_run_neither_loses_nor_double_counts() {
    let mock = start_mock(&["--reply", "steady reply", "--chunk-delay-ms", "5"]);
    let state = tempfile::tempdir().unwrap();
    let config = format!(
        "budgets:\n  state_dir: {}\n  scopes:\n    agent:*: {{ tokens_per_day: 100000000 }}\n{}{MODELS}",
        state.path().display(),
        mock_provider(&mock)
    );
    let body = json!({"model": "mock-gpt", "max_tokens": 50,
        "messages": [{"role": "user", "content": "spend a little"}]});
    let per_call_max = reservation(&body);
    // What one completed call settles (the mock is deterministic).
    let probe = {
        let gw = Gateway::start(&config);
        assert_eq!(post(&gw, "/v1/chat/completions", &body).await.status(), 200);
        let used = line(&budgets(&gw).await, "agent:tests", "tokens_per_day")["used"]
            .as_u64()
            .unwrap();
        assert!(used > 0 && used < per_call_max);
        used
    };
    let gw = Arc::new(Gateway::start(&config));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (gw, body, completed, failed, stop) = (
            gw.clone(),
            body.clone(),
            completed.clone(),
            failed.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client()
                    .post(gw.url("/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }));
    }
    while completed.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // What the gateway reports is on disk when it reports it.
    let before = line(&budgets(&gw).await, "agent:tests", "tokens_per_day")["used"]
        .as_u64()
        .unwrap();
    let pid = gw.proc.child.id();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let completed = completed.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let restarted = Gateway::start(&config);
    let after = line(&budgets(&restarted).await, "agent:tests", "tokens_per_day")["used"]
        .as_u64()
        .unwrap();
    // No counter goes backwards.
    assert!(after >= before, "before {before}, after {after}");
    // Every completed call is counted once (the probe's too); calls cut by
    // the kill count at most their reservation; nothing is counted twice.
    let floor = probe + completed * probe;
    let ceiling = floor + 16 * per_call_max;
    assert!(
        after >= floor,
        "after {after} < floor {floor} ({completed} completed)"
    );
    assert!(
        after <= ceiling,
        "after {after} > ceiling {ceiling} ({failed} failed)"
    );
}
