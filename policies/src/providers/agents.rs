//! Local coding agents: Claude Code, Codex, Cursor, aider.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::*;

/// Claude Code path rule for a policy path: `~/x` stays, `/abs` → `//abs`.
fn cc_path(p: &str) -> String {
    if let Some(rest) = p.strip_prefix('/') {
        format!("//{rest}")
    } else {
        p.to_string()
    }
}

/// The built-in native tool names of local agents, by catalog tool.
const NATIVE_TOOLS: &[(&str, &[&str])] = &[
    ("shell.exec", &["Bash"]),
    ("fs.read", &["Read", "Glob", "Grep"]),
    ("fs.write", &["Write", "Edit", "NotebookEdit"]),
    ("web.fetch", &["WebFetch"]),
    ("web.search", &["WebSearch"]),
];

pub(super) fn claude_code(
    p: &CompiledPolicy,
    caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let mut allow: BTreeSet<String> = BTreeSet::new();
    let mut deny: BTreeSet<String> = BTreeSet::new();
    let mut ask: BTreeSet<String> = BTreeSet::new();
    let mut un = Vec::new();
    // Native tools: allowed or denied as the catalog tool they implement.
    for (tool, names) in NATIVE_TOOLS {
        let target = if tool_allowed(p, tool) {
            &mut allow
        } else {
            &mut deny
        };
        for n in *names {
            target.insert((*n).to_string());
        }
    }
    // Read-only: no edits anywhere.
    if p.filesystem.read_only {
        for n in ["Write", "Edit", "NotebookEdit"] {
            allow.remove(n);
            deny.insert(n.to_string());
        }
    }
    // Sensitive paths: neither read nor edited.
    for path in &p.filesystem.deny_paths {
        let pp = cc_path(path);
        for verb in ["Read", "Edit"] {
            deny.insert(format!("{verb}({pp})"));
            deny.insert(format!("{verb}({pp}/**)"));
        }
    }
    // Web fetches only to allowed domains.
    if tool_allowed(p, "web.fetch") {
        if let Some(domains) = &p.network.allow_domains {
            allow.remove("WebFetch");
            for d in domains {
                if d.starts_with("*.") {
                    un.push(un_("network", format!("network.allow_domains.{d}"), "WebFetch domain rules match exact hosts; a wildcard entry cannot be expressed"));
                } else {
                    allow.insert(format!("WebFetch(domain:{d})"));
                }
            }
        }
    }
    // Consequential tools ask first when a human must approve.
    if step_on(p, "human_approval") {
        for n in ["Bash", "Write", "Edit", "NotebookEdit", "WebFetch"] {
            if allow.remove(n) {
                ask.insert(n.to_string());
            }
        }
    }
    let mut settings = json!({
        "permissions": {
            "allow": allow,
            "deny": deny,
            "ask": ask,
            "defaultMode": "default",
            "disableBypassPermissionsMode": "disable",
        },
        "env": {
            "ANTHROPIC_BASE_URL": caps.gateway_url,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "TAPPASS_AGENT": p.identity.agent,
            "TAPPASS_POLICY_VERSION": p.identity.policy_version.to_string(),
        },
        // MCP only through the TapPass broker, which enforces tools,
        // schemas ACL, constraints and Rego per call.
        "allowedMcpServers": [{"serverName": "tappass"}],
        "enableAllProjectMcpServers": false,
    });
    match &caps.api_key_helper {
        Some(h) => settings["apiKeyHelper"] = Value::String(h.clone()),
        None => {
            un.push(un_("identity", "apiKeyHelper", "no api_key_helper configured: the gateway key must come from ANTHROPIC_AUTH_TOKEN in the user's environment"));
        }
    }
    let local_constraints: Vec<&String> = p
        .tools
        .constraints
        .keys()
        .filter(|id| {
            p.tools
                .catalog
                .get(*id)
                .is_some_and(|t| t.mcp_server.is_none())
        })
        .collect();
    match &caps.hook_command {
        Some(cmd) => {
            settings["hooks"] = json!({
                "PreToolUse": [{
                    "matcher": "Bash|Write|Edit|NotebookEdit|WebFetch|WebSearch",
                    "hooks": [{"type": "command", "command": cmd}],
                }]
            });
        }
        None => {
            for id in local_constraints {
                un.push(un_("tools", format!("tools.constraints.{id}"), "a local tool with argument constraints needs a PreToolUse hook (TargetCapabilities.hook_command)"));
            }
            if !p.rego.entrypoints.is_empty()
                && allowed_tools(p).iter().any(|id| {
                    p.tools
                        .catalog
                        .get(*id)
                        .is_some_and(|t| t.mcp_server.is_none())
                })
            {
                un.push(un_("tools", "rego.entrypoints", "Rego decisions on local tool calls need a PreToolUse hook (TargetCapabilities.hook_command); MCP tool calls are checked by the broker"));
            }
        }
    }
    if let Some(ws) = &p.filesystem.workspace {
        un.push(un_("filesystem", "filesystem.workspace", format!("Claude Code works in the directory it is started in; settings cannot pin it to {ws} (start it there, or use a sandbox provider)")));
    }
    if p.network.allow_domains.is_some() && tool_allowed(p, "shell.exec") {
        un.push(un_("network", "network.allow_domains", "Bash commands reach the network without WebFetch rules: pair with a sandbox provider (nono, bubblewrap, gvisor, openshell)"));
    }
    if !p.network.deny_categories.is_empty() {
        un.push(un_(
            "network",
            "network.deny_categories",
            "Claude Code has no URL-category filter; the gateway applies it to LLM traffic only",
        ));
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        un.push(un_(
            "interpreter",
            "interpreter",
            "Claude Code has no resource limits for commands it runs: use a sandbox provider",
        ));
    }
    Ok((vec![json_file("managed-settings.json", &settings)], un))
}

