//! The gateway's link to the control plane: an xDS (ADS) subscription to
//! the identity material and policies the control plane pushes, each
//! resource's signature, subject, monotonic version and freshness checked
//! before it is used. A verified update is built into a new
//! [`GatewayState`] off the request path and swapped in atomically; a bad
//! update is NACKed and the last good state keeps serving. The last good
//! resources are persisted so a restarted gateway serves at once, and when
//! the control plane has been out of reach past the snapshots' TTL the
//! gateway fails closed (or open, if so configured).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use prost_types::Any;
use serde::{Deserialize, Serialize};
use tappass_xds::pb::tappass::v1::{
    ApiKeyHashes, ApiKeyHashesPayload, PolicySnapshot, Revocations as RevocationsResource,
    RevocationsPayload, TrustBundle, TrustBundlePayload,
};
use tappass_xds::types::{API_KEY_HASHES, POLICY_SNAPSHOT, REVOCATIONS, TRUST_BUNDLE};
use tappass_xds::{
    unpack, AdsClient, ClientConfig, ClientHandle, HeldType, Protocol, ReceivedResource,
    SignedResource, SnapshotVerifier, Subscription, Update, UpdateHandler, Verified,
};

use crate::config::{ControlPlaneConfig, OnStale};
use crate::gateway::GatewayState;

/// The types a gateway subscribes to.
pub const SUBSCRIBED: [&str; 4] = [TRUST_BUNDLE, REVOCATIONS, API_KEY_HASHES, POLICY_SNAPSHOT];

/// A compiled policy the control plane pushed for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedPolicy {
    pub version: u64,
    /// The signed Compiled Policy document, as pushed.
    pub document: String,
}

/// What the control plane has pushed and the gateway verified.
#[derive(Debug, Clone, Default)]
pub struct Pushed {
    /// API-key hash (hex) → (agent, project).
    pub api_keys: Option<Vec<(String, String, Option<String>)>>,
    pub jwks: Option<tappass_keys::Jwks>,
    pub revocations: Option<tappass_tokens::Revocations>,
    /// Agent → policy.
    pub policies: BTreeMap<String, PushedPolicy>,
    /// Version of each resource held, by type and name (for the monotonic check).
    versions: BTreeMap<(String, String), u64>,
    /// Earliest expiry among the held resources, per type.
    expiry: BTreeMap<String, SystemTime>,
}

impl Pushed {
    /// Only policies (the standalone mode reads them from local files).
    pub fn with_policies(policies: BTreeMap<String, PushedPolicy>) -> Pushed {
        Pushed {
            policies,
            ..Pushed::default()
        }
    }

    fn expires_at(&self) -> Option<SystemTime> {
        self.expiry.values().min().copied()
    }
}

/// Shared view of the link's health, read on the request path.
#[derive(Debug, Default)]
pub struct LinkHealth {
    connected: AtomicBool,
    /// Milliseconds since the epoch when the held snapshots expire; 0: none held.
    expires_at_ms: AtomicU64,
    fail_open: bool,
}

