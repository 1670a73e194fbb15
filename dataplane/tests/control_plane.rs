//! The gateway subscribed to a real ADS server (the xDS crate's server over
//! gRPC on loopback): verified hot swap, NACK of bad snapshots, persistence
//! across restarts, and fail-closed past the TTL.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use tappass_xds::pb::tappass::v1::{
    ApiKeyHash, ApiKeyHashes, ApiKeyHashesPayload, Revocations, RevocationsPayload, RevokedSandbox,
    TrustBundle, TrustBundlePayload,
};
use tappass_xds::types::{API_KEY_HASHES, REVOCATIONS, TRUST_BUNDLE};
use tappass_xds::{pack, AdsServer, Resource, SnapshotCache, SnapshotSigner, TypeSnapshot};

const PUSHED_KEY: &str = "tp-pushed-key";

/// An ADS server on its own thread and runtime.
struct ControlPlane {
    addr: SocketAddr,
    server: AdsServer,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    fn start(cache: Arc<SnapshotCache>, addr: SocketAddr) -> ControlPlane {
        let server = AdsServer::new(cache);
        let srv = server.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = rt.block_on(async {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.set_reuseaddr(true).unwrap();
                sock.bind(addr).unwrap();
                sock.listen(128).unwrap()
            });
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            rt.spawn(async move {
                let _ = srv.serve(listener, std::future::pending()).await;
            });
            let _ = stop_rx.recv();
            rt.shutdown_timeout(Duration::ZERO);
        });
        let addr = addr_rx.recv().unwrap();
        ControlPlane {
            addr,
            server,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    async fn wait_for(
        &self,
        node: &str,
        what: &str,
        ok: impl Fn(&tappass_xds::NodeStatus) -> bool,
    ) {
        for _ in 0..200 {
            if self.server.node(node).is_some_and(|n| ok(&n)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "control plane never saw {what}: {:?}",
            self.server.node(node)
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn keys_resource(signer: &SnapshotSigner, version: u64, ttl: Duration) -> Resource {
    let payload = ApiKeyHashesPayload {
        keys: vec![ApiKeyHash {
            alg: "sha256".into(),
            hash: tappass_dataplane::auth::hash_key(PUSHED_KEY),
            agent: "pushed-agent".into(),
            project: "support".into(),
            key_id: "k1".into(),
            expires_at: None,
        }],
    };
    let r: ApiKeyHashes = signer.resource(
        "api-keys",
        version,
        SystemTime::now(),
        ttl,
        prost::Message::encode_to_vec(&payload),
    );
    Resource::new("api-keys", pack(&r))
}

fn set_keys(cache: &SnapshotCache, res: Resource, version: &str) {
    cache.set(API_KEY_HASHES, TypeSnapshot::new(version, vec![res]));
}

async fn call_with(gw: &Gateway, key: &str) -> (u16, String) {
    let r = request_as(gw, "/v1/chat/completions", key)
        .json(&chat("m", "pushed identity", false))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), error_code(&r))
}

fn gateway_config(mock: &Proc, cp: SocketAddr, public: &str, state: &std::path::Path) -> String {
    format!(
        "control_plane:\n  url: http://{cp}\n  node_id: gw-under-test\n  snapshot_public_keys: [\"{public}\"]\n  state_dir: {}\ntokens:\n  audience: tappass-gateway\nproviders:\n  - name: p\n    kind: openai-compatible\n    base_url: {}/v1\nmodels:\n  - name: m\n    provider: p\n",
        state.display(),
        mock.url()
    )
}

#[tokio::test]
async fn pushed_identity_is_verified_swapped_persisted_and_expires_closed() {
    let mock = start_mock(&[]);
    let state = tempfile::tempdir().unwrap();
    let signer = SnapshotSigner::from_seed([7u8; 32]);
    let public = hex::encode(signer.verifying_key().as_bytes());
    let cache = SnapshotCache::new();
    // Long enough for every step up to the control plane's shutdown on a
    // busy two-core machine, short enough to wait out below.
    let ttl = Duration::from_secs(12);
    set_keys(&cache, keys_resource(&signer, 1, ttl), "1");
    let mut cp = ControlPlane::start(cache.clone(), "127.0.0.1:0".parse().unwrap());
    let cp_addr = cp.addr;
    let gw = Gateway::start(&gateway_config(&mock, cp_addr, &public, state.path()));
    cp.wait_for("gw-under-test", "the keys ACKed", |n| {
        n.acked_version(API_KEY_HASHES) == Some("1")
    })
    .await;
    assert_eq!(
        call_with(&gw, PUSHED_KEY).await.0,
        200,
        "a pushed key is accepted"
    );
    assert_eq!(
        call_with(&gw, KEY).await.0,
        200,
        "configured keys still work"
    );

    // A snapshot signed by an unknown key is NACKed and changes nothing.
    let stranger = SnapshotSigner::from_seed([9u8; 32]);
    set_keys(&cache, keys_resource(&stranger, 2, ttl), "2");
    cp.wait_for("gw-under-test", "a NACK of the foreign key", |n| {
        n.last_nack.is_some()
    })
    .await;
    let nack = cp.server.node("gw-under-test").unwrap().last_nack.unwrap();
    assert!(nack.message.contains("key"), "{nack:?}");
    assert_eq!(call_with(&gw, PUSHED_KEY).await.0, 200);

    // A tampered snapshot is NACKed.
    let mut res = keys_resource(&signer, 3, ttl);
    let last = res.body.value.len() - 1;
    res.body.value[last] ^= 0x01;
    set_keys(&cache, res, "3");
    cp.wait_for("gw-under-test", "a NACK of the tampered snapshot", |n| {
        n.last_nack
            .as_ref()
            .is_some_and(|x| x.rejected_version == "3")
    })
    .await;

    // Replaying an older signed version is NACKed too.
    set_keys(&cache, keys_resource(&signer, 5, ttl), "5");
    cp.wait_for("gw-under-test", "version 5 ACKed", |n| {
        n.acked_version(API_KEY_HASHES) == Some("5")
    })
    .await;
    set_keys(&cache, keys_resource(&signer, 4, ttl), "4-replay");
    cp.wait_for("gw-under-test", "a NACK of the replay", |n| {
        n.last_nack
            .as_ref()
            .is_some_and(|x| x.rejected_version == "4-replay")
    })
    .await;
    assert_eq!(call_with(&gw, PUSHED_KEY).await.0, 200);

    // Token key set and revocations pushed: a revoked sandbox is refused.
    let token_key = tappass_keys::SigningKeyPair::generate();
    let tb: TrustBundle = signer.resource(
        "jwks",
        1,
        SystemTime::now(),
        ttl,
        prost::Message::encode_to_vec(&TrustBundlePayload {
            jwks_json: token_key.jwks().to_string(),
        }),
    );
    cache.set(
        TRUST_BUNDLE,
        TypeSnapshot::new("t1", vec![Resource::new("jwks", pack(&tb))]),
    );
    let rv: Revocations = signer.resource(
        "revocations",
        1,
        SystemTime::now(),
        ttl,
        prost::Message::encode_to_vec(&RevocationsPayload {
            tokens: vec![],
            sandboxes: vec![RevokedSandbox {
                sandbox_id: "sb-bad".into(),
                expires_at: None,
            }],
        }),
    );
    cache.set(
        REVOCATIONS,
        TypeSnapshot::new("r1", vec![Resource::new("revocations", pack(&rv))]),
    );
    cp.wait_for("gw-under-test", "trust bundle and revocations ACKed", |n| {
        n.acked_version(TRUST_BUNDLE) == Some("t1") && n.acked_version(REVOCATIONS) == Some("r1")
    })
    .await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |sandbox: &str| tappass_tokens::Claims {
        iss: "tappass-control".into(),
        aud: tappass_tokens::Audience::One("tappass-gateway".into()),
        sub: "token-agent".into(),
        org: None,
        project: None,
        sandbox: Some(sandbox.into()),
        tier: None,
        scope: Default::default(),
        policy_version: None,
        iat: now,
        nbf: None,
        exp: now + 120,
        jti: format!("j-{sandbox}"),
    };
    assert_eq!(
        call_with(&gw, &tappass_tokens::mint(&claims("sb-ok"), &token_key))
            .await
            .0,
        200
    );
    assert_eq!(
        call_with(&gw, &tappass_tokens::mint(&claims("sb-bad"), &token_key)).await,
        (401, "sandbox_revoked".to_string())
    );

    // The control plane goes away: the gateway serves until the TTL, then
    // fails closed.
    cp.kill();
    assert_eq!(
        call_with(&gw, PUSHED_KEY).await.0,
        200,
        "still within the TTL"
    );
    let mut refused = (0, String::new());
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = call_with(&gw, PUSHED_KEY).await;
        if refused.0 == 503 {
            break;
        }
    }
    assert_eq!(refused, (503, "configuration_stale".to_string()));
    drop(gw);

    // Restart with the control plane down: the persisted snapshot serves at
    // once (fresh snapshots, long TTL), and nothing else is needed.
    // Every held type expires: each must be fresh again.
    let cache = SnapshotCache::new();
    let long = Duration::from_secs(600);
    set_keys(&cache, keys_resource(&signer, 10, long), "10");
    let tb: TrustBundle = signer.resource(
        "jwks",
        2,
        SystemTime::now(),
        long,
        prost::Message::encode_to_vec(&TrustBundlePayload {
            jwks_json: token_key.jwks().to_string(),
        }),
    );
    cache.set(
        TRUST_BUNDLE,
        TypeSnapshot::new("t2", vec![Resource::new("jwks", pack(&tb))]),
    );
    let rv: Revocations = signer.resource(
        "revocations",
        2,
        SystemTime::now(),
        long,
        prost::Message::encode_to_vec(&RevocationsPayload::default()),
    );
    cache.set(
        REVOCATIONS,
        TypeSnapshot::new("r2", vec![Resource::new("revocations", pack(&rv))]),
    );
    let cp = ControlPlane::start(cache, cp_addr);
    let gw = Gateway::start(&gateway_config(&mock, cp_addr, &public, state.path()));
    cp.wait_for("gw-under-test", "the fresh snapshots ACKed", |n| {
        n.acked_version(API_KEY_HASHES) == Some("10")
            && n.acked_version(TRUST_BUNDLE) == Some("t2")
            && n.acked_version(REVOCATIONS) == Some("r2")
    })
    .await;
    drop(cp);
    drop(gw);
    let gw = Gateway::start(&gateway_config(&mock, cp_addr, &public, state.path()));
    assert_eq!(
        call_with(&gw, PUSHED_KEY).await.0,
        200,
        "the persisted snapshot serves with the control plane down"
    );
    // A call is counted once its response has been written, which may be
    // just after the client has read it.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get_text(&gw.admin_url("/metrics")).await;
        if metrics.contains("tappass_requests_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.contains("tappass_requests_total"), "{metrics}");
}

#[test]
fn bad_control_plane_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        "control_plane:\n  url: http://127.0.0.1:1\n  snapshot_public_keys: [\"nothex\"]\nproviders:\n  - name: m\n    kind: mock\nmodels:\n  - name: x\n    provider: m\n",
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
        err.contains("control_plane.snapshot_public_keys[0]"),
        "{err}"
    );
}
