//! The real gateway in front of real mock providers, over loopback sockets:
//! fallback, circuit breaker, timeouts, broken streams, large bodies,
//! concurrency, request validation and the wire formats of errors.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn one_provider(mock: &Proc, extra: &str) -> String {
    format!(
        "providers:\n  - name: primary\n    kind: openai-compatible\n    base_url: {}/v1\n{extra}  - name: claude\n    kind: anthropic\n    base_url: {}/v1\nmodels:\n  - name: mock-gpt\n    provider: primary\n  - name: mock-claude\n    provider: claude\n  - name: 'glob-*'\n    provider: primary\n    upstream_model: rewritten\n",
        mock.url(),
        mock.url()
    )
}

fn fallback_config(first_url: &str, second: &Proc, breaker: &str) -> String {
    format!(
        "providers:\n  - name: first\n    kind: openai-compatible\n    base_url: {first_url}/v1\n    timeouts: {{ connect_ms: 500 }}\n{breaker}  - name: second\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: first\n    fallbacks:\n      - provider: second\n",
        second.url()
    )
}

#[tokio::test]
async fn echo_streaming_and_usage_stripping() {
    let mock = start_mock(&[]);
    let gw = Gateway::start(&one_provider(&mock, ""));

    let r = post(
        &gw,
        "/v1/chat/completions",
        &chat("mock-gpt", "hello gateway", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hello gateway");

    // The client did not ask for usage: the gateway asked upstream and
    // strips the usage chunk on the way back.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &chat("mock-gpt", "stream me please", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.unwrap();
    let (text, done) = chat_stream_text(&body);
    assert_eq!(text, "stream me please");
    assert!(done);
    assert!(!body.contains("\"usage\":{"), "{body}");
    let last = mock_bodies(&mock).await[1].clone();
    assert_eq!(last["stream_options"]["include_usage"], true);

    // Asked for: the usage chunk reaches the client.
    let mut req = chat("mock-gpt", "with usage", true);
    req["stream_options"] = json!({"include_usage": true});
    let body = post(&gw, "/v1/chat/completions", &req)
        .await
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"usage\":{"), "{body}");

    // Glob routes rewrite the upstream model name.
    let v: Value = post(
        &gw,
        "/v1/chat/completions",
        &chat("glob-anything", "x", false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["model"], "rewritten");
}

#[tokio::test]
async fn fallback_on_5xx_429_and_connection_refused() {
    let good = start_mock(&[]);
    for status in ["503", "429", "500"] {
        let bad = start_mock(&["--status", status]);
        let gw = Gateway::start(&fallback_config(&bad.url(), &good, ""));
        let r = post(&gw, "/v1/chat/completions", &chat("m", "fall back", false)).await;
        assert_eq!(r.status(), 200, "status {status}");
        assert_eq!(r.headers()["x-tappass-provider"], "second");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "fall back");
        assert_eq!(mock_calls(&bad).await, 1);
    }
    // Nothing listens on the first provider's port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&fallback_config(&dead, &good, ""));
    let r = post(&gw, "/v1/chat/completions", &chat("m", "refused", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tappass-provider"], "second");
    assert_eq!(chat_stream_text(&r.text().await.unwrap()).0, "refused");
}

#[tokio::test]
async fn last_provider_error_passes_through_with_status_and_body() {
    let bad = start_mock(&["--status", "503"]);
    let gw = Gateway::start(&one_provider(&bad, ""));
    let r = post(&gw, "/v1/chat/completions", &chat("mock-gpt", "x", false)).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "mock error 503");
    // 4xx from upstream: passed through, and no fallback is tried.
    let four = start_mock(&["--status", "400"]);
    let good = start_mock(&[]);
    let gw = Gateway::start(&fallback_config(&four.url(), &good, ""));
    let r = post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
    assert_eq!(r.status(), 400);
    assert_eq!(mock_calls(&good).await, 0);
}

#[tokio::test]
async fn all_providers_down_gives_502_in_the_callers_format() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = format!(
        "providers:\n  - name: a\n    kind: anthropic\n    base_url: {dead}/v1\n  - name: o\n    kind: openai-compatible\n    base_url: {dead}/v1\nmodels:\n  - name: c\n    provider: a\n  - name: g\n    provider: o\n"
    );
    let gw = Gateway::start(&cfg);
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let r = post(&gw, "/v1/chat/completions", &chat("g", "x", false)).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
}