fn un_(aspect: &str, rule: impl Into<String>, reason: impl Into<String>) -> Unenforceable {
    super::un(aspect, rule, reason)
}

pub(super) fn codex(
    p: &CompiledPolicy,
    caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let mut un = Vec::new();
    let read_only = p.filesystem.read_only
        || !tool_allowed(p, "fs.write")
        || p.identity.tier == crate::model::Tier::Observer;
    let sandbox_mode = if read_only {
        "read-only"
    } else {
        "workspace-write"
    };
    let approval_policy = if step_on(p, "human_approval") {
        "untrusted"
    } else {
        "on-request"
    };
    let mut cfg = toml::Table::new();
    cfg.insert("model_provider".into(), "tappass".into());
    cfg.insert("approval_policy".into(), approval_policy.into());
    cfg.insert("sandbox_mode".into(), sandbox_mode.into());
    let mut provider = toml::Table::new();
    provider.insert("name".into(), "TapPass".into());
    provider.insert(
        "base_url".into(),
        format!("{}/v1", caps.gateway_url.trim_end_matches('/')).into(),
    );
    provider.insert("env_key".into(), caps.api_key_env.clone().into());
    provider.insert("wire_api".into(), "responses".into());
    let mut headers = toml::Table::new();
    headers.insert("x-tappass-agent".into(), p.identity.agent.clone().into());
    provider.insert("http_headers".into(), headers.into());
    let mut providers = toml::Table::new();
    providers.insert("tappass".into(), provider.into());
    cfg.insert("model_providers".into(), providers.into());
    if !read_only {
        let mut sww = toml::Table::new();
        sww.insert("network_access".into(), needs_egress(p).into());
        let roots: Vec<toml::Value> = p
            .filesystem
            .workspace
            .iter()
            .map(|w| w.clone().into())
            .collect();
        sww.insert("writable_roots".into(), roots.into());
        cfg.insert("sandbox_workspace_write".into(), sww.into());
    }
    let mut sep = toml::Table::new();
    sep.insert("inherit".into(), "core".into());
    sep.insert("ignore_default_excludes".into(), false.into());
    let excludes: Vec<toml::Value> = [
        "*KEY*",
        "*SECRET*",
        "*TOKEN*",
        "*PASSWORD*",
        "AWS_*",
        "AZURE_*",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ]
    .iter()
    .map(|s| (*s).into())
    .collect();
    sep.insert("exclude".into(), excludes.into());
    cfg.insert("shell_environment_policy".into(), sep.into());
    let mut mcp = toml::Table::new();
    let mut broker = toml::Table::new();
    broker.insert("url".into(), caps.mcp_broker_url.clone().into());
    mcp.insert("tappass".into(), broker.into());
    cfg.insert("mcp_servers".into(), mcp.into());
    let mut req = toml::Table::new();
    let approvals: Vec<toml::Value> = if approval_policy == "untrusted" {
        vec!["untrusted".into()]
    } else {
        vec!["untrusted".into(), "on-request".into()]
    };
    req.insert("allowed_approval_policies".into(), approvals.into());
    let modes: Vec<toml::Value> = if read_only {
        vec!["read-only".into()]
    } else {
        vec!["read-only".into(), "workspace-write".into()]
    };
    req.insert("allowed_sandbox_modes".into(), modes.into());
    if !p.filesystem.deny_paths.is_empty() {
        un.push(un_("filesystem", "filesystem.deny_paths", "Codex's sandbox can read the whole disk in every mode; specific paths cannot be denied (use a sandbox provider)"));
    }
    if !tool_allowed(p, "shell.exec") {
        un.push(un_(
            "tools",
            "tools.deny.shell.exec",
            "Codex's shell tool cannot be turned off; the sandbox mode limits what it can change",
        ));
    }
    if p.network
        .allow_domains
        .as_ref()
        .is_some_and(|d| !d.is_empty())
        && needs_egress(p)
    {
        un.push(un_(
            "network",
            "network.allow_domains",
            "Codex's sandbox allows all or no network; a domain allow-list cannot be expressed",
        ));
    }
    if !p.network.deny_categories.is_empty() {
        un.push(un_(
            "network",
            "network.deny_categories",
            "Codex has no URL-category filter",
        ));
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        un.push(un_(
            "interpreter",
            "interpreter",
            "Codex has no resource limits for commands it runs",
        ));
    }
    for id in p.tools.constraints.keys().filter(|id| {
        p.tools
            .catalog
            .get(*id)
            .is_some_and(|t| t.mcp_server.is_none())
    }) {
        un.push(un_(
            "tools",
            format!("tools.constraints.{id}"),
            "Codex has no pre-tool hook for local tools; MCP tools are checked by the broker",
        ));
    }
    Ok((
        vec![
            toml_file("config.toml", &cfg)?,
            toml_file("requirements.toml", &req)?,
        ],
        un,
    ))
}

