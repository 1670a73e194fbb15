//! Errors of the control plane. Every variant maps to one HTTP status and a
//! machine-readable code in the admin API.

/// What went wrong in a control-plane operation.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed or names something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// Something the request names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The policy does not compile for at least one agent (422); nothing
    /// was changed.
    #[error("policy error: {0}")]
    Policy(String),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(String),
    /// Encryption or decryption of a secret failed (wrong master key,
    /// tampered record).
    #[error("secrets: {0}")]
    Crypto(String),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A listener failed.
    #[error("server: {0}")]
    Server(String),
}

impl ControlError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ControlError::Io {
            context: context.into(),
            source,
        }
    }

    /// The HTTP status of this error in the admin API.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::BadRequest(_) => 400,
            ControlError::NotFound(_) => 404,
            ControlError::Conflict(_) => 409,
            ControlError::Policy(_) => 422,
            _ => 500,
        }
    }

    /// Machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::NotFound(_) => "not_found",
            ControlError::Conflict(_) => "conflict",
            ControlError::Policy(_) => "policy_error",
            ControlError::Store(_) => "store_error",
            ControlError::Crypto(_) => "secrets_error",
            ControlError::Io { .. } => "io_error",
            ControlError::Server(_) => "server_error",
        }
    }
}

impl From<rocksdb::Error> for ControlError {
    fn from(e: rocksdb::Error) -> Self {
        ControlError::Store(e.into_string())
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;
