//! TapPass audit trail: one signed, hash-chained row per governed call in a
//! RocksDB write-ahead log that an auditor verifies offline with the
//! published public key.
//!
//! - [`record`]: what a row says (`AuditRecord`).
//! - [`chain`]: sealing rows into the hash chain, signed checkpoints,
//!   erasure tombstones, and the checks on each.
//! - [`keys`]: Ed25519 keys, key ids, JWKS.
//! - [`wal`]: the RocksDB WAL with its group-commit writer, retention and
//!   erasure, and a read-only reader.
//! - [`verify`]: offline verification of a whole WAL.

pub mod chain;
pub mod keys;
pub mod record;
pub mod verify;
pub mod wal;

pub use keys::{AuditKey, Jwks};
pub use record::{AuditRecord, Content, Decision, Latency, StepDecision, UsageRecord};
pub use wal::{Ack, AuditWal, Head, Retention, SigningMode, TryAppendError, WalConfig, WalReader};

/// Errors of the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit storage: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("audit I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    #[error("audit write failed: {0}")]
    Write(String),
    #[error("audit key: {0}")]
    Key(#[from] tappass_keys::KeyError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the audit writer has stopped")]
    Closed,
}
