//! Capability tokens at the real gateway: every refusal has its status and
//! code, in the caller's wire format, and a token's model scope holds.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tappass_keys::SigningKeyPair;
use tappass_tokens::{mint, Audience, Claims, Scope};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Claims {
    Claims {
        iss: "tappass-control".into(),
        aud: Audience::One("tappass-gateway".into()),
        sub: "support-emailer".into(),
        org: Some("acme".into()),
        project: Some("support".into()),
        sandbox: Some("sb-ok".into()),
        tier: Some("worker".into()),
        scope: Scope {
            models: vec!["mock-*".into()],
            ..Scope::default()
        },
        policy_version: Some(1),
        iat: now(),
        nbf: None,
        exp: now() + 300,
        jti: format!("tok-{}", now()),
    }
}

async fn call(gw: &Gateway, token: &str, model: &str) -> (u16, Value, String) {
    let r = request_as(gw, "/v1/chat/completions", token)
        .json(&chat(model, "hello with a token", false))
        .send()
        .await
        .unwrap();
    let (status, code) = (r.status().as_u16(), error_code(&r));
    (status, r.json().await.unwrap(), code)
}

#[tokio::test]
async fn tokens_are_verified_offline_and_refusals_are_precise() {
    let mock = start_mock(&[]);
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKeyPair::generate();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, key.jwks().to_string()).unwrap();
    let revoked = dir.path().join("revocations.json");
    std::fs::write(
        &revoked,
        r#"{"jti": ["tok-revoked"], "sandboxes": ["sb-revoked"]}"#,
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "tokens:\n  jwks_file: {}\n  issuer: tappass-control\n  revocations_file: {}\nproviders:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\n  - name: a\n    kind: anthropic\n    base_url: {}/v1\nmodels:\n  - name: mock-gpt\n    provider: p\n  - name: mock-claude\n    provider: a\n  - name: other-model\n    provider: p\n",
        jwks.display(),
        revoked.display(),
        mock.url(),
        mock.url()
    ));

    let (status, body, _) = call(&gw, &mint(&claims(), &key), "mock-gpt").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello with a token"
    );
    // API keys keep working beside tokens.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("mock-gpt", "x", false))
            .await
            .status(),
        200
    );

    let foreign = SigningKeyPair::generate();
    let with = |f: &dyn Fn(&mut Claims)| {
        let mut c = claims();
        f(&mut c);
        mint(&c, &key)
    };
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": key.kid()})),
        b64(serde_json::to_value(claims()).unwrap())
    );
    let good = mint(&claims(), &key);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c.sub = "someone-else".into();
    parts[1] = b64(serde_json::to_value(c).unwrap());
    let tampered = parts.join(".");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            with(&|c| {
                c.iat -= 600;
                c.exp = now() - 60
            }),
            401,
            "token_expired",
        ),
        (
            with(&|c| c.nbf = Some(now() + 120)),
            401,
            "token_not_yet_valid",
        ),
        (
            with(&|c| c.aud = Audience::One("another-gateway".into())),
            401,
            "invalid_audience",
        ),
        (mint(&claims(), &foreign), 401, "invalid_signature"),
        (alg_none, 401, "invalid_token"),
        (tampered, 401, "invalid_signature"),
        (
            with(&|c| c.jti = "tok-revoked".into()),
            401,
            "token_revoked",
        ),
        (
            with(&|c| c.sandbox = Some("sb-revoked".into())),
            401,
            "sandbox_revoked",
        ),
    ];
    for (token, status, code) in cases {
        let (s, body, header) = call(&gw, &token, "mock-gpt").await;
        assert_eq!((s, header.as_str()), (status, code), "{body}");
        assert_eq!(body["error"]["code"], code);
    }
    // The token's model scope is enforced.
    let (s, body, _) = call(&gw, &good, "other-model").await;
    assert_eq!(s, 403);
    assert_eq!(body["error"]["code"], "model_not_allowed");
    // Anthropic callers get Anthropic's error shape, the code in a header.
    let revoked = with(&|c| c.sandbox = Some("sb-revoked".into()));
    let r = request_as(&gw, "/v1/messages", &revoked)
        .json(&json!({"model": "mock-claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r), "sandbox_revoked");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(
        mock_calls(&mock).await,
        2,
        "no refused call reached the provider"
    );
}

#[test]
fn a_bad_trust_bundle_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, "{\"keys\": []}").unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!("tokens:\n  jwks_file: {}\nproviders:\n  - name: m\n    kind: mock\nmodels:\n  - name: x\n    provider: m\n", jwks.display()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens") && err.contains("no Ed25519 key"),
        "{err}"
    );
}
