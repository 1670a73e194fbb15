//! The hash chain: how a row is sealed (sequence, link to the previous row,
//! hash of its body, optional signature), signed checkpoints over the chain
//! head, and erasure tombstones that keep the chain verifiable.
//!
//! `hash = SHA-256("tappass-audit-v1" ‖ seq (8 bytes, big-endian) ‖
//! prev_hash (32 bytes) ‖ body_hash (32 bytes))`, where `body_hash` is the
//! SHA-256 of the row body's canonical JSON as stored. Because the hash covers
//! the body's hash and not the body, a body can be erased (right to erasure)
//! and the chain still verifies; the erasure itself is signed.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::keys::{AuditKey, Jwks};

/// `prev_hash` of the first row of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A signature with the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mandate {
    pub key_id: String,
    /// Ed25519 signature, base64url.
    pub signature: String,
}

/// A signed statement that a row's body was erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    pub at_ms: u64,
    pub reason: String,
    pub mandate: Mandate,
}

/// A row as stored in the WAL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedRow {
    pub seq: u64,
    pub prev_hash: String,
    pub body_hash: String,
    pub hash: String,
    /// The row body (an `AuditRecord`) as canonical JSON; `None` once erased.
    pub body: Option<Box<RawValue>>,
    /// Per-row signature over `hash` (when the WAL signs every row).
    pub mandate: Option<Mandate>,
    pub erased: Option<Erasure>,
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// Every N rows or T milliseconds.
    Periodic,
    /// At a clean shutdown.
    Shutdown,
    /// Seals the chain at a retention cut: rows up to `seq` were deleted.
    RetentionCut,
    /// Signed with the outgoing key when the gateway switches audit keys:
    /// rows after `seq` are signed by the next key.
    KeyRotation,
}

/// A signed statement of the chain head: "row `seq` has hash `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub at_ms: u64,
    pub kind: CheckpointKind,
    pub gateway_id: String,
    pub mandate: Mandate,
}

