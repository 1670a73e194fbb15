//! Ed25519 signing keys, key ids, and JWKS (RFC 8037 `OKP`/`Ed25519`
//! keys) for offline verification: the audit trail's checkpoints and the
//! capability tokens are signed and checked with these.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("key file: {0}")]
    Io(#[from] std::io::Error),
}

/// Key id of a public key: `tp-` and the first 16 hex digits of its SHA-256.
pub fn key_id(public: &VerifyingKey) -> String {
    let h = Sha256::digest(public.as_bytes());
    format!("tp-{}", &hex::encode(h)[..16])
}

/// A signing key with its id.
#[derive(Clone)]
pub struct SigningKeyPair {
    signing: SigningKey,
    kid: String,
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeyPair({})", self.kid)
    }
}

impl SigningKeyPair {
    /// A new random key.
    pub fn generate() -> SigningKeyPair {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    pub fn from_seed(seed: [u8; 32]) -> SigningKeyPair {
        let signing = SigningKey::from_bytes(&seed);
        let kid = key_id(&signing.verifying_key());
        SigningKeyPair { signing, kid }
    }

    /// Load a key file (the 32-byte seed, hex), or create one (mode 0600)
    /// when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<SigningKeyPair, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut seed = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
                    KeyError::Invalid(format!(
                        "{} does not hold a 64-hex-digit seed",
                        path.display()
                    ))
                })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, &hex::encode(key.signing.to_bytes()))?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Sign `msg`; the signature is base64url without padding.
    pub fn sign(&self, msg: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.signing.sign(msg).to_bytes())
    }

    /// This key's public JWK.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.verifying_key().as_bytes()),
        })
    }

    /// A JWKS holding this key.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.public_jwk()] })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Public keys by key id, for verification.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: HashMap<String, VerifyingKey>,
}

impl Jwks {
    /// Parse a JWKS document; keys that are not Ed25519 are ignored, a
    /// malformed Ed25519 key is an error.
    pub fn from_json(text: &str) -> Result<Jwks, KeyError> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| KeyError::Invalid(format!("JWKS is not JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::Invalid("JWKS has no `keys` array".into()))?;
        let mut out = HashMap::new();
        for k in keys {
            if k.get("kty").and_then(Value::as_str) != Some("OKP")
                || k.get("crv").and_then(Value::as_str) != Some("Ed25519")
            {
                continue;
            }
            let x = k
                .get("x")
                .and_then(Value::as_str)
                .ok_or_else(|| KeyError::Invalid("Ed25519 JWK without `x`".into()))?;
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    KeyError::Invalid("Ed25519 JWK `x` is not 32 base64url bytes".into())
                })?;
            let vk = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| KeyError::Invalid(format!("invalid Ed25519 public key: {e}")))?;
            let kid = k
                .get("kid")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| key_id(&vk));
            out.insert(kid, vk);
        }
        Ok(Jwks { keys: out })
    }

    pub fn from_key(key: &SigningKeyPair) -> Jwks {
        let mut keys = HashMap::new();
        keys.insert(key.kid.clone(), key.verifying_key());
        Jwks { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check a base64url signature by key id.
    pub fn verify(&self, kid: &str, msg: &[u8], signature: &str) -> Result<(), String> {
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| format!("signed with unknown key `{kid}`"))?;
        let bytes: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("signature is not 64 base64url bytes")?;
        key.verify_strict(msg, &Signature::from_bytes(&bytes))
            .map_err(|_| format!("bad signature for key `{kid}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_through_jwks() {
        let k = SigningKeyPair::generate();
        let jwks = Jwks::from_json(&k.jwks().to_string()).unwrap();
        let sig = k.sign(b"head");
        assert!(jwks.verify(k.kid(), b"head", &sig).is_ok());
        assert!(jwks.verify(k.kid(), b"other", &sig).is_err());
        assert!(jwks.verify("tp-unknown", b"head", &sig).is_err());
        let foreign = SigningKeyPair::generate();
        assert!(jwks
            .verify(k.kid(), b"head", &foreign.sign(b"head"))
            .is_err());
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/signing.key");
        let a = SigningKeyPair::load_or_create(&path).unwrap();
        let b = SigningKeyPair::load_or_create(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        std::fs::write(dir.path().join("bad.key"), "zz").unwrap();
        assert!(SigningKeyPair::load_or_create(&dir.path().join("bad.key")).is_err());
    }

    #[test]
    fn malformed_jwks_are_errors() {
        for text in [
            "",
            "{}",
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAA"}]}"#,
        ] {
            assert!(Jwks::from_json(text).is_err(), "{text}");
        }
        let rsa_only = r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#;
        assert!(Jwks::from_json(rsa_only).unwrap().is_empty());
    }
}
