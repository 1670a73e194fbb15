//! The fleet's audit trail as the control plane sees it: each gateway's
//! audit public keys (served together as the fleet's audit JWKS, never
//! pruned, so old rows keep verifying), its last reported chain head, and
//! audit key rotation requests. Gateways report over the
//! `tappass.v1.GatewayReports` service on the xDS port.
//!
//! Who may report for a gateway id: the first accepted report enrolls the
//! keys it lists (trust on first use); later reports must be signed by a key
//! enrolled for that id, so a gateway can only report for itself, and a new
//! key is introduced by a report signed with the key it replaces. An
//! operator can re-enroll a gateway whose keys were lost; its earlier keys
//! stay published.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tappass_xds::pb::tappass::v1::{GatewayReport, ReportReply};
use tappass_xds::{report_signing_input, ReportHandler};

use crate::error::{ControlError, Result};
use crate::plane::ControlPlane;
use crate::store::Batch;

/// Most keys one report may list.
pub const MAX_REPORTED_KEYS: usize = 256;

const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Serializes report handling (read, check, write of a gateway record).
#[derive(Default)]
pub(crate) struct FleetLock(Mutex<()>);

/// A chain head as a gateway reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedHead {
    /// Sequence number of the gateway's last audit row.
    pub seq: u64,
    /// Its chain hash.
    pub hash: String,
    /// Last row covered by a signature when the head was read.
    pub signed_seq: u64,
    /// When the gateway read the head (ms since the epoch, gateway clock).
    pub head_time_ms: i64,
    /// When the control plane accepted the report (ms since the epoch).
    pub reported_at_ms: i64,
}

/// A public audit key a gateway published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedAuditKey {
    pub kid: String,
    /// The public JWK (OKP, Ed25519).
    pub jwk: Value,
    pub first_published_at_ms: i64,
}

/// What the control plane knows of one gateway's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAudit {
    pub gateway_id: String,
    pub enrolled_at_ms: i64,
    pub last_report_at_ms: i64,
    /// Peer address of the last accepted report.
    pub last_peer: Option<String>,
    pub head: Option<ReportedHead>,
    /// The key that signed the last accepted report.
    pub key_id: String,
    /// Rotations the gateway has completed (as it reports).
    pub key_generation: u64,
    /// The generation the control plane asks for; above `key_generation`
    /// while a rotation is pending.
    pub requested_key_generation: u64,
    /// Every key the gateway ever published, oldest first.
    pub keys: Vec<PublishedAuditKey>,
    /// The next report may enroll new keys (set by re-enrollment).
    pub reenroll: bool,
}

impl GatewayAudit {
    pub fn rotation_pending(&self) -> bool {
        self.requested_key_generation > self.key_generation
    }
}

/// Why a report was refused, mapped to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum ReportRefused {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ReportRefused> for tonic::Status {
    fn from(r: ReportRefused) -> Self {
        match r {
            ReportRefused::Invalid(m) => tonic::Status::invalid_argument(m),
            ReportRefused::Denied(m) => tonic::Status::permission_denied(m),
            ReportRefused::Conflict(m) => tonic::Status::failed_precondition(m),
            ReportRefused::Internal(m) => tonic::Status::internal(m),
        }
    }
}

impl From<ControlError> for ReportRefused {
    fn from(e: ControlError) -> Self {
        ReportRefused::Internal(e.to_string())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn gateway_key(id: &str) -> String {
    format!("gateway/{id}")
}

/// Gateway ids: 1–128 characters, letters, digits, `.`, `_`, `-`, `:`,
/// starting with a letter or digit (host names fit).
pub fn valid_gateway_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "gateway id {id:?} is invalid: 1-128 letters, digits, `.`, `_`, `-`, `:`"
        ))
    }
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Ed25519 keys of a reported JWKS, by key id. Every key must be an
/// Ed25519 `OKP` key whose `kid` (when given) is its TapPass key id.
fn parse_keys(jwks_json: &str) -> std::result::Result<BTreeMap<String, VerifyingKey>, String> {
    let doc: Value =
        serde_json::from_str(jwks_json).map_err(|e| format!("audit_jwks_json: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("audit_jwks_json has no `keys` array")?;
    if keys.is_empty() || keys.len() > MAX_REPORTED_KEYS {
        return Err(format!(
            "audit_jwks_json must list 1 to {MAX_REPORTED_KEYS} keys, not {}",
            keys.len()
        ));
    }
    let mut out = BTreeMap::new();
    for k in keys {
        if k.get("kty").and_then(Value::as_str) != Some("OKP")
            || k.get("crv").and_then(Value::as_str) != Some("Ed25519")
        {
            return Err("audit keys must be Ed25519 (kty OKP, crv Ed25519)".into());
        }
        let bytes: [u8; 32] = k
            .get("x")
            .and_then(Value::as_str)
            .and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or("an audit key's `x` is not 32 base64url bytes")?;
        let vk = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| format!("invalid Ed25519 public key: {e}"))?;
        let kid = tappass_keys::key_id(&vk);
        if let Some(given) = k.get("kid").and_then(Value::as_str) {
            if given != kid {
                return Err(format!(
                    "audit key `{given}`: the key id of this public key is `{kid}`"
                ));
            }
        }
        out.insert(kid, vk);
    }
    Ok(out)
}

fn public_jwk(kid: &str, vk: &VerifyingKey) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(vk.as_bytes()),
    })
}

