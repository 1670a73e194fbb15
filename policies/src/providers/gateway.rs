//! The TapPass gateway's and MCP broker's own slices of the policy.

use serde_json::json;

use super::*;
use crate::builtin::Phase;

pub(super) fn llm_gateway(
    p: &CompiledPolicy,
    _caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let steps: Vec<_> = p
        .pipeline
        .iter()
        .filter(|s| {
            s.phases.iter().any(|ph| {
                matches!(
                    ph,
                    Phase::Request | Phase::Response | Phase::Route | Phase::Always
                )
            })
        })
        .collect();
    let v = json!({
        "agent": p.identity.agent,
        "project": p.identity.project,
        "org": p.identity.org,
        "tier": p.identity.tier,
        "policy_version": p.identity.policy_version,
        "content_hash": p.identity.content_hash,
        "pipeline": steps,
        "budget": p.budget,
        "network": p.network,
        "compliance_tags": p.compliance_tags,
        "rego_entrypoints": p.rego.entrypoints,
    });
    let mut out: Vec<Unenforceable> = Vec::new();
    if p.filesystem.workspace.is_some()
        || p.filesystem.read_only
        || !p.filesystem.deny_paths.is_empty()
    {
        out.push(un("filesystem", "filesystem", "the gateway sees LLM and tool traffic, not the agent's file system: pair with a sandbox or local-agent provider"));
    }
    if p.interpreter.memory_mb.is_some()
        || p.interpreter.cpu_time_ms.is_some()
        || p.interpreter.host_functions.is_some()
    {
        out.push(un(
            "interpreter",
            "interpreter",
            "interpreter limits apply where code runs (monty, sandboxes), not in the gateway",
        ));
    }
    if !p.network.deny_categories.is_empty() {
        out.push(un("network", "network.deny_categories", "the gateway routes only to configured providers; category filtering of other egress needs an egress proxy deployment"));
    }
    Ok((vec![json_file("llm-gateway.json", &v)], out))
}

pub(super) fn mcp_broker(
    p: &CompiledPolicy,
    _caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let mut servers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut out: Vec<Unenforceable> = Vec::new();
    for id in allowed_tools(p) {
        if !tool_allowed(p, id) {
            continue;
        }
        match p.tools.catalog.get(id).and_then(|t| t.mcp_server.clone()) {
            Some(s) => servers.entry(s).or_default().push(id.clone()),
            None => out.push(un("tools", format!("tools.allow.{id}"), "a local tool, not served over MCP: the broker cannot see its calls; enforce it with a local-agent or sandbox provider")),
        }
    }
    let steps: Vec<_> = p
        .pipeline
        .iter()
        .filter(|s| {
            s.phases
                .iter()
                .any(|ph| matches!(ph, Phase::ToolCall | Phase::Always))
        })
        .collect();
    let v = json!({
        "agent": p.identity.agent,
        "policy_version": p.identity.policy_version,
        "content_hash": p.identity.content_hash,
        "servers": servers,
        "tools": {
            "allow": p.tools.allow,
            "deny": p.tools.deny,
            "schemas_acl": p.tools.schemas_acl,
            "constraints": p.tools.constraints,
        },
        "steps": steps,
        "tool_calls_per_minute": p.budget.tool_calls_per_minute,
        "rego_entrypoints": p.rego.entrypoints,
    });
    for schema in p.tools.schemas_acl.keys() {
        let has_param = allowed_tools(p).iter().any(|id| {
            p.tools
                .catalog
                .get(*id)
                .is_some_and(|t| t.schema_param.is_some())
        });
        if !has_param {
            out.push(un("tools", format!("tools.schemas_acl.{schema}"), "no allowed tool has a schema_param slot, so the broker cannot tell which schema a call touches"));
        }
    }
    Ok((vec![json_file("mcp-broker.json", &v)], out))
}
