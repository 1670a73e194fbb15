//! The signed-snapshot envelope: sealing and opening [`SignedSnapshot`]s.
//!
//! The envelope is generic: it signs opaque payload bytes together with the
//! payload type, the subject (resource name), a monotonic version, the issue
//! time and a TTL. What the payload means is up to the caller.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::{Message, Name};
use sha2::{Digest, Sha256};

use crate::error::EnvelopeError;
use crate::pb::tappass::v1::SignedSnapshot;
use crate::types::SignedResource;

/// The only supported signature algorithm.
pub const ALG_ED25519: &str = "Ed25519";

const DOMAIN: &[u8] = b"tappass.v1.SignedSnapshot\n";

/// Key id of a public key: the first 16 hex digits of its SHA-256 (the same
/// key id the policy signer uses).
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes the signature covers (see `tappass/v1/envelope.proto`).
pub fn signing_input(s: &SignedSnapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 96 + s.payload.len());
    out.extend_from_slice(DOMAIN);
    put_str(&mut out, &s.payload_type);
    put_str(&mut out, &s.subject);
    out.extend_from_slice(&s.version.to_be_bytes());
    let (is, in_) = s
        .issued_at
        .as_ref()
        .map_or((0, 0), |t| (t.seconds, t.nanos));
    out.extend_from_slice(&is.to_be_bytes());
    out.extend_from_slice(&in_.to_be_bytes());
    let (ts, tn) = s.ttl.as_ref().map_or((0, 0), |d| (d.seconds, d.nanos));
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&tn.to_be_bytes());
    put_str(&mut out, &s.key_id);
    put_str(&mut out, &s.alg);
    out.extend_from_slice(&(s.payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&s.payload);
    out
}

/// What a snapshot says about itself, besides the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub payload_type: String,
    pub subject: String,
    pub version: u64,
    pub issued_at: SystemTime,
    pub ttl: Duration,
}

/// Signs snapshots with one Ed25519 key.
#[derive(Clone)]
pub struct SnapshotSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for SnapshotSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SnapshotSigner {
    pub fn new(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        SnapshotSigner { key, key_id }
    }

    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::new(SigningKey::from_bytes(&seed))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Seals payload bytes.
    pub fn seal(&self, meta: &SnapshotMeta, payload: Vec<u8>) -> SignedSnapshot {
        let mut s = SignedSnapshot {
            payload_type: meta.payload_type.clone(),
            subject: meta.subject.clone(),
            version: meta.version,
            issued_at: Some(meta.issued_at.into()),
            // Durations beyond what protobuf can hold are clamped.
            ttl: Some(
                prost_types::Duration::try_from(meta.ttl).unwrap_or(prost_types::Duration {
                    seconds: 315_576_000_000,
                    nanos: 0,
                }),
            ),
            key_id: self.key_id.clone(),
            alg: ALG_ED25519.to_string(),
            signature: Vec::new(),
            payload,
        };
        s.signature = self.key.sign(&signing_input(&s)).to_bytes().to_vec();
        s
    }

    /// Seals a protobuf payload; the payload type is its type URL.
    pub fn seal_message<P: Message + Name>(
        &self,
        subject: &str,
        version: u64,
        issued_at: SystemTime,
        ttl: Duration,
        payload: &P,
    ) -> SignedSnapshot {
        let meta = SnapshotMeta {
            payload_type: P::type_url(),
            subject: subject.to_string(),
            version,
            issued_at,
            ttl,
        };
        self.seal(&meta, payload.encode_to_vec())
    }

    /// Builds a complete TapPass resource named `name` whose snapshot holds
    /// `payload` (encoded with the resource's payload type).
    pub fn resource<R: SignedResource>(
        &self,
        name: &str,
        version: u64,
        issued_at: SystemTime,
        ttl: Duration,
        payload: Vec<u8>,
    ) -> R {
        let meta = SnapshotMeta {
            payload_type: R::payload_type(),
            subject: name.to_string(),
            version,
            issued_at,
            ttl,
        };
        R::from_parts(name.to_string(), self.seal(&meta, payload))
    }
}

/// What the receiver requires of a snapshot.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Required payload type.
    pub payload_type: &'a str,
    /// Required subject (the resource name), if checked.
    pub subject: Option<&'a str>,
    /// The version held: the snapshot's version must be strictly greater.
    pub newer_than: Option<u64>,
    /// The current time, for the TTL check.
    pub now: SystemTime,
}

