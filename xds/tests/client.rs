//! The generic client against the server, over real sockets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use tappass_xds::pb::tappass::v1::PolicySnapshot;
use tappass_xds::types::{POLICY_SNAPSHOT, TRUST_BUNDLE};
use tappass_xds::{
    pack, unpack, AdsClient, Backoff, ClientConfig, ClientHandle, ClientStatus, HeldType, Protocol,
    Resource, SnapshotCache, SnapshotSigner, SnapshotVerifier, Subscription, Update, UpdateHandler,
};
use tokio::sync::watch;

/// Verifies every policy snapshot; NACKs what does not verify.
struct Gateway {
    verifier: SnapshotVerifier,
    updates: Mutex<Vec<Update>>,
    count: watch::Sender<usize>,
    block: bool,
}

impl Gateway {
    fn new() -> Arc<Self> {
        Self::with_block(false)
    }

    fn with_block(block: bool) -> Arc<Self> {
        Arc::new(Gateway {
            verifier: SnapshotVerifier::new([signer().verifying_key()]),
            updates: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            block,
        })
    }

    fn updates(&self) -> Vec<Update> {
        self.updates.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl UpdateHandler for Gateway {
    async fn on_update(&self, u: &Update) -> Result<(), String> {
        if self.block {
            std::future::pending::<()>().await;
        }
        self.updates.lock().unwrap().push(u.clone());
        self.count.send_modify(|c| *c += 1);
        if u.type_url == POLICY_SNAPSHOT {
            for r in u.resources.values() {
                let p: PolicySnapshot = unpack(&r.body).map_err(|e| e.to_string())?;
                self.verifier
                    .verify_resource(&p, None, SystemTime::now())
                    .map_err(|e| format!("{}: {e}", p.name))?;
            }
        }
        Ok(())
    }
}

fn config(url: &str, node: &str, protocol: Protocol) -> ClientConfig {
    let mut c = ClientConfig::new(url, node, protocol)
        .subscribe(Subscription::wildcard(POLICY_SNAPSHOT))
        .subscribe(Subscription::wildcard(TRUST_BUNDLE));
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.5,
    };
    c
}

/// A policy signed with a key the gateway does not trust.
fn forged(name: &str) -> Resource {
    let r: PolicySnapshot = SnapshotSigner::from_seed([9; 32]).resource(
        name,
        99,
        issued_at(),
        LONG_TTL,
        b"{}".to_vec(),
    );
    Resource::new(name, pack(&r))
}

async fn wait_status(h: &ClientHandle, pred: impl Fn(&ClientStatus) -> bool) -> ClientStatus {
    let mut rx = h.watch();
    let r = tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s))).await;
    match r {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("client status condition not met: {:#?}", h.status()),
    }
}

async fn ack_nack_flow(protocol: Protocol) {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![policy("a", 1, "{}")]));
    cache.set(
        TRUST_BUNDLE,
        snapshot("t1", vec![trust_bundle("jwks", 1, "{}")]),
    );
    let srv = TestServer::start(cache.clone());
    let gw = Gateway::new();
    let h = AdsClient::new(config(&srv.url(), "gw", protocol), gw.clone()).spawn();

    wait_status(&h, |s| {
        s.versions.get(POLICY_SNAPSHOT).map(String::as_str) == Some("1")
            && s.versions.get(TRUST_BUNDLE).map(String::as_str) == Some("t1")
    })
    .await;
    srv.wait_node("gw", |n| {
        n.acked_version(POLICY_SNAPSHOT) == Some("1") && n.acked_version(TRUST_BUNDLE) == Some("t1")
    })
    .await;

    // A forged snapshot is NACKed with the reason; version 1 is kept.
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("2", vec![policy("a", 1, "{}"), forged("evil")]),
    );
    let st = srv.wait_node("gw", |n| n.last_nack.is_some()).await;
    let nack = st.last_nack.clone().unwrap();
    assert_eq!(nack.rejected_version, "2");
    assert!(nack.message.contains("evil"), "{}", nack.message);
    assert!(nack.message.contains("not trusted"), "{}", nack.message);
    assert_eq!(st.acked_version(POLICY_SNAPSHOT), Some("1"));
    let s = wait_status(&h, |s| s.nacks == 1).await;
    assert_eq!(s.versions[POLICY_SNAPSHOT], "1");
    assert!(s.last_nack.unwrap().contains("not trusted"));

    // Version 3 is good again: pushed and ACKed.
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("3", vec![policy("a", 3, "{\"v\":3}"), policy("b", 3, "{}")]),
    );
    srv.wait_node("gw", |n| n.acked_version(POLICY_SNAPSHOT) == Some("3"))
        .await;
    let last = gw.updates().last().cloned().unwrap();
    assert_eq!(last.version, "3");
    assert_eq!(last.resources.keys().collect::<Vec<_>>(), vec!["a", "b"]);
    if protocol == Protocol::Delta {
        // The delta client applied a diff on top of what it held: "evil"
        // was never accepted, so the full state is a and b.
        assert_eq!(last.previous_version, "1");
    }
    h.shutdown().await;
    srv.wait_node("gw", |n| !n.connected()).await;
}

