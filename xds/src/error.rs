//! Error types.

use std::time::SystemTime;

/// Errors of the transport plumbing (client, server, `Any` packing).
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The control plane address could not be parsed.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// Connecting or serving failed at the transport level.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The peer ended the call with a gRPC status.
    #[error("grpc status {}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// Connecting took longer than the configured timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// An `Any` held another type than the one expected.
    #[error("type URL mismatch: expected {expected}, got {got}")]
    TypeUrl { expected: String, got: String },
    /// An `Any` (or a payload) did not decode as its type.
    #[error("cannot decode {type_url}: {source}")]
    Decode {
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
    /// Binding or using a socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for XdsError {
    fn from(s: tonic::Status) -> Self {
        XdsError::Status(Box::new(s))
    }
}

/// Why a signed snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("signature algorithm {0:?} is not supported (want Ed25519)")]
    Algorithm(String),
    #[error("signing key {0:?} is not trusted")]
    UnknownKey(String),
    #[error("signature is malformed")]
    MalformedSignature,
    #[error("signature does not match the snapshot")]
    BadSignature,
    #[error("payload type is {got:?}, expected {expected:?}")]
    PayloadType { expected: String, got: String },
    #[error("snapshot is for {got:?}, expected {expected:?}")]
    Subject { expected: String, got: String },
    #[error("snapshot version {version} is not newer than {held}")]
    NotNewer { version: u64, held: u64 },
    #[error("resource carries no signed snapshot")]
    MissingSnapshot,
    #[error("snapshot has no issue time")]
    MissingIssuedAt,
    #[error("snapshot has an invalid time field: {0}")]
    InvalidTime(String),
    #[error("snapshot expired at {expired_at:?}")]
    Expired { expired_at: SystemTime },
    #[error("snapshot is issued in the future ({issued_at:?})")]
    FromTheFuture { issued_at: SystemTime },
    #[error("payload does not decode as {type_url}: {reason}")]
    Payload { type_url: String, reason: String },
    #[error("invalid public key: {0}")]
    InvalidKey(String),
}
