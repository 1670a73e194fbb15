//! Shared test helpers: a server on its own runtime (so that it can be
//! killed like a process) and raw ADS streams.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tappass_xds::pb::envoy::config::core::v3::Node;
use tappass_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tappass_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tappass_xds::pb::tappass::v1::{PolicySnapshot, TrustBundle, TrustBundlePayload};
use tappass_xds::{
    pack, AdsServer, NodeStatus, Resource, SnapshotSigner, SnapshotSource, TypeSnapshot,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub const WAIT: Duration = Duration::from_secs(5);

/// An ADS server on a dedicated runtime thread; `kill` drops the runtime,
/// which closes every socket at once, as a dying process would.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: AdsServer,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(source: Arc<dyn SnapshotSource>) -> Self {
        Self::start_at(source, "127.0.0.1:0".parse().unwrap())
    }

    pub fn start_at(source: Arc<dyn SnapshotSource>, addr: SocketAddr) -> Self {
        let server = AdsServer::new(source);
        let srv = server.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            // Rebinding a port a killed server just left can race with the
            // kernel (and with other tests picking ports): retry briefly.
            let listener = rt.block_on(async {
                let mut attempts = 0;
                loop {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.set_reuseaddr(true).unwrap();
                    match sock.bind(addr).and_then(|()| sock.listen(1024)) {
                        Ok(l) => break l,
                        Err(_) if attempts < 100 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("cannot bind {addr}: {e}"),
                    }
                }
            });
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            rt.spawn(async move {
                let _ = srv.serve(listener, std::future::pending()).await;
            });
            let _ = stop_rx.recv();
            rt.shutdown_timeout(Duration::ZERO);
        });
        let addr = addr_rx.recv().unwrap();
        TestServer {
            addr,
            server,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits until `pred` holds for the node's status.
    pub async fn wait_node(&self, node: &str, pred: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let mut rx = self.server.status_changes();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(st) = self.server.node(node) {
                if pred(&st) {
                    return st;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "node {node}: condition not met in time; status: {:#?}",
                    self.server.node(node)
                ),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: "test".to_string(),
        ..Default::default()
    }
}

/// Fixed issue time and long TTL: the same arguments give the same bytes
/// (and so the same resource version).
pub fn issued_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

pub const LONG_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub fn signer() -> SnapshotSigner {
    SnapshotSigner::from_seed([7; 32])
}

/// A signed trust bundle resource.
pub fn trust_bundle(name: &str, version: u64, jwks: &str) -> Resource {
    let s = signer();
    let payload = TrustBundlePayload {
        jwks_json: jwks.to_string(),
    };
    let r: TrustBundle = s.resource(
        name,
        version,
        issued_at(),
        LONG_TTL,
        prost::Message::encode_to_vec(&payload),
    );
    Resource::new(name, pack(&r))
}

/// A signed policy snapshot resource holding `json`.
pub fn policy(name: &str, version: u64, json: &str) -> Resource {
    let r: PolicySnapshot = signer().resource(
        name,
        version,
        issued_at(),
        LONG_TTL,
        json.as_bytes().to_vec(),
    );
    Resource::new(name, pack(&r))
}

pub fn snapshot(version: &str, resources: Vec<Resource>) -> TypeSnapshot {
    TypeSnapshot::new(version, resources)
}

/// A raw state-of-the-world stream, for checking the server byte by byte.
pub struct RawSotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl RawSotw {
    pub async fn open(url: &str, first: DiscoveryRequest) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawSotw { tx, rx }
    }

    pub async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .expect("stream error")
            .expect("stream ended")
    }

    /// Asserts that nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("unexpected message: {m:?}");
        }
    }
}

/// A raw delta stream.
pub struct RawDelta {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl RawDelta {
    pub async fn open(url: &str, first: DeltaDiscoveryRequest) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawDelta { tx, rx }
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .expect("stream error")
            .expect("stream ended")
    }

    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("unexpected message: {m:?}");
        }
    }
}
