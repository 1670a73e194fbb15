//! Generic ADS server: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` over a pluggable [`SnapshotSource`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use prost_types::Any;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::XdsError;
use crate::pb::envoy::config::core::v3::{ControlPlane, Node};
use crate::pb::envoy::service::discovery::v3 as ds;
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};

// ------------------------------------------------------------------ snapshots

/// One named resource of a type, with its own version (used by delta xDS).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl Resource {
    /// A resource whose version is derived from its content (16 hex digits
    /// of SHA-256 over type URL and bytes).
    pub fn new(name: impl Into<String>, body: Any) -> Self {
        let mut h = Sha256::new();
        h.update(body.type_url.as_bytes());
        h.update([0]);
        h.update(&body.value);
        let version = hex::encode(&h.finalize()[..8]);
        Resource {
            name: name.into(),
            version,
            body,
        }
    }

    pub fn with_version(name: impl Into<String>, version: impl Into<String>, body: Any) -> Self {
        Resource {
            name: name.into(),
            version: version.into(),
            body,
        }
    }
}

/// All resources of one type URL at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSnapshot {
    /// The type's version (`version_info` in state of the world,
    /// `system_version_info` in delta).
    pub version: String,
    pub resources: BTreeMap<String, Resource>,
}

impl TypeSnapshot {
    pub fn new(version: impl Into<String>, resources: impl IntoIterator<Item = Resource>) -> Self {
        TypeSnapshot {
            version: version.into(),
            resources: resources.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }
}

/// Where the server gets resources from. Implementations must be cheap to
/// call (they are called from every stream on every change).
pub trait SnapshotSource: Send + Sync + 'static {
    /// The current resources of `type_url` for `node`; `None` when there is
    /// nothing to serve for that type (yet): subscribers then wait.
    fn snapshot(&self, node: &Node, type_url: &str) -> Option<Arc<TypeSnapshot>>;
    /// A receiver that is marked changed whenever any snapshot may have
    /// changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

#[derive(Default)]
struct CacheInner {
    global: HashMap<String, Arc<TypeSnapshot>>,
    per_node: HashMap<String, HashMap<String, Arc<TypeSnapshot>>>,
}

/// A ready-made [`SnapshotSource`]: snapshots per type URL, optionally
/// overridden per node id. Every setter wakes the subscribed streams.
pub struct SnapshotCache {
    inner: RwLock<CacheInner>,
    tx: watch::Sender<u64>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache {
            inner: RwLock::default(),
            tx: watch::channel(0).0,
        }
    }
}

impl SnapshotCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn bump(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the snapshot of a type for every node (without a per-node one).
    pub fn set(&self, type_url: &str, snapshot: TypeSnapshot) {
        self.write()
            .global
            .insert(type_url.to_string(), Arc::new(snapshot));
        self.bump();
    }

    /// Sets several types at once (one wake-up).
    pub fn set_many(&self, snapshots: impl IntoIterator<Item = (String, TypeSnapshot)>) {
        {
            let mut w = self.write();
            for (t, s) in snapshots {
                w.global.insert(t, Arc::new(s));
            }
        }
        self.bump();
    }

    /// Sets the snapshot of a type for one node id.
    pub fn set_for_node(&self, node_id: &str, type_url: &str, snapshot: TypeSnapshot) {
        self.write()
            .per_node
            .entry(node_id.to_string())
            .or_default()
            .insert(type_url.to_string(), Arc::new(snapshot));
        self.bump();
    }

    /// Removes the per-node snapshots of a node id.
    pub fn clear_node(&self, node_id: &str) {
        self.write().per_node.remove(node_id);
        self.bump();
    }

    /// The snapshot of a type served to nodes without a per-node one.
    pub fn get(&self, type_url: &str) -> Option<Arc<TypeSnapshot>> {
        self.read().global.get(type_url).cloned()
    }
}

