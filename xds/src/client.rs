//! Generic ADS client: subscribes to type URLs, hands every response to an
//! [`UpdateHandler`], ACKs or NACKs, and reconnects with backoff while
//! holding the versions it accepted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost_types::Any;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::XdsError;
use crate::pb::envoy::config::core::v3::Node;
use crate::pb::envoy::service::discovery::v3 as ds;
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::pb::google::rpc::Status as RpcStatus;
use crate::types::resource_name;

/// Which ADS method to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources`.
    StateOfTheWorld,
    /// `DeltaAggregatedResources`.
    Delta,
}

/// One subscribed type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub type_url: String,
    /// Resource names; empty means every resource of the type (wildcard).
    pub resource_names: Vec<String>,
}

impl Subscription {
    pub fn wildcard(type_url: impl Into<String>) -> Self {
        Subscription {
            type_url: type_url.into(),
            resource_names: Vec::new(),
        }
    }

    pub fn named(type_url: impl Into<String>, names: impl IntoIterator<Item = String>) -> Self {
        Subscription {
            type_url: type_url.into(),
            resource_names: names.into_iter().collect(),
        }
    }
}

/// Reconnect delays: `initial * multiplier^attempt`, capped at `max`, then
/// reduced by a random fraction up to `jitter` (0.0–1.0).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.3,
        }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base =
            self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * rand::random::<f64>();
        Duration::try_from_secs_f64(capped * factor).unwrap_or(self.max)
    }
}

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Control plane URI, e.g. `http://127.0.0.1:18000`.
    pub endpoint: String,
    /// Sent in the first request of every stream; `id` must not be empty.
    pub node: Node,
    pub protocol: Protocol,
    pub subscriptions: Vec<Subscription>,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    /// Largest response accepted (bytes).
    pub max_response_bytes: usize,
}

impl ClientConfig {
    pub fn new(
        endpoint: impl Into<String>,
        node_id: impl Into<String>,
        protocol: Protocol,
    ) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            node: Node {
                id: node_id.into(),
                user_agent_name: "tappass".to_string(),
                ..Default::default()
            },
            protocol,
            subscriptions: Vec::new(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024 * 1024,
        }
    }

    pub fn subscribe(mut self, sub: Subscription) -> Self {
        self.subscriptions.push(sub);
        self
    }
}

/// A resource as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedResource {
    /// Delta: the resource name sent by the server. State of the world:
    /// field 1 of the packed message (empty when it has none).
    pub name: String,
    /// Delta: the per-resource version. State of the world: the response
    /// version.
    pub version: String,
    pub body: Any,
}

/// One response, handed to the [`UpdateHandler`].
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub protocol: Protocol,
    pub type_url: String,
    /// `version_info` (state of the world) or `system_version_info` (delta).
    pub version: String,
    /// The version held before this update (what a NACK keeps).
    pub previous_version: String,
    /// Every resource of the type once this update is applied, by name.
    pub resources: BTreeMap<String, ReceivedResource>,
    /// Delta: names added or changed by this response.
    pub changed: Vec<String>,
    /// Delta: names removed by this response.
    pub removed: Vec<String>,
}

/// Receives updates. `Ok` ACKs the update (the client then holds its
/// version); `Err(reason)` NACKs it with `reason` in `error_detail` and the
/// client keeps the previous version.
#[tonic::async_trait]
pub trait UpdateHandler: Send + Sync + 'static {
    async fn on_update(&self, update: &Update) -> Result<(), String>;
}

/// What the client holds for one type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldType {
    pub version: String,
    pub resources: BTreeMap<String, ReceivedResource>,
}

/// Observable client state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStatus {
    /// A stream is open.
    pub connected: bool,
    /// Streams opened so far.
    pub streams_opened: u64,
    /// Version held per type URL.
    pub versions: BTreeMap<String, String>,
    pub acks: u64,
    pub nacks: u64,
    /// The last NACK reason sent.
    pub last_nack: Option<String>,
    /// The last connection or stream error.
    pub last_error: Option<String>,
    pub last_update_at: Option<SystemTime>,
}

