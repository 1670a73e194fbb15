//! State-of-the-world server behaviour, checked with a raw gRPC stream.

mod common;

use std::time::Duration;

use common::*;
use tappass_xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tappass_xds::pb::google::rpc::Status as RpcStatus;
use tappass_xds::pb::tappass::v1::PolicySnapshot;
use tappass_xds::types::{POLICY_SNAPSHOT, TRUST_BUNDLE};
use tappass_xds::{unpack, SnapshotCache};

fn req(node_id: Option<&str>, type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: node_id.map(node),
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn ack_nack_versions_and_nonces() {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![policy("a", 1, "{}")]));
    let srv = TestServer::start(cache.clone());
    let mut s = RawSotw::open(&srv.url(), req(Some("gw1"), POLICY_SNAPSHOT, "", "")).await;

    let r1 = s.recv().await;
    assert_eq!(r1.version_info, "1");
    assert_eq!(r1.type_url, POLICY_SNAPSHOT);
    assert_eq!(r1.resources.len(), 1);
    assert!(!r1.nonce.is_empty());
    let p: PolicySnapshot = unpack(&r1.resources[0]).unwrap();
    assert_eq!(p.name, "a");

    // ACK.
    s.send(req(None, POLICY_SNAPSHOT, "1", &r1.nonce)).await;
    let st = srv
        .wait_node("gw1", |n| n.acked_version(POLICY_SNAPSHOT) == Some("1"))
        .await;
    assert!(st.connected());
    assert!(st.connected_since.is_some());
    assert!(st.last_nack.is_none());

    // New version is pushed with a fresh nonce.
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("2", vec![policy("a", 2, "{\"v\":2}")]),
    );
    let r2 = s.recv().await;
    assert_eq!(r2.version_info, "2");
    assert_ne!(r2.nonce, r1.nonce);

    // NACK: keep 1, report the error.
    let mut nack = req(None, POLICY_SNAPSHOT, "1", &r2.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "signature does not verify".into(),
        details: vec![],
    });
    s.send(nack).await;
    let st = srv.wait_node("gw1", |n| n.last_nack.is_some()).await;
    let n = st.last_nack.unwrap();
    assert_eq!(n.type_url, POLICY_SNAPSHOT);
    assert_eq!(n.rejected_version, "2");
    assert_eq!(n.kept_version, "1");
    assert_eq!(n.message, "signature does not verify");
    assert_eq!(
        st.types[POLICY_SNAPSHOT].acked_version.as_deref(),
        Some("1")
    );
    // The rejected version is not sent again.
    s.expect_silence(Duration::from_millis(200)).await;

    // A request answering an older response does not change the
    // subscription (no response for the narrowed name list).
    let mut stale = req(None, POLICY_SNAPSHOT, "1", &r1.nonce);
    stale.resource_names = vec!["zzz".into()];
    s.send(stale).await;
    // A garbage nonce is ignored altogether (no ACK of "2" recorded).
    s.send(req(None, POLICY_SNAPSHOT, "2", "not-a-nonce\u{0}\u{ffff}"))
        .await;
    s.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(
        srv.server
            .node("gw1")
            .unwrap()
            .acked_version(POLICY_SNAPSHOT),
        Some("1")
    );

    // Version 3 fixes it.
    cache.set(POLICY_SNAPSHOT, snapshot("3", vec![policy("a", 3, "{}")]));
    let r3 = s.recv().await;
    assert_eq!(r3.version_info, "3");
    s.send(req(None, POLICY_SNAPSHOT, "3", &r3.nonce)).await;
    srv.wait_node("gw1", |n| n.acked_version(POLICY_SNAPSHOT) == Some("3"))
        .await;
}

