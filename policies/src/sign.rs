//! Ed25519 signing of compiled policies.
//!
//! Envelope (canonical JSON):
//! `{"payload": <CompiledPolicy>, "signature": {"alg": "Ed25519", "key_id": "…", "sig": "<base64>"}}`.
//! The signature covers the canonical JSON bytes of `payload`. The key id is
//! the first 16 hex digits of SHA-256 over the 32-byte public key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::{canonicalize, to_canonical_string};
use crate::compiled::CompiledPolicy;
use crate::error::{PolicyError, Result};

pub const ALG: &str = "Ed25519";

fn sig_err(m: impl Into<String>) -> PolicyError {
    PolicyError::Signature(m.into())
}

/// Key id of a public key: 16 hex digits of its SHA-256.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// A secret signing key, as stored on disk (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyFile {
    pub alg: String,
    pub key_id: String,
    /// Base64 of the 32-byte seed.
    pub secret_key: String,
}

/// A public verification key, as stored on disk (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    pub alg: String,
    pub key_id: String,
    /// Base64 of the 32-byte public key.
    pub public_key: String,
}

/// A key pair made from 32 bytes of seed. The caller supplies the
/// randomness (the crate does no I/O).
pub fn keypair_from_seed(seed: [u8; 32]) -> (SecretKeyFile, PublicKeyFile) {
    let sk = SigningKey::from_bytes(&seed);
    let pk = sk.verifying_key();
    let id = key_id(&pk);
    (
        SecretKeyFile {
            alg: ALG.into(),
            key_id: id.clone(),
            secret_key: B64.encode(seed),
        },
        PublicKeyFile {
            alg: ALG.into(),
            key_id: id,
            public_key: B64.encode(pk.as_bytes()),
        },
    )
}

fn decode32(what: &str, s: &str) -> Result<[u8; 32]> {
    let bytes = B64
        .decode(s.trim())
        .map_err(|e| sig_err(format!("{what}: not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| sig_err(format!("{what}: expected 32 bytes, got {}", b.len())))
}

impl SecretKeyFile {
    pub fn parse(text: &str) -> Result<SecretKeyFile> {
        let k: SecretKeyFile =
            serde_json::from_str(text).map_err(|e| sig_err(format!("secret key file: {e}")))?;
        if k.alg != ALG {
            return Err(sig_err(format!(
                "secret key file: alg {} is not {ALG}",
                k.alg
            )));
        }
        let sk = k.signing_key()?;
        if key_id(&sk.verifying_key()) != k.key_id {
            return Err(sig_err("secret key file: key_id does not match the key"));
        }
        Ok(k)
    }

    pub fn signing_key(&self) -> Result<SigningKey> {
        Ok(SigningKey::from_bytes(&decode32(
            "secret_key",
            &self.secret_key,
        )?))
    }
}

impl PublicKeyFile {
    pub fn parse(text: &str) -> Result<PublicKeyFile> {
        let k: PublicKeyFile =
            serde_json::from_str(text).map_err(|e| sig_err(format!("public key file: {e}")))?;
        if k.alg != ALG {
            return Err(sig_err(format!(
                "public key file: alg {} is not {ALG}",
                k.alg
            )));
        }
        let vk = k.verifying_key()?;
        if key_id(&vk) != k.key_id {
            return Err(sig_err("public key file: key_id does not match the key"));
        }
        Ok(k)
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&decode32("public_key", &self.public_key)?)
            .map_err(|e| sig_err(format!("public_key: {e}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    pub alg: String,
    pub key_id: String,
    pub sig: String,
}

/// A signed compiled policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicy {
    pub payload: CompiledPolicy,
    pub signature: SignatureBlock,
}

/// Sign a compiled policy.
pub fn sign(policy: &CompiledPolicy, key: &SecretKeyFile) -> Result<SignedPolicy> {
    let sk = key.signing_key()?;
    let bytes = canonicalize(policy)?;
    let sig = sk.sign(bytes.as_bytes());
    Ok(SignedPolicy {
        payload: policy.clone(),
        signature: SignatureBlock {
            alg: ALG.into(),
            key_id: key_id(&sk.verifying_key()),
            sig: B64.encode(sig.to_bytes()),
        },
    })
}

impl SignedPolicy {
    pub fn to_canonical_json(&self) -> Result<String> {
        canonicalize(self)
    }
}

/// Verify a signed policy document (the envelope's JSON text) against one
/// of the trusted keys; on success return the policy. `min_version`, when
/// given, enforces monotonic versions: the policy's version must be
/// strictly greater (a gateway passes the version it currently runs).
pub fn verify(
    envelope_json: &str,
    trusted: &[PublicKeyFile],
    min_version: Option<u64>,
) -> Result<CompiledPolicy> {
    let raw: serde_json::Value = serde_json::from_str(envelope_json)
        .map_err(|e| sig_err(format!("envelope is not JSON: {e}")))?;
    let obj = raw
        .as_object()
        .ok_or_else(|| sig_err("envelope is not an object"))?;
    let payload = obj
        .get("payload")
        .ok_or_else(|| sig_err("envelope has no payload (unsigned policy?)"))?;
    let block: SignatureBlock = serde_json::from_value(
        obj.get("signature")
            .cloned()
            .ok_or_else(|| sig_err("envelope has no signature"))?,
    )
    .map_err(|e| sig_err(format!("signature block: {e}")))?;
    if obj.len() != 2 {
        return Err(sig_err(
            "envelope has fields other than payload and signature",
        ));
    }
    if block.alg != ALG {
        return Err(sig_err(format!("alg {} is not {ALG}", block.alg)));
    }
    let key = trusted
        .iter()
        .find(|k| k.key_id == block.key_id)
        .ok_or_else(|| sig_err(format!("key id {} is not trusted", block.key_id)))?;
    let vk = key.verifying_key()?;
    let sig_bytes = B64
        .decode(block.sig.trim())
        .map_err(|e| sig_err(format!("sig is not base64: {e}")))?;
    let sig = Signature::from_slice(&sig_bytes).map_err(|e| sig_err(format!("sig: {e}")))?;
    // Re-canonicalize the payload exactly as it was received.
    let bytes = to_canonical_string(payload);
    vk.verify(bytes.as_bytes(), &sig)
        .map_err(|_| sig_err("signature does not match the payload"))?;
    let policy: CompiledPolicy =
        serde_json::from_value(payload.clone()).map_err(|e| sig_err(format!("payload: {e}")))?;
    if let Some(min) = min_version {
        if policy.identity.policy_version <= min {
            return Err(sig_err(format!(
                "policy version {} is not newer than {min}",
                policy.identity.policy_version
            )));
        }
    }
    Ok(policy)
}
