//! Wire compatibility of `tappass-control`: the independent Python ADS
//! client (grpcio + xds-protos, `xds/tests/python/`) subscribes to a running
//! control plane in state-of-the-world and delta mode, verifies the signed
//! resources it publishes with the snapshot key from the data directory,
//! ACKs them, NACKs a tampered snapshot, and ACKs the next policy pushed
//! after a `policy apply`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;
use tappass_xds::pb::tappass::v1::PolicySnapshot;
use tappass_xds::types::{POLICY_SNAPSHOT, TRUST_BUNDLE};
use tappass_xds::{pack, unpack, NodeStatus, Resource, TypeSnapshot, FILE_DESCRIPTOR_SET};

const NODES: [&str; 2] = ["py-sotw", "py-delta"];

async fn wait_node(cp: &Running, node: &str, f: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let mut rx = cp.cp.ads().status_changes();
    loop {
        if let Some(n) = cp.cp.ads().node(node) {
            if f(&n) {
                return n;
            }
        }
        rx.changed().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_against_tappass_control() {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    assert!(
        matches!(&python, Ok(o) if o.status.success()),
        "python3 is required for the xDS wire-compatibility test and was not found \
         (install python3 and python3-venv): {python:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = Running::start(&data, test_options()).await;
    cp.ok("POST", "/v1/agents", json!({"name": "alpha"})).await;
    cp.ok("POST", "/v1/agents", json!({"name": "beta"})).await;
    let v1 = cp.cp.snapshot_cache().get(POLICY_SNAPSHOT).unwrap();
    let trust = cp
        .cp
        .snapshot_cache()
        .get(TRUST_BUNDLE)
        .unwrap()
        .version
        .clone();

    let fds = dir.path().join("tappass_xds.pb");
    std::fs::write(&fds, FILE_DESCRIPTOR_SET).unwrap();
    let key = tappass_policies::PublicKeyFile::parse(
        &std::fs::read_to_string(data.join("snapshot-key.pub")).unwrap(),
    )
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xds/tests/python/run.sh");
    let xds_addr = cp.xds_url.trim_start_matches("http://").to_string();
    let child = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("--addr")
        .arg(&xds_addr)
        .arg("--descriptors")
        .arg(&fds)
        .arg("--pubkey")
        .arg(hex::encode(key.verifying_key().unwrap().as_bytes()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start xds/tests/python/run.sh");

    let drive = async {
        let v1 = v1.version.clone();
        for node in NODES {
            wait_node(&cp, node, |n| {
                n.acked_version(POLICY_SNAPSHOT) == Some(v1.as_str())
                    && n.acked_version(TRUST_BUNDLE) == Some(trust.as_str())
            })
            .await;
        }
        // A snapshot altered after signing, served to these nodes only.
        let mut r: PolicySnapshot = unpack(&v1_resource(&cp, "alpha").body).unwrap();
        if let Some(s) = r.snapshot.as_mut() {
            let text = String::from_utf8(s.payload.clone()).unwrap();
            s.payload = text.replacen("\"alpha\"", "\"admin\"", 1).into_bytes();
            assert_ne!(s.payload, text.as_bytes());
        }
        let tampered = TypeSnapshot::new(
            "tampered",
            [Resource::new("alpha", pack(&r)), v1_resource(&cp, "beta")],
        );
        for node in NODES {
            cp.cp
                .snapshot_cache()
                .set_for_node(node, POLICY_SNAPSHOT, tampered.clone());
        }
        for node in NODES {
            let st = wait_node(&cp, node, |n| n.last_nack.is_some()).await;
            let nack = st.last_nack.clone().unwrap();
            assert_eq!(nack.rejected_version, "tampered", "{node}");
            assert!(
                nack.message.contains("alpha: signature does not verify"),
                "{node}: {}",
                nack.message
            );
            assert_eq!(st.acked_version(POLICY_SNAPSHOT), Some(v1.as_str()));
        }
        // A real change through the admin API: recompiled, signed, pushed
        // (the nodes see it once the override is gone).
        let r = cp
            .ok(
                "PUT",
                "/v1/policy/sources",
                json!({"level": "agent=alpha", "files": [
                    {"name": "b.yaml", "text": "budget:\n  requests_per_minute: 30\n"}
                ]}),
            )
            .await;
        assert_eq!(r["changed"]["alpha"], 2, "{r}");
        let v2 = cp
            .cp
            .snapshot_cache()
            .get(POLICY_SNAPSHOT)
            .unwrap()
            .version
            .clone();
        // Drop the override: the nodes get the control plane's own snapshot.
        for node in NODES {
            cp.cp.snapshot_cache().clear_node(node);
        }
        for node in NODES {
            wait_node(&cp, node, |n| {
                n.acked_version(POLICY_SNAPSHOT) == Some(v2.as_str())
            })
            .await;
        }
        // `tappass status` shows both gateways at the current version.
        let st = cp.get("/v1/status").await;
        for node in NODES {
            let g = st["gateways"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["node_id"] == node)
                .cloned()
                .unwrap();
            assert_eq!(g["types"][POLICY_SNAPSHOT]["acked_version"], v2.as_str());
            assert_eq!(
                g["types"][POLICY_SNAPSHOT]["last_nack"]["rejected_version"],
                "tampered"
            );
        }
        (v1, v2)
    };

    // The venv is created on first use: allow for the install.
    let (out, (v1, v2)) = tokio::time::timeout(Duration::from_secs(180), async {
        let output = child.wait_with_output();
        tokio::pin!(output);
        tokio::pin!(drive);
        tokio::select! {
            o = &mut output => {
                let o = o.unwrap();
                panic!(
                    "python client ended first: {}\nstdout:\n{}\nstderr:\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            versions = &mut drive => (output.await.unwrap(), versions),
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
        assert!(
            line.contains(&format!("\"acked\": [\"{v1}\", \"{v2}\"]")),
            "{line}"
        );
        assert!(line.contains("\"nacked\": [\"tampered\"]"), "{line}");
        assert!(line.contains("\"trust_acked\": [\""), "{line}");
    }
    assert!(lines[1].contains("\"alpha\"") && lines[1].contains("\"beta\""));
    cp.stop().await;
}

fn v1_resource(cp: &Running, name: &str) -> Resource {
    cp.cp
        .snapshot_cache()
        .get(POLICY_SNAPSHOT)
        .unwrap()
        .resources[name]
        .clone()
}
