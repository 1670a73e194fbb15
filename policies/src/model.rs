//! The authoring model: what operators write in YAML (and what packs, the
//! taxonomy and the tool catalog are written in). Every struct denies unknown
//! fields; the JSON schema in `policies/schema/` is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Strength of a step's reaction. Strictest wins: `block > redact > notify > log`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Log,
    Notify,
    Redact,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Notify => "notify",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// Agent tier. Ordered from least to most privileged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Observer,
    Worker,
    Standard,
    Full,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Observer => "observer",
            Tier::Worker => "worker",
            Tier::Standard => "standard",
            Tier::Full => "full",
        }
    }
}

/// Access to a data schema (e.g. a table family in a system of record).
/// Strictest (least access) wins: `deny < read < read_write`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Deny,
    Read,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Deny => "deny",
            Access::Read => "read",
            Access::ReadWrite => "read_write",
        }
    }
}

/// One policy document: a YAML file under `org/`, `projects/<p>/` or
/// `agents/<a>/`. All fields are optional; a level may be split over files.
/// Parsed by `crate::parse` (serde's `flatten` cannot deny unknown fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Org header (only in `org/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgHeader>,
    /// Agent header (exactly once in `agents/<name>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentHeader>,
    /// Tenant tool-catalog extensions (new tools, `extends:`, per-agent overrides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<ToolDef>,
    /// The level's selections and rules.
    #[serde(flatten)]
    pub rules: Rules,
    /// L5 manual overlay (agent level only): applied below the agent level,
    /// may tighten but never relax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Rules>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgHeader {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentHeader {
    /// Must equal the directory name under `agents/`.
    pub name: String,
    /// The project (directory under `projects/`) the agent belongs to.
    pub project: String,
    /// L0 function: what the agent is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Requested tier; defaults to the function's tier, else `worker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Selections and rules. Shared by levels, packs, concerns and functions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Compliance packs to apply at this level.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<String>,
    /// L1 data categories handled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// L2 concerns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concerns: Vec<String>,
    /// L3 capabilities requested (granted unless forbidden).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// L3 capabilities that can never be granted at this level or below.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden_capabilities: Vec<String>,
    /// Highest tier an agent below may request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tier: Option<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<InterpreterRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetRules>,
    /// Pipeline steps (L4 is computed from these after merging).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, StepRule>,
    /// Compliance tags, e.g. `GDPR:Art32`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compliance_tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolRules {
    /// Allow-list of tool ids (intersects across levels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Deny-list of tool ids (unions across levels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Schema access list (`deny < read < read_write`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, Access>,
    /// Per-tool constraints bound to the catalog's slots.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, ToolConstraint>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolConstraint {
    /// Ceiling on the `amount_param` slot (whole currency units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<u64>,
    /// Allow-list for the `destination_param` slot (`*.example.com` globs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_destinations: Option<Vec<String>>,
    /// Deny-list for the `destination_param` slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_destinations: Vec<String>,
    /// Ceiling on the size of the `content_param` slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_content_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_categories: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesystemRules {
    /// Working directory; a lower level may only narrow it to a subdirectory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InterpreterRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_functions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_depth: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dollars_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRule {
    /// `true` wins over `false` across levels and sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Numeric parameters; their direction (ceiling or floor) is fixed per step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, u64>,
    /// Compliance tags this step implements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A tool in the catalog (built in or a tenant extension).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    /// Tool id, `vendor.action` (e.g. `slack.post_message`).
    pub id: String,
    /// Base tool: capabilities are deltas (`+cap` / `-cap`), slots inherit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Replace this (existing) tool's definition for the level (and below).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub r#override: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Capabilities; with `extends`, `+cap` adds and `-cap` removes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Slots>,
    /// MCP server the tool is served by (for the MCP broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_server: Option<String>,
    /// Native tool names in local agents, e.g. `Bash`, `WebFetch` (Claude Code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub native: Vec<String>,
}

/// Which call argument holds what, so constraints can be checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_param: Option<String>,
}

/// A compliance pack file (`policies/packs/*.yaml`).
/// Parsed by `crate::parse` (serde's `flatten` cannot deny unknown fields).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PackDocument {
    pub pack: PackHeader,
    #[serde(flatten)]
    pub rules: Rules,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackHeader {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The articles or controls the pack implements.
    pub cites: Vec<String>,
}

/// The built-in taxonomy (`policies/catalog/taxonomy.yaml`).
/// Parsed by `crate::parse` (serde's `flatten` cannot deny unknown fields).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Taxonomy {
    pub functions: BTreeMap<String, FunctionDef>,
    pub categories: BTreeMap<String, CategoryDef>,
    pub concerns: BTreeMap<String, ConcernDef>,
    pub capabilities: BTreeMap<String, CapabilityDef>,
}

/// Parsed by `crate::parse` (serde's `flatten` cannot deny unknown fields).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FunctionDef {
    pub description: String,
    #[serde(default = "default_tier")]
    pub tier: Tier,
    #[serde(flatten)]
    pub rules: Rules,
}

fn default_tier() -> Tier {
    Tier::Worker
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryDef {
    pub description: String,
    #[serde(default)]
    pub concerns: Vec<String>,
}

/// Parsed by `crate::parse` (serde's `flatten` cannot deny unknown fields).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConcernDef {
    pub description: String,
    #[serde(flatten)]
    pub rules: Rules,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapabilityDef {
    pub description: String,
    pub risk: String,
}

/// The built-in tool catalog (`policies/catalog/tools.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogDocument {
    pub tools: Vec<ToolDef>,
}
