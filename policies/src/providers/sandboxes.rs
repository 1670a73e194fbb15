//! Sandboxes and interpreters: OpenShell, nono, bubblewrap, gVisor, Monty.

use serde_json::json;

use super::*;

const SYSTEM_RO: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ssl",
    "/etc/resolv.conf",
    "/etc/hosts",
];

fn expand_home(p: &str) -> String {
    match p.strip_prefix("~/") {
        Some(rest) => format!("/home/agent/{rest}"),
        None => p.to_string(),
    }
}

/// Deny paths that fall inside something the sandbox mounts, so omission
/// does not cover them.
fn exposed_deny_paths(p: &CompiledPolicy, mounted: &[String]) -> Vec<String> {
    p.filesystem
        .deny_paths
        .iter()
        .filter(|d| {
            let d = expand_home(d);
            mounted
                .iter()
                .any(|m| d == *m || d.starts_with(&format!("{}/", m.trim_end_matches('/'))))
        })
        .cloned()
        .collect()
}

fn workspace(p: &CompiledPolicy) -> String {
    p.filesystem
        .workspace
        .clone()
        .unwrap_or_else(|| "/workspace".into())
}

fn domain_un(p: &CompiledPolicy, what: &str) -> Option<Unenforceable> {
    match &p.network.allow_domains {
        Some(d) if !d.is_empty() && needs_egress(p) => Some(un("network", "network.allow_domains", format!("{what} allows all or no egress; domains are not filtered (set HTTPS_PROXY to a TapPass egress gateway)"))),
        _ => None,
    }
}

pub(super) fn openshell(
    p: &CompiledPolicy,
    caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let ws = workspace(p);
    let mut mounted: Vec<String> = SYSTEM_RO.iter().map(|s| s.to_string()).collect();
    mounted.push(ws.clone());
    let (gw_host, gw_port) = host_port(&caps.gateway_url);
    let mut policies = serde_json::Map::new();
    policies.insert(
        "tappass_gateway".into(),
        json!({"name": "tappass-gateway", "endpoints": [{"host": gw_host, "port": gw_port}], "binaries": [{"path": "/**"}]}),
    );
    let mut out: Vec<Unenforceable> = Vec::new();
    if needs_egress(p) {
        if let Some(domains) = &p.network.allow_domains {
            let endpoints: Vec<_> = domains
                .iter()
                .map(|d| json!({"host": d, "port": 443}))
                .collect();
            policies.insert("allowed_domains".into(), json!({"name": "policy-allow-domains", "endpoints": endpoints, "binaries": [{"path": "/**"}]}));
        } else {
            out.push(un("network", "network", "no domain allow-list in the policy: OpenShell is default-deny, so only the gateway is reachable"));
        }
    }
    let (ro, rw): (Vec<String>, Vec<String>) = if p.filesystem.read_only {
        (mounted.clone(), vec!["/tmp".into()])
    } else {
        (
            SYSTEM_RO.iter().map(|s| s.to_string()).collect(),
            vec![ws.clone(), "/tmp".into()],
        )
    };
    let doc = json!({
        "version": 1,
        "filesystem_policy": {"include_workdir": false, "read_only": ro, "read_write": rw},
        "landlock": {"compatibility": "hard_requirement"},
        "process": {"run_as_user": "sandbox", "run_as_group": "sandbox"},
        "network_policies": policies,
    });
    for d in exposed_deny_paths(p, &mounted) {
        out.push(un(
            "filesystem",
            format!("filesystem.deny_paths.{d}"),
            "inside a mounted directory; Landlock rules cannot carve it out",
        ));
    }
    if !p.network.deny_categories.is_empty() {
        out.push(un(
            "network",
            "network.deny_categories",
            "OpenShell filters by host, not by category",
        ));
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        out.push(un("interpreter", "interpreter", "OpenShell policy files carry no memory or CPU limits; set them on the sandbox's container"));
    }
    Ok((vec![yaml_file("openshell-policy.yaml", &doc)?], out))
}

pub(super) fn nono(
    p: &CompiledPolicy,
    _caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let ws = workspace(p);
    let mut argv: Vec<String> = vec!["nono".into(), "run".into()];
    if p.filesystem.read_only {
        argv.extend(["--read".into(), ws.clone()]);
    } else {
        argv.extend(["--allow".into(), ws.clone()]);
    }
    let mut out: Vec<Unenforceable> = Vec::new();
    if !needs_egress(p) {
        argv.push("--net-block".into());
        out.push(un("network", "network.gateway", "--net-block also blocks the TapPass gateway; run the agent with the gateway on a Unix socket or allow network and rely on the gateway"));
    } else if let Some(u) = domain_un(p, "nono") {
        out.push(u);
    }
    argv.push("--".into());
    argv.push("${AGENT_COMMAND}".into());
    for d in exposed_deny_paths(p, &[ws]) {
        out.push(un(
            "filesystem",
            format!("filesystem.deny_paths.{d}"),
            "inside the granted workspace; nono grants whole directories",
        ));
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        out.push(un(
            "interpreter",
            "interpreter",
            "nono sets no memory or CPU limits",
        ));
    }
    let line = argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
        + "\n";
    Ok((
        vec![RenderedFile {
            path: "nono.sh".into(),
            content: line,
        }],
        out,
    ))
}

