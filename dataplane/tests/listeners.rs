//! Listener features: TLS with HTTP/2 via ALPN, cleartext HTTP/2, a port
//! already in use, and the embedded default configuration with its
//! in-process offline provider.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

#[tokio::test]
async fn tls_listener_speaks_http2_and_http1() {
    let mock = start_mock(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let gw = Gateway::start(&format!(
        "tls:\n  cert_file: {}\n  key_file: {}\nproviders:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n",
        cert_path.display(),
        key_path.display(),
        mock.url()
    ));
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let url = format!("https://localhost:{}/v1/chat/completions", gw.proc.port);
    for (h2, version) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        let mut b = reqwest::Client::builder().add_root_certificate(root.clone());
        if !h2 {
            b = b.http1_only();
        }
        let c = b.build().unwrap();
        for stream in [false, true] {
            let r = c
                .post(&url)
                .bearer_auth(KEY)
                .json(&chat("m", "over tls", stream))
                .send()
                .await
                .unwrap();
            assert_eq!(r.version(), version);
            assert_eq!(r.status(), 200);
            let body = r.text().await.unwrap();
            if stream {
                assert_eq!(chat_stream_text(&body), ("over tls".to_string(), true));
            } else {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], "over tls");
            }
        }
    }
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge() {
    let mock = start_mock(&[]);
    let gw = Gateway::start(&format!(
        "h2c: true\nproviders:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n",
        mock.url()
    ));
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat("m", "h2c stream", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        chat_stream_text(&r.text().await.unwrap()),
        ("h2c stream".to_string(), true)
    );
    // HTTP/1.1 still works on the same listener.
    let r = post(&gw, "/v1/chat/completions", &chat("m", "h1", false)).await;
    assert_eq!(r.status(), 200);
}

#[test]
fn a_port_in_use_stops_the_gateway_at_once_with_the_reason() {
    for held_is_admin in [false, true] {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held_addr = held.local_addr().unwrap().to_string();
        let other = format!("127.0.0.1:{}", free_port());
        let (listen, admin) = if held_is_admin {
            (other.clone(), held_addr.clone())
        } else {
            (held_addr.clone(), other.clone())
        };
        let cwd = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
            .current_dir(cwd.path())
            .args(["--listen", &listen, "--admin-listen", &admin])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let listener = if held_is_admin {
            "admin_listen"
        } else {
            "listen"
        };
        assert!(
            err.contains(&format!("cannot listen on {held_addr} ({listener})"))
                && err.contains("in use"),
            "{err}"
        );
        // It did not announce itself, and did not wait for the port.
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        drop(held);
    }
}

#[tokio::test]
async fn embedded_default_config_works_offline_and_prints_exports() {
    let port = free_port();
    let admin = free_port();
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .current_dir(cwd.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut exports = Vec::new();
    while exports.len() < 4 {
        let line = lines.next().expect("banner line").unwrap();
        if line.starts_with("export ") {
            exports.push(line);
        }
    }
    let proc = Proc { child, port };
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        exports,
        [
            format!("export OPENAI_BASE_URL={base}/v1"),
            "export OPENAI_API_KEY=tp-local-dev-key".to_string(),
            format!("export ANTHROPIC_BASE_URL={base}"),
            "export ANTHROPIC_API_KEY=tp-local-dev-key".to_string(),
        ]
    );
    let c = client();
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("tp-local-dev-key")
            .json(&chat("mock-gpt", "offline echo", false))
            .send()
            .await
        {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "offline echo");
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the default gateway answered");
    let r = c
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "tp-local-dev-key")
        .json(
            &serde_json::json!({"model": "mock-claude", "max_tokens": 20, "stream": true,
            "messages": [{"role": "user", "content": "claude offline"}]}),
        )
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("event: message_stop"), "{body}");
    drop(proc);
    // The default configuration keeps an audit trail beside where it runs.
    let jwks = std::fs::read_to_string(cwd.path().join(".tappass/audit/jwks.json")).unwrap();
    let report = tappass_audit::verify::verify_dir(
        &cwd.path().join(".tappass/audit"),
        &tappass_audit::Jwks::from_json(&jwks).unwrap(),
        &Default::default(),
    )
    .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, 2);
}

#[tokio::test]
async fn upstream_tls_is_verified_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mock = start_mock(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let config = |verify: bool| {
        format!(
            "providers:\n  - name: p\n    kind: openai-compatible\n    base_url: https://localhost:{}/v1\n    tls_verify: {verify}\nmodels:\n  - name: m\n    provider: p\n",
            mock.port
        )
    };
    // A self-signed upstream certificate is refused…
    let gw = Gateway::start(&config(true));
    let r = post(&gw, "/v1/chat/completions", &chat("m", "x", false)).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(mock_calls_tls(&mock, &cert).await, 0);
    // …unless verification is explicitly turned off for that provider.
    let gw = Gateway::start(&config(false));
    let r = post(
        &gw,
        "/v1/chat/completions",
        &chat("m", "over upstream tls", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        chat_stream_text(&r.text().await.unwrap()),
        ("over upstream tls".to_string(), true)
    );
}

async fn mock_calls_tls(mock: &Proc, cert: &rcgen::CertifiedKey) -> u64 {
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let c = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let v: Value = c
        .get(format!("https://localhost:{}/__mock/requests", mock.port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["calls"].as_u64().unwrap()
}
