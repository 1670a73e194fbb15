//! Standalone mode: signed Compiled Policies from a local directory,
//! verified, enforced, and reloaded on change without a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tappass_policies::{keypair_from_seed, sign, CompiledPolicy, SecretKeyFile};

fn golden() -> CompiledPolicy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/examples/golden/support-emailer/compiled.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The support emailer's policy at `version`, with the action of its
/// `pii_detection` step set to `pii`.
fn policy(version: u64, pii: &str, key: &SecretKeyFile) -> String {
    let mut v = serde_json::to_value(golden()).unwrap();
    v["identity"]["policy_version"] = json!(version);
    for step in v["pipeline"].as_array_mut().unwrap() {
        if step["step"] == "pii_detection" {
            step["action"] = json!(pii);
        }
    }
    let p: CompiledPolicy = serde_json::from_value(v).unwrap();
    serde_json::to_string(&sign(&p, key).unwrap()).unwrap()
}

async fn call(gw: &Gateway, key: &str) -> (u16, String) {
    let r = request_as(gw, "/v1/chat/completions", key)
        .json(&chat("m", "write to jane.doe@example.com please", false))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), error_code(&r))
}

async fn last_upstream_body(mock: &Proc) -> String {
    mock_requests(mock).await.last().unwrap()["body"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn signed_local_policies_are_enforced_and_reloaded() {
    let mock = start_mock(&[]);
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let (secret, public) = keypair_from_seed([3u8; 32]);
    let public_file = dir.path().join("policy.pub");
    std::fs::write(&public_file, serde_json::to_string(&public).unwrap()).unwrap();
    let file = policies.join("support-emailer.json");
    std::fs::write(&file, policy(1, "redact", &secret)).unwrap();
    // The agent is the API key's name: the caller is the support emailer.
    let agent_key = "tp-support-emailer-key";
    let gw = Gateway::start_with_keys(
        &format!(
            "local_policies:\n  dir: {}\n  public_key_file: {}\nbudgets:\n  prices:\n    m: {{ input: 1.0, output: 2.0 }}\nproviders:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n",
            policies.display(),
            public_file.display(),
            mock.url()
        ),
        &[("support-emailer", agent_key)],
    );

    // Version 1 redacts personal data before the upstream sees it.
    assert_eq!(call(&gw, agent_key).await.0, 200);
    let seen = last_upstream_body(&mock).await;
    assert!(!seen.contains("jane.doe@example.com"), "{seen}");
    // Another caller has no policy: nothing runs for it.
    assert_eq!(call(&gw, KEY).await.0, 200);
    assert!(last_upstream_body(&mock)
        .await
        .contains("jane.doe@example.com"));

    // Version 2 blocks it: picked up without a restart.
    std::fs::write(&file, policy(2, "block", &secret)).unwrap();
    let mut got = (0, String::new());
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = call(&gw, agent_key).await;
        if got.0 == 403 {
            break;
        }
    }
    assert_eq!(got, (403, "pii_blocked".to_string()));

    // An older version, a tampered file and a foreign key are refused; the
    // last good policy keeps serving.
    let (foreign, _) = keypair_from_seed([4u8; 32]);
    let mut tampered: Value = serde_json::from_str(&policy(3, "redact", &secret)).unwrap();
    tampered["payload"]["identity"]["agent"] = json!("support-emailer");
    tampered["payload"]["tools"]["deny"] = json!([]);
    for bad in [
        policy(1, "redact", &secret),
        tampered.to_string(),
        policy(4, "redact", &foreign),
    ] {
        std::fs::write(&file, bad).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(call(&gw, agent_key).await, (403, "pii_blocked".to_string()));
    }
}

#[test]
fn a_policy_that_does_not_verify_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = keypair_from_seed([5u8; 32]);
    let (_, other_public) = keypair_from_seed([6u8; 32]);
    std::fs::write(dir.path().join("p.json"), policy(1, "redact", &secret)).unwrap();
    let public_file = dir.path().join("k.pub");
    std::fs::write(&public_file, serde_json::to_string(&other_public).unwrap()).unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\nlocal_policies:\n  dir: {}\n  public_key_file: {}\nproviders:\n  - name: m\n    kind: mock\nmodels:\n  - name: x\n    provider: m\n",
            free_port(),
            free_port(),
            dir.path().display(),
            public_file.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tappass-gateway"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not verify"), "{err}");
}