#[tokio::test]
async fn sotw_ack_nack_push() {
    ack_nack_flow(Protocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_ack_nack_push() {
    ack_nack_flow(Protocol::Delta).await;
}

async fn reconnect_flow(protocol: Protocol) {
    let cache = SnapshotCache::new();
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("1", vec![policy("a", 1, "{}"), policy("b", 1, "{}")]),
    );
    cache.set(
        TRUST_BUNDLE,
        snapshot("t1", vec![trust_bundle("jwks", 1, "{}")]),
    );
    let mut srv = TestServer::start(cache.clone());
    let addr = srv.addr;
    let gw = Gateway::new();
    let h = AdsClient::new(config(&srv.url(), "gw", protocol), gw.clone()).spawn();
    srv.wait_node("gw", |n| n.acked_version(POLICY_SNAPSHOT) == Some("1"))
        .await;
    let updates_before = gw.updates().len();
    assert_eq!(updates_before, 2);

    // The control plane dies; the client notices and keeps its versions.
    srv.kill();
    let s = wait_status(&h, |s| !s.connected).await;
    assert_eq!(s.versions[POLICY_SNAPSHOT], "1");

    // While it is down, only b changes.
    cache.set(
        POLICY_SNAPSHOT,
        snapshot("2", vec![policy("a", 1, "{}"), policy("b", 2, "{\"b\":2}")]),
    );
    let srv2 = TestServer::start_at(cache.clone(), addr);
    wait_status(&h, |s| {
        s.streams_opened == 2 && s.versions.get(POLICY_SNAPSHOT).map(String::as_str) == Some("2")
    })
    .await;
    srv2.wait_node("gw", |n| {
        n.acked_version(POLICY_SNAPSHOT) == Some("2") && n.acked_version(TRUST_BUNDLE).is_some()
    })
    .await;
    let ups = gw.updates();
    // Only the policy type was sent again: the trust bundle version held
    // was current.
    assert_eq!(ups.len(), updates_before + 1, "{ups:#?}");
    let u = ups.last().unwrap();
    assert_eq!(u.type_url, POLICY_SNAPSHOT);
    if protocol == Protocol::Delta {
        // Resubscribed with the resource versions held: only b is sent.
        assert_eq!(u.changed, vec!["b"]);
        assert_eq!(u.resources.len(), 2);
    } else {
        assert_eq!(u.previous_version, "1");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn sotw_reconnect_resubscribes_with_versions_held() {
    reconnect_flow(Protocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_reconnect_resubscribes_with_versions_held() {
    reconnect_flow(Protocol::Delta).await;
}

#[tokio::test]
async fn seeded_versions_are_sent_on_first_subscribe() {
    let cache = SnapshotCache::new();
    let a = policy("a", 1, "{}");
    cache.set(POLICY_SNAPSHOT, snapshot("5", vec![a.clone()]));
    let srv = TestServer::start(cache.clone());
    for (protocol, node) in [(Protocol::StateOfTheWorld, "s"), (Protocol::Delta, "d")] {
        let gw = Gateway::new();
        let held = HeldType {
            version: "5".into(),
            resources: [(
                "a".to_string(),
                tappass_xds::ReceivedResource {
                    name: "a".into(),
                    version: a.version.clone(),
                    body: a.body.clone(),
                },
            )]
            .into(),
        };
        let cfg = ClientConfig::new(srv.url(), node, protocol)
            .subscribe(Subscription::wildcard(POLICY_SNAPSHOT));
        let h = AdsClient::new(cfg, gw.clone())
            .with_held(POLICY_SNAPSHOT, held)
            .spawn();
        wait_status(&h, |s| s.connected).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(gw.updates().is_empty(), "{protocol:?}: {:?}", gw.updates());
        h.shutdown().await;
    }
    // The state-of-the-world node reported what it held.
    assert_eq!(
        srv.server.node("s").unwrap().acked_version(POLICY_SNAPSHOT),
        Some("5")
    );
}

#[tokio::test]
async fn many_streams_get_pushes_and_a_stuck_one_blocks_nobody() {
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![policy("a", 1, "{}")]));
    let srv = TestServer::start(cache.clone());
    // A client that never finishes handling its first update.
    let stuck = AdsClient::new(
        config(&srv.url(), "stuck", Protocol::StateOfTheWorld),
        Gateway::with_block(true),
    )
    .spawn();
    let mut handles = Vec::new();
    for i in 0..40 {
        let protocol = if i % 2 == 0 {
            Protocol::StateOfTheWorld
        } else {
            Protocol::Delta
        };
        let cfg = ClientConfig::new(srv.url(), format!("gw{i}"), protocol)
            .subscribe(Subscription::wildcard(POLICY_SNAPSHOT));
        handles.push(AdsClient::new(cfg, Gateway::new()).spawn());
    }
    for i in 0..40 {
        srv.wait_node(&format!("gw{i}"), |n| {
            n.acked_version(POLICY_SNAPSHOT) == Some("1")
        })
        .await;
    }
    for v in 2..=4u64 {
        cache.set(
            POLICY_SNAPSHOT,
            snapshot(&v.to_string(), vec![policy("a", v, "{}")]),
        );
        let want = v.to_string();
        for i in 0..40 {
            srv.wait_node(&format!("gw{i}"), |n| {
                n.acked_version(POLICY_SNAPSHOT) == Some(want.as_str())
            })
            .await;
        }
    }
    let all = srv.server.node_status();
    assert_eq!(all.len(), 41);
    assert!(all.iter().all(|n| n.connected()));
    assert_eq!(
        srv.server
            .node("stuck")
            .unwrap()
            .acked_version(POLICY_SNAPSHOT),
        None
    );
    for h in handles {
        h.shutdown().await;
    }
    stuck.shutdown().await;
}

#[test]
fn backoff_grows_caps_and_jitters() {
    let b = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        multiplier: 2.0,
        jitter: 0.5,
    };
    for attempt in 0..40 {
        let d = b.delay(attempt);
        let ceiling = Duration::from_millis(100 * 2u64.pow(attempt.min(20))).min(b.max);
        assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        assert!(
            d >= ceiling / 2,
            "attempt {attempt}: {d:?} < half of {ceiling:?}"
        );
    }
    assert!(b.delay(3) > b.delay(0));
    let delays: std::collections::BTreeSet<Duration> = (0..20).map(|_| b.delay(10)).collect();
    assert!(delays.len() > 1, "no jitter");
}

#[tokio::test]
async fn unreachable_control_plane_keeps_retrying() {
    // Nothing listens on this port: the client retries with backoff and
    // records the error, then connects once a server appears.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], tappass_testkit::free_port()).into();
    let gw = Gateway::new();
    let h = AdsClient::new(
        config(&format!("http://{addr}"), "late", Protocol::Delta),
        gw.clone(),
    )
    .spawn();
    wait_status(&h, |s| s.last_error.is_some()).await;
    let cache = SnapshotCache::new();
    cache.set(POLICY_SNAPSHOT, snapshot("1", vec![policy("a", 1, "{}")]));
    let srv = TestServer::start_at(cache, addr);
    srv.wait_node("late", |n| n.acked_version(POLICY_SNAPSHOT) == Some("1"))
        .await;
    h.shutdown().await;
}
