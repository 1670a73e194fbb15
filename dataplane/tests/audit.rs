//! The audit trail of the real gateway: one verifiable row per call, rows
//! that survive `kill -9`, and a chain that continues across restarts.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tappass_audit::verify::{verify_dir, VerifyOptions, VerifyReport};
use tappass_audit::Jwks;

/// The crash test loads both cores and kills a gateway mid-run; the tests of
/// this file run one at a time so that none of them shares the machine (or
/// a just-freed port) with it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn audited(mock: &Proc, dir: &Path, extra: &str) -> String {
    format!(
        "audit:\n  dir: {}\n  gateway_id: gw-test\n{extra}providers:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\n  - name: a\n    kind: anthropic\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n  - name: c\n    provider: a\n",
        dir.display(),
        mock.url(),
        mock.url()
    )
}

fn verify(dir: &Path) -> VerifyReport {
    let jwks = Jwks::from_json(&std::fs::read_to_string(dir.join("jwks.json")).unwrap()).unwrap();
    verify_dir(dir, &jwks, &VerifyOptions::default()).unwrap()
}

#[tokio::test]
async fn every_call_leaves_a_verifiable_row_with_its_steps() {
    let _serial = SERIAL.lock().await;
    let mock = start_mock(&[]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let mut gw = Gateway::start(&audited(&mock, &dir, "  store_content: true\n"));
    let r = post(
        &gw,
        "/v1/chat/completions",
        &chat("m", "audited text", false),
    )
    .await;
    let trace = r.headers()["x-tappass-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.status(), 200);
    let body = post(
        &gw,
        "/v1/chat/completions",
        &chat("m", "audited stream", true),
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(body.contains("[DONE]"));
    // Refusals are audited too, and the presented key never is.
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "sk-ant-presented-but-wrong")
        .json(&json!({"model": "c", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("nope", "x", false))
            .await
            .status(),
        404
    );
    let head = get_json(&gw.admin_url("/audit/head")).await;
    assert_eq!(head["seq"], 4);
    assert_eq!(head["gateway_id"], "gw-test");
    gw.proc.terminate();

    let report = verify(&dir);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, 4);
    assert_eq!(report.head_hash.as_deref(), head["hash"].as_str());
    let rows = audit_rows(&dir);
    assert_eq!(rows[0].trace_id, trace);
    assert_eq!(rows[0].decision, tappass_audit::Decision::Allow);
    assert_eq!(rows[0].agent_id.as_deref(), Some("tests"));
    assert_eq!(rows[0].provider.as_deref(), Some("p"));
    let steps: Vec<&str> = rows[0]
        .step_decisions
        .iter()
        .map(|s| s.step.as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "verify_identity",
            "validate_request",
            "route_model",
            "call_upstream"
        ]
    );
    assert!(rows[0].usage.unwrap().output_tokens > 0);
    let content = rows[1].content.clone().unwrap();
    assert!(content.prompt.unwrap().contains("audited stream"));
    assert_eq!(content.response.as_deref(), Some("audited stream"));
    assert!(rows[1].stream && rows[1].latency.ttft_ms.is_some());
    assert_eq!(rows[2].decision, tappass_audit::Decision::Deny);
    assert_eq!(rows[2].reason.as_deref(), Some("invalid_api_key"));
    assert_eq!(rows[2].wire_format, "anthropic");
    assert_eq!(rows[3].reason.as_deref(), Some("model_not_found"));
    let all = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
        .any(|bytes| {
            bytes
                .windows(26)
                .any(|w| w == b"sk-ant-presented-but-wrong")
        });
    assert!(!all, "a presented key must never be stored");
}

#[tokio::test]
async fn rows_of_completed_calls_survive_kill_9_and_the_chain_continues() {
    let _serial = SERIAL.lock().await;
    let mock = start_mock(&["--threads", "2"]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let config = audited(
        &mock,
        &dir,
        "  checkpoint_every_rows: 50\n  checkpoint_every_ms: 5000\n",
    );
    let gw = Gateway::start(&config);

    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (completed, stop, started) = (completed.clone(), stop.clone(), started.clone());
        let url = gw.url("/v1/chat/completions");
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                started.fetch_add(1, Ordering::Relaxed);
                let stream = i % 2 == 0;
                let Ok(r) = c
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&chat("m", &format!("w{w} call {i}"), stream))
                    .send()
                    .await
                else {
                    break;
                };
                let trace = r.headers()["x-tappass-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let Ok(body) = r.text().await else { break };
                let complete = if stream {
                    body.contains("[DONE]")
                } else {
                    body.contains("\"choices\"")
                };
                if complete {
                    completed.lock().unwrap().push(trace);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // kill -9 in the middle of the load.
    let pid = gw.proc.child.id();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    drop(gw);
    let completed: HashSet<String> = completed.lock().unwrap().iter().cloned().collect();
    let attempted = started.load(Ordering::Relaxed) as usize;
    assert!(
        completed.len() > 50,
        "the load ran: {} calls",
        completed.len()
    );

    let report = verify(&dir);
    assert!(report.ok(), "{report:?}");
    let traces: HashSet<String> = audit_rows(&dir).into_iter().map(|r| r.trace_id).collect();
    let missing: Vec<&String> = completed.difference(&traces).collect();
    assert!(
        missing.is_empty(),
        "acknowledged calls without a row: {missing:?}"
    );
    // Calls in flight at the kill are either fully present or absent.
    assert!(
        traces.len() >= completed.len() && traces.len() <= attempted,
        "{} rows, {} completed, {} attempted",
        traces.len(),
        completed.len(),
        attempted
    );

    // Restart on the same log: the chain continues and verifies end to end.
    let gw = Gateway::start(&config);
    for i in 0..5 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            &chat("m", &format!("after restart {i}"), false),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let mut gw = gw;
    gw.proc.terminate();
    let after = verify(&dir);
    assert!(after.ok(), "{after:?}");
    assert_eq!(after.rows, report.rows + 5);
    assert_eq!(after.unsigned_tail, 0);
}

#[test]
fn an_unwritable_audit_dir_stops_the_gateway_at_start() {
    let _serial = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\naudit:\n  dir: {}/audit\nproviders:\n  - name: m\n    kind: mock\nmodels:\n  - name: x\n    provider: m\n",
            free_port(),
            free_port(),
            file.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit"), "{err}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_audited_with_what_it_received() {
    let _serial = SERIAL.lock().await;
    let mock = start_mock(&["--chunk-delay-ms", "100", "--chunk-size", "2"]);
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("audit");
    let mut gw = Gateway::start(&audited(&mock, &dir, ""));
    let mut resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat(
            "m",
            "a reply long enough to leave in the middle of it",
            true,
        ))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(resp);
    // The gateway notices on its next write.
    let mut rows = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let head = get_json(&gw.admin_url("/audit/head")).await;
        if head["seq"] == 1 {
            gw.proc.terminate();
            rows = audit_rows(&dir);
            break;
        }
    }
    assert_eq!(rows.len(), 1, "the abandoned stream has its row");
    assert_eq!(rows[0].decision, tappass_audit::Decision::Error);
    assert_eq!(rows[0].reason.as_deref(), Some("client disconnected"));
    assert!(rows[0].bytes_released_before_block.unwrap() > 0);
    assert!(verify(&dir).ok());
}