/// A snapshot whose signature, version and freshness were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<'a> {
    pub payload: &'a [u8],
    pub version: u64,
    pub subject: &'a str,
    pub key_id: &'a str,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl Verified<'_> {
    /// Decodes a protobuf payload.
    pub fn decode<P: Message + Name + Default>(&self) -> Result<P, EnvelopeError> {
        P::decode(self.payload).map_err(|e| EnvelopeError::Payload {
            type_url: P::type_url(),
            reason: e.to_string(),
        })
    }
}

/// Verifies snapshots against a set of trusted Ed25519 keys.
#[derive(Debug, Clone)]
pub struct SnapshotVerifier {
    keys: HashMap<String, VerifyingKey>,
    /// Tolerated clock difference for `issued_at` in the future.
    pub max_clock_skew: Duration,
}

impl SnapshotVerifier {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        SnapshotVerifier {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
            max_clock_skew: Duration::from_secs(30),
        }
    }

    /// A verifier from raw 32-byte public keys.
    pub fn from_public_keys<'k>(
        keys: impl IntoIterator<Item = &'k [u8; 32]>,
    ) -> Result<Self, EnvelopeError> {
        let keys = keys
            .into_iter()
            .map(|b| {
                VerifyingKey::from_bytes(b).map_err(|e| EnvelopeError::InvalidKey(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(keys))
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks algorithm, key, signature, payload type, subject, monotonic
    /// version and freshness, in that order.
    pub fn verify<'a>(
        &self,
        s: &'a SignedSnapshot,
        expect: &Expect<'_>,
    ) -> Result<Verified<'a>, EnvelopeError> {
        if s.alg != ALG_ED25519 {
            return Err(EnvelopeError::Algorithm(s.alg.clone()));
        }
        let key = self
            .keys
            .get(&s.key_id)
            .ok_or_else(|| EnvelopeError::UnknownKey(s.key_id.clone()))?;
        let sig =
            Signature::from_slice(&s.signature).map_err(|_| EnvelopeError::MalformedSignature)?;
        key.verify(&signing_input(s), &sig)
            .map_err(|_| EnvelopeError::BadSignature)?;
        if s.payload_type != expect.payload_type {
            return Err(EnvelopeError::PayloadType {
                expected: expect.payload_type.to_string(),
                got: s.payload_type.clone(),
            });
        }
        if let Some(subject) = expect.subject {
            if s.subject != subject {
                return Err(EnvelopeError::Subject {
                    expected: subject.to_string(),
                    got: s.subject.clone(),
                });
            }
        }
        if let Some(held) = expect.newer_than {
            if s.version <= held {
                return Err(EnvelopeError::NotNewer {
                    version: s.version,
                    held,
                });
            }
        }
        let issued_at = s
            .issued_at
            .ok_or(EnvelopeError::MissingIssuedAt)
            .and_then(|t| {
                SystemTime::try_from(t).map_err(|e| EnvelopeError::InvalidTime(e.to_string()))
            })?;
        let ttl = s
            .ttl
            .map(|d| Duration::try_from(d).map_err(|e| EnvelopeError::InvalidTime(e.to_string())))
            .transpose()?
            .unwrap_or_default();
        let expires_at = issued_at
            .checked_add(ttl)
            .ok_or_else(|| EnvelopeError::InvalidTime("issued_at + ttl overflows".into()))?;
        if let Some(limit) = expect.now.checked_add(self.max_clock_skew) {
            if issued_at > limit {
                return Err(EnvelopeError::FromTheFuture { issued_at });
            }
        }
        if expect.now >= expires_at {
            return Err(EnvelopeError::Expired {
                expired_at: expires_at,
            });
        }
        Ok(Verified {
            payload: &s.payload,
            version: s.version,
            subject: &s.subject,
            key_id: &s.key_id,
            issued_at,
            expires_at,
        })
    }

    /// Verifies the snapshot of a TapPass resource, checking that it is for
    /// this resource's name and carries the resource's payload type.
    pub fn verify_resource<'a, R: SignedResource>(
        &self,
        resource: &'a R,
        newer_than: Option<u64>,
        now: SystemTime,
    ) -> Result<Verified<'a>, EnvelopeError> {
        let snapshot = resource.snapshot().ok_or(EnvelopeError::MissingSnapshot)?;
        let payload_type = R::payload_type();
        self.verify(
            snapshot,
            &Expect {
                payload_type: &payload_type,
                subject: Some(resource.name()),
                newer_than,
                now,
            },
        )
    }
}
