//! The Compiled Policy: one document per agent, organized by aspect. It is
//! what gateways, the MCP broker and every policy provider consume.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::builtin::Phase;
use crate::model::{Access, Action, Tier};
use crate::rules::{Because, Level};

/// Format version of [`CompiledPolicy`]; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledPolicy {
    pub schema_version: u32,
    pub identity: Identity,
    pub network: Network,
    pub filesystem: Filesystem,
    pub tools: Tools,
    pub capabilities: Capabilities,
    pub interpreter: Interpreter,
    pub budget: Budget,
    pub compliance_tags: Vec<String>,
    /// L4: the effective pipeline, in execution order.
    pub pipeline: Vec<PipelineStep>,
    pub rego: RegoBundle,
    /// Because-trail of every effective rule, by rule key.
    pub provenance: BTreeMap<String, Vec<Because>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub agent: String,
    pub project: String,
    pub org: String,
    pub function: Option<String>,
    pub tier: Tier,
    /// Monotonic per agent; set by the caller of the compiler.
    pub policy_version: u64,
    /// SHA-256 of the canonical policy with `policy_version` = 0: equal
    /// content gives an equal hash across versions.
    pub content_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `None`: no allow-list (any domain not denied); `Some([])`: no egress.
    pub allow_domains: Option<Vec<String>>,
    pub deny_categories: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub workspace: Option<String>,
    pub read_only: bool,
    pub deny_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tools {
    /// `None`: every catalog tool not denied; `Some`: only these.
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
    pub schemas_acl: BTreeMap<String, Access>,
    pub constraints: BTreeMap<String, ToolConstraints>,
    /// The catalog entries of the allowed tools (capabilities, slots, MCP server).
    pub catalog: BTreeMap<String, ToolInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    pub capabilities: Vec<String>,
    pub mcp_server: Option<String>,
    pub native: Vec<String>,
    pub schema_param: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConstraints {
    pub amount_param: Option<String>,
    pub max_amount: Option<u64>,
    pub destination_param: Option<String>,
    pub allowed_destinations: Option<Vec<String>>,
    pub denied_destinations: Vec<String>,
    pub content_param: Option<String>,
    pub max_content_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub granted: Vec<String>,
    pub forbidden: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interpreter {
    /// `None`: host default; `Some([])`: none.
    pub host_functions: Option<Vec<String>>,
    pub memory_mb: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    pub stack_depth: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub tokens_per_day: Option<u64>,
    pub dollars_per_month: Option<u64>,
    pub tool_calls_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineStep {
    pub step: String,
    pub phases: Vec<Phase>,
    pub action: Action,
    pub params: BTreeMap<String, u64>,
    pub compliance_tags: Vec<String>,
    /// Rego entry points this step evaluates (for `rego_policy`).
    pub rego_entrypoints: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegoBundle {
    pub modules: Vec<RegoModule>,
    /// Fully qualified rules, e.g. `data.tappass.runtime.refunds.decision`.
    pub entrypoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegoModule {
    pub path: String,
    pub level: Level,
    pub package: String,
    pub text: String,
}

impl CompiledPolicy {
    /// Canonical JSON bytes of this policy.
    pub fn to_canonical_json(&self) -> crate::error::Result<String> {
        crate::canonical::canonicalize(self)
    }

    /// Parse a compiled policy (bare, not an envelope).
    pub fn from_json(text: &str) -> crate::error::Result<CompiledPolicy> {
        serde_json::from_str(text).map_err(|e| crate::error::PolicyError::Compiled(e.to_string()))
    }

    pub fn step(&self, id: &str) -> Option<&PipelineStep> {
        self.pipeline.iter().find(|s| s.step == id)
    }
}