#[tokio::test]
async fn several_types_on_one_stream_are_independent() {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("p1", vec![policy("a", 1, "{}")]));
    cache.set(
        TRUST_BUNDLE,
        snapshot("t1", vec![trust_bundle("jwks", 1, "{\"keys\":[]}")]),
    );
    let srv = TestServer::start(cache.clone());
    let mut s = RawSotw::open(&srv.url(), req(Some("gw"), POLICY_SNAPSHOT, "", "")).await;
    let rp = s.recv().await;
    assert_eq!(rp.type_url, POLICY_SNAPSHOT);
    s.send(req(None, TRUST_BUNDLE, "", "")).await;
    let rt = s.recv().await;
    assert_eq!(rt.type_url, TRUST_BUNDLE);
    assert_eq!(rt.version_info, "t1");
    // ACK trust bundle, NACK policy.
    s.send(req(None, TRUST_BUNDLE, "t1", &rt.nonce)).await;
    let mut nack = req(None, POLICY_SNAPSHOT, "", &rp.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad".into(),
        details: vec![],
    });
    s.send(nack).await;
    let st = srv
        .wait_node("gw", |n| {
            n.acked_version(TRUST_BUNDLE) == Some("t1") && n.last_nack.is_some()
        })
        .await;
    assert_eq!(st.types[POLICY_SNAPSHOT].acked_version, None);
    assert_eq!(
        st.types[POLICY_SNAPSHOT].sent_version.as_deref(),
        Some("p1")
    );
    assert_eq!(st.last_nack.unwrap().type_url, POLICY_SNAPSHOT);
    // Changing one type pushes only that type.
    cache.set(
        TRUST_BUNDLE,
        snapshot("t2", vec![trust_bundle("jwks", 2, "{}")]),
    );
    let r = s.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.version_info.as_str()),
        (TRUST_BUNDLE, "t2")
    );
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn resource_name_subscriptions_filter_and_resubscribe() {
    let cache = SnapshotCache::new();
    cache.set(
        POLICY_SNAPSHOT,
        snapshot(
            "1",
            vec![
                policy("a", 1, "{}"),
                policy("b", 1, "{}"),
                policy("c", 1, "{}"),
            ],
        ),
    );
    let srv = TestServer::start(cache.clone());
    let mut first = req(Some("gw"), POLICY_SNAPSHOT, "", "");
    first.resource_names = vec!["b".into(), "zzz".into()];
    let mut s = RawSotw::open(&srv.url(), first).await;
    let r = s.recv().await;
    let names: Vec<String> = r
        .resources
        .iter()
        .map(|a| unpack::<PolicySnapshot>(a).unwrap().name)
        .collect();
    assert_eq!(names, vec!["b"]);
    // ACK and, in the same request, widen the subscription: same version,
    // new names → the server answers with the new set.
    let mut ack = req(None, POLICY_SNAPSHOT, "1", &r.nonce);
    ack.resource_names = vec!["a".into(), "c".into()];
    s.send(ack).await;
    let r2 = s.recv().await;
    assert_eq!(r2.version_info, "1");
    let names: Vec<String> = r2
        .resources
        .iter()
        .map(|a| unpack::<PolicySnapshot>(a).unwrap().name)
        .collect();
    assert_eq!(names, vec!["a", "c"]);
}

#[tokio::test]
async fn reconnect_with_current_version_gets_no_resend() {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("7", vec![policy("a", 7, "{}")]));
    let srv = TestServer::start(cache.clone());
    let mut s = RawSotw::open(&srv.url(), req(Some("gw"), POLICY_SNAPSHOT, "7", "")).await;
    s.expect_silence(Duration::from_millis(200)).await;
    // The node reported the version it holds.
    srv.wait_node("gw", |n| n.acked_version(POLICY_SNAPSHOT) == Some("7"))
        .await;
    // An older held version is replaced.
    let mut s2 = RawSotw::open(&srv.url(), req(Some("gw2"), POLICY_SNAPSHOT, "6", "")).await;
    assert_eq!(s2.recv().await.version_info, "7");
    // A change reaches the first stream.
    cache.set(POLICY_SNAPSHOT, snapshot("8", vec![policy("a", 8, "{}")]));
    assert_eq!(s.recv().await.version_info, "8");
}

#[tokio::test]
async fn bad_input_never_panics() {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![policy("a", 1, "{}")]));
    let srv = TestServer::start(cache.clone());

    // No node on the first request: the stream fails with InvalidArgument.
    let mut s = RawSotw::open(&srv.url(), req(None, POLICY_SNAPSHOT, "", "")).await;
    let err = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Unknown type URL and an empty type URL are ignored; the stream lives on.
    let mut s = RawSotw::open(
        &srv.url(),
        req(Some("gw"), "type.googleapis.com/no.such.Type", "", ""),
    )
    .await;
    s.send(req(None, "", "", "")).await;
    s.send(req(None, "\u{0}garbage", "x", "y")).await;
    s.expect_silence(Duration::from_millis(200)).await;
    s.send(req(None, POLICY_SNAPSHOT, "", "")).await;
    assert_eq!(s.recv().await.version_info, "1");
    assert!(srv.server.node("gw").unwrap().connected());
}

#[tokio::test]
async fn disconnect_is_reported() {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![policy("a", 1, "{}")]));
    let srv = TestServer::start(cache.clone());
    let mut s = RawSotw::open(&srv.url(), req(Some("gone"), POLICY_SNAPSHOT, "", "")).await;
    let r = s.recv().await;
    s.send(req(None, POLICY_SNAPSHOT, "1", &r.nonce)).await;
    srv.wait_node("gone", |n| n.acked_version(POLICY_SNAPSHOT) == Some("1"))
        .await;
    drop(s);
    let st = srv.wait_node("gone", |n| !n.connected()).await;
    assert!(st.connected_since.is_none());
    assert_eq!(st.acked_version(POLICY_SNAPSHOT), Some("1"));
}
