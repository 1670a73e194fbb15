//! The audit trail signs with the project's Ed25519 keys; see
//! `tappass-keys`.

pub use tappass_keys::{key_id, Jwks, KeyError, SigningKeyPair as AuditKey};