impl LinkHealth {
    /// The gateway must refuse calls: out of contact past the TTL (or never
    /// configured by the control plane) and configured to fail closed.
    pub fn refuses_calls(&self) -> Option<String> {
        if self.fail_open || self.connected.load(Ordering::Acquire) {
            return None;
        }
        let expires = self.expires_at_ms.load(Ordering::Acquire);
        let now = crate::call_record::wall_ms();
        if expires == 0 {
            return Some(
                "the gateway has not received its configuration from the control plane".into(),
            );
        }
        (now > expires).then(|| {
            format!(
                "the control plane has been out of reach for longer than the configuration's TTL ({} s ago)",
                (now - expires) / 1000
            )
        })
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Rebuilds the gateway state from its static part and what was pushed.
pub type Rebuild = dyn Fn(&Pushed) -> Result<GatewayState, String> + Send + Sync;

/// Applies verified updates.
pub struct Applier {
    verifier: SnapshotVerifier,
    pushed: Mutex<Pushed>,
    state: Arc<ArcSwap<GatewayState>>,
    rebuild: Box<Rebuild>,
    health: Arc<LinkHealth>,
    store: Option<PathBuf>,
    held: Mutex<BTreeMap<String, HeldType>>,
}

/// Persisted form of what a gateway holds for one type.
#[derive(Serialize, Deserialize)]
struct StoredType {
    version: String,
    resources: BTreeMap<String, StoredResource>,
}

#[derive(Serialize, Deserialize)]
struct StoredResource {
    version: String,
    type_url: String,
    value: String,
}

fn file_name(type_url: &str) -> String {
    format!("{}.json", type_url.rsplit('.').next().unwrap_or("resource"))
}

impl Applier {
    fn verify<'a, R: SignedResource>(
        &self,
        type_url: &str,
        r: &'a R,
        pushed: &Pushed,
        at_load: bool,
    ) -> Result<Verified<'a>, String> {
        let key = (type_url.to_string(), r.name().to_string());
        let held = pushed.versions.get(&key).copied();
        // Persisted snapshots are checked as of their issue time; the TTL
        // then decides whether they may still serve.
        let now = match (at_load, r.snapshot().and_then(|s| s.issued_at.as_ref())) {
            (true, Some(ts)) => {
                UNIX_EPOCH + Duration::new(ts.seconds.max(0) as u64, ts.nanos.max(0) as u32)
            }
            _ => SystemTime::now(),
        };
        // A newer version is required, except when the same version is
        // presented again (a resubscription).
        let newer_than = held.filter(|v| r.snapshot().is_none_or(|s| s.version != *v));
        self.verifier
            .verify_resource(r, newer_than, now)
            .map_err(|e| format!("{type_url} `{}`: {e}", r.name()))
    }

