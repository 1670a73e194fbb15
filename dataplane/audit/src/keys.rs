//! The audit trail signs with the project's Ed25519 keys; see
//! `tappass-keys`. The public keys a WAL was ever signed with are kept in
//! `jwks.json` beside it.

use std::path::Path;

use serde_json::Value;

pub use tappass_keys::{key_id, Jwks, KeyError, SigningKeyPair as AuditKey};

use crate::AuditError;

/// Name of the key set file beside a WAL.
pub const JWKS_FILE: &str = "jwks.json";

/// Adds `key`'s public JWK to the JWKS file at `path` (created when
/// missing); keys already there stay. Returns whether the file changed.
/// The file is replaced atomically.
pub fn publish_public_key(path: &Path, key: &AuditKey) -> Result<bool, AuditError> {
    let mut doc = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .map_err(|e| AuditError::Corrupt(format!("{} is not JSON: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({"keys": []}),
        Err(e) => return Err(e.into()),
    };
    let keys = doc
        .get_mut("keys")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| AuditError::Corrupt(format!("{} has no `keys` array", path.display())))?;
    if keys
        .iter()
        .any(|k| k.get("kid").and_then(Value::as_str) == Some(key.kid()))
    {
        return Ok(false);
    }
    keys.push(key.public_jwk());
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| AuditError::Write(format!("encoding {}: {e}", path.display())))?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accumulate_and_are_never_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JWKS_FILE);
        let (a, b) = (AuditKey::generate(), AuditKey::generate());
        assert!(publish_public_key(&path, &a).unwrap());
        assert!(!publish_public_key(&path, &a).unwrap());
        assert!(publish_public_key(&path, &b).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let jwks = Jwks::from_json(&text).unwrap();
        for k in [&a, &b] {
            let sig = k.sign(b"m");
            assert!(jwks.verify(k.kid(), b"m", &sig).is_ok());
        }
        std::fs::write(&path, "not json").unwrap();
        assert!(publish_public_key(&path, &a).is_err());
    }
}