fn decode32(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

/// SHA-256 of a body, hex.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The chain hash of a row, hex. `None` when a hash input is not 64 hex digits.
pub fn row_hash(seq: u64, prev_hash: &str, body_hash: &str) -> Option<String> {
    let prev = decode32(prev_hash)?;
    let body = decode32(body_hash)?;
    let mut h = Sha256::new();
    h.update(b"tappass-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(body);
    Some(hex::encode(h.finalize()))
}

fn checkpoint_message(
    seq: u64,
    hash: &str,
    at_ms: u64,
    kind: CheckpointKind,
    gateway: &str,
) -> Vec<u8> {
    let kind = match kind {
        CheckpointKind::Periodic => "periodic",
        CheckpointKind::Shutdown => "shutdown",
        CheckpointKind::RetentionCut => "retention_cut",
        CheckpointKind::KeyRotation => "key_rotation",
    };
    format!("tappass-audit-checkpoint-v1|{gateway}|{seq}|{hash}|{at_ms}|{kind}").into_bytes()
}

fn erasure_message(seq: u64, hash: &str, at_ms: u64, reason: &str) -> Vec<u8> {
    format!("tappass-audit-erasure-v1|{seq}|{hash}|{at_ms}|{reason}").into_bytes()
}

fn row_message(hash: &str) -> Vec<u8> {
    format!("tappass-audit-row-v1|{hash}").into_bytes()
}

/// Seal a body (canonical JSON) as row `seq` after `prev_hash`.
pub fn seal(
    seq: u64,
    prev_hash: &str,
    body: Box<RawValue>,
    sign_with: Option<&AuditKey>,
) -> SealedRow {
    let body_hash = body_hash(body.get().as_bytes());
    // Both inputs are hashes this module produced: always 64 hex digits.
    let hash = row_hash(seq, prev_hash, &body_hash).unwrap_or_default();
    let mandate = sign_with.map(|k| Mandate {
        key_id: k.kid().to_string(),
        signature: k.sign(&row_message(&hash)),
    });
    SealedRow {
        seq,
        prev_hash: prev_hash.to_string(),
        body_hash,
        hash,
        body: Some(body),
        mandate,
        erased: None,
    }
}

/// A sealed row already encoded for storage (the writer's fast path: the
/// stored JSON is assembled around the body bytes without re-parsing them).
#[derive(Debug, Clone)]
pub struct EncodedRow {
    pub seq: u64,
    pub hash: String,
    pub signed: bool,
    /// The `SealedRow` JSON as stored.
    pub stored: Vec<u8>,
}

/// Seal a serialized body as row `seq` after `prev_hash`, producing the
/// stored bytes directly. Decodes to the same [`SealedRow`] as [`seal`].
pub fn seal_encoded(
    seq: u64,
    prev_hash: &str,
    body: String,
    sign_with: Option<&AuditKey>,
) -> EncodedRow {
    let body_hash = body_hash(body.as_bytes());
    let hash = row_hash(seq, prev_hash, &body_hash).unwrap_or_default();
    let mandate = sign_with.map(|k| Mandate {
        key_id: k.kid().to_string(),
        signature: k.sign(&row_message(&hash)),
    });
    // Key ids are `tp-` and hex; signatures base64url: nothing to escape.
    let mandate_json = match &mandate {
        Some(m) => format!(
            r#"{{"key_id":"{}","signature":"{}"}}"#,
            m.key_id, m.signature
        ),
        None => "null".to_string(),
    };
    let mut stored = Vec::with_capacity(body.len() + 320);
    stored.extend_from_slice(
        format!(r#"{{"seq":{seq},"prev_hash":"{prev_hash}","body_hash":"{body_hash}","hash":"{hash}","body":"#)
            .as_bytes(),
    );
    stored.extend_from_slice(body.as_bytes());
    stored.extend_from_slice(format!(r#","mandate":{mandate_json},"erased":null}}"#).as_bytes());
    EncodedRow {
        seq,
        hash,
        signed: mandate.is_some(),
        stored,
    }
}

/// A signed checkpoint over `(seq, hash)`.
pub fn checkpoint(
    seq: u64,
    hash: &str,
    at_ms: u64,
    kind: CheckpointKind,
    gateway_id: &str,
    key: &AuditKey,
) -> Checkpoint {
    Checkpoint {
        seq,
        hash: hash.to_string(),
        at_ms,
        kind,
        gateway_id: gateway_id.to_string(),
        mandate: Mandate {
            key_id: key.kid().to_string(),
            signature: key.sign(&checkpoint_message(seq, hash, at_ms, kind, gateway_id)),
        },
    }
}

/// Replace a row's body with a signed tombstone.
pub fn erase(row: &mut SealedRow, at_ms: u64, reason: &str, key: &AuditKey) {
    row.body = None;
    row.erased = Some(Erasure {
        at_ms,
        reason: reason.to_string(),
        mandate: Mandate {
            key_id: key.kid().to_string(),
            signature: key.sign(&erasure_message(row.seq, &row.hash, at_ms, reason)),
        },
    });
}

/// Check one row on its own and against the expected link. Returns the
/// reason it is bad.
pub fn check_row(
    row: &SealedRow,
    expected_seq: u64,
    expected_prev: &str,
    jwks: &Jwks,
    require_mandate: bool,
) -> Result<(), String> {
    if row.seq != expected_seq {
        return Err(format!(
            "expected row {expected_seq} here but found row {} (a row was deleted or rows were reordered)",
            row.seq
        ));
    }
    if row.prev_hash != expected_prev {
        return Err("prev_hash does not match the previous row's hash (chain broken)".into());
    }
    match (&row.body, &row.erased) {
        (Some(body), None) => {
            if body_hash(body.get().as_bytes()) != row.body_hash {
                return Err("body does not match body_hash (row content changed)".into());
            }
        }
        (None, Some(e)) => jwks
            .verify(
                &e.mandate.key_id,
                &erasure_message(row.seq, &row.hash, e.at_ms, &e.reason),
                &e.mandate.signature,
            )
            .map_err(|why| format!("erasure tombstone: {why}"))?,
        (None, None) => return Err("row has no body and no erasure tombstone".into()),
        (Some(_), Some(_)) => return Err("row has both a body and an erasure tombstone".into()),
    }
    match row_hash(row.seq, &row.prev_hash, &row.body_hash) {
        Some(h) if h == row.hash => {}
        _ => return Err("hash does not match seq, prev_hash and body_hash".into()),
    }
    match &row.mandate {
        Some(m) => jwks
            .verify(&m.key_id, &row_message(&row.hash), &m.signature)
            .map_err(|why| format!("row signature: {why}"))?,
        None if require_mandate => return Err("row is not signed".into()),
        None => {}
    }
    Ok(())
}

/// Check a checkpoint's signature.
pub fn check_checkpoint(cp: &Checkpoint, jwks: &Jwks) -> Result<(), String> {
    jwks.verify(
        &cp.mandate.key_id,
        &checkpoint_message(cp.seq, &cp.hash, cp.at_ms, cp.kind, &cp.gateway_id),
        &cp.mandate.signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn sealed_rows_link_and_verify() {
        let key = AuditKey::generate();
        let jwks = Jwks::from_key(&key);
        let a = seal(1, GENESIS_HASH, raw("{\"a\":1}"), Some(&key));
        let b = seal(2, &a.hash, raw("{\"b\":2}"), Some(&key));
        assert!(check_row(&a, 1, GENESIS_HASH, &jwks, true).is_ok());
        assert!(check_row(&b, 2, &a.hash, &jwks, true).is_ok());
        assert!(check_row(&b, 2, GENESIS_HASH, &jwks, true).is_err());
        assert!(check_row(&b, 3, &a.hash, &jwks, true).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let key = AuditKey::generate();
        let jwks = Jwks::from_key(&key);
        let row = seal(1, GENESIS_HASH, raw("{\"a\":1}"), None);
        let mut changed = row.clone();
        changed.body = Some(raw("{\"a\":2}"));
        assert!(check_row(&changed, 1, GENESIS_HASH, &jwks, false)
            .unwrap_err()
            .contains("body"));
        let mut rehashed = changed.clone();
        rehashed.body_hash = body_hash(b"{\"a\":2}");
        assert!(check_row(&rehashed, 1, GENESIS_HASH, &jwks, false)
            .unwrap_err()
            .contains("hash"));
        assert!(check_row(&row, 1, GENESIS_HASH, &jwks, true)
            .unwrap_err()
            .contains("not signed"));
        let foreign = AuditKey::generate();
        let signed_by_foreign = seal(1, GENESIS_HASH, raw("{\"a\":1}"), Some(&foreign));
        assert!(check_row(&signed_by_foreign, 1, GENESIS_HASH, &jwks, true)
            .unwrap_err()
            .contains("unknown key"));
    }

    #[test]
    fn erasure_keeps_the_chain_and_is_signed() {
        let key = AuditKey::generate();
        let jwks = Jwks::from_key(&key);
        let mut row = seal(1, GENESIS_HASH, raw("{\"secret\":\"x\"}"), None);
        erase(&mut row, 5, "GDPR Art. 17 request 42", &key);
        assert!(check_row(&row, 1, GENESIS_HASH, &jwks, false).is_ok());
        let mut forged = row.clone();
        forged.erased.as_mut().unwrap().reason = "something else".into();
        assert!(check_row(&forged, 1, GENESIS_HASH, &jwks, false).is_err());
        let mut unsigned = row.clone();
        unsigned.erased = None;
        assert!(check_row(&unsigned, 1, GENESIS_HASH, &jwks, false).is_err());
    }

    #[test]
    fn checkpoints_verify_only_with_the_published_key() {
        let key = AuditKey::generate();
        let cp = checkpoint(9, GENESIS_HASH, 1, CheckpointKind::Periodic, "gw", &key);
        assert!(check_checkpoint(&cp, &Jwks::from_key(&key)).is_ok());
        let mut moved = cp.clone();
        moved.seq = 8;
        assert!(check_checkpoint(&moved, &Jwks::from_key(&key)).is_err());
        assert!(check_checkpoint(&cp, &Jwks::from_key(&AuditKey::generate())).is_err());
    }

    #[test]
    fn the_encoded_fast_path_stores_what_seal_would() {
        let key = AuditKey::generate();
        for sign in [None, Some(&key)] {
            let enc = seal_encoded(7, GENESIS_HASH, "{\"a\":[1,\"x\"]}".into(), sign);
            let row: SealedRow = serde_json::from_slice(&enc.stored).unwrap();
            let classic = seal(7, GENESIS_HASH, raw("{\"a\":[1,\"x\"]}"), sign);
            assert_eq!(row.hash, classic.hash);
            assert_eq!(row.body_hash, classic.body_hash);
            assert_eq!(
                row.body.as_ref().unwrap().get(),
                classic.body.as_ref().unwrap().get()
            );
            assert_eq!(row.mandate.is_some(), sign.is_some());
            assert!(
                check_row(&row, 7, GENESIS_HASH, &Jwks::from_key(&key), sign.is_some()).is_ok()
            );
        }
    }

    #[test]
    fn malformed_hashes_do_not_panic() {
        assert_eq!(row_hash(1, "zz", GENESIS_HASH), None);
        assert_eq!(row_hash(1, GENESIS_HASH, ""), None);
    }
}