pub(super) fn cursor(
    p: &CompiledPolicy,
    caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let mut un = Vec::new();
    let mcp = json!({"mcpServers": {"tappass": {"url": caps.mcp_broker_url}}});
    let mut allow: BTreeSet<String> = BTreeSet::new();
    let mut deny: BTreeSet<String> = BTreeSet::new();
    if tool_allowed(p, "fs.read") {
        allow.insert("Read(**)".into());
    } else {
        deny.insert("Read(**)".into());
    }
    if tool_allowed(p, "fs.write") && !p.filesystem.read_only {
        allow.insert("Write(**)".into());
    } else {
        deny.insert("Write(**)".into());
    }
    if !tool_allowed(p, "shell.exec") {
        deny.insert("Shell(*)".into());
    }
    for path in &p.filesystem.deny_paths {
        deny.insert(format!("Read({path}/**)"));
        deny.insert(format!("Write({path}/**)"));
    }
    let cli = json!({"version": 1, "permissions": {"allow": allow, "deny": deny}});
    let mut ignore =
        String::from("# Generated by TapPass: paths the agent must not index or read.\n");
    for path in &p.filesystem.deny_paths {
        ignore.push_str(path);
        ignore.push('\n');
    }
    ignore.push_str(".env\n.env.*\n*.pem\n*.key\n");
    un.push(un_("identity", "gateway_url", format!("Cursor's OpenAI base-URL override ({}/v1) is a per-user UI setting and cannot be pushed; LLM traffic reaches the gateway only when it is set", caps.gateway_url)));
    if p.network.allow_domains.is_some() || !p.network.deny_categories.is_empty() {
        un.push(un_(
            "network",
            "network",
            "Cursor has no network allow-list for its agent",
        ));
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        un.push(un_(
            "interpreter",
            "interpreter",
            "Cursor has no resource limits for commands it runs",
        ));
    }
    if step_on(p, "human_approval") {
        un.push(un_("pipeline", "steps.human_approval", "Cursor's CLI permissions allow or deny; approval of local tool calls is left to its UI settings (MCP calls wait in the broker)"));
    }
    Ok((
        vec![
            json_file(".cursor/mcp.json", &mcp),
            json_file(".cursor/cli.json", &cli),
            RenderedFile {
                path: ".cursorignore".into(),
                content: ignore,
            },
        ],
        un,
    ))
}

pub(super) fn aider(
    p: &CompiledPolicy,
    caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let mut un = Vec::new();
    let conf = json!({
        "openai-api-base": format!("{}/v1", caps.gateway_url.trim_end_matches('/')),
        "anthropic-api-base": caps.gateway_url,
        "auto-commits": false,
        "dirty-commits": false,
        "yes-always": false,
        "suggest-shell-commands": tool_allowed(p, "shell.exec"),
        "detect-urls": tool_allowed(p, "web.fetch") && needs_egress(p),
        "analytics-disable": true,
        "check-update": false,
        "aiderignore": ".aiderignore",
    });
    let mut ignore = String::from("# Generated by TapPass\n");
    for path in &p.filesystem.deny_paths {
        ignore.push_str(path);
        ignore.push('\n');
    }
    ignore.push_str(".env\n.env.*\n*.pem\n*.key\n");
    if p.filesystem.read_only {
        un.push(un_("filesystem", "filesystem.read_only", "aider edits files by design; it has no read-only mode (use a sandbox provider with a read-only mount)"));
    }
    if !allowed_tools(p).is_empty() || !p.tools.constraints.is_empty() {
        un.push(un_("tools", "tools", "aider has no tool calls or MCP; tool rules do not apply (nothing to enforce, nothing granted)"));
    }
    if p.network.allow_domains.is_some() {
        un.push(un_(
            "network",
            "network.allow_domains",
            "aider's URL scraping and shell commands are not limited by domain",
        ));
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        un.push(un_(
            "interpreter",
            "interpreter",
            "aider has no resource limits for commands it runs",
        ));
    }
    Ok((
        vec![
            yaml_file(".aider.conf.yml", &conf)?,
            RenderedFile {
                path: ".aiderignore".into(),
                content: ignore,
            },
        ],
        un,
    ))
}
