//! The TapPass configurations under test, and the Pingora pass-through,
//! started the same way by the load and the memory measurements.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tappass_policies::compiled::Budget;
use tappass_policies::{
    compile, keypair_from_seed, sign, CompileOptions, PolicySource, SourceFile,
};

use super::{bin, free_port, spawn, Proc, KEY};

/// What a TapPass gateway under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// No guardrails, no budgets, no audit: the gateway's own path.
    PipelineOff,
    /// The pipeline off, with the signed, durable audit trail.
    PipelineOffAudited,
    /// Every step on: the agent's Compiled Policy (the OWASP LLM Top 10
    /// and GDPR packs, a runtime Rego entry point), the content guardrails
    /// on prompts, tool results and responses, tool governance, no-train,
    /// budgets, and the signed, durable audit trail.
    EveryStep,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::PipelineOff => "TapPass, pipeline off",
            Setup::PipelineOffAudited => "TapPass, pipeline off, audit on",
            Setup::EveryStep => "TapPass, every step on",
        }
    }

    /// What the configuration runs, for the report's notes.
    pub fn describe(self) -> &'static str {
        match self {
            Setup::PipelineOff => "\"Pipeline off\" is the gateway with no guardrail, budget or audit configured: authentication, routing, the upstream call and the caller's wire format.",
            Setup::PipelineOffAudited => "\"Pipeline off, audit on\" adds the signed, hash-chained audit trail, each row durable (synced RocksDB write) before the response is sent.",
            Setup::EveryStep => "\"Every step on\" runs the agent's signed Compiled Policy compiled from the OWASP LLM Top 10 and GDPR baseline packs (prompt injection, secrets, exfiltration, tool and loop guards, personal data) with a runtime Rego entry point evaluated on every call; the content guardrails on every prompt, tool result and response (streamed ones included); tool-call governance (catalog, arguments, loop guard); no-train; budgets reserved and settled on every call (org dollars per month, agent tokens per day and requests per minute); and the signed, durable audit trail. The packs' own rate limit (300 requests per minute) is lifted from the compiled policy, since a load test is exactly what it refuses; the budget step still runs on every call with the limits of the `budgets:` section, set far above what a run spends.",
        }
    }
}

/// The agent the benchmark's API key speaks for (its name).
const AGENT: &str = "bench";

/// A runtime entry point evaluated on every call (`apply_compiled_policy`):
/// prompts over 1 MiB and tools outside the agent's list are refused.
const RUNTIME_REGO: &str = r#"package tappass.runtime.bench

import rego.v1

default decision := {"action": "allow"}

decision := {"action": "deny", "reason": "prompts over 1 MiB are refused"} if {
	input.prompt_bytes > 1048576
}

decision := {"action": "deny", "reason": sprintf("tool %v is not offered to this agent", [t])} if {
	some t in input.tools
	not t in {"zendesk_read_ticket"}
}
"#;

/// Compile the benchmark agent's policy with the real compiler, sign it,
/// and write it where `local_policies` reads it. Returns the config lines.
fn write_policy(dir: &Path) -> Result<String, String> {
    let files = vec![
        SourceFile {
            path: "org/org.yaml".into(),
            text: "org:\n  name: bench-org\npacks: [owasp-llm-top10, gdpr-baseline]\nnetwork:\n  allow_domains: [\"127.0.0.1\"]\n".into(),
        },
        SourceFile {
            path: "projects/load/project.yaml".into(),
            text: "packs: []\n".into(),
        },
        SourceFile {
            path: format!("agents/{AGENT}/agent.yaml"),
            text: format!("agent:\n  name: {AGENT}\n  project: load\ntools:\n  allow: [zendesk.read_ticket]\n"),
        },
        SourceFile {
            path: format!("agents/{AGENT}/runtime.rego"),
            text: RUNTIME_REGO.into(),
        },
    ];
    let compiled = compile(&PolicySource::new(files), AGENT, &CompileOptions::default())
        .map_err(|e| format!("compiling the benchmark policy: {e}"))?;
    let mut policy = compiled.policy;
    policy.budget = Budget {
        tokens_per_day: None,
        dollars_per_month: None,
        tool_calls_per_minute: None,
        requests_per_minute: None,
    };
    let (secret, public) = keypair_from_seed([42u8; 32]);
    let signed = sign(&policy, &secret).map_err(|e| e.to_string())?;
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
    let public_file = dir.join("policy.pub");
    let write = |p: &Path, v: String| std::fs::write(p, v).map_err(|e| e.to_string());
    write(
        &public_file,
        serde_json::to_string(&public).map_err(|e| e.to_string())?,
    )?;
    write(
        &policies.join(format!("{AGENT}.json")),
        serde_json::to_string(&signed).map_err(|e| e.to_string())?,
    )?;
    Ok(format!(
        "local_policies:\n  dir: {}\n  public_key_file: {}\n",
        policies.display(),
        public_file.display()
    ))
}