impl SnapshotSource for SnapshotCache {
    fn snapshot(&self, node: &Node, type_url: &str) -> Option<Arc<TypeSnapshot>> {
        let r = self.read();
        r.per_node
            .get(&node.id)
            .and_then(|m| m.get(type_url))
            .or_else(|| r.global.get(type_url))
            .cloned()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

// --------------------------------------------------------------------- status

/// A NACK received from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub type_url: String,
    /// The version that was rejected.
    pub rejected_version: String,
    /// The version the node says it keeps.
    pub kept_version: String,
    pub nonce: String,
    pub code: i32,
    pub message: String,
    pub at: SystemTime,
}

/// Per-type state of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Last version sent to the node.
    pub sent_version: Option<String>,
    /// Last version the node acknowledged (or reported holding when it
    /// subscribed).
    pub acked_version: Option<String>,
    pub acked_at: Option<SystemTime>,
    pub last_nack: Option<Nack>,
}

/// What the server knows about one node (all its streams together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    pub cluster: String,
    /// Open streams of this node.
    pub streams: usize,
    /// Since when the node has had at least one open stream; `None` when
    /// it has none.
    pub connected_since: Option<SystemTime>,
    pub last_seen: SystemTime,
    pub types: BTreeMap<String, TypeStatus>,
    /// The most recent NACK of any type.
    pub last_nack: Option<Nack>,
}

impl NodeStatus {
    pub fn connected(&self) -> bool {
        self.streams > 0
    }

    pub fn acked_version(&self, type_url: &str) -> Option<&str> {
        self.types.get(type_url)?.acked_version.as_deref()
    }
}

struct Registry {
    nodes: Mutex<HashMap<String, NodeStatus>>,
    tx: watch::Sender<u64>,
}

impl Registry {
    fn update(&self, node_id: &str, f: impl FnOnce(&mut NodeStatus)) {
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let now = SystemTime::now();
            let st = nodes
                .entry(node_id.to_string())
                .or_insert_with(|| NodeStatus {
                    node_id: node_id.to_string(),
                    cluster: String::new(),
                    streams: 0,
                    connected_since: None,
                    last_seen: now,
                    types: BTreeMap::new(),
                    last_nack: None,
                });
            st.last_seen = now;
            f(st);
        }
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn connect(&self, node: &Node) {
        self.update(&node.id, |st| {
            st.cluster = node.cluster.clone();
            if st.streams == 0 {
                st.connected_since = Some(SystemTime::now());
            }
            st.streams += 1;
        });
    }

    fn sent(&self, node_id: &str, type_url: &str, version: &str) {
        self.update(node_id, |st| {
            st.types
                .entry(type_url.to_string())
                .or_default()
                .sent_version = Some(version.to_string());
        });
    }

    fn acked(&self, node_id: &str, type_url: &str, version: &str) {
        self.update(node_id, |st| {
            let t = st.types.entry(type_url.to_string()).or_default();
            t.acked_version = Some(version.to_string());
            t.acked_at = Some(SystemTime::now());
        });
    }

    fn nacked(&self, node_id: &str, nack: Nack) {
        self.update(node_id, |st| {
            st.types.entry(nack.type_url.clone()).or_default().last_nack = Some(nack.clone());
            st.last_nack = Some(nack);
        });
    }
}

/// Marks the node's stream closed when dropped.
struct StreamGuard {
    registry: Arc<Registry>,
    node_id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.registry.update(&self.node_id, |st| {
            st.streams = st.streams.saturating_sub(1);
            if st.streams == 0 {
                st.connected_since = None;
            }
        });
    }
}

// --------------------------------------------------------------------- server

/// Server tuning.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Identifier sent in `control_plane` of state-of-the-world responses.
    pub control_plane_id: String,
    /// Responses buffered per stream before the stream's task waits.
    pub response_buffer: usize,
    /// Largest number of resource names accepted in one request.
    pub max_resource_names: usize,
    /// Largest request message accepted (bytes).
    pub max_request_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            control_plane_id: "tappass-control".to_string(),
            response_buffer: 16,
            max_resource_names: 100_000,
            max_request_bytes: 16 * 1024 * 1024,
        }
    }
}

struct Shared {
    source: Arc<dyn SnapshotSource>,
    registry: Arc<Registry>,
    options: ServerOptions,
    streams: AtomicU64,
    instance: u64,
}