#[tokio::test]
async fn circuit_breaker_opens_skips_and_half_opens() {
    let bad = start_mock(&["--status", "500"]);
    let good = start_mock(&[]);
    let breaker = "    circuit_breaker: { failure_threshold: 2, cooldown_ms: 700 }\n";
    let gw = Gateway::start(&fallback_config(&bad.url(), &good, breaker));
    for _ in 0..2 {
        let r = post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(mock_calls(&bad).await, 2);
    // Open: the failing provider is skipped.
    for _ in 0..3 {
        let r = post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        mock_calls(&bad).await,
        2,
        "open circuit must not call the provider"
    );
    let metrics = get_text(&gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("tappass_circuit_breaker_state{provider=\"first\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"circuit_open\""));
    // After the cool-down one probe goes through; it fails and re-opens.
    tokio::time::sleep(Duration::from_millis(800)).await;
    post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
    assert_eq!(mock_calls(&bad).await, 3);
    post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
    assert_eq!(
        mock_calls(&bad).await,
        3,
        "a failed probe re-opens the circuit"
    );
}

#[tokio::test]
async fn first_byte_timeout_is_504_and_falls_back() {
    let slow = start_mock(&["--first-byte-delay-ms", "3000"]);
    let cfg = format!(
        "providers:\n  - name: slow\n    kind: openai-compatible\n    base_url: {}/v1\n    timeouts: {{ first_byte_ms: 300 }}\nmodels:\n  - name: m\n    provider: slow\n",
        slow.url()
    );
    let gw = Gateway::start(&cfg);
    let t = Instant::now();
    let r = post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");

    let good = start_mock(&[]);
    let cfg = format!(
        "providers:\n  - name: slow\n    kind: openai-compatible\n    base_url: {}/v1\n    timeouts: {{ first_byte_ms: 300 }}\n  - name: good\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: slow\n    fallbacks: [{{ provider: good }}]\n",
        slow.url(),
        good.url()
    );
    let gw = Gateway::start(&cfg);
    let r = post(
        &gw,
        "/v1/chat/completions",
        &chat("m", "after timeout", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tappass-provider"], "good");
}

#[tokio::test]
async fn idle_and_total_timeouts_end_streams_with_an_error_event() {
    let mock = start_mock(&["--chunk-delay-ms", "1000", "--chunk-size", "2"]);
    for (timeouts, code) in [
        ("{ idle_ms: 200 }", "upstream_timeout"),
        ("{ total_ms: 1500 }", "upstream_timeout"),
    ] {
        let cfg = format!(
            "providers:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\n    timeouts: {timeouts}\nmodels:\n  - name: m\n    provider: p\n",
            mock.url()
        );
        let gw = Gateway::start(&cfg);
        let t = Instant::now();
        let r = post(
            &gw,
            "/v1/chat/completions",
            &chat("m", "slow stream text", true),
        )
        .await;
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{timeouts}: {:?}",
            t.elapsed()
        );
        let last = body.trim_end().lines().last().unwrap();
        let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["error"]["code"], code, "{timeouts}: {body}");
        assert!(!body.contains("[DONE]"));
    }
}

#[tokio::test]
async fn upstream_dying_mid_stream_gives_a_well_formed_error_event_per_format() {
    let mock = start_mock(&[]);
    let gw = Gateway::start(&one_provider(&mock, ""));
    let script =
        r#"MOCK:{"reply":"abcdefghijklmnopqrstuvwxyz","chunk_size":2,"die_after_events":4}"#;

    let t = Instant::now();
    let body = post(&gw, "/v1/chat/completions", &chat("mock-gpt", script, true))
        .await
        .text()
        .await
        .unwrap();
    let last = body.trim_end().lines().last().unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "upstream_stream_broken", "{body}");
    assert!(chat_stream_text(&body).0.starts_with("abcdef"));

    let body = post(
        &gw,
        "/v1/messages",
        &json!({"model": "mock-claude", "max_tokens": 50, "stream": true,
                "messages": [{"role": "user", "content": script}]}),
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(body.contains("event: error\ndata: {"), "{body}");
    let data = body
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .strip_prefix("data: ")
        .unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["type"], "error");

    let body = post(
        &gw,
        "/v1/responses",
        &json!({"model": "mock-gpt", "stream": true, "input": script}),
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(body.contains("event: response.failed\n"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(10), "no hang");
}

#[tokio::test]
async fn large_bodies_and_the_body_limit() {
    let mock = start_mock(&[]);
    let gw = Gateway::start(&format!(
        "limits: {{ max_request_body_bytes: 3000000 }}\n{}",
        one_provider(&mock, "")
    ));
    let big: String = "0123456789abcdef".repeat(100_000); // 1.6 MB
    let r = post(&gw, "/v1/chat/completions", &chat("mock-gpt", &big, false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len(),
        big.len()
    );
    let r = post(&gw, "/v1/chat/completions", &chat("mock-gpt", &big, true)).await;
    let (text, done) = chat_stream_text(&r.text().await.unwrap());
    assert!(done);
    assert_eq!(text, big);

    let huge = "x".repeat(3_100_000);
    let r = post(&gw, "/v1/chat/completions", &chat("mock-gpt", &huge, false)).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    // Chunked upload without a content-length is bounded too.
    let stream = futures_util::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 100_000]))),
    );
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        // The gateway may close the connection before the upload finishes.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
}