    /// Verify and decode a whole type's resource set into `pushed`.
    fn apply(
        &self,
        type_url: &str,
        resources: &BTreeMap<String, ReceivedResource>,
        pushed: &mut Pushed,
        at_load: bool,
    ) -> Result<(), String> {
        let mut expiry: Option<SystemTime> = None;
        let mut versions = Vec::new();
        let mut note = |v: &Verified<'_>, name: &str, versions: &mut Vec<(String, u64)>| {
            expiry = Some(expiry.map_or(v.expires_at, |e| e.min(v.expires_at)));
            versions.push((name.to_string(), v.version));
        };
        let decode_err = |e: tappass_xds::XdsError| format!("{type_url}: {e}");
        match type_url {
            TRUST_BUNDLE => {
                let mut jwks = None;
                for r in resources.values() {
                    let res: TrustBundle = unpack(&r.body).map_err(decode_err)?;
                    let v = self.verify(type_url, &res, pushed, at_load)?;
                    let p: TrustBundlePayload = v.decode().map_err(|e| e.to_string())?;
                    jwks = Some(
                        tappass_keys::Jwks::from_json(&p.jwks_json)
                            .map_err(|e| format!("trust bundle: {e}"))?,
                    );
                    note(&v, res.name(), &mut versions);
                }
                pushed.jwks = jwks;
            }
            REVOCATIONS => {
                let mut out = tappass_tokens::Revocations::default();
                for r in resources.values() {
                    let res: RevocationsResource = unpack(&r.body).map_err(decode_err)?;
                    let v = self.verify(type_url, &res, pushed, at_load)?;
                    let p: RevocationsPayload = v.decode().map_err(|e| e.to_string())?;
                    out.jti.extend(p.tokens.into_iter().map(|t| t.jti));
                    out.sandboxes
                        .extend(p.sandboxes.into_iter().map(|s| s.sandbox_id));
                    note(&v, res.name(), &mut versions);
                }
                pushed.revocations = Some(out);
            }
            API_KEY_HASHES => {
                let mut keys = Vec::new();
                for r in resources.values() {
                    let res: ApiKeyHashes = unpack(&r.body).map_err(decode_err)?;
                    let v = self.verify(type_url, &res, pushed, at_load)?;
                    let p: ApiKeyHashesPayload = v.decode().map_err(|e| e.to_string())?;
                    for k in p.keys {
                        if k.alg != "sha256"
                            || k.hash.len() != 64
                            || !k.hash.bytes().all(|b| b.is_ascii_hexdigit())
                        {
                            return Err(format!(
                                "api key `{}`: only sha256 hex hashes are accepted",
                                k.key_id
                            ));
                        }
                        let expired = k.expires_at.is_some_and(|t| {
                            (t.seconds as u64) * 1000 < crate::call_record::wall_ms()
                        });
                        if !expired {
                            let project = (!k.project.is_empty()).then_some(k.project);
                            keys.push((k.hash.to_ascii_lowercase(), k.agent, project));
                        }
                    }
                    note(&v, res.name(), &mut versions);
                }
                pushed.api_keys = Some(keys);
            }
            POLICY_SNAPSHOT => {
                let mut policies = BTreeMap::new();
                for r in resources.values() {
                    let res: PolicySnapshot = unpack(&r.body).map_err(decode_err)?;
                    let v = self.verify(type_url, &res, pushed, at_load)?;
                    let document = String::from_utf8(v.payload.to_vec())
                        .map_err(|_| format!("policy `{}` is not UTF-8", res.name()))?;
                    policies.insert(
                        res.name().to_string(),
                        PushedPolicy {
                            version: v.version,
                            document,
                        },
                    );
                    note(&v, res.name(), &mut versions);
                }
                pushed.policies = policies;
            }
            other => return Err(format!("unexpected type {other}")),
        }
        pushed.versions.retain(|(t, _), _| t != type_url);
        for (name, v) in versions {
            pushed.versions.insert((type_url.to_string(), name), v);
        }
        match expiry {
            Some(e) => {
                pushed.expiry.insert(type_url.to_string(), e);
            }
            None => {
                pushed.expiry.remove(type_url);
            }
        }
        Ok(())
    }

    fn install(&self, pushed: &Pushed) -> Result<(), String> {
        let state = (self.rebuild)(pushed)?;
        self.state.store(Arc::new(state));
        self.health
            .expires_at_ms
            .store(pushed.expires_at().map_or(0, ms), Ordering::Release);
        Ok(())
    }

    fn persist(
        &self,
        type_url: &str,
        version: &str,
        resources: &BTreeMap<String, ReceivedResource>,
    ) {
        let Some(dir) = &self.store else { return };
        let stored = StoredType {
            version: version.to_string(),
            resources: resources
                .iter()
                .map(|(n, r)| {
                    (
                        n.clone(),
                        StoredResource {
                            version: r.version.clone(),
                            type_url: r.body.type_url.clone(),
                            value: B64.encode(&r.body.value),
                        },
                    )
                })
                .collect(),
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{}.tmp", file_name(type_url)));
            std::fs::write(&tmp, serde_json::to_vec(&stored)?)?;
            std::fs::rename(&tmp, dir.join(file_name(type_url)))
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "cannot persist the control plane's snapshot");
        }
    }

    /// Load and verify what a previous run persisted; returns the held
    /// versions to resubscribe with.
    fn load(&self, dir: &Path) -> BTreeMap<String, HeldType> {
        let mut held = BTreeMap::new();
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        for type_url in SUBSCRIBED {
            let path = dir.join(file_name(type_url));
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(stored) = serde_json::from_slice::<StoredType>(&bytes) else {
                tracing::warn!(file = %path.display(), "ignoring an unreadable persisted snapshot");
                continue;
            };
            let resources: BTreeMap<String, ReceivedResource> = stored
                .resources
                .into_iter()
                .filter_map(|(n, r)| {
                    Some((
                        n.clone(),
                        ReceivedResource {
                            name: n,
                            version: r.version,
                            body: Any {
                                type_url: r.type_url,
                                value: B64.decode(r.value).ok()?,
                            },
                        },
                    ))
                })
                .collect();
            let mut candidate = pushed.clone();
            match self.apply(type_url, &resources, &mut candidate, true) {
                Ok(()) => {
                    *pushed = candidate;
                    held.insert(
                        type_url.to_string(),
                        HeldType {
                            version: stored.version,
                            resources,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a persisted snapshot that does not verify")
                }
            }
        }
        if !held.is_empty() {
            if let Err(e) = self.install(&pushed) {
                tracing::warn!(error = %e, "the persisted snapshot cannot be installed");
            }
        }
        held
    }
}

#[async_trait::async_trait]
impl UpdateHandler for Applier {
    async fn on_update(&self, update: &Update) -> Result<(), String> {
        let mut candidate = self
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let result = self
            .apply(&update.type_url, &update.resources, &mut candidate, false)
            .and_then(|()| self.install(&candidate));
        match result {
            Ok(()) => {
                *self.pushed.lock().unwrap_or_else(|p| p.into_inner()) = candidate;
                self.persist(&update.type_url, &update.version, &update.resources);
                self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    update.type_url.clone(),
                    HeldType {
                        version: update.version.clone(),
                        resources: update.resources.clone(),
                    },
                );
                tracing::info!(type_url = %update.type_url, version = %update.version, "applied the control plane's update");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(type_url = %update.type_url, version = %update.version, error = %e, "refused the control plane's update");
                Err(e)
            }
        }
    }
}