fn shell_quote(s: &str) -> String {
    if s == "${AGENT_COMMAND}" {
        return "\"$@\"".into();
    }
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub(super) fn bubblewrap(
    p: &CompiledPolicy,
    _caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let ws = workspace(p);
    let mut argv: Vec<String> = vec![
        "bwrap".into(),
        "--die-with-parent".into(),
        "--new-session".into(),
        "--unshare-all".into(),
    ];
    {
        // The agent must reach the gateway; bubblewrap cannot allow one host only.
        argv.push("--share-net".into());
    }
    for d in SYSTEM_RO {
        argv.extend(["--ro-bind-try".into(), (*d).into(), (*d).into()]);
    }
    argv.extend([
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ]);
    let bind = if p.filesystem.read_only {
        "--ro-bind"
    } else {
        "--bind"
    };
    argv.extend([
        bind.into(),
        ws.clone(),
        ws.clone(),
        "--chdir".into(),
        ws.clone(),
    ]);
    let mut out: Vec<Unenforceable> = Vec::new();
    // Deny paths inside mounts are masked with an empty tmpfs.
    let mut mounted: Vec<String> = SYSTEM_RO.iter().map(|s| s.to_string()).collect();
    mounted.push(ws.clone());
    for d in exposed_deny_paths(p, &mounted) {
        argv.extend(["--tmpfs".into(), expand_home(&d)]);
    }
    argv.extend([
        "--setenv".into(),
        "TAPPASS_AGENT".into(),
        p.identity.agent.clone(),
        "--".into(),
    ]);
    out.push(un("network", "network", "bubblewrap shares or unshares the whole network; the agent keeps network access so it can reach the gateway"));
    if let Some(u) = domain_un(p, "bubblewrap") {
        out.push(u);
    }
    if p.interpreter.memory_mb.is_some() || p.interpreter.cpu_time_ms.is_some() {
        out.push(un(
            "interpreter",
            "interpreter",
            "bubblewrap sets no memory or CPU limits (wrap it in systemd-run or prlimit)",
        ));
    }
    Ok((vec![json_file("bwrap.argv.json", &json!(argv))], out))
}

pub(super) fn gvisor(
    p: &CompiledPolicy,
    _caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let egress = needs_egress(p);
    let flags = vec![
        format!("--network={}", if egress { "sandbox" } else { "none" }),
        "--overlay2=root:memory".to_string(),
        "--file-access=exclusive".to_string(),
        "--directfs=false".to_string(),
    ];
    let ws = workspace(p);
    let mut limits = serde_json::Map::new();
    if let Some(m) = p.interpreter.memory_mb {
        limits.insert("memory".into(), json!(format!("{m}Mi")));
    }
    let pod = json!({
        "metadata": {"annotations": {
            "tappass.dev/agent": p.identity.agent,
            "tappass.dev/policy-version": p.identity.policy_version.to_string(),
        }},
        "spec": {
            "runtimeClassName": "gvisor",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "agent",
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "runAsNonRoot": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {"limits": limits},
                "volumeMounts": [{"name": "workspace", "mountPath": ws, "readOnly": p.filesystem.read_only}],
            }],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
        }
    });
    let mut out: Vec<Unenforceable> = Vec::new();
    if egress {
        if let Some(u) = domain_un(p, "gVisor's netstack") {
            out.push(u);
        }
    } else {
        out.push(un("network", "network.gateway", "--network=none also cuts the gateway off; reach it through a Unix socket mounted into the sandbox"));
    }
    if p.interpreter.cpu_time_ms.is_some() {
        out.push(un(
            "interpreter",
            "interpreter.cpu_time_ms",
            "Kubernetes limits CPU rate, not CPU time per execution",
        ));
    }
    Ok((
        vec![
            json_file("runsc-flags.json", &json!(flags)),
            yaml_file("pod-patch.yaml", &pod)?,
        ],
        out,
    ))
}

pub(super) fn monty(
    p: &CompiledPolicy,
    _caps: &TargetCapabilities,
) -> Result<(Vec<RenderedFile>, Vec<Unenforceable>)> {
    let mut out: Vec<Unenforceable> = Vec::new();
    let may_run = granted(p, "code_execution") && tool_allowed(p, "python.exec");
    let host_functions: Vec<String> = if may_run {
        p.interpreter.host_functions.clone().unwrap_or_default()
    } else {
        vec![]
    };
    let doc = json!({
        "enabled": may_run,
        "limits": {
            "max_memory_bytes": p.interpreter.memory_mb.map(|m| m * 1024 * 1024),
            "max_duration_ms": p.interpreter.cpu_time_ms,
            "max_recursion_depth": p.interpreter.stack_depth,
        },
        "external_functions": host_functions,
    });
    if p.interpreter.host_functions.is_none() && may_run {
        out.push(un(
            "interpreter",
            "interpreter.host_functions",
            "no host-function allow-list in the policy: Monty exposes none",
        ));
    }
    Ok((vec![json_file("monty.json", &doc)], out))
}