#[tokio::test]
async fn two_hundred_concurrent_streams() {
    let mock = start_mock(&["--threads", "2", "--chunk-size", "4"]);
    let gw = Gateway::start(&one_provider(&mock, ""));
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let text = format!("stream number {i} with some text");
            let body = client
                .post(url)
                .bearer_auth(KEY)
                .json(&chat("mock-gpt", &text, true))
                .send()
                .await
                .expect("sent")
                .text()
                .await
                .expect("body");
            let (got, done) = chat_stream_text(&body);
            assert!(done, "stream {i} did not finish: {body}");
            assert_eq!(got, text);
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
    assert_eq!(mock_calls(&mock).await, 200);
}

#[tokio::test]
async fn bad_requests_get_errors_in_the_callers_format() {
    let mock = start_mock(&[]);
    let gw = Gateway::start(&one_provider(&mock, ""));
    let c = client();
    let raw = |path: &str, ctype: &str, body: &'static str| {
        c.post(gw.url(path))
            .bearer_auth(KEY)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let cases: [(&str, &str, &'static str, u16, &str); 8] = [
        (
            "/v1/chat/completions",
            "application/json",
            "{\"model\":",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            "application/json",
            "{\"model\": \"mock-gpt\", \"messages\": [",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            "application/json",
            "[]",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            "application/json",
            "",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            "application/json",
            "{\"messages\":[]}",
            400,
            "missing_model",
        ),
        (
            "/v1/chat/completions",
            "text/plain",
            "{\"model\":\"mock-gpt\"}",
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/chat/completions",
            "application/json",
            "{\"model\":\"nope\"}",
            404,
            "model_not_found",
        ),
        (
            "/v1/embeddings",
            "application/json",
            "{\"model\":\"mock-gpt\",\"stream\":true}",
            400,
            "invalid_request",
        ),
    ];
    for (path, ctype, body, status, code) in cases {
        let r = raw(path, ctype, body).await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{body}");
    }
    // Anthropic endpoints answer in Anthropic's shape.
    for (body, status, kind) in [
        (
            "{\"model\":\"nope\",\"max_tokens\":1,\"messages\":[]}",
            404,
            "not_found_error",
        ),
        ("{\"max_tokens\": 1", 400, "invalid_request_error"),
    ] {
        let r = raw("/v1/messages", "application/json", body).await.unwrap();
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind);
    }
    // An OpenAI-only provider cannot serve the Anthropic endpoint.
    let r = raw(
        "/v1/messages",
        "application/json",
        "{\"model\":\"mock-gpt\",\"max_tokens\":1,\"messages\":[]}",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown path, wrong method, no key, a provider key instead of a gateway key.
    let r = c.get(gw.url("/v2/whatever")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let r = c
        .get(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("mock-gpt", "x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "sk-ant-api03-not-a-gateway-key")
        .json(&json!({"model": "mock-claude", "max_tokens": 1, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(
        mock_calls(&mock).await,
        0,
        "no bad request reached the provider"
    );
}

#[tokio::test]
async fn provider_credentials_are_injected_and_client_keys_never_forwarded() {
    let mock = start_mock(&[]);
    let cfg = format!(
        "providers:\n  - name: p\n    kind: openai\n    base_url: {}/v1\n    api_key_env: TAPPASS_TEST_PROVIDER_KEY\n  - name: a\n    kind: anthropic\n    base_url: {}/v1\n    api_key_env: TAPPASS_TEST_PROVIDER_KEY\nmodels:\n  - name: m\n    provider: p\n  - name: c\n    provider: a\n",
        mock.url(),
        mock.url()
    );
    let gw = Gateway::start_with_env(&cfg, &[("TAPPASS_TEST_PROVIDER_KEY", "sk-provider-secret")]);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("m", "x", false))
            .await
            .status(),
        200
    );
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .json(
            &json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let requests = mock_requests(&mock).await;
    let headers = |i: usize| -> Vec<(String, String)> {
        serde_json::from_value(requests[i]["headers"].clone()).unwrap()
    };
    let h0 = headers(0);
    assert!(h0.contains(&("authorization".into(), "Bearer sk-provider-secret".into())));
    let h1 = headers(1);
    assert!(h1.contains(&("x-api-key".into(), "sk-provider-secret".into())));
    assert!(h1.contains(&("anthropic-version".into(), "2023-06-01".into())));
    for (k, val) in h0.iter().chain(h1.iter()) {
        assert!(!val.contains(KEY), "client key leaked upstream in {k}");
    }
}

#[tokio::test]
async fn models_list_in_both_shapes_and_admin_endpoints() {
    let mock = start_mock(&[]);
    let gw = Gateway::start(&one_provider(&mock, ""));
    let v: Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-claude", "mock-gpt"]);
    let v: Value = client()
        .get(gw.url("/v1/models"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);
    let r = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        client()
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Admin endpoints are not served on the client listener.
    assert_eq!(
        client()
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams() {
    let mock = start_mock(&["--chunk-delay-ms", "50", "--chunk-size", "4"]);
    let mut gw = Gateway::start(&one_provider(&mock, ""));
    let url = gw.url("/v1/chat/completions");
    let text = "a stream that is still running when SIGTERM arrives";
    let stream = tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(KEY)
            .json(&chat("mock-gpt", text, true))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.proc.terminate();
        (s, gw)
    });
    let body = stream.await.unwrap();
    let (got, done) = chat_stream_text(&body);
    assert!(done, "{body}");
    assert_eq!(got, text);
    let (exit, _gw) = status.await.unwrap();
    assert!(exit.success(), "{exit}");
}

#[test]
fn check_config_reports_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "providers:\n  - name: p\n    kind: openai\n    base_urll: https://x\nmodels: []\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("providers[0]") && err.contains("base_urll"),
        "{err}"
    );
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, tappass_dataplane::config::DEFAULT_CONFIG_YAML).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The annotated example with real upstreams is valid once its keys exist.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.example.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--check-config")
        .arg(&example)
        .env("OPENAI_API_KEY", "sk-example")
        .env("ANTHROPIC_API_KEY", "sk-ant-example")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--check-config")
        .arg(&example)
        .env_remove("OPENAI_API_KEY")
        .env("ANTHROPIC_API_KEY", "sk-ant-example")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("providers[0].api_key_env") && err.contains("OPENAI_API_KEY is not set"),
        "{err}"
    );
}