/// The ADS service. Cheap to clone; all clones share node status.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    pub fn new(source: Arc<dyn SnapshotSource>) -> Self {
        Self::with_options(source, ServerOptions::default())
    }

    pub fn with_options(source: Arc<dyn SnapshotSource>, options: ServerOptions) -> Self {
        AdsServer {
            shared: Arc::new(Shared {
                source,
                registry: Arc::new(Registry {
                    nodes: Mutex::new(HashMap::new()),
                    tx: watch::channel(0).0,
                }),
                options,
                streams: AtomicU64::new(0),
                instance: rand::random::<u32>() as u64,
            }),
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(self.shared.options.max_request_bytes)
            .max_encoding_message_size(usize::MAX)
    }

    /// Serves ADS on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// Serves ADS and the gateway reports service on `listener` (one
    /// server, one port) until `shutdown` completes.
    pub async fn serve_with_reports(
        &self,
        listener: tokio::net::TcpListener,
        reports: crate::reports::ReportsServer,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        // Small unary replies must not wait for Nagle's algorithm.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| {
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                }
                s
            },
        );
        tonic::transport::Server::builder()
            .add_service(self.service())
            .add_service(reports.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// Serves ADS, gateway reports and budget leases on one listener until
    /// `shutdown` completes.
    pub async fn serve_with_reports_and_leases(
        &self,
        listener: tokio::net::TcpListener,
        reports: crate::reports::ReportsServer,
        leases: crate::budgets::LeasesServer,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(self.service())
            .add_service(reports.service())
            .add_service(leases.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// Status of every node seen since the server started (connected or
    /// not), sorted by node id.
    pub fn node_status(&self) -> Vec<NodeStatus> {
        let nodes = self
            .shared
            .registry
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<NodeStatus> = nodes.values().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// Status of one node.
    pub fn node(&self, node_id: &str) -> Option<NodeStatus> {
        self.shared
            .registry
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }

    /// Marked changed on every connect, disconnect, send, ACK and NACK.
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.shared.registry.tx.subscribe()
    }

    fn new_stream(&self) -> StreamCtx {
        let id = self.shared.streams.fetch_add(1, Ordering::Relaxed);
        StreamCtx {
            shared: self.shared.clone(),
            prefix: format!("{:x}.{:x}", self.shared.instance, id),
            counter: 0,
            node: None,
            _guard: None,
        }
    }
}

struct StreamCtx {
    shared: Arc<Shared>,
    prefix: String,
    counter: u64,
    node: Option<Node>,
    _guard: Option<StreamGuard>,
}

impl StreamCtx {
    fn next_nonce(&mut self) -> String {
        self.counter += 1;
        format!("{}.{}", self.prefix, self.counter)
    }

    /// Takes the node from the first request. Later requests may omit it.
    fn ensure_node(&mut self, node: Option<&Node>) -> Result<(), Status> {
        if self.node.is_some() {
            return Ok(());
        }
        match node {
            Some(n) if !n.id.is_empty() => {
                self.shared.registry.connect(n);
                self._guard = Some(StreamGuard {
                    registry: self.shared.registry.clone(),
                    node_id: n.id.clone(),
                });
                self.node = Some(n.clone());
                Ok(())
            }
            _ => Err(Status::invalid_argument(
                "the first request of a stream must carry node.id",
            )),
        }
    }

    fn node_id(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.id.as_str())
    }

    fn snapshot(&self, type_url: &str) -> Option<Arc<TypeSnapshot>> {
        let node = self.node.as_ref()?;
        self.shared.source.snapshot(node, type_url)
    }

    fn check_names(&self, n: usize) -> Result<(), Status> {
        if n > self.shared.options.max_resource_names {
            return Err(Status::invalid_argument(format!(
                "too many resource names in one request ({n} > {})",
                self.shared.options.max_resource_names
            )));
        }
        Ok(())
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<ds::DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<ds::DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<ds::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.shared.options.response_buffer.max(1));
        let ctx = self.new_stream();
        tokio::spawn(async move {
            let mut s = SotwStream {
                ctx,
                subs: HashMap::new(),
                tx,
            };
            if let Err(status) = s.run(inbound).await {
                let _ = s.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<ds::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.shared.options.response_buffer.max(1));
        let ctx = self.new_stream();
        tokio::spawn(async move {
            let mut s = DeltaStream {
                ctx,
                subs: HashMap::new(),
                tx,
            };
            if let Err(status) = s.run(inbound).await {
                let _ = s.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Nonces (with the version each carried) of the last responses sent for a
/// type, newest last.
#[derive(Default)]
struct InFlight(std::collections::VecDeque<(String, String)>);

const IN_FLIGHT: usize = 16;

impl InFlight {
    fn push(&mut self, nonce: String, version: String) {
        if self.0.len() == IN_FLIGHT {
            self.0.pop_front();
        }
        self.0.push_back((nonce, version));
    }

    /// The version sent with `nonce`, and whether it is the latest response.
    fn find(&self, nonce: &str) -> Option<(String, bool)> {
        let last = self.0.len().checked_sub(1)?;
        self.0
            .iter()
            .enumerate()
            .rev()
            .find(|(_, (n, _))| n == nonce)
            .map(|(i, (_, v))| (v.clone(), i == last))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The stream ended normally (client closed, or the response side went away).
struct Closed;

enum Flow {
    Continue,
    Stop,
}

// ------------------------------------------------------------ state of world

struct SotwSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Version the client holds (from its last ACK/NACK or first request).
    client_version: String,
    /// Version of the last response sent (or held by the client).
    sent_version: Option<String>,
    inflight: InFlight,
}

struct SotwStream {
    ctx: StreamCtx,
    subs: HashMap<String, SotwSub>,
    tx: mpsc::Sender<Result<ds::DiscoveryResponse, Status>>,
}

impl SotwStream {
    async fn run(&mut self, mut inbound: Streaming<ds::DiscoveryRequest>) -> Result<(), Status> {
        let mut changes = self.ctx.shared.source.changes();
        changes.mark_unchanged();
        let mut source_alive = true;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if let Flow::Stop = self.on_request(req).await? {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        tracing::debug!(node = self.ctx.node_id(), %status, "ADS stream error");
                        return Ok(());
                    }
                },
                changed = changes.changed(), if source_alive => {
                    if changed.is_err() {
                        source_alive = false;
                        continue;
                    }
                    if self.on_change().await.is_err() {
                        return Ok(());
                    }
                }
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }

    async fn on_request(&mut self, req: ds::DiscoveryRequest) -> Result<Flow, Status> {
        self.ctx.ensure_node(req.node.as_ref())?;
        self.ctx.check_names(req.resource_names.len())?;
        if req.type_url.is_empty() {
            tracing::warn!(
                node = self.ctx.node_id(),
                "ADS request without type_url ignored"
            );
            return Ok(Flow::Continue);
        }
        let node_id = self.ctx.node_id().to_string();
        let registry = self.ctx.shared.registry.clone();
        let new_names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = new_names.is_empty() || new_names.contains("*");
        let first = !self.subs.contains_key(&req.type_url);
        let sub = self
            .subs
            .entry(req.type_url.clone())
            .or_insert_with(|| SotwSub {
                wildcard,
                names: new_names.clone(),
                client_version: String::new(),
                sent_version: None,
                inflight: InFlight::default(),
            });
        let mut names_changed = false;
        if first {
            sub.client_version = req.version_info.clone();
            if !req.version_info.is_empty() {
                // The node reports the version it already holds (reconnect).
                registry.acked(&node_id, &req.type_url, &req.version_info);
                sub.sent_version = Some(req.version_info.clone());
            }
        } else {
            let (answered, latest) = match sub.inflight.find(&req.response_nonce) {
                Some(found) => (Some(found.0), found.1),
                // Nothing sent yet on this stream: a request without nonce
                // only changes the subscription.
                None if sub.inflight.is_empty() && req.response_nonce.is_empty() => (None, true),
                None => {
                    // Unknown nonce (garbage, or from another stream): ignore.
                    tracing::debug!(node = %node_id, type_url = %req.type_url, nonce = %req.response_nonce, "unknown nonce ignored");
                    return Ok(Flow::Continue);
                }
            };
            sub.client_version = req.version_info.clone();
            if let Some(rejected) = answered {
                match &req.error_detail {
                    Some(err) => registry.nacked(
                        &node_id,
                        Nack {
                            type_url: req.type_url.clone(),
                            rejected_version: rejected,
                            kept_version: req.version_info.clone(),
                            nonce: req.response_nonce.clone(),
                            code: err.code,
                            message: err.message.clone(),
                            at: SystemTime::now(),
                        },
                    ),
                    None => registry.acked(&node_id, &req.type_url, &req.version_info),
                }
            }
            if !latest {
                // Answers an older response: a newer one is in flight, so
                // the request's subscription is not acted upon.
                return Ok(Flow::Continue);
            }
            names_changed = sub.wildcard != wildcard || sub.names != new_names;
            sub.wildcard = wildcard;
            sub.names = new_names;
        }
        let Some(snap) = self.ctx.snapshot(&req.type_url) else {
            return Ok(Flow::Continue);
        };
        let sub = &self.subs[&req.type_url];
        let send = if first {
            snap.version != sub.client_version || sub.client_version.is_empty()
        } else {
            names_changed || sub.sent_version.as_deref() != Some(snap.version.as_str())
        };
        if send && self.send(&req.type_url, &snap).await.is_err() {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    async fn on_change(&mut self) -> Result<(), Closed> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        for t in types {
            let Some(snap) = self.ctx.snapshot(&t) else {
                continue;
            };
            if self.subs[&t].sent_version.as_deref() != Some(snap.version.as_str()) {
                self.send(&t, &snap).await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str, snap: &TypeSnapshot) -> Result<(), Closed> {
        let nonce = self.ctx.next_nonce();
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        let resources: Vec<Any> = if sub.wildcard {
            snap.resources.values().map(|r| r.body.clone()).collect()
        } else {
            sub.names
                .iter()
                .filter_map(|n| snap.resources.get(n))
                .map(|r| r.body.clone())
                .collect()
        };
        sub.sent_version = Some(snap.version.clone());
        sub.inflight.push(nonce.clone(), snap.version.clone());
        let resp = ds::DiscoveryResponse {
            version_info: snap.version.clone(),
            resources,
            canary: false,
            type_url: type_url.to_string(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: self.ctx.shared.options.control_plane_id.clone(),
            }),
            resource_errors: Vec::new(),
        };
        self.ctx
            .shared
            .registry
            .sent(self.ctx.node_id(), type_url, &snap.version);
        self.tx.send(Ok(resp)).await.map_err(|_| Closed)
    }
}

// ---------------------------------------------------------------------- delta

struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Resource versions the client holds, as far as the server knows.
    client_versions: HashMap<String, String>,
    inflight: InFlight,
}

impl DeltaSub {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct DeltaStream {
    ctx: StreamCtx,
    subs: HashMap<String, DeltaSub>,
    tx: mpsc::Sender<Result<ds::DeltaDiscoveryResponse, Status>>,
}

impl DeltaStream {
    async fn run(
        &mut self,
        mut inbound: Streaming<ds::DeltaDiscoveryRequest>,
    ) -> Result<(), Status> {
        let mut changes = self.ctx.shared.source.changes();
        changes.mark_unchanged();
        let mut source_alive = true;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if let Flow::Stop = self.on_request(req).await? {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        tracing::debug!(node = self.ctx.node_id(), %status, "delta ADS stream error");
                        return Ok(());
                    }
                },
                changed = changes.changed(), if source_alive => {
                    if changed.is_err() {
                        source_alive = false;
                        continue;
                    }
                    let types: Vec<String> = self.subs.keys().cloned().collect();
                    for t in types {
                        if self.push(&t, &[]).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }

    async fn on_request(&mut self, req: ds::DeltaDiscoveryRequest) -> Result<Flow, Status> {
        self.ctx.ensure_node(req.node.as_ref())?;
        self.ctx.check_names(
            req.resource_names_subscribe.len()
                + req.resource_names_unsubscribe.len()
                + req.initial_resource_versions.len(),
        )?;
        if req.type_url.is_empty() {
            tracing::warn!(
                node = self.ctx.node_id(),
                "delta ADS request without type_url ignored"
            );
            return Ok(Flow::Continue);
        }
        let node_id = self.ctx.node_id().to_string();
        let registry = self.ctx.shared.registry.clone();
        let first = !self.subs.contains_key(&req.type_url);
        let sub = self
            .subs
            .entry(req.type_url.clone())
            .or_insert_with(|| DeltaSub {
                // Legacy wildcard: a first request that names nothing.
                wildcard: req.resource_names_subscribe.is_empty(),
                names: BTreeSet::new(),
                client_versions: req.initial_resource_versions.clone().into_iter().collect(),
                inflight: InFlight::default(),
            });
        // (N)ACK of one of the responses sent on this stream.
        if !first && !req.response_nonce.is_empty() {
            if let Some((version, _)) = sub.inflight.find(&req.response_nonce) {
                match &req.error_detail {
                    Some(err) => registry.nacked(
                        &node_id,
                        Nack {
                            type_url: req.type_url.clone(),
                            rejected_version: version,
                            kept_version: String::new(),
                            nonce: req.response_nonce.clone(),
                            code: err.code,
                            message: err.message.clone(),
                            at: SystemTime::now(),
                        },
                    ),
                    None => registry.acked(&node_id, &req.type_url, &version),
                }
            } else {
                tracing::debug!(node = %node_id, type_url = %req.type_url, nonce = %req.response_nonce, "stale delta nonce");
            }
        }
        let mut forced = Vec::new();
        for n in &req.resource_names_subscribe {
            if n == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(n.clone());
                if !first {
                    forced.push(n.clone());
                }
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(n);
                if !sub.wildcard {
                    sub.client_versions.remove(n);
                }
            }
        }
        match self.push(&req.type_url, &forced).await {
            Err(Closed) => return Ok(Flow::Stop),
            Ok(Pushed::UpToDate(version)) if first && !req.initial_resource_versions.is_empty() => {
                // Reconnect: the node already holds every current resource.
                registry.acked(&node_id, &req.type_url, &version);
            }
            Ok(_) => {}
        }
        Ok(Flow::Continue)
    }

    /// Sends what the client lacks of `type_url` (plus `forced` names, which
    /// the client just subscribed to), if anything.
    async fn push(&mut self, type_url: &str, forced: &[String]) -> Result<Pushed, Closed> {
        let Some(snap) = self.ctx.snapshot(type_url) else {
            return Ok(Pushed::Nothing);
        };
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(Pushed::Nothing);
        };
        let mut resources = Vec::new();
        for r in snap.resources.values() {
            if !sub.wants(&r.name) {
                continue;
            }
            let held = sub.client_versions.get(&r.name);
            if held != Some(&r.version) || forced.contains(&r.name) {
                resources.push(ds::Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                });
            }
        }
        let mut removed: Vec<String> = sub
            .client_versions
            .keys()
            .filter(|n| sub.wants(n) && !snap.resources.contains_key(*n))
            .cloned()
            .collect();
        removed.sort();
        if resources.is_empty() && removed.is_empty() {
            return Ok(Pushed::UpToDate(snap.version.clone()));
        }
        for r in &resources {
            sub.client_versions
                .insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            sub.client_versions.remove(n);
        }
        let nonce = self.ctx.next_nonce();
        sub.inflight.push(nonce.clone(), snap.version.clone());
        let resp = ds::DeltaDiscoveryResponse {
            system_version_info: snap.version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.ctx
            .shared
            .registry
            .sent(self.ctx.node_id(), type_url, &snap.version);
        self.tx.send(Ok(resp)).await.map_err(|_| Closed)?;
        Ok(Pushed::Sent)
    }
}

enum Pushed {
    /// No snapshot for the type (yet).
    Nothing,
    /// The node holds every current resource of this snapshot version.
    UpToDate(String),
    Sent,
}