/// An ADS client. Build it, optionally seed the versions it already holds
/// (e.g. from a persisted snapshot), then [`spawn`](AdsClient::spawn) it.
pub struct AdsClient {
    config: ClientConfig,
    handler: Arc<dyn UpdateHandler>,
    held: HashMap<String, HeldType>,
    status: watch::Sender<ClientStatus>,
    channel: watch::Sender<Option<Channel>>,
}

/// Handle to a running client.
pub struct ClientHandle {
    status: watch::Receiver<ClientStatus>,
    channel: watch::Receiver<Option<Channel>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ClientHandle {
    /// The current status.
    pub fn status(&self) -> ClientStatus {
        self.status.borrow().clone()
    }

    /// A receiver marked changed on every status change.
    pub fn watch(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// The channel of the current session (while connected), for other
    /// calls to the same control plane (e.g. [`crate::reports`]).
    pub fn channel(&self) -> Option<Channel> {
        self.channel.borrow().clone()
    }

    /// A receiver of the current session's channel.
    pub fn channel_watch(&self) -> watch::Receiver<Option<Channel>> {
        self.channel.clone()
    }

    /// Stops the client and waits for its task to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

enum SessionEnd {
    Shutdown,
    /// The stream ended; `contact` tells whether it had been established.
    Closed {
        contact: bool,
        error: Option<String>,
    },
}

impl AdsClient {
    pub fn new(config: ClientConfig, handler: Arc<dyn UpdateHandler>) -> Self {
        AdsClient {
            config,
            handler,
            held: HashMap::new(),
            status: watch::channel(ClientStatus::default()).0,
            channel: watch::channel(None).0,
        }
    }

    /// Declares what the client already holds for a type: sent as
    /// `version_info` (state of the world) or `initial_resource_versions`
    /// (delta) when subscribing.
    pub fn with_held(mut self, type_url: &str, held: HeldType) -> Self {
        self.status.send_modify(|s| {
            s.versions
                .insert(type_url.to_string(), held.version.clone());
        });
        self.held.insert(type_url.to_string(), held);
        self
    }

    /// Runs the client on the current tokio runtime.
    pub fn spawn(self) -> ClientHandle {
        let (tx, rx) = watch::channel(false);
        let status = self.status.subscribe();
        let channel = self.channel.subscribe();
        let task = tokio::spawn(self.run(rx));
        ClientHandle {
            status,
            channel,
            shutdown: tx,
            task,
        }
    }

    /// Runs until `shutdown` becomes `true` (or its sender is dropped).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut attempt: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let end = self.session(&mut shutdown).await;
            self.channel.send_replace(None);
            self.status.send_modify(|s| s.connected = false);
            match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Closed { contact, error } => {
                    if let Some(e) = error {
                        tracing::warn!(endpoint = %self.config.endpoint, error = %e, "ADS stream ended");
                        self.status.send_modify(|s| s.last_error = Some(e));
                    }
                    if contact {
                        attempt = 0;
                    }
                }
            }
            let delay = self.config.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Channel, XdsError> {
        let endpoint = Endpoint::from_shared(self.config.endpoint.clone())
            .map_err(|e| XdsError::Endpoint {
                endpoint: self.config.endpoint.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        match tokio::time::timeout(self.config.connect_timeout, endpoint.connect()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(XdsError::ConnectTimeout(self.config.connect_timeout)),
        }
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> SessionEnd {
        let channel = tokio::select! {
            c = self.connect() => match c {
                Ok(c) => c,
                Err(e) => return SessionEnd::Closed { contact: false, error: Some(e.to_string()) },
            },
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        };
        self.channel.send_replace(Some(channel.clone()));
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_response_bytes)
            .max_encoding_message_size(usize::MAX);
        let r = match self.config.protocol {
            Protocol::StateOfTheWorld => self.sotw(client, shutdown).await,
            Protocol::Delta => self.delta(client, shutdown).await,
        };
        match r {
            Ok(end) => end,
            Err((contact, e)) => SessionEnd::Closed {
                contact,
                error: Some(e.to_string()),
            },
        }
    }

    fn mark_connected(&self) {
        self.status.send_modify(|s| {
            s.connected = true;
            s.streams_opened += 1;
        });
    }

    async fn sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, (bool, XdsError)> {
        let (tx, rx) = mpsc::channel::<ds::DiscoveryRequest>(64 + self.config.subscriptions.len());
        for (i, sub) in self.config.subscriptions.iter().enumerate() {
            let held = self.held.get(&sub.type_url);
            let req = ds::DiscoveryRequest {
                version_info: held.map(|h| h.version.clone()).unwrap_or_default(),
                node: (i == 0).then(|| self.config.node.clone()),
                resource_names: sub.resource_names.clone(),
                type_url: sub.type_url.clone(),
                ..Default::default()
            };
            // The channel is fresh and large enough for the first requests.
            let _ = tx.try_send(req);
        }
        let mut inbound = tokio::select! {
            r = client.stream_aggregated_resources(ReceiverStream::new(rx)) => {
                r.map_err(|s| (false, XdsError::from(s)))?.into_inner()
            }
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
        };
        self.mark_connected();
        loop {
            let resp = tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(SessionEnd::Closed { contact: true, error: Some("server closed the stream".into()) }),
                    Err(s) => return Err((true, XdsError::from(s))),
                },
                _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            };
            // The handler may take long; shutdown must not wait for it.
            let req = tokio::select! {
                r = self.on_sotw_response(resp) => r,
                _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            };
            if tx.send(req).await.is_err() {
                return Ok(SessionEnd::Closed {
                    contact: true,
                    error: Some("request stream closed".into()),
                });
            }
        }
    }

    async fn on_sotw_response(&mut self, resp: ds::DiscoveryResponse) -> ds::DiscoveryRequest {
        let sub = self
            .config
            .subscriptions
            .iter()
            .find(|s| s.type_url == resp.type_url);
        let names = sub.map(|s| s.resource_names.clone()).unwrap_or_default();
        let previous = self
            .held
            .get(&resp.type_url)
            .map(|h| h.version.clone())
            .unwrap_or_default();
        let mut req = ds::DiscoveryRequest {
            version_info: previous.clone(),
            node: None,
            resource_names: names,
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        let verdict = if sub.is_none() {
            Err(format!("type {} is not subscribed", resp.type_url))
        } else if let Some(bad) = resp.resources.iter().find(|a| a.type_url != resp.type_url) {
            Err(format!(
                "resource of type {} in a response of type {}",
                bad.type_url, resp.type_url
            ))
        } else {
            let mut resources = BTreeMap::new();
            let mut dup = None;
            for (i, any) in resp.resources.iter().enumerate() {
                let name = resource_name(any).unwrap_or_default();
                let key = if name.is_empty() {
                    format!("#{i}")
                } else {
                    name.clone()
                };
                if resources.contains_key(&key) {
                    dup = Some(key.clone());
                }
                resources.insert(
                    key,
                    ReceivedResource {
                        name,
                        version: resp.version_info.clone(),
                        body: any.clone(),
                    },
                );
            }
            match dup {
                Some(d) => Err(format!("resource {d:?} appears twice")),
                None => {
                    let update = Update {
                        protocol: Protocol::StateOfTheWorld,
                        type_url: resp.type_url.clone(),
                        version: resp.version_info.clone(),
                        previous_version: previous,
                        resources,
                        changed: Vec::new(),
                        removed: Vec::new(),
                    };
                    self.handler.on_update(&update).await.map(|()| update)
                }
            }
        };
        match verdict {
            Ok(update) => {
                req.version_info = update.version.clone();
                self.accept(update);
            }
            Err(reason) => {
                req.error_detail = Some(nack_status(&reason));
                self.reject(reason);
            }
        }
        req
    }

    fn accept(&mut self, update: Update) {
        let type_url = update.type_url.clone();
        let version = update.version.clone();
        self.held.insert(
            type_url.clone(),
            HeldType {
                version: version.clone(),
                resources: update.resources,
            },
        );
        self.status.send_modify(|s| {
            s.acks += 1;
            s.versions.insert(type_url, version);
            s.last_update_at = Some(SystemTime::now());
        });
    }

    fn reject(&mut self, reason: String) {
        tracing::warn!(reason = %reason, "NACK");
        self.status.send_modify(|s| {
            s.nacks += 1;
            s.last_nack = Some(reason);
        });
    }

    async fn delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, (bool, XdsError)> {
        let (tx, rx) =
            mpsc::channel::<ds::DeltaDiscoveryRequest>(64 + self.config.subscriptions.len());
        for (i, sub) in self.config.subscriptions.iter().enumerate() {
            let initial = self
                .held
                .get(&sub.type_url)
                .map(|h| {
                    h.resources
                        .values()
                        .filter(|r| !r.name.is_empty())
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let req = ds::DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.config.node.clone()),
                type_url: sub.type_url.clone(),
                resource_names_subscribe: sub.resource_names.clone(),
                initial_resource_versions: initial,
                ..Default::default()
            };
            let _ = tx.try_send(req);
        }
        let mut inbound = tokio::select! {
            r = client.delta_aggregated_resources(ReceiverStream::new(rx)) => {
                r.map_err(|s| (false, XdsError::from(s)))?.into_inner()
            }
            _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
        };
        self.mark_connected();
        loop {
            let resp = tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(SessionEnd::Closed { contact: true, error: Some("server closed the stream".into()) }),
                    Err(s) => return Err((true, XdsError::from(s))),
                },
                _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            };
            // The handler may take long; shutdown must not wait for it.
            let req = tokio::select! {
                r = self.on_delta_response(resp) => r,
                _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
            };
            if tx.send(req).await.is_err() {
                return Ok(SessionEnd::Closed {
                    contact: true,
                    error: Some("request stream closed".into()),
                });
            }
        }
    }

    async fn on_delta_response(
        &mut self,
        resp: ds::DeltaDiscoveryResponse,
    ) -> ds::DeltaDiscoveryRequest {
        let mut req = ds::DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        let subscribed = self
            .config
            .subscriptions
            .iter()
            .any(|s| s.type_url == resp.type_url);
        let held = self.held.get(&resp.type_url).cloned().unwrap_or_default();
        let verdict = if !subscribed {
            Err(format!("type {} is not subscribed", resp.type_url))
        } else if let Some(bad) = resp
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .find(|a| a.type_url != resp.type_url)
        {
            Err(format!(
                "resource of type {} in a response of type {}",
                bad.type_url, resp.type_url
            ))
        } else if let Some(r) = resp.resources.iter().find(|r| r.name.is_empty()) {
            Err(format!("resource without a name (version {:?})", r.version))
        } else {
            let mut resources = held.resources.clone();
            let mut changed = Vec::new();
            for r in &resp.resources {
                // A resource without a body only refreshes its TTL.
                if let Some(body) = &r.resource {
                    resources.insert(
                        r.name.clone(),
                        ReceivedResource {
                            name: r.name.clone(),
                            version: r.version.clone(),
                            body: body.clone(),
                        },
                    );
                    changed.push(r.name.clone());
                }
            }
            let mut removed = Vec::new();
            for n in &resp.removed_resources {
                if resources.remove(n).is_some() {
                    removed.push(n.clone());
                }
            }
            let update = Update {
                protocol: Protocol::Delta,
                type_url: resp.type_url.clone(),
                version: resp.system_version_info.clone(),
                previous_version: held.version.clone(),
                resources,
                changed,
                removed,
            };
            self.handler.on_update(&update).await.map(|()| update)
        };
        match verdict {
            Ok(update) => self.accept(update),
            Err(reason) => {
                req.error_detail = Some(nack_status(&reason));
                self.reject(reason);
            }
        }
        req
    }
}

/// `google.rpc.Status` of a NACK (code 3, INVALID_ARGUMENT).
pub fn nack_status(reason: &str) -> RpcStatus {
    RpcStatus {
        code: tonic::Code::InvalidArgument as i32,
        message: reason.to_string(),
        details: Vec::new(),
    }
}