/// A running link to the control plane.
pub struct ControlLink {
    pub health: Arc<LinkHealth>,
    handle: Option<ClientHandle>,
}

impl ControlLink {
    /// Verify persisted snapshots, install them, and start the subscription
    /// on the current tokio runtime.
    pub fn start(
        cfg: &ControlPlaneConfig,
        node_id: &str,
        state: Arc<ArcSwap<GatewayState>>,
        rebuild: Box<Rebuild>,
    ) -> Result<ControlLink, String> {
        let keys = cfg
            .snapshot_public_keys
            .iter()
            .map(|k| {
                let mut b = [0u8; 32];
                hex::decode_to_slice(k.trim(), &mut b)
                    .map_err(|_| format!("snapshot public key `{k}` is not 64 hex digits"))?;
                Ok(b)
            })
            .collect::<Result<Vec<[u8; 32]>, String>>()?;
        let verifier =
            SnapshotVerifier::from_public_keys(keys.iter()).map_err(|e| e.to_string())?;
        let health = Arc::new(LinkHealth {
            fail_open: cfg.on_stale == OnStale::FailOpen,
            ..LinkHealth::default()
        });
        let applier = Arc::new(Applier {
            verifier,
            pushed: Mutex::new(Pushed::default()),
            state,
            rebuild,
            health: health.clone(),
            store: cfg.state_dir.clone(),
            held: Mutex::new(BTreeMap::new()),
        });
        let held = match &cfg.state_dir {
            Some(dir) => applier.load(dir),
            None => BTreeMap::new(),
        };
        let protocol = match cfg.protocol {
            crate::config::XdsProtocol::Delta => Protocol::Delta,
            crate::config::XdsProtocol::Sotw => Protocol::StateOfTheWorld,
        };
        let mut client_cfg = ClientConfig::new(cfg.url.clone(), node_id.to_string(), protocol);
        for t in SUBSCRIBED {
            client_cfg = client_cfg.subscribe(Subscription::wildcard(t));
        }
        let mut client = AdsClient::new(client_cfg, applier.clone());
        for (t, h) in held {
            client = client.with_held(&t, h);
        }
        let handle = client.spawn();
        let mut watch = handle.watch();
        let h = health.clone();
        tokio::spawn(async move {
            loop {
                let connected = watch.borrow().connected;
                h.connected.store(connected, Ordering::Release);
                if watch.changed().await.is_err() {
                    h.connected.store(false, Ordering::Release);
                    break;
                }
            }
        });
        Ok(ControlLink {
            health,
            handle: Some(handle),
        })
    }

    pub fn status(&self) -> Option<tappass_xds::ClientStatus> {
        self.handle.as_ref().map(|h| h.status())
    }

    /// The channel of the current ADS session, for the gateway's reports.
    pub fn channel_watch(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<Option<tappass_xds::Channel>>> {
        self.handle.as_ref().map(|h| h.channel_watch())
    }
}
