//! Where the gateway's audit rows go: the audit WAL, with backpressure and,
//! by default, the guarantee that a call's row is on disk before the call's
//! last byte reaches the client.

use std::path::PathBuf;
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
        Ok(AuditSink {
            wal: Arc::new(AuditWal::open(wal, key)?),
            gateway_id,
            durability: cfg.durability,
            store_content: cfg.store_content,
        })
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
