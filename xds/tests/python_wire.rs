//! Wire compatibility: an independent Python ADS client (grpcio +
//! xds-protos, `tests/python/`) subscribes to this crate's server, receives
//! TapPass resources, verifies their signatures, ACKs and NACKs.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::*;
use tappass_xds::pb::tappass::v1::{PolicySnapshot, TrustBundle, TrustBundlePayload};
use tappass_xds::types::{POLICY_SNAPSHOT, TRUST_BUNDLE};
use tappass_xds::{pack, Resource, SnapshotCache, SnapshotSigner, FILE_DESCRIPTOR_SET};

fn fresh_policy(s: &SnapshotSigner, name: &str, v: u64) -> Resource {
    let json = format!("{{\"payload\":{{\"identity\":{{\"agent\":\"{name}\",\"policy_version\":{v}}}}},\"signature\":{{}}}}");
    let r: PolicySnapshot = s.resource(
        name,
        v,
        SystemTime::now(),
        Duration::from_secs(300),
        json.into_bytes(),
    );
    Resource::new(name, pack(&r))
}

fn tampered_policy(s: &SnapshotSigner, name: &str, v: u64) -> Resource {
    let mut r: PolicySnapshot = s.resource(
        name,
        v,
        SystemTime::now(),
        Duration::from_secs(300),
        b"{\"allow\":false}".to_vec(),
    );
    if let Some(snap) = r.snapshot.as_mut() {
        snap.payload = b"{\"allow\":true}".to_vec();
    }
    Resource::new(name, pack(&r))
}

async fn drive(srv: &TestServer, cache: &SnapshotCache, s: &SnapshotSigner, node: &str) {
    let set = |version: &str, resources: Vec<Resource>| {
        cache.set_for_node(node, POLICY_SNAPSHOT, snapshot(version, resources));
    };
    srv.wait_node(node, |n| {
        n.acked_version(POLICY_SNAPSHOT) == Some("1") && n.acked_version(TRUST_BUNDLE) == Some("t1")
    })
    .await;
    set(
        "2",
        vec![fresh_policy(s, "alpha", 2), tampered_policy(s, "beta", 2)],
    );
    let st = srv.wait_node(node, |n| n.last_nack.is_some()).await;
    let nack = st.last_nack.clone().unwrap();
    assert_eq!(nack.rejected_version, "2", "{node}");
    assert_eq!(nack.code, 3);
    assert!(
        nack.message.contains("beta: signature does not verify"),
        "{node}: {}",
        nack.message
    );
    assert_eq!(st.acked_version(POLICY_SNAPSHOT), Some("1"), "{node}");
    set(
        "3",
        vec![fresh_policy(s, "alpha", 3), fresh_policy(s, "beta", 3)],
    );
    srv.wait_node(node, |n| n.acked_version(POLICY_SNAPSHOT) == Some("3"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_receives_acks_and_nacks() {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    assert!(
        matches!(&python, Ok(o) if o.status.success()),
        "python3 is required for the xDS wire-compatibility test and was not found \
         (install python3 and python3-venv): {python:?}"
    );

    let signer = SnapshotSigner::from_seed([42; 32]);
    let cache = SnapshotCache::new();
    for node in ["py-sotw", "py-delta"] {
        cache.set_for_node(
            node,
            POLICY_SNAPSHOT,
            snapshot("1", vec![fresh_policy(&signer, "alpha", 1)]),
        );
    }
    let tb: TrustBundle = signer.resource(
        "jwks",
        1,
        SystemTime::now(),
        Duration::from_secs(300),
        prost::Message::encode_to_vec(&TrustBundlePayload {
            jwks_json:
                "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"k1\",\"x\":\"AA\"}]}"
                    .into(),
        }),
    );
    cache.set(
        TRUST_BUNDLE,
        snapshot("t1", vec![Resource::new("jwks", pack(&tb))]),
    );
    let srv = TestServer::start(cache.clone());

    let dir = tempfile::tempdir().unwrap();
    let fds = dir.path().join("tappass_xds.pb");
    std::fs::write(&fds, FILE_DESCRIPTOR_SET).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/run.sh");
    let child = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("--addr")
        .arg(srv.addr.to_string())
        .arg("--descriptors")
        .arg(&fds)
        .arg("--pubkey")
        .arg(hex::encode(signer.verifying_key().as_bytes()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start tests/python/run.sh");

    // The venv is created on first use: allow for the install.
    let deadline = Duration::from_secs(180);
    let drive_all = async {
        // Wait for the Python client to connect before timing its steps.
        let mut rx = srv.server.status_changes();
        while srv.server.node("py-sotw").is_none() || srv.server.node("py-delta").is_none() {
            rx.changed().await.unwrap();
        }
        tokio::join!(
            drive(&srv, &cache, &signer, "py-sotw"),
            drive(&srv, &cache, &signer, "py-delta")
        );
    };
    let out = tokio::time::timeout(deadline, async {
        let output = child.wait_with_output();
        tokio::pin!(output);
        tokio::pin!(drive_all);
        tokio::select! {
            o = &mut output => {
                let o = o.unwrap();
                assert!(
                    o.status.success(),
                    "python client failed: {}\nstdout:\n{}\nstderr:\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                // It finished first: the server must have seen the whole exchange.
                tokio::time::timeout(Duration::from_secs(10), drive_all)
                    .await
                    .expect("server did not see the whole exchange");
                o
            }
            _ = &mut drive_all => output.await.unwrap(),
        }
    })
    .await
    .expect("python wire test timed out");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, mode) in lines.iter().zip(["sotw", "delta"]) {
        assert!(line.contains(&format!("\"mode\": \"{mode}\"")), "{line}");
        assert!(line.contains("\"acked\": [\"1\", \"3\"]"), "{line}");
        assert!(line.contains("\"nacked\": [\"2\"]"), "{line}");
        assert!(line.contains("\"trust_acked\": [\"t1\"]"), "{line}");
    }
    // The delta client ended holding both policies at version 3.
    assert!(lines[1].contains("\"alpha\""), "{}", lines[1]);
    assert!(lines[1].contains("\"beta\""), "{}", lines[1]);
}
