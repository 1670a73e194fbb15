//! What the control plane stores, and the requests and answers of the admin
//! API. Everything read from a request denies unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ControlError, Result};

/// Where a policy source applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Org,
    Project(String),
    Agent(String),
}

impl Level {
    /// Parses `org`, `project=P` or `agent=A`.
    pub fn parse(s: &str) -> Result<Level> {
        let bad = || {
            ControlError::BadRequest(format!(
                "level `{s}`: expected `org`, `project=NAME` or `agent=NAME`"
            ))
        };
        match s.split_once('=') {
            None if s == "org" => Ok(Level::Org),
            Some(("project", p)) => Ok(Level::Project(valid_name("project", p)?)),
            Some(("agent", a)) => Ok(Level::Agent(valid_name("agent", a)?)),
            _ => Err(bad()),
        }
    }

    /// The directory of this level in a policy tree (`org`, `projects/P`,
    /// `agents/A`).
    pub fn dir(&self) -> String {
        match self {
            Level::Org => "org".into(),
            Level::Project(p) => format!("projects/{p}"),
            Level::Agent(a) => format!("agents/{a}"),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Level::Org => "org".into(),
            Level::Project(p) => format!("project={p}"),
            Level::Agent(a) => format!("agent={a}"),
        }
    }
}

/// Names of agents, projects, sandboxes, credentials: 1–64 characters,
/// letters, digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn valid_name(what: &str, s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(ControlError::BadRequest(format!(
            "{what} name `{s}` is invalid: use 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        )))
    }
}

// ------------------------------------------------------------------ stored

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    pub name: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRecord {
    pub name: String,
    pub created_at: i64,
}

/// The compiled, signed policy of an agent as last published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    pub agent: String,
    pub policy_version: u64,
    pub content_hash: String,
    /// The signed Compiled Policy document (canonical JSON).
    pub signed_json: String,
    pub compiled_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Lower-case hex SHA-256 of the key.
    pub hash: String,
    /// Non-secret identifier (the key's prefix).
    pub key_id: String,
    pub agent: String,
    pub project: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyRecord {
    pub kid: String,
    /// The Ed25519 seed, sealed with the master key (base64).
    pub sealed_seed: String,
    pub created_at: i64,
    /// When a newer key replaced this one; `None` for the active key.
    #[serde(default)]
    pub retired_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// Sealed with the master key (base64).
    pub sealed: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The `jti` or sandbox id.
    pub id: String,
    pub revoked_at: i64,
    /// When the revocation stops being pushed (no token it covers can be
    /// valid after this).
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedToken {
    pub jti: String,
    pub agent: String,
    #[serde(default)]
    pub sandbox: Option<String>,
    pub kid: String,
    pub exp: i64,
}

// ---------------------------------------------------------------- requests

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFileIn {
    /// File name (no directory), ending in `.yaml`, `.yml` or `.rego`.
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplySources {
    /// `org`, `project=P` or `agent=A`.
    pub level: String,
    pub files: Vec<SourceFileIn>,
    /// Replace every file of the level (a directory was applied) instead of
    /// adding or replacing only the named files.
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyPack {
    pub level: String,
    pub pack: String,
    /// Remove the pack from the level instead of adding it.
    #[serde(default)]
    pub remove: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub agent: String,
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    #[serde(default)]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub tools_allow: Vec<String>,
    #[serde(default)]
    pub tools_deny: Vec<String>,
    #[serde(default)]
    pub schemas_acl: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeToken {
    pub jti: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeSandbox {
    pub sandbox: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCredential {
    pub value: String,
}

// ----------------------------------------------------------------- answers

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedToken {
    pub token: String,
    pub jti: String,
    pub kid: String,
    pub agent: String,
    pub exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedApiKey {
    /// The key itself: shown once, never stored.
    pub key: String,
    pub key_id: String,
    pub agent: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyReport {
    pub level: String,
    /// Agents whose Compiled Policy changed, with their new versions.
    pub changed: BTreeMap<String, u64>,
    /// Agents whose Compiled Policy did not change.
    pub unchanged: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyAnswer {
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<tappass_tokens::Claims>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKeyInfo {
    pub kid: String,
    pub active: bool,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    /// When the key leaves the JWKS (retired keys only).
    pub published_until: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NackInfo {
    pub type_url: String,
    pub rejected_version: String,
    pub kept_version: String,
    pub message: String,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypeInfo {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    pub acked_at: Option<i64>,
    pub last_nack: Option<NackInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub node_id: String,
    pub cluster: String,
    pub connected: bool,
    pub streams: usize,
    pub connected_since: Option<i64>,
    pub last_seen: i64,
    pub types: BTreeMap<String, TypeInfo>,
    pub last_nack: Option<NackInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Current version of each published type.
    pub versions: BTreeMap<String, String>,
    pub snapshot_key_id: String,
    pub token_key_id: String,
    pub agents: usize,
    pub gateways: Vec<GatewayStatus>,
}
