//! Evidence that identifies a detected value without containing it: a keyed
//! hash (HMAC-SHA256, truncated) plus a preview that only shows public
//! information (a rule's literal prefix, a card's last four digits).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Key for evidence hashes. Per deployment (so the same secret correlates
/// across audit rows of one deployment, but hashes cannot be brute-forced
/// without the key). [`EvidenceKey::random`] for a per-process key.
#[derive(Clone)]
pub struct EvidenceKey {
    /// HMAC inner and outer hash states after the padded key block, so a
    /// value costs two SHA-256 compressions instead of four.
    inner: Sha256,
    outer: Sha256,
}

impl std::fmt::Debug for EvidenceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EvidenceKey(..)")
    }
}

impl EvidenceKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        EvidenceKey {
            inner: Sha256::new().chain_update(ipad),
            outer: Sha256::new().chain_update(opad),
        }
    }

    /// A per-process random key (seeded by the standard library's
    /// OS-randomized hasher state).
    pub fn random() -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            let mut h = RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        EvidenceKey::from_bytes(key)
    }

    /// HMAC-SHA256 of `value`, first 12 bytes in hex.
    pub fn hash(&self, value: &[u8]) -> String {
        let inner = self.inner.clone().chain_update(value).finalize();
        let outer = self.outer.clone().chain_update(inner).finalize();
        hex::encode(&outer[..12])
    }
}

/// Evidence attached to a finding. Never contains the detected value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// `hmac-sha256:` + 24 hex digits, keyed by the rule set's [`EvidenceKey`].
    pub hash: String,
    /// Length of the value in characters.
    pub len: usize,
    /// Public-only preview, e.g. `ghp_…` or `****1111`.
    pub preview: String,
}

impl Evidence {
    pub fn new(key: &EvidenceKey, value: &str, prefix: Option<&str>, label: &str) -> Evidence {
        let len = value.chars().count();
        let preview = match prefix {
            Some(p) if !p.is_empty() && value.starts_with(p) && p.len() < value.len() => {
                format!("{p}…")
            }
            _ if label == "CARD" => {
                let d: String = value.chars().filter(|c| c.is_ascii_digit()).collect();
                let last4 = &d[d.len().saturating_sub(4)..];
                format!("****{last4}")
            }
            _ => "****".to_string(),
        };
        Evidence {
            hash: format!("hmac-sha256:{}", key.hash(value.as_bytes())),
            len,
            preview,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_known_vector() {
        // RFC 4231 test case 2 uses a short key; here a 32-byte key of 0x0b
        // checked against an independent HMAC-SHA256 computation:
        // python: hmac.new(b'\x0b'*32, b'Hi There', 'sha256').hexdigest()[:24]
        let k = EvidenceKey::from_bytes([0x0b; 32]);
        assert_eq!(k.hash(b"Hi There"), "198a607eb44bfbc69903a0f1");
    }

    #[test]
    fn evidence_hides_value() {
        let k = EvidenceKey::random();
        let v = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A";
        let e = Evidence::new(&k, v, Some("ghp_"), "GITHUB_TOKEN");
        assert_eq!(e.preview, "ghp_…");
        assert!(!e.hash.contains(v) && !format!("{e:?}").contains(&v[4..]));
        let c = Evidence::new(&k, "4111 1111 1111 1234", None, "CARD");
        assert_eq!(c.preview, "****1234");
        assert_ne!(
            EvidenceKey::random().hash(b"x"),
            EvidenceKey::random().hash(b"x")
        );
    }
}
