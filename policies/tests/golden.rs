//! Golden files: the compiled policy of every reference agent and every
//! provider's rendering of it. `UPDATE_GOLDEN=1 cargo test -p tappass-policies
//! --test golden` rewrites them; review the diff before committing.

mod common;

use std::path::{Path, PathBuf};

use tappass_policies::providers::providers;
use tappass_policies::{render, TargetCapabilities};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/golden")
}

/// The capabilities the goldens are rendered with (a hook and key helper
/// configured, so those code paths are covered).
fn caps() -> TargetCapabilities {
    TargetCapabilities {
        gateway_url: "https://gateway.acme.internal".into(),
        mcp_broker_url: "https://gateway.acme.internal/mcp".into(),
        api_key_env: "TAPPASS_API_KEY".into(),
        api_key_helper: Some("/usr/local/bin/tappass-key".into()),
        hook_command: Some("/usr/local/bin/tappass-hook pre-tool-use".into()),
    }
}

fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or(expected.lines().count().min(actual.lines().count()) + 1);
            failures.push(format!(
                "{} differs from line {line} (UPDATE_GOLDEN=1 to rewrite)",
                path.display()
            ));
        }
        Err(_) => failures.push(format!(
            "{} is missing (UPDATE_GOLDEN=1 to write)",
            path.display()
        )),
    }
}

#[test]
fn goldens_match() {
    let mut failures = Vec::new();
    let mut count = 0;
    for agent in common::AGENTS {
        let c = common::compile_example(agent);
        let dir = golden_dir().join(agent);
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&c.policy.to_canonical_json().unwrap())
                .unwrap(),
        )
        .unwrap()
            + "\n";
        check(&dir.join("compiled.json"), &pretty, &mut failures);
        check(
            &dir.join("preview.txt"),
            &tappass_policies::preview(&c),
            &mut failures,
        );
        for prov in providers() {
            let (cfg, un) = render(prov.id, &c.policy, &caps())
                .unwrap_or_else(|e| panic!("{agent}/{}: {e}", prov.id));
            assert_eq!(cfg.target, prov.id);
            assert!(!cfg.files.is_empty(), "{agent}/{}: no output", prov.id);
            for f in &cfg.files {
                check(&dir.join(prov.id).join(&f.path), &f.content, &mut failures);
                count += 1;
            }
            let un_text: String = un.iter().map(|u| format!("{u}\n")).collect();
            check(
                &dir.join(prov.id).join("UNENFORCEABLE.txt"),
                &un_text,
                &mut failures,
            );
        }
    }
    assert!(count >= 4 * 11);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn outputs_parse_in_their_own_format() {
    for agent in common::AGENTS {
        let c = common::compile_example(agent);
        for prov in providers() {
            let (cfg, _) = render(prov.id, &c.policy, &caps()).unwrap();
            for f in &cfg.files {
                let ok = if f.path.ends_with(".json") {
                    serde_json::from_str::<serde_json::Value>(&f.content).is_ok()
                } else if f.path.ends_with(".toml") {
                    f.content.parse::<toml::Table>().is_ok()
                } else if f.path.ends_with(".yaml") || f.path.ends_with(".yml") {
                    serde_norway::from_str::<serde_norway::Value>(&f.content).is_ok()
                } else {
                    true
                };
                assert!(ok, "{agent}/{}/{} does not parse", prov.id, f.path);
            }
        }
    }
}

#[test]
fn providers_reflect_the_policy() {
    let reviewer = common::compile_example("code-reviewer").policy;
    let (cfg, un) = render("claude-code", &reviewer, &caps()).unwrap();
    let s: serde_json::Value = serde_json::from_str(&cfg.files[0].content).unwrap();
    let deny: Vec<&str> = s["permissions"]["deny"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for d in [
        "Bash",
        "Edit",
        "Write",
        "Read(~/.ssh/**)",
        "Read(//etc/shadow)",
    ] {
        assert!(deny.contains(&d), "missing deny {d}: {deny:?}");
    }
    assert_eq!(s["permissions"]["disableBypassPermissionsMode"], "disable");
    assert_eq!(
        s["env"]["ANTHROPIC_BASE_URL"],
        "https://gateway.acme.internal"
    );
    assert!(s["hooks"]["PreToolUse"].is_array());
    assert!(un.iter().any(|u| u.rule == "filesystem.workspace"));

    let (cfg, _) = render("codex", &reviewer, &caps()).unwrap();
    let t: toml::Table = cfg.files[0].content.parse().unwrap();
    assert_eq!(t["sandbox_mode"].as_str(), Some("read-only"));
    assert_eq!(
        t["model_providers"]["tappass"]["wire_api"].as_str(),
        Some("responses")
    );
    assert_eq!(
        t["model_providers"]["tappass"]["base_url"].as_str(),
        Some("https://gateway.acme.internal/v1")
    );
    assert_eq!(cfg.files[1].path, "requirements.toml");

    let refund = common::compile_example("refund-bot").policy;
    let (cfg, _) = render("mcp-broker", &refund, &caps()).unwrap();
    let b: serde_json::Value = serde_json::from_str(&cfg.files[0].content).unwrap();
    assert_eq!(
        b["tools"]["constraints"]["stripe.create_refund"]["max_amount"],
        1000
    );
    assert!(b["rego_entrypoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "data.tappass.runtime.refunds.decision"));
    let (cfg, un) = render("llm-gateway", &refund, &caps()).unwrap();
    let g: serde_json::Value = serde_json::from_str(&cfg.files[0].content).unwrap();
    assert!(g["pipeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["step"] == "pan_detection"));
    assert!(un.iter().any(|u| u.aspect == "filesystem"));

    // Without a hook, local-tool constraints are reported, not silently dropped.
    let mut p = common::compile_example("support-emailer").policy;
    p.tools
        .constraints
        .insert("shell.exec".into(), Default::default());
    p.tools.catalog.insert(
        "shell.exec".into(),
        tappass_policies::compiled::ToolInfo {
            capabilities: vec![],
            mcp_server: None,
            native: vec!["Bash".into()],
            schema_param: None,
        },
    );
    let (_, un) = render("claude-code", &p, &TargetCapabilities::default()).unwrap();
    assert!(
        un.iter().any(|u| u.rule == "tools.constraints.shell.exec"),
        "{un:?}"
    );
    assert!(un.iter().any(|u| u.rule == "apiKeyHelper"), "{un:?}");

    assert!(render("vim", &p, &caps())
        .unwrap_err()
        .to_string()
        .contains("unknown target"));
}