fn check_signature(r: &GatewayReport, vk: &VerifyingKey) -> std::result::Result<(), ReportRefused> {
    let bytes: [u8; 64] = URL_SAFE_NO_PAD
        .decode(&r.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ReportRefused::Invalid("signature is not 64 base64url bytes".into()))?;
    vk.verify_strict(&report_signing_input(r), &Signature::from_bytes(&bytes))
        .map_err(|_| {
            ReportRefused::Denied(format!(
                "the report's signature does not verify with key `{}`",
                r.key_id
            ))
        })
}

impl ControlPlane {
    fn fleet_record(&self, id: &str) -> Result<Option<GatewayAudit>> {
        self.inner.store.get(&gateway_key(id))
    }

    /// Every gateway that has reported, sorted by id.
    pub fn gateways(&self) -> Result<Vec<GatewayAudit>> {
        Ok(self
            .inner
            .store
            .scan::<GatewayAudit>("gateway/")?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// One gateway's audit state.
    pub fn gateway(&self, id: &str) -> Result<GatewayAudit> {
        self.fleet_record(id)?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "gateway `{id}` has not reported to this control plane"
            ))
        })
    }

    /// The fleet's audit JWKS: every key any gateway ever published.
    pub fn audit_jwks(&self) -> Result<Value> {
        let mut seen = std::collections::BTreeSet::new();
        let mut keys = Vec::new();
        for g in self.gateways()? {
            for k in g.keys {
                if seen.insert(k.kid.clone()) {
                    keys.push(k.jwk);
                }
            }
        }
        Ok(json!({ "keys": keys }))
    }

    /// Asks a gateway to rotate its audit key (at its next report). Does
    /// nothing more while a rotation is already pending.
    pub fn rotate_audit_key(&self, id: &str) -> Result<GatewayAudit> {
        let _g = self.inner.fleet.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = self.gateway(id)?;
        if !rec.rotation_pending() {
            rec.requested_key_generation = rec.key_generation + 1;
            let mut b = Batch::default();
            b.put(&gateway_key(id), &rec)?;
            self.inner.store.commit(b)?;
        }
        Ok(rec)
    }

    /// Lets the gateway's next report enroll new keys (after its audit
    /// keys were lost). Its earlier keys stay published; its head is
    /// replaced by the next report's.
    pub fn reenroll_gateway(&self, id: &str) -> Result<GatewayAudit> {
        let _g = self.inner.fleet.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = self.gateway(id)?;
        rec.reenroll = true;
        let mut b = Batch::default();
        b.put(&gateway_key(id), &rec)?;
        self.inner.store.commit(b)?;
        Ok(rec)
    }

    /// Checks and records a gateway report; the reply carries the audit
    /// key generation the gateway should have.
    pub fn accept_report(
        &self,
        r: &GatewayReport,
        peer: Option<SocketAddr>,
    ) -> std::result::Result<ReportReply, ReportRefused> {
        valid_gateway_id(&r.gateway_id).map_err(ReportRefused::Invalid)?;
        let keys = parse_keys(&r.audit_jwks_json).map_err(ReportRefused::Invalid)?;
        let signer = keys.get(&r.key_id).ok_or_else(|| {
            ReportRefused::Invalid(format!(
                "the signing key `{}` is not in the report's key set",
                r.key_id
            ))
        })?;
        check_signature(r, signer)?;
        let head = r.audit_head.clone().unwrap_or_default();
        let hash_ok = if head.seq == 0 {
            head.hash.is_empty() || head.hash == GENESIS_HASH
        } else {
            is_hash(&head.hash)
        };
        if !hash_ok || head.signed_seq > head.seq {
            return Err(ReportRefused::Invalid(format!(
                "audit head {}:{} (signed through {}) is malformed",
                head.seq, head.hash, head.signed_seq
            )));
        }

        let _g = self.inner.fleet.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let existing = self.fleet_record(&r.gateway_id)?;
        let enrolling = existing.as_ref().is_none_or(|e| e.reenroll);
        let mut rec = existing.unwrap_or_else(|| GatewayAudit {
            gateway_id: r.gateway_id.clone(),
            enrolled_at_ms: now,
            last_report_at_ms: 0,
            last_peer: None,
            head: None,
            key_id: String::new(),
            key_generation: 0,
            requested_key_generation: 0,
            keys: Vec::new(),
            reenroll: false,
        });
        let known = |kid: &str| rec.keys.iter().any(|k| k.kid == kid);
        if !enrolling && !known(&r.key_id) {
            return Err(ReportRefused::Denied(format!(
                "gateway `{}` is enrolled with other audit keys; a report for it must be signed by one of them",
                r.gateway_id
            )));
        }
        let new: Vec<(&String, &VerifyingKey)> = keys.iter().filter(|(k, _)| !known(k)).collect();
        if !new.is_empty() {
            // A key belongs to one gateway.
            for other in self.gateways()? {
                if other.gateway_id == rec.gateway_id {
                    continue;
                }
                if let Some((kid, _)) = new
                    .iter()
                    .find(|(kid, _)| other.keys.iter().any(|k| &k.kid == *kid))
                {
                    return Err(ReportRefused::Denied(format!(
                        "audit key `{kid}` is published by gateway `{}`",
                        other.gateway_id
                    )));
                }
            }
        }
        if let (false, Some(prev)) = (enrolling, &rec.head) {
            if head.seq < prev.seq {
                return Err(ReportRefused::Conflict(format!(
                    "gateway `{}` reported chain head {} after {}: its audit chain went backwards",
                    r.gateway_id, head.seq, prev.seq
                )));
            }
            if head.seq == prev.seq && head.hash != prev.hash {
                return Err(ReportRefused::Conflict(format!(
                    "gateway `{}` reported another hash for row {}: its audit chain forked",
                    r.gateway_id, head.seq
                )));
            }
        }
        // Keys, enrollment and generations are written durably; a head-only
        // update is re-sent by the gateway within seconds, so it need not
        // wait for the disk.
        let durable = enrolling
            || !new.is_empty()
            || rec.key_id != r.key_id
            || rec.key_generation != r.audit_key_generation;
        for (kid, vk) in new {
            rec.keys.push(PublishedAuditKey {
                kid: kid.clone(),
                jwk: public_jwk(kid, vk),
                first_published_at_ms: now,
            });
        }
        if enrolling {
            rec.reenroll = false;
        }
        rec.head = Some(ReportedHead {
            seq: head.seq,
            hash: if head.seq == 0 {
                GENESIS_HASH.to_string()
            } else {
                head.hash.to_ascii_lowercase()
            },
            signed_seq: head.signed_seq,
            head_time_ms: head.time_ms,
            reported_at_ms: now,
        });
        rec.last_report_at_ms = now;
        rec.last_peer = peer.map(|p| p.to_string());
        rec.key_id = r.key_id.clone();
        rec.key_generation = r.audit_key_generation;
        rec.requested_key_generation = rec.requested_key_generation.max(rec.key_generation);
        let mut b = Batch::default();
        b.put(&gateway_key(&rec.gateway_id), &rec)?;
        if durable {
            self.inner.store.commit(b)?;
        } else {
            self.inner.store.commit_unsynced(b)?;
        }
        Ok(ReportReply {
            audit_key_generation: rec.requested_key_generation,
            received_at_ms: now,
        })
    }
}

/// The `GatewayReports` handler of a control plane.
pub struct ReportService(pub ControlPlane);

#[tonic::async_trait]
impl ReportHandler for ReportService {
    async fn report(
        &self,
        report: GatewayReport,
        peer: Option<SocketAddr>,
    ) -> std::result::Result<ReportReply, tonic::Status> {
        let cp = self.0.clone();
        let id = report.gateway_id.clone();
        let result = tokio::task::spawn_blocking(move || cp.accept_report(&report, peer))
            .await
            .map_err(|e| tonic::Status::internal(format!("report task failed: {e}")))?;
        if let Err(e) = &result {
            tracing::warn!(gateway = %id, peer = ?peer, error = %e, "refused a gateway report");
        }
        result.map_err(Into::into)
    }
}
