//! Delta server behaviour, checked with a raw gRPC stream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tappass_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tappass_xds::pb::google::rpc::Status as RpcStatus;
use tappass_xds::types::{POLICY_SNAPSHOT, TRUST_BUNDLE};
use tappass_xds::SnapshotCache;

fn sub(node_id: Option<&str>, type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node_id.map(node),
        type_url: type_url.into(),
        resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn wildcard_diffs_and_removals() {
    let cache = SnapshotCache::new();
    let a1 = policy("a", 1, "{}");
    let b1 = policy("b", 1, "{}");
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![a1.clone(), b1.clone()]));
    let srv = TestServer::start(cache.clone());
    let mut s = RawDelta::open(&srv.url(), sub(Some("d1"), POLICY_SNAPSHOT, &[])).await;
    let r = s.recv().await;
    assert_eq!(r.system_version_info, "1");
    assert_eq!(names(&r), vec!["a", "b"]);
    assert_eq!(r.resources[0].version, a1.version);
    assert!(r.removed_resources.is_empty());
    s.send(ack(POLICY_SNAPSHOT, &r.nonce)).await;
    srv.wait_node("d1", |n| n.acked_version(POLICY_SNAPSHOT) == Some("1"))
        .await;

    // Change b, add c: only those are sent.
    let b2 = policy("b", 2, "{\"x\":1}");
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("2", vec![a1.clone(), b2.clone(), policy("c", 1, "{}")]),
    );
    let r2 = s.recv().await;
    assert_eq!(r2.system_version_info, "2");
    assert_eq!(names(&r2), vec!["b", "c"]);
    assert_ne!(r2.nonce, r.nonce);
    s.send(ack(POLICY_SNAPSHOT, &r2.nonce)).await;

    // Remove a.
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("3", vec![b2.clone(), policy("c", 1, "{}")]),
    );
    let r3 = s.recv().await;
    assert!(r3.resources.is_empty());
    assert_eq!(r3.removed_resources, vec!["a"]);

    // NACK is recorded; nothing is resent.
    let mut nack = ack(POLICY_SNAPSHOT, &r3.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "refused".into(),
        details: vec![],
    });
    s.send(nack).await;
    let st = srv.wait_node("d1", |n| n.last_nack.is_some()).await;
    let n = st.last_nack.unwrap();
    assert_eq!(
        (n.rejected_version.as_str(), n.message.as_str()),
        ("3", "refused")
    );
    assert_eq!(
        st.types[POLICY_SNAPSHOT].acked_version.as_deref(),
        Some("2")
    );
    s.expect_silence(Duration::from_millis(200)).await;

    // Unchanged snapshot set again: nothing to send.
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("3", vec![b2, policy("c", 1, "{}")]),
    );
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn initial_resource_versions_avoid_resending() {
    let cache = SnapshotCache::new();
    let a = policy("a", 1, "{}");
    let b = policy("b", 1, "{}");
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![a.clone(), b.clone()]));
    let srv = TestServer::start(cache.clone());
    let mut first = sub(Some("d2"), POLICY_SNAPSHOT, &[]);
    first.initial_resource_versions = HashMap::from([
        ("a".to_string(), a.version.clone()),
        ("b".to_string(), "old".to_string()),
        ("gone".to_string(), "x".to_string()),
    ]);
    let mut s = RawDelta::open(&srv.url(), first).await;
    let r = s.recv().await;
    assert_eq!(names(&r), vec!["b"]);
    assert_eq!(r.removed_resources, vec!["gone"]);

    // Holding exactly the current set: no response at all.
    let mut first = sub(Some("d3"), POLICY_SNAPSHOT, &[]);
    first.initial_resource_versions = HashMap::from([
        ("a".to_string(), a.version.clone()),
        ("b".to_string(), b.version.clone()),
    ]);
    let mut s3 = RawDelta::open(&srv.url(), first).await;
    s3.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn named_subscribe_and_unsubscribe() {
    let cache = SnapshotCache::new();
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("1", vec![policy("a", 1, "{}"), policy("b", 1, "{}")]),
    );
    cache.set(
        TRUST_BUNDLE,
        snapshot("t1", vec![trust_bundle("jwks", 1, "{}")]),
    );
    let srv = TestServer::start(cache.clone());
    let mut s = RawDelta::open(&srv.url(), sub(Some("d4"), POLICY_SNAPSHOT, &["a"])).await;
    let r = s.recv().await;
    assert_eq!(names(&r), vec!["a"]);
    // Subscribe to b in the ACK.
    let mut req = ack(POLICY_SNAPSHOT, &r.nonce);
    req.resource_names_subscribe = vec!["b".into()];
    s.send(req).await;
    let r2 = s.recv().await;
    assert_eq!(names(&r2), vec!["b"]);
    // Re-subscribing to a resource the client has still gets it sent.
    let mut req = ack(POLICY_SNAPSHOT, &r2.nonce);
    req.resource_names_subscribe = vec!["a".into()];
    s.send(req).await;
    let r3 = s.recv().await;
    assert_eq!(names(&r3), vec!["a"]);
    // Unsubscribe from a: a later change of a is not sent.
    let mut req = ack(POLICY_SNAPSHOT, &r3.nonce);
    req.resource_names_unsubscribe = vec!["a".into()];
    s.send(req).await;
    s.expect_silence(Duration::from_millis(100)).await;
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("2", vec![policy("a", 2, "{\"n\":2}"), policy("b", 1, "{}")]),
    );
    s.expect_silence(Duration::from_millis(200)).await;
    // A second type on the same stream.
    s.send(sub(None, TRUST_BUNDLE, &[])).await;
    let t = s.recv().await;
    assert_eq!(t.type_url, TRUST_BUNDLE);
    assert_eq!(names(&t), vec!["jwks"]);
}

#[tokio::test]
async fn per_node_snapshots() {
    let cache = SnapshotCache::new();
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("g1", vec![policy("shared", 1, "{}")]),
    );
    cache.set_for_node(
        "special",
        POLICY_SNAPSHOT,
        snapshot("n1", vec![policy("mine", 1, "{}")]),
    );
    let srv = TestServer::start(cache.clone());
    let mut s = RawDelta::open(&srv.url(), sub(Some("special"), POLICY_SNAPSHOT, &[])).await;
    let r = s.recv().await;
    assert_eq!(
        (r.system_version_info.as_str(), names(&r)),
        ("n1", vec!["mine".to_string()])
    );
    let mut o = RawDelta::open(&srv.url(), sub(Some("other"), POLICY_SNAPSHOT, &[])).await;
    let r = o.recv().await;
    assert_eq!(
        (r.system_version_info.as_str(), names(&r)),
        ("g1", vec!["shared".to_string()])
    );
    // Clearing the override switches the node to the global snapshot.
    cache.clear_node("special");
    let r = s.recv().await;
    assert_eq!(names(&r), vec!["shared"]);
    assert_eq!(r.removed_resources, vec!["mine"]);
}
