//! Policy providers: pure functions from a [`CompiledPolicy`] to a target's
//! native configuration, plus the rules that target cannot enforce and why.
//!
//! `render(target, &policy, &caps) -> (TargetConfig, Vec<Unenforceable>)`.

use serde::{Deserialize, Serialize};

use crate::compiled::CompiledPolicy;
use crate::error::{PolicyError, Result};

mod agents;
mod gateway;
mod sandboxes;

/// What the renderer may assume about the target's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCapabilities {
    /// Base URL of the TapPass gateway (no trailing `/v1`).
    pub gateway_url: String,
    /// URL of the TapPass MCP broker.
    pub mcp_broker_url: String,
    /// Environment variable holding the gateway key on the client.
    pub api_key_env: String,
    /// Command printing the gateway key (Claude Code `apiKeyHelper`).
    pub api_key_helper: Option<String>,
    /// Command a PreToolUse-style hook runs to ask the gateway about a tool
    /// call. `None`: no hook installed; constraints on local tools are then
    /// reported as unenforceable.
    pub hook_command: Option<String>,
}

impl Default for TargetCapabilities {
    fn default() -> Self {
        TargetCapabilities {
            gateway_url: "http://127.0.0.1:8080".into(),
            mcp_broker_url: "http://127.0.0.1:8080/mcp".into(),
            api_key_env: "TAPPASS_API_KEY".into(),
            api_key_helper: None,
            hook_command: None,
        }
    }
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedFile {
    /// Conventional file name at the target (e.g. `managed-settings.json`).
    pub path: String,
    pub content: String,
}

/// A target's configuration: one or more files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConfig {
    pub target: String,
    pub files: Vec<RenderedFile>,
}

/// A rule the target cannot enforce.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unenforceable {
    /// Aspect of the compiled policy (`network`, `filesystem`, `tools`, …).
    pub aspect: String,
    /// The rule, e.g. `network.allow_domains` or `tools.constraints.gmail.send`.
    pub rule: String,
    pub reason: String,
}

impl std::fmt::Display for Unenforceable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.aspect, self.rule, self.reason)
    }
}

pub(crate) fn un(
    aspect: &str,
    rule: impl Into<String>,
    reason: impl Into<String>,
) -> Unenforceable {
    Unenforceable {
        aspect: aspect.into(),
        rule: rule.into(),
        reason: reason.into(),
    }
}

/// A provider's identity.
#[derive(Debug, Clone, Copy)]
pub struct ProviderInfo {
    pub id: &'static str,
    pub description: &'static str,
}

type RenderFn =
    fn(&CompiledPolicy, &TargetCapabilities) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)>;

const PROVIDERS: &[(ProviderInfo, RenderFn)] = &[
    (ProviderInfo { id: "claude-code", description: "Claude Code managed-settings.json (permissions, env, apiKeyHelper, PreToolUse hooks)" }, agents::claude_code),
    (ProviderInfo { id: "codex", description: "OpenAI Codex CLI config.toml and requirements.toml" }, agents::codex),
    (ProviderInfo { id: "cursor", description: "Cursor .cursor/mcp.json, .cursor/cli.json permissions, .cursorignore" }, agents::cursor),
    (ProviderInfo { id: "aider", description: "aider .aider.conf.yml and .aiderignore" }, agents::aider),
    (ProviderInfo { id: "openshell", description: "OpenShell sandbox policy YAML (filesystem, network, process)" }, sandboxes::openshell),
    (ProviderInfo { id: "nono", description: "nono sandbox command line" }, sandboxes::nono),
    (ProviderInfo { id: "bubblewrap", description: "bubblewrap (bwrap) argv" }, sandboxes::bubblewrap),
    (ProviderInfo { id: "gvisor", description: "gVisor runsc flags and Kubernetes pod patch" }, sandboxes::gvisor),
    (ProviderInfo { id: "monty", description: "Monty interpreter resource limits and host functions" }, sandboxes::monty),
    (ProviderInfo { id: "llm-gateway", description: "the TapPass gateway's slice: pipeline, budget, routing limits, Rego" }, gateway::llm_gateway),
    (ProviderInfo { id: "mcp-broker", description: "the TapPass MCP broker's slice: tools, schemas ACL, constraints, Rego" }, gateway::mcp_broker),
];

/// Every provider, in a stable order.
pub fn providers() -> Vec<ProviderInfo> {
    PROVIDERS.iter().map(|(i, _)| *i).collect()
}

/// Render `policy` for `target`.
pub fn render(
    target: &str,
    policy: &CompiledPolicy,
    caps: &TargetCapabilities,
) -> Result<(TargetConfig, Vec<Unenforceable>)> {
    let (_, f) = PROVIDERS
        .iter()
        .find(|(i, _)| i.id == target)
        .ok_or_else(|| PolicyError::Provider {
            target: target.into(),
            message: format!(
                "unknown target (known: {})",
                PROVIDERS
                    .iter()
                    .map(|(i, _)| i.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let (files, mut un) = f(policy, caps)?;
    un.sort();
    un.dedup();
    Ok((
        TargetConfig {
            target: target.into(),
            files,
        },
        un,
    ))
}

/// Pretty JSON with a trailing newline (object keys sorted, for stable output).
pub(crate) fn json_file(path: &str, v: &serde_json::Value) -> RenderedFile {
    let sorted: serde_json::Value = serde_json::from_str(&crate::canonical::to_canonical_string(v))
        .unwrap_or_else(|_| v.clone());
    RenderedFile {
        path: path.into(),
        content: serde_json::to_string_pretty(&sorted).unwrap_or_default() + "\n",
    }
}

pub(crate) fn toml_file(path: &str, v: &toml::Table) -> Result<RenderedFile> {
    let s = toml::to_string(v).map_err(|e| PolicyError::Provider {
        target: path.into(),
        message: e.to_string(),
    })?;
    Ok(RenderedFile {
        path: path.into(),
        content: s,
    })
}

pub(crate) fn yaml_file(path: &str, v: &serde_json::Value) -> Result<RenderedFile> {
    let s = serde_norway::to_string(v).map_err(|e| PolicyError::Provider {
        target: path.into(),
        message: e.to_string(),
    })?;
    Ok(RenderedFile {
        path: path.into(),
        content: s,
    })
}

/// Tools the policy lets the agent call (allow-list, or the visible catalog).
pub(crate) fn allowed_tools(p: &CompiledPolicy) -> Vec<&String> {
    match &p.tools.allow {
        Some(a) => a.iter().collect(),
        None => p.tools.catalog.keys().collect(),
    }
}

pub(crate) fn tool_allowed(p: &CompiledPolicy, id: &str) -> bool {
    !p.tools.deny.iter().any(|d| d == id)
        && p.tools
            .allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == id))
}

pub(crate) fn granted(p: &CompiledPolicy, cap: &str) -> bool {
    p.capabilities.granted.iter().any(|c| c == cap)
}

/// Whether the agent may reach the network beyond the gateway.
pub(crate) fn needs_egress(p: &CompiledPolicy) -> bool {
    granted(p, "network_egress")
        && p.network
            .allow_domains
            .as_ref()
            .is_none_or(|d| !d.is_empty())
}

/// Host and port of a URL (`http://h:8080/x` → (`h`, 8080)).
pub(crate) fn host_port(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let hostport = rest.split('/').next().unwrap_or(rest);
    let default = if scheme == "https" { 443 } else { 80 };
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default)),
        None => (hostport.to_string(), default),
    }
}

pub(crate) fn step_on(p: &CompiledPolicy, id: &str) -> bool {
    p.step(id).is_some()
}
