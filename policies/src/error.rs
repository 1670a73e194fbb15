//! Errors of the policy engine. Every variant names the file, rule or level
//! involved so that an operator can act on it without reading code.

use thiserror::Error;

/// Any error produced while loading, compiling, signing or rendering policy.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A source file could not be parsed (YAML syntax, unknown key, wrong type).
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A source file is larger than [`crate::MAX_SOURCE_BYTES`].
    #[error("{file}: file is {size} bytes, larger than the limit of {limit} bytes")]
    TooLarge {
        file: String,
        size: usize,
        limit: usize,
    },
    /// The source tree is not laid out as `org/`, `projects/<name>/`, `agents/<name>/`.
    #[error("{file}: {message}")]
    Layout { file: String, message: String },
    /// A name (pack, function, category, concern, capability, tool, step) is unknown.
    #[error("{file}:{line}: unknown {kind} '{name}'{hint}")]
    Unknown {
        kind: &'static str,
        name: String,
        file: String,
        line: u32,
        hint: String,
    },
    /// A semantic problem in one file (e.g. a value out of range).
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: u32,
        message: String,
    },
    /// `extends:` (tools) or `packs:` (packs including packs) form a cycle.
    #[error("cycle in {kind}: {chain}")]
    Cycle { kind: &'static str, chain: String },
    /// A lower level tries to relax what a higher level set.
    #[error("{0}")]
    Relax(Box<RelaxAttempt>),
    /// A capability forbidden at some level is granted (by a tool or explicitly).
    #[error("{0}")]
    ForbiddenCapability(Box<ForbiddenGrant>),
    /// Two rules at the same level contradict each other.
    #[error("{key}: contradictory rules at {level}: {a} vs {b}")]
    Contradiction {
        key: String,
        level: String,
        a: String,
        b: String,
    },
    /// A Rego module failed to parse or evaluate.
    #[error("{file}: rego: {message}")]
    Rego { file: String, message: String },
    /// Signature, key or envelope problem.
    #[error("signature: {0}")]
    Signature(String),
    /// A compiled policy document is malformed.
    #[error("compiled policy: {0}")]
    Compiled(String),
    /// Provider rendering failed (not the same as an unenforceable rule).
    #[error("provider {target}: {message}")]
    Provider { target: String, message: String },
}

/// A lower level's rule that would relax a higher level's rule.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "{key}: {lower_level} rule ({lower_rule}) at {lower_at} relaxes {higher_level} rule ({higher_rule}) at {higher_at}"
)]
pub struct RelaxAttempt {
    pub key: String,
    pub higher_level: String,
    pub higher_rule: String,
    pub higher_at: String,
    pub lower_level: String,
    pub lower_rule: String,
    pub lower_at: String,
}

/// A grant of a capability that a level forbids.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "capability '{capability}' is forbidden by {forbidden_level} rule at {forbidden_at} ({forbidden_via}) but granted by {granted_level} rule at {granted_at} ({granted_by})"
)]
pub struct ForbiddenGrant {
    pub capability: String,
    pub forbidden_level: String,
    pub forbidden_at: String,
    pub forbidden_via: String,
    pub granted_level: String,
    pub granted_at: String,
    pub granted_by: String,
}

/// Result alias used throughout the crate.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