/// The gateway's configuration file for `setup`.
fn gateway_config(
    dir: &Path,
    port: u16,
    admin: u16,
    mock: u16,
    setup: Setup,
) -> Result<PathBuf, String> {
    let gdir = dir.join(format!("gateway-{port}"));
    std::fs::create_dir_all(&gdir).map_err(|e| e.to_string())?;
    let steps = if setup == Setup::EveryStep {
        // Content guardrails on prompts, tool results and responses
        // (streams included), no-train, and budgets with limits far above
        // what a run spends, so that every call reserves and settles
        // without being refused.
        let policy = write_policy(&gdir)?;
        format!("{policy}guardrails:\n  secrets: block\n  pii: redact\n  injection: block\n  response_secrets: redact\n  response_pii: redact\n  exfil: block\n  response_exfil: redact\n  tool_results: block\n  no_train: true\nbudgets:\n  default_org: bench\n  prices:\n    mock-gpt: {{ input: 0.15, output: 0.60 }}\n  scopes:\n    org:bench: {{ dollars_per_month: 1000000 }}\n    agent:*: {{ tokens_per_day: 100000000000, requests_per_minute: 100000000 }}\n")
    } else {
        String::new()
    };
    let audit = if setup == Setup::PipelineOff {
        String::new()
    } else {
        format!(
            "audit:\n  dir: {}\n  gateway_id: bench\n",
            gdir.join("audit").display()
        )
    };
    let cfg = format!(
        "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nlog:\n  level: warn\n{steps}{audit}api_keys:\n  - name: {AGENT}\n    sha256: {}\nproviders:\n  - name: mock\n    kind: openai-compatible\n    base_url: http://127.0.0.1:{mock}/v1\nmodels:\n  - name: mock-gpt\n    provider: mock\n",
        tappass_dataplane::auth::hash_key(KEY)
    );
    let path = gdir.join("gateway.yaml");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    Ok(path)
}

/// A started gateway: its process and the port of its client listener.
pub fn start_gateway(dir: &Path, mock: u16, setup: Setup) -> Result<(Proc, u16), String> {
    let (port, admin) = (free_port(), free_port());
    let cfg = gateway_config(dir, port, admin, mock, setup)?;
    let p = spawn(
        Command::new(bin("tappass-gateway"))
            .arg("--config")
            .arg(&cfg),
        port,
        setup.name(),
    )?;
    if setup == Setup::EveryStep {
        check_policy(port)?;
    }
    Ok((p, port))
}

/// Check that the gateway enforces the benchmark agent's policy: a call
/// offering a tool outside the agent's list is refused by its Rego entry
/// point (`policy_denied`).
fn check_policy(port: u16) -> Result<(), String> {
    let body = serde_json::json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "not_offered", "parameters": {"type": "object"}}}]});
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if status == 403 && v["error"]["code"] == "policy_denied" {
        Ok(())
    } else {
        Err(format!(
            "the gateway does not enforce the benchmark agent's policy ({status}: {text})"
        ))
    }
}

/// The Pingora pass-through in front of the mock.
pub fn start_passthrough(mock: u16) -> Result<(Proc, u16), String> {
    let port = free_port();
    let p = spawn(
        Command::new(bin("tappass-bench-passthrough")).args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &format!("127.0.0.1:{mock}"),
        ]),
        port,
        "pingora pass-through",
    )?;
    Ok((p, port))
}
