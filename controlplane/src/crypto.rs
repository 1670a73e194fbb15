//! Secrets at rest: an AEAD (XChaCha20-Poly1305) under a 32-byte master
//! key. Sealed values are `nonce (24 bytes) ‖ ciphertext+tag`; the record's
//! key in the store is the associated data, so a sealed value cannot be
//! moved to another record.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::{ControlError, Result};

/// Environment variable holding the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "TAPPASS_MASTER_KEY";

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MasterKeySource {
    /// A file holding 64 hex digits.
    File(PathBuf),
    /// `TAPPASS_MASTER_KEY` (64 hex digits).
    Env,
    /// `TAPPASS_MASTER_KEY` when set, else `<data dir>/master.key`, created
    /// (mode 0600) on first start. Convenient for a single machine; in
    /// production keep the key outside the data directory.
    #[default]
    EnvOrDataDir,
}

/// Random bytes from the OS.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ControlError::Crypto(format!("no OS randomness: {e}")))?;
    Ok(b)
}

/// The master key. Its `Debug` never shows the key.
pub struct MasterKey {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

fn parse_hex_key(text: &str, origin: &str) -> Result<[u8; 32]> {
    let mut k = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut k)
        .map_err(|_| ControlError::Crypto(format!("{origin} does not hold 64 hex digits")))?;
    Ok(k)
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        MasterKey {
            aead: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Loads the key from its source; `data_dir` is used by
    /// [`MasterKeySource::EnvOrDataDir`].
    pub fn load(source: &MasterKeySource, data_dir: &Path) -> Result<Self> {
        let env = || std::env::var(MASTER_KEY_ENV).ok().filter(|v| !v.is_empty());
        match source {
            MasterKeySource::File(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ControlError::io(format!("master key {}", p.display()), e))?;
                Ok(Self::from_bytes(parse_hex_key(
                    &text,
                    &format!("master key file {}", p.display()),
                )?))
            }
            MasterKeySource::Env => match env() {
                Some(v) => Ok(Self::from_bytes(parse_hex_key(&v, MASTER_KEY_ENV)?)),
                None => Err(ControlError::Crypto(format!("{MASTER_KEY_ENV} is not set"))),
            },
            MasterKeySource::EnvOrDataDir => {
                if let Some(v) = env() {
                    return Ok(Self::from_bytes(parse_hex_key(&v, MASTER_KEY_ENV)?));
                }
                let path = data_dir.join("master.key");
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok(Self::from_bytes(parse_hex_key(
                        &text,
                        &path.display().to_string(),
                    )?)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let key = random::<32>()?;
                        write_private(&path, &hex::encode(key))?;
                        Ok(Self::from_bytes(key))
                    }
                    Err(e) => Err(ControlError::io(path.display().to_string(), e)),
                }
            }
        }
    }

    /// Encrypts `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce = random::<24>()?;
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| ControlError::Crypto("encryption failed".into()))?;
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a value sealed with [`MasterKey::seal`] under the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 24 + 16 {
            return Err(ControlError::Crypto("sealed value is too short".into()));
        }
        let (nonce, ct) = sealed.split_at(24);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| {
                ControlError::Crypto(
                    "cannot decrypt a stored secret (wrong master key, or the record was altered)"
                        .into(),
                )
            })
    }
}

/// Writes a new file readable by its owner only (mode 0600).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let ctx = || path.display().to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| ControlError::io(ctx(), e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| ControlError::io(ctx(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_binding() {
        let k = MasterKey::from_bytes([7; 32]);
        let s = k.seal(b"cred/openai", b"sk-secret").unwrap();
        assert!(!s.windows(9).any(|w| w == b"sk-secret"));
        assert_eq!(k.open(b"cred/openai", &s).unwrap(), b"sk-secret");
        assert!(k.open(b"cred/other", &s).is_err());
        assert!(MasterKey::from_bytes([8; 32])
            .open(b"cred/openai", &s)
            .is_err());
        assert!(k.open(b"x", b"short").is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(***)");
    }
}
