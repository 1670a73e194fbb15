//! Where the gateway's audit rows go: the audit WAL, with backpressure and,
//! by default, the guarantee that a call's row is on disk before the call's
//! last byte reaches the client.
//!
//! The gateway's audit signing key lives in its audit directory
//! (`signing.key`, or `signing_key_file`) and never leaves it; its public
//! half, and that of every key used before, is in `jwks.json` beside the
//! WAL. A rotation (asked for by the control plane) writes the next key
//! beside the current one (`<key file>.next`) and publishes its public
//! half, is announced to the control plane, then seals the chain with the
//! current key and switches (see [`AuditSink::finish_rotation`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tappass_audit::{
    AuditKey, AuditRecord, AuditWal, Retention, SigningMode, TryAppendError, WalConfig,
};

use crate::config::{AuditConfig, AuditDurability, AuditSigning};
use crate::error::GatewayError;

pub struct AuditSink {
    pub wal: Arc<AuditWal>,
    pub gateway_id: String,
    pub durability: AuditDurability,
    pub store_content: bool,
    /// The current signing key's file.
    key_file: PathBuf,
    /// Audit key rotations completed (persisted in `<dir>/key-generation`).
    key_generation: AtomicU64,
}

/// Name of the file holding the count of completed key rotations.
const KEY_GENERATION_FILE: &str = "key-generation";

fn next_key_file(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_os_string();
    name.push(".next");
    PathBuf::from(name)
}

impl AuditSink {
    /// Open the WAL configured in `cfg`.
    pub fn open(cfg: &AuditConfig) -> Result<AuditSink, tappass_audit::AuditError> {
        let gateway_id = cfg.gateway_id.clone().unwrap_or_else(default_gateway_id);
        let key_file = cfg
            .signing_key_file
            .clone()
            .unwrap_or_else(|| cfg.dir.join("signing.key"));
        let key = AuditKey::load_or_create(&key_file)?;
        let mut wal = WalConfig::new(cfg.dir.clone(), &gateway_id);
        wal.signing = match cfg.signing {
            AuditSigning::PerRow => SigningMode::PerRow,
            AuditSigning::Checkpoint => SigningMode::Checkpoint {
                every_rows: cfg.checkpoint_every_rows,
                every: Duration::from_millis(cfg.checkpoint_every_ms),
            },
        };
        wal.retention = Retention {
            max_rows: cfg.retention.max_rows,
            max_age: cfg
                .retention
                .max_age_hours
                .map(|h| Duration::from_secs(h * 3600)),
        };
        let generation = match std::fs::read_to_string(cfg.dir.join(KEY_GENERATION_FILE)) {
            Ok(t) => t.trim().parse().map_err(|_| {
                tappass_audit::AuditError::Corrupt(format!(
                    "{} does not hold a number",
                    cfg.dir.join(KEY_GENERATION_FILE).display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(AuditSink {
            wal: Arc::new(AuditWal::open(wal, key)?),
            gateway_id,
            durability: cfg.durability,
            store_content: cfg.store_content,
            key_file,
            key_generation: AtomicU64::new(generation),
        })
    }

    /// Audit key rotations completed.
    pub fn key_generation(&self) -> u64 {
        self.key_generation.load(Ordering::Acquire)
    }

    /// The published key set beside the WAL (`jwks.json`): every key this
    /// gateway signed with, and the next one while a rotation is under way.
    pub fn jwks_json(&self) -> Result<String, tappass_audit::AuditError> {
        Ok(std::fs::read_to_string(
            self.dir().join(tappass_audit::keys::JWKS_FILE),
        )?)
    }

    /// Whether a next key has been prepared and not yet switched to.
    pub fn rotation_prepared(&self) -> bool {
        next_key_file(&self.key_file).exists()
    }

    /// Creates the next key (mode 0600, beside the current one), or loads it
    /// when a previous run prepared it, and publishes its public half in
    /// `jwks.json`. The WAL keeps signing with the current key.
    pub fn prepare_rotation(&self) -> Result<AuditKey, tappass_audit::AuditError> {
        let next = AuditKey::load_or_create(&next_key_file(&self.key_file))?;
        tappass_audit::keys::publish_public_key(
            &self.dir().join(tappass_audit::keys::JWKS_FILE),
            &next,
        )?;
        Ok(next)
    }

    /// Switches to the prepared key: the chain head is sealed with a
    /// checkpoint signed by the current key, later rows are signed by the
    /// next one, the next key file replaces the current one (the old
    /// private key is gone), and the generation is recorded. Blocks.
    pub fn finish_rotation(&self, generation: u64) -> Result<(), tappass_audit::AuditError> {
        let next = self.prepare_rotation()?;
        self.wal.rotate_key_blocking(next)?;
        std::fs::rename(next_key_file(&self.key_file), &self.key_file)?;
        let generation = generation.max(self.key_generation() + 1);
        let path = self.dir().join(KEY_GENERATION_FILE);
        let tmp = self.dir().join(".key-generation.tmp");
        std::fs::write(&tmp, format!("{generation}\n"))?;
        std::fs::rename(&tmp, &path)?;
        self.key_generation.store(generation, Ordering::Release);
        Ok(())
    }

    /// Queue a row (waiting while the queue is full); with
    /// `before_response` durability, wait until it is written.
    pub async fn write(&self, record: AuditRecord) -> Result<(), GatewayError> {
        let mut record = record;
        let ack = loop {
            match self.wal.try_append(record) {
                Ok(ack) => break ack,
                Err(TryAppendError::Full(r)) => {
                    record = *r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TryAppendError::Closed) => {
                    return Err(GatewayError::AuditUnavailable(
                        "the audit writer has stopped".into(),
                    ))
                }
            }
        };
        if self.durability == AuditDurability::Async {
            return Ok(());
        }
        match ack.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(GatewayError::AuditUnavailable(e)),
            Err(_) => Err(GatewayError::AuditUnavailable(
                "the audit writer has stopped".into(),
            )),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.wal.dir().to_path_buf()
    }
}

/// The host name, or `tappass-gateway`.
pub fn default_gateway_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tappass-gateway".into())
}
