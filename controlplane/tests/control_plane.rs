//! The control plane over real sockets, real RocksDB and real gRPC.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use prost::Message;
use serde_json::{json, Value};
use tappass_controlplane::Options;
use tappass_policies::PublicKeyFile;
use tappass_xds::pb::tappass::v1 as tp;
use tappass_xds::types::{POLICY_SNAPSHOT, REVOCATIONS, TRUST_BUNDLE};
use tappass_xds::{
    unpack, AdsClient, ClientConfig, Protocol, SnapshotVerifier, Subscription, Update,
    UpdateHandler,
};
use tokio::sync::mpsc;

/// Forwards every update to the test and ACKs it.
struct Forward(mpsc::UnboundedSender<Update>);

#[tonic::async_trait]
impl UpdateHandler for Forward {
    async fn on_update(&self, u: &Update) -> Result<(), String> {
        let _ = self.0.send(u.clone());
        Ok(())
    }
}

async fn next_update(rx: &mut mpsc::UnboundedReceiver<Update>, type_url: &str) -> Update {
    tokio::time::timeout(WAIT, async {
        loop {
            let u = rx.recv().await.expect("client gone");
            if u.type_url == type_url {
                return u;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {type_url} update"))
}

fn snapshot_key(dir: &std::path::Path) -> (PublicKeyFile, SnapshotVerifier) {
    let text = std::fs::read_to_string(dir.join("snapshot-key.pub")).unwrap();
    let pk = PublicKeyFile::parse(&text).unwrap();
    let vk = pk.verifying_key().unwrap();
    (pk, SnapshotVerifier::new([vk]))
}

/// Verifies a policy resource (envelope and inner document); returns
/// (envelope version, policy version, document).
fn open_policy(
    u: &Update,
    agent: &str,
    pk: &PublicKeyFile,
    v: &SnapshotVerifier,
) -> (u64, u64, tappass_policies::CompiledPolicy) {
    let r: tp::PolicySnapshot = unpack(&u.resources[agent].body).unwrap();
    let ok = v.verify_resource(&r, None, SystemTime::now()).unwrap();
    let doc = std::str::from_utf8(ok.payload).unwrap();
    let policy = tappass_policies::verify(doc, std::slice::from_ref(pk), None).unwrap();
    (ok.version, policy.identity.policy_version, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_pushes_a_newly_signed_policy_to_subscribed_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = Running::start(&data, test_options()).await;
    cp.ok(
        "POST",
        "/v1/agents",
        json!({"name": "refund-bot", "project": "payments"}),
    )
    .await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let cfg = ClientConfig::new(cp.xds_url.clone(), "gw-1", Protocol::Delta)
        .subscribe(Subscription::wildcard(POLICY_SNAPSHOT))
        .subscribe(Subscription::wildcard(TRUST_BUNDLE));
    let client = AdsClient::new(cfg, Arc::new(Forward(tx))).spawn();
    let (pk, verifier) = snapshot_key(&data);
    // The published key is the one the admin API reports.
    assert_eq!(cp.get("/v1/snapshot-key").await["key_id"], pk.key_id);

    let first = next_update(&mut rx, POLICY_SNAPSHOT).await;
    let (env1, pv1, _) = open_policy(&first, "refund-bot", &pk, &verifier);
    assert_eq!(pv1, 1);

    // A rule change at the agent level: a new version, signed, pushed.
    let report = cp
        .ok(
            "PUT",
            "/v1/policy/sources",
            json!({"level": "agent=refund-bot", "files": [
                {"name": "budget.yaml", "text": "budget:\n  tool_calls_per_minute: 7\n"}
            ]}),
        )
        .await;
    assert_eq!(report["changed"]["refund-bot"], 2, "{report}");
    let second = next_update(&mut rx, POLICY_SNAPSHOT).await;
    let (env2, pv2, policy) = open_policy(&second, "refund-bot", &pk, &verifier);
    assert!(env2 > env1, "{env2} > {env1}");
    assert_eq!(pv2, 2);
    assert_eq!(policy.budget.tool_calls_per_minute, Some(7));
    assert!(second.version.parse::<u64>().unwrap() > first.version.parse::<u64>().unwrap());

    // The previous envelope is refused as a replay by a verifier holding
    // the new one; a foreign key refuses both.
    let r1: tp::PolicySnapshot = unpack(&first.resources["refund-bot"].body).unwrap();
    assert!(verifier
        .verify_resource(&r1, Some(env2), SystemTime::now())
        .is_err());
    let foreign =
        SnapshotVerifier::new([ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key()]);
    assert!(foreign
        .verify_resource(&r1, None, SystemTime::now())
        .is_err());

    // A policy that does not compile changes nothing and pushes nothing.
    let (s, e) = cp
        .call(
            "PUT",
            "/v1/policy/sources",
            Some(json!({"level": "agent=refund-bot", "files": [
                {"name": "bad.yaml", "text": "budget:\n  no_such_key: 1\n"}
            ]})),
        )
        .await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["error"]["code"], "policy_error");
    let sources = cp.get("/v1/policy/sources").await;
    assert!(sources.get("agents/refund-bot/bad.yaml").is_none());

    // The node's ACK shows in the status.
    let want = second.version.clone();
    let mut acked = None;
    for _ in 0..100 {
        let st = cp.get("/v1/status").await;
        let gw = st["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["node_id"] == "gw-1")
            .cloned();
        if let Some(g) = gw {
            acked = g["types"][POLICY_SNAPSHOT]["acked_version"]
                .as_str()
                .map(str::to_owned);
            if acked.as_deref() == Some(&want) {
                assert_eq!(g["connected"], true);
                assert!(g["connected_since"].as_i64().unwrap() > 0);
                assert_eq!(st["versions"][POLICY_SNAPSHOT], want.as_str());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(acked.as_deref(), Some(want.as_str()));

    // A compliance pack applied at org level reaches the agent too.
    let r = cp
        .ok(
            "PUT",
            "/v1/policy/packs",
            json!({"level": "org", "pack": "owasp-llm-top10"}),
        )
        .await;
    assert_eq!(r["changed"]["refund-bot"], 3, "{r}");
    let third = next_update(&mut rx, POLICY_SNAPSHOT).await;
    let (_, pv3, _) = open_policy(&third, "refund-bot", &pk, &verifier);
    assert_eq!(pv3, 3);
    let (s, e) = cp
        .call(
            "PUT",
            "/v1/policy/packs",
            Some(json!({"level": "org", "pack": "no-such-pack"})),
        )
        .await;
    assert_eq!(s, 404, "{e}");

    client.shutdown().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_tokens_valid_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let opts = Options {
        max_token_ttl: Duration::from_secs(4),
        ..test_options()
    };
    let cp = Running::start(&data, opts).await;
    cp.ok("POST", "/v1/agents", json!({"name": "bot"})).await;
    let old = cp
        .ok(
            "POST",
            "/v1/tokens",
            json!({"agent": "bot", "ttl_seconds": 2}),
        )
        .await;
    let old_kid = old["kid"].as_str().unwrap().to_string();
    let verify = |t: Value| {
        let cp = &cp;
        async move {
            let (s, v) = cp
                .call_as(None, "POST", "/v1/tokens/verify", Some(json!({"token": t})))
                .await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    let kids = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };

    let keys = cp.ok("POST", "/v1/token-keys/rotate", json!({})).await;
    let active: Vec<&Value> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["active"] == true)
        .collect();
    assert_eq!(active.len(), 1);
    let new_kid = active[0]["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);

    // Both keys are published; the old token still verifies.
    let jwks = cp.get("/.well-known/jwks.json").await;
    assert!(kids(&jwks).contains(&old_kid) && kids(&jwks).contains(&new_kid));
    let pushed = cp.cp.snapshot_cache().get(TRUST_BUNDLE).unwrap();
    let tb: tp::TrustBundle = unpack(&pushed.resources["jwks"].body).unwrap();
    let payload = tp::TrustBundlePayload::decode(tb.snapshot.unwrap().payload.as_slice()).unwrap();
    assert!(payload.jwks_json.contains(&old_kid) && payload.jwks_json.contains(&new_kid));
    let v = verify(old["token"].clone()).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["claims"]["sub"], "bot");
    let new = cp.ok("POST", "/v1/tokens", json!({"agent": "bot"})).await;
    assert_eq!(new["kid"], new_kid.as_str());
    assert_eq!(verify(new["token"].clone()).await["valid"], true);

    // The old token expires on its own schedule.
    let exp = old["exp"].as_i64().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // `exp` is the last valid second.
    tokio::time::sleep(Duration::from_secs_f64((exp as f64 + 1.05 - now).max(0.0))).await;
    let v = verify(old["token"].clone()).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["error"], "token_expired", "{v}");

    // After the longest token lifetime the old key leaves the JWKS, and the
    // pushed trust bundle follows.
    let mut gone = false;
    for _ in 0..40 {
        let jwks = cp.get("/.well-known/jwks.json").await;
        let pushed = cp.cp.snapshot_cache().get(TRUST_BUNDLE).unwrap();
        let tb: tp::TrustBundle = unpack(&pushed.resources["jwks"].body).unwrap();
        let p = tp::TrustBundlePayload::decode(tb.snapshot.unwrap().payload.as_slice()).unwrap();
        if !kids(&jwks).contains(&old_kid) && !p.jwks_json.contains(&old_kid) {
            assert!(kids(&jwks).contains(&new_kid));
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the retired key is still published");
    cp.stop().await;
}

fn pushed_revocations(cp: &Running) -> tp::RevocationsPayload {
    let snap = cp.cp.snapshot_cache().get(REVOCATIONS).unwrap();
    let r: tp::Revocations = unpack(&snap.resources["revocations"].body).unwrap();
    tp::RevocationsPayload::decode(r.snapshot.unwrap().payload.as_slice()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_pushed_and_refused_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = Running::start(&data, test_options()).await;
    cp.ok("POST", "/v1/agents", json!({"name": "bot"})).await;
    let plain = cp.ok("POST", "/v1/tokens", json!({"agent": "bot"})).await;
    let boxed = cp
        .ok(
            "POST",
            "/v1/tokens",
            json!({"agent": "bot", "sandbox": "sb-7"}),
        )
        .await;
    let other = cp.ok("POST", "/v1/tokens", json!({"agent": "bot"})).await;
    let verify = |t: &Value| {
        let cp = &cp;
        let t = t["token"].clone();
        async move {
            cp.call_as(None, "POST", "/v1/tokens/verify", Some(json!({"token": t})))
                .await
                .1
        }
    };
    assert_eq!(verify(&plain).await["valid"], true);
    assert_eq!(verify(&boxed).await["valid"], true);
    let before = cp
        .cp
        .snapshot_cache()
        .get(REVOCATIONS)
        .unwrap()
        .version
        .clone();

    let jti = plain["jti"].as_str().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args(["token", "revoke", jti, "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tappass"))
        .args([
            "sandbox",
            "revoke",
            "sb-7",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let p = pushed_revocations(&cp);
    assert_eq!(p.tokens.len(), 1);
    assert_eq!(p.tokens[0].jti, jti);
    assert!(p.tokens[0].expires_at.unwrap().seconds >= plain["exp"].as_i64().unwrap());
    assert_eq!(p.sandboxes.len(), 1);
    assert_eq!(p.sandboxes[0].sandbox_id, "sb-7");
    let after = cp
        .cp
        .snapshot_cache()
        .get(REVOCATIONS)
        .unwrap()
        .version
        .clone();
    assert!(after.parse::<u64>().unwrap() > before.parse::<u64>().unwrap());

    let v = verify(&plain).await;
    assert_eq!(
        (v["valid"].clone(), v["error"].clone()),
        (json!(false), json!("token_revoked"))
    );
    let v = verify(&boxed).await;
    assert_eq!(v["error"], "sandbox_revoked", "{v}");
    assert_eq!(verify(&other).await["valid"], true);
    let (s, e) = cp
        .call(
            "POST",
            "/v1/tokens",
            Some(json!({"agent": "bot", "sandbox": "sb-7"})),
        )
        .await;
    assert_eq!(s, 409, "{e}");
    let listed = cp.get("/v1/revocations").await;
    assert_eq!(listed["tokens"][0]["id"], jti);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_accepts_only_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = Running::start(&data, test_options()).await;
    cp.ok("POST", "/v1/agents", json!({"name": "bot"})).await;
    let token = cp.ok("POST", "/v1/tokens", json!({"agent": "bot"})).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let key = cp.ok("POST", "/v1/agents/bot/keys", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let wrong = format!("{}x", cp.token);
    for path in [
        "/v1/status",
        "/v1/agents",
        "/v1/credentials",
        "/v1/snapshot-key",
    ] {
        let (s, v) = cp.call_as(None, "GET", path, None).await;
        assert_eq!(s, 401, "{path}: {v}");
        assert_eq!(v["error"]["code"], "admin_token_required");
        for bad in [wrong.as_str(), token.as_str(), key.as_str(), ""] {
            let (s, v) = cp.call_as(Some(bad), "GET", path, None).await;
            assert_eq!(s, 401, "{path} with {bad}: {v}");
        }
    }
    for (m, path, body) in [
        ("POST", "/v1/tokens", json!({"agent": "bot"})),
        ("POST", "/v1/token-keys/rotate", json!({})),
        ("PUT", "/v1/credentials/openai", json!({"value": "x"})),
        ("POST", "/v1/agents/bot/keys", json!({})),
    ] {
        for bad in [token.as_str(), key.as_str()] {
            let (s, _) = cp.call_as(Some(bad), m, path, Some(body.clone())).await;
            assert_eq!(s, 401, "{m} {path}");
        }
    }
    assert_eq!(
        cp.get("/v1/credentials").await,
        json!([]),
        "nothing was stored"
    );
    // Public endpoints need no credential.
    let (s, _) = cp
        .call_as(None, "GET", "/.well-known/jwks.json", None)
        .await;
    assert_eq!(s, 200);
    // Bad input: clear JSON errors.
    let (s, v) = cp
        .call(
            "POST",
            "/v1/agents",
            Some(json!({"name": "bot", "colour": 1})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("colour"));
    let (s, v) = cp
        .call("POST", "/v1/agents", Some(json!({"name": "../etc"})))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = cp
        .call("POST", "/v1/agents", Some(json!({"name": "bot"})))
        .await;
    assert_eq!(s, 409);
    let (s, v) = cp
        .call(
            "PUT",
            "/v1/policy/sources",
            Some(json!({"level": "galaxy", "files": []})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = cp
        .call(
            "PUT",
            "/v1/policy/sources",
            Some(json!({"level": "agent=bot", "files": [{"name": "../x.yaml", "text": ""}]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = cp
        .call_as(None, "POST", "/v1/tokens/verify", Some(json!("nope")))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = cp
        .call_as(
            None,
            "POST",
            "/v1/tokens/verify",
            Some(json!({"token": "eyJ.garbage.x"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["valid"], false);
    let (s, _) = cp.call("GET", "/v1/agents/nobody/policy", None).await;
    assert_eq!(s, 404);
    // The API key maps to the agent in the pushed hashes (and only its hash
    // is there).
    let snap = cp
        .cp
        .snapshot_cache()
        .get(tappass_xds::types::API_KEY_HASHES)
        .unwrap();
    let r: tp::ApiKeyHashes = unpack(&snap.resources["api-keys"].body).unwrap();
    let p = tp::ApiKeyHashesPayload::decode(r.snapshot.unwrap().payload.as_slice()).unwrap();
    assert_eq!(p.keys.len(), 1);
    use sha2::Digest;
    assert_eq!(
        p.keys[0].hash,
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    );
    assert_eq!(p.keys[0].agent, "bot");
    assert!(!format!("{p:?}").contains(&key));
    cp.stop().await;
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if let Ok(b) = std::fs::read(&p) {
            if b.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_credentials_are_never_returned_nor_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let secret = "sk-proj-SECRETzq8Xv3Lw9NpA7tR2mYcK";
    let cp = Running::start(&data, test_options()).await;
    cp.ok("POST", "/v1/agents", json!({"name": "bot"})).await;
    let put = cp
        .ok("PUT", "/v1/credentials/openai", json!({"value": secret}))
        .await;
    assert_eq!(put["name"], "openai");
    // Every read endpoint, and the answer to the write itself.
    let mut seen = vec![put.to_string()];
    for path in [
        "/v1/credentials",
        "/v1/status",
        "/v1/agents",
        "/v1/agents/bot",
        "/v1/agents/bot/policy",
        "/v1/agents/bot/preview",
        "/v1/policy/sources",
        "/v1/policy/packs",
        "/v1/keys",
        "/v1/revocations",
        "/v1/token-keys",
        "/v1/snapshot-key",
        "/.well-known/jwks.json",
    ] {
        let (s, v) = cp.call("GET", path, None).await;
        assert_eq!(s, 200, "{path}");
        seen.push(v.to_string());
    }
    for s in &seen {
        assert!(!s.contains(secret), "{s}");
    }
    assert_eq!(cp.get("/v1/credentials").await[0]["name"], "openai");
    // The embedding process can read it back (it is really stored).
    assert_eq!(cp.cp.credential_value("openai").unwrap(), secret);
    // Nothing that is pushed contains it either.
    for t in tappass_controlplane::PUBLISHED_TYPES {
        let snap = cp.cp.snapshot_cache().get(t).unwrap();
        for r in snap.resources.values() {
            assert!(!r
                .body
                .value
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()));
        }
    }
    cp.cp.flush().unwrap();
    cp.stop().await;
    // Neither the RocksDB files (WAL, SST, manifest) nor anything else in
    // the data directory holds it in clear text.
    assert!(data.join("state").read_dir().unwrap().count() > 0);
    let hits = files_containing(&data, secret.as_bytes());
    assert!(hits.is_empty(), "credential in clear text in {hits:?}");
    // Sanity: the scan does find what is stored in clear (the agent name).
    assert!(!files_containing(&data.join("state"), b"agent/bot").is_empty());
    // A wrong master key cannot open the data directory.
    let other = dir.path().join("other.key");
    std::fs::write(&other, hex::encode([1u8; 32])).unwrap();
    let err = tappass_controlplane::ControlPlane::open(
        &data,
        Options {
            master_key: tappass_controlplane::MasterKeySource::File(other),
            ..test_options()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("master key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_versions_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = Running::start(&data, test_options()).await;
    cp.ok(
        "POST",
        "/v1/agents",
        json!({"name": "bot", "project": "p1"}),
    )
    .await;
    cp.ok(
        "PUT",
        "/v1/policy/sources",
        json!({"level": "project=p1", "files": [
            {"name": "p.yaml", "text": "budget:\n  tokens_per_day: 5000\n"}
        ]}),
    )
    .await;
    let key = cp.ok("POST", "/v1/agents/bot/keys", json!({})).await;
    let token = cp.ok("POST", "/v1/tokens", json!({"agent": "bot"})).await;
    let before = cp.get("/v1/status").await["versions"].clone();
    let envelope = |cp: &Running| {
        let s = cp.cp.snapshot_cache().get(POLICY_SNAPSHOT).unwrap();
        let r: tp::PolicySnapshot = unpack(&s.resources["bot"].body).unwrap();
        let snap = r.snapshot.unwrap();
        let doc: Value = serde_json::from_slice(&snap.payload).unwrap();
        (
            snap.version,
            doc["payload"]["identity"]["policy_version"]
                .as_u64()
                .unwrap(),
        )
    };
    let (env_before, pv_before) = envelope(&cp);
    assert_eq!(pv_before, 2);
    cp.stop().await;

    let cp = Running::start(&data, test_options()).await;
    let after = cp.get("/v1/status").await["versions"].clone();
    for t in tappass_controlplane::PUBLISHED_TYPES {
        let b: u64 = before[t].as_str().unwrap().parse().unwrap();
        let a: u64 = after[t].as_str().unwrap().parse().unwrap();
        assert!(a > b, "{t}: {a} > {b}");
    }
    let (env_after, pv_after) = envelope(&cp);
    assert!(env_after > env_before);
    // Same content: same policy version.
    assert_eq!(pv_after, pv_before);
    assert_eq!(cp.get("/v1/agents").await[0]["name"], "bot");
    assert_eq!(cp.get("/v1/keys").await[0]["key_id"], key["key_id"]);
    let v = cp
        .call_as(
            None,
            "POST",
            "/v1/tokens/verify",
            Some(json!({"token": token["token"]})),
        )
        .await
        .1;
    assert_eq!(v["valid"], true, "{v}");
    // A change after the restart continues the sequence.
    let r = cp
        .ok(
            "PUT",
            "/v1/policy/sources",
            json!({"level": "project=p1", "files": [
                {"name": "p.yaml", "text": "budget:\n  tokens_per_day: 4000\n"}
            ]}),
        )
        .await;
    assert_eq!(r["changed"]["bot"], 3);
    cp.stop().await;
}
