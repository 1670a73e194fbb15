//! Cascade compiler: examples, determinism, trails, relax attempts,
//! forbidden capabilities and adversarial inputs.

mod common;

use common::{compile_example, examples, tree, AGENTS};
use serde_json::json;
use tappass_policies::model::{Access, Action, Tier};
use tappass_policies::{
    compile, evaluate_entrypoint, evaluate_policy, preview, CompileOptions, PolicyError,
    PolicySource, RegoAction, SourceFile,
};

fn compile_tree(
    files: &[(&str, &str)],
    agent: &str,
) -> Result<tappass_policies::Compiled, PolicyError> {
    compile(&tree(files), agent, &CompileOptions::default())
}

const ORG: &str = "org:\n  name: acme\nsteps:\n  injection_guard:\n    enabled: true\n    action: block\nbudget:\n  tokens_per_day: 1000\nnetwork:\n  allow_domains: [\"*.acme.com\", api.openai.com]\nfilesystem:\n  workspace: /srv\n  read_only: true\n";
const PROJECT: &str = "budget:\n  tokens_per_day: 800\n";

fn agent_yaml(extra: &str) -> String {
    format!("agent:\n  name: bot\n  project: p\n{extra}")
}

fn with_agent(extra: &str) -> Result<tappass_policies::Compiled, PolicyError> {
    let a = agent_yaml(extra);
    compile_tree(
        &[
            ("org/org.yaml", ORG),
            ("projects/p/p.yaml", PROJECT),
            ("agents/bot/agent.yaml", &a),
        ],
        "bot",
    )
}

#[test]
fn every_example_compiles() {
    for a in AGENTS {
        let c = compile_example(a);
        assert_eq!(c.policy.identity.agent, *a);
        assert_eq!(c.policy.identity.org, "acme");
        assert!(c.policy.step("audit").is_some(), "{a}: audit is always on");
        assert!(
            c.policy.filesystem.deny_paths.iter().any(|p| p == "~/.ssh"),
            "{a}: sensitive-path floor"
        );
        assert!(c.policy.filesystem.deny_paths.iter().any(|p| p == "~/.aws"));
    }
}

#[test]
fn compile_is_deterministic_regardless_of_file_order() {
    for a in AGENTS {
        let one = compile_example(a).policy.to_canonical_json().unwrap();
        let two = compile_example(a).policy.to_canonical_json().unwrap();
        assert_eq!(one, two, "{a}");
        let mut files = examples().files().to_vec();
        files.reverse();
        let reversed = compile(&PolicySource::new(files), a, &CompileOptions::default()).unwrap();
        assert_eq!(
            one,
            reversed.policy.to_canonical_json().unwrap(),
            "{a}: file order changed the output"
        );
    }
}

#[test]
fn content_hash_ignores_version_and_tracks_content() {
    let v1 = compile(
        &examples(),
        "refund-bot",
        &CompileOptions { policy_version: 1 },
    )
    .unwrap()
    .policy;
    let v7 = compile(
        &examples(),
        "refund-bot",
        &CompileOptions { policy_version: 7 },
    )
    .unwrap()
    .policy;
    assert_eq!(v7.identity.policy_version, 7);
    assert_eq!(v1.identity.content_hash, v7.identity.content_hash);
    let other = compile_example("code-reviewer").policy;
    assert_ne!(v1.identity.content_hash, other.identity.content_hash);
}

#[test]
fn support_emailer_has_gdpr_and_owasp() {
    let p = compile_example("support-emailer").policy;
    for tag in [
        "GDPR:Art32",
        "GDPR:Art30",
        "OWASP-LLM:LLM01",
        "OWASP-LLM:LLM02",
    ] {
        assert!(
            p.compliance_tags.iter().any(|t| t == tag),
            "missing {tag}: {:?}",
            p.compliance_tags
        );
    }
    assert_eq!(p.step("pii_detection").unwrap().action, Action::Redact);
    assert_eq!(p.step("injection_guard").unwrap().action, Action::Block);
    assert!(p.step("residency").is_some());
    assert_eq!(
        p.budget.tokens_per_day,
        Some(1_000_000),
        "project ceiling below org's"
    );
    assert_eq!(p.identity.tier, Tier::Worker);
    assert!(p
        .capabilities
        .granted
        .iter()
        .any(|c| c == "external_messaging"));
    assert!(
        p.tools.deny.iter().any(|t| t == "shell.exec"),
        "forbidden code_execution denies shell.exec"
    );
}

#[test]
fn code_reviewer_is_read_only_in_its_workspace() {
    let p = compile_example("code-reviewer").policy;
    assert!(p.filesystem.read_only);
    assert_eq!(p.filesystem.workspace.as_deref(), Some("/srv/code/reviews"));
    assert_eq!(
        p.network.allow_domains,
        Some(vec![
            "*.github.com".to_string(),
            "api.anthropic.com".to_string()
        ])
    );
    assert_eq!(p.interpreter.memory_mb, Some(512));
    assert!(
        p.tools.deny.iter().any(|t| t == "gmail.send"),
        "external messaging is forbidden for reviewers"
    );
}

#[test]
fn catalog_steward_schema_acl_and_catalog_extensions() {
    let p = compile_example("catalog-steward").policy;
    assert_eq!(p.tools.schemas_acl["customers"], Access::ReadWrite);
    assert_eq!(p.tools.schemas_acl["finance"], Access::Read);
    assert_eq!(p.tools.schemas_acl["pii_archive"], Access::Deny);
    let lineage = &p.tools.catalog["acme.lineage_export"];
    assert_eq!(
        lineage.capabilities,
        vec!["file_write".to_string(), "sor_read".to_string()]
    );
    assert_eq!(
        lineage.mcp_server.as_deref(),
        Some("collibra"),
        "extends inherits the base tool's server"
    );
    assert!(
        p.tools.catalog.contains_key("acme.crm_lookup"),
        "org-level tenant tool"
    );
    assert!(p.tools.deny.iter().any(|t| t == "postgres.execute"));
    assert!(p.compliance_tags.iter().any(|t| t == "EU-AI-ACT:Art14"));
}

#[test]
fn refund_bot_rego_requires_approval_over_threshold_and_denies_over_ceiling() {
    let p = compile_example("refund-bot").policy;
    assert_eq!(
        p.tools.constraints["stripe.create_refund"].max_amount,
        Some(1000)
    );
    assert_eq!(
        p.tools.constraints["stripe.create_refund"]
            .amount_param
            .as_deref(),
        Some("amount")
    );
    assert_eq!(
        p.budget.dollars_per_month,
        Some(500),
        "org compile-time Rego for payment data"
    );
    let rego_step = p.step("rego_policy").expect("rego step");
    assert!(rego_step
        .rego_entrypoints
        .contains(&"data.tappass.runtime.refunds.decision".to_string()));
    let small = json!({"tool": "stripe.create_refund", "args": {"amount": 120, "charge": "ch_1"}});
    let large = json!({"tool": "stripe.create_refund", "args": {"amount": 450, "charge": "ch_1"}});
    let over = json!({"tool": "stripe.create_refund", "args": {"amount": 5000, "charge": "ch_1"}});
    assert_eq!(
        evaluate_policy(&p, &small).unwrap().action,
        RegoAction::Allow
    );
    let d = evaluate_policy(&p, &large).unwrap();
    assert_eq!(d.action, RegoAction::RequireApproval, "{d:?}");
    assert!(d.reasons[0].contains("approval threshold"), "{d:?}");
    let d = evaluate_policy(&p, &over).unwrap();
    assert_eq!(d.action, RegoAction::Deny, "{d:?}");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("exceeds the ceiling 1000")),
        "{d:?}"
    );
    let v = evaluate_entrypoint(&p, "data.tappass.runtime.refunds.decision", &large)
        .unwrap()
        .unwrap();
    assert_eq!(v["action"], "require_approval");
    let other_tool = json!({"tool": "stripe.get_charge", "args": {"charge": "ch_1"}});
    assert_eq!(
        evaluate_policy(&p, &other_tool).unwrap().action,
        RegoAction::Allow
    );
}

#[test]
fn because_trail_names_chain_file_and_line() {
    let c = compile_example("refund-bot");
    let trail = &c.rules["tools.constraints.stripe.create_refund.max_amount"].trail;
    let sources: Vec<String> = trail.iter().map(|t| t.because.describe()).collect();
    assert!(
        sources
            .iter()
            .any(|s| s == "project @ projects/payments/project.yaml:5"),
        "{sources:?}"
    );
    assert!(
        sources
            .iter()
            .any(|s| s == "agent @ agents/refund-bot/agent.yaml:9"),
        "{sources:?}"
    );
    let pan = &c.rules["steps.pan_detection.enabled"].trail;
    let chain = pan
        .iter()
        .map(|t| t.because.describe())
        .find(|s| {
            s.starts_with("concern:pci_dss ← category:payment_data ← function:refund_processor")
        })
        .expect("function chain");
    assert!(chain.contains("agents/refund-bot/agent.yaml:4"), "{chain}");
    assert!(chain.contains("policies/catalog/taxonomy.yaml:"), "{chain}");
    let text = preview(&c);
    assert!(
        text.contains("because pack:pci-dss ← project @ projects/payments/project.yaml:1"),
        "{text}"
    );
    // The compiled policy carries the trails too.
    assert!(c.policy.provenance["steps.pan_detection.enabled"].len() >= 2);
}

#[test]
fn lower_level_relaxations_are_rejected_naming_both_rules() {
    let cases: &[(&str, &str)] = &[
        (
            "steps:\n  injection_guard:\n    enabled: false\n",
            "steps.injection_guard.enabled",
        ),
        (
            "steps:\n  injection_guard:\n    action: log\n",
            "steps.injection_guard.action",
        ),
        ("budget:\n  tokens_per_day: 900\n", "budget.tokens_per_day"),
        (
            "network:\n  allow_domains: [evil.example]\n",
            "network.allow_domains",
        ),
        ("filesystem:\n  read_only: false\n", "filesystem.read_only"),
        ("filesystem:\n  workspace: /home\n", "filesystem.workspace"),
    ];
    for (extra, key) in cases {
        let err = with_agent(extra).unwrap_err();
        let PolicyError::Relax(r) = &err else {
            panic!("{extra}: {err}")
        };
        let (higher_level, lower_level) = (r.higher_level.as_str(), r.lower_level.as_str());
        let (higher_at, lower_at) = (&r.higher_at, &r.lower_at);
        assert_eq!(&r.key, key);
        assert_eq!(lower_level, "agent", "{err}");
        assert!(higher_level == "org" || higher_level == "project", "{err}");
        assert!(higher_at.contains(".yaml:"), "{err}");
        assert!(
            lower_at.starts_with("agent @ agents/bot/agent.yaml:"),
            "{err}"
        );
    }
    // The project relaxing the org is rejected too.
    let err = compile_tree(
        &[
            ("org/org.yaml", ORG),
            ("projects/p/p.yaml", "budget:\n  tokens_per_day: 5000\n"),
            ("agents/bot/a.yaml", &agent_yaml("")),
        ],
        "bot",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("project rule (≤ 5000) at project @ projects/p/p.yaml:2 relaxes org rule (≤ 1000) at org @ org/org.yaml:8"), "{msg}");
}

#[test]
fn tightening_below_is_accepted_and_strictest_wins() {
    let c = with_agent("budget:\n  tokens_per_day: 10\nnetwork:\n  allow_domains: [api.acme.com]\nfilesystem:\n  workspace: /srv/bot\n").unwrap();
    let p = c.policy;
    assert_eq!(p.budget.tokens_per_day, Some(10));
    assert_eq!(
        p.network.allow_domains,
        Some(vec!["api.acme.com".to_string()])
    );
    assert_eq!(p.filesystem.workspace.as_deref(), Some("/srv/bot"));
    assert!(p.filesystem.read_only);
    // Pack defaults looser than the org are absorbed, not errors.
    let c = with_agent("packs: [owasp-llm-top10]\n").unwrap();
    assert_eq!(c.policy.budget.tokens_per_day, Some(800));
}

#[test]
fn overlay_tightens_and_cannot_relax() {
    let c = with_agent("overlay:\n  steps:\n    human_approval:\n      enabled: true\n").unwrap();
    assert!(c.policy.step("human_approval").is_some());
    let err =
        with_agent("budget:\n  tokens_per_day: 50\noverlay:\n  budget:\n    tokens_per_day: 60\n")
            .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Relax(r) if r.lower_level == "overlay"),
        "{err}"
    );
}

#[test]
fn forbidden_capabilities_cannot_be_granted_below() {
    // Function forbids external messaging; the agent allows an email tool.
    let err = with_agent("  function: code_reviewer\ntools:\n  allow: [gmail.send]\n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::ForbiddenCapability(_)), "{msg}");
    assert!(
        msg.contains("external_messaging")
            && msg.contains("gmail.send")
            && msg.contains("function:code_reviewer"),
        "{msg}"
    );
    // Org forbids; agent asks for the capability explicitly.
    let org = format!("{ORG}forbidden_capabilities: [code_execution]\n");
    let a = agent_yaml("capabilities: [code_execution]\n");
    let err = compile_tree(
        &[
            ("org/org.yaml", &org),
            ("projects/p/p.yaml", PROJECT),
            ("agents/bot/a.yaml", &a),
        ],
        "bot",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("forbidden by org rule at org/org.yaml:14"),
        "{err}"
    );
    // A tenant override cannot strip a capability the org forbids.
    let a = agent_yaml("catalog:\n  - id: shell.exec\n    override: true\n    capabilities: [file_read]\ntools:\n  allow: [shell.exec]\n");
    let err = compile_tree(
        &[
            ("org/org.yaml", &org),
            ("projects/p/p.yaml", PROJECT),
            ("agents/bot/a.yaml", &a),
        ],
        "bot",
    )
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Relax(r) if r.key == "catalog.shell.exec.capabilities"),
        "{err}"
    );
}

#[test]
fn tier_above_the_ceiling_is_rejected() {
    let org = format!("{ORG}max_tier: worker\n");
    let a = agent_yaml("  tier: full\n");
    let err = compile_tree(
        &[
            ("org/org.yaml", &org),
            ("projects/p/p.yaml", PROJECT),
            ("agents/bot/a.yaml", &a),
        ],
        "bot",
    )
    .unwrap_err();
    assert!(err.to_string().contains("tier full"), "{err}");
}

#[test]
fn adversarial_inputs_end_in_clear_errors() {
    // Unknown key, with file and line.
    let err = with_agent("budgte:\n  tokens_per_day: 1\n").unwrap_err();
    assert!(
        err.to_string().contains("agents/bot/agent.yaml:4") && err.to_string().contains("budgte"),
        "{err}"
    );
    // Unknown pack, with a suggestion.
    let err = with_agent("packs: [gdpr-baseln]\n").unwrap_err();
    assert!(
        err.to_string().contains("unknown pack 'gdpr-baseln'")
            && err.to_string().contains("gdpr-baseline"),
        "{err}"
    );
    // Unknown tool, step, capability.
    assert!(with_agent("tools:\n  deny: [nope.tool]\n")
        .unwrap_err()
        .to_string()
        .contains("unknown tool 'nope.tool'"));
    assert!(with_agent("steps:\n  teleport:\n    enabled: true\n")
        .unwrap_err()
        .to_string()
        .contains("unknown step 'teleport'"));
    assert!(with_agent("forbidden_capabilities: [flying]\n")
        .unwrap_err()
        .to_string()
        .contains("unknown capability 'flying'"));
    // Cycle in extends.
    let err =
        with_agent("catalog:\n  - id: a.x\n    extends: b.x\n  - id: b.x\n    extends: a.x\n")
            .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Cycle { chain, .. } if chain.contains("a.x → b.x → a.x")),
        "{err}"
    );
    // Extends an unknown tool; bare capability in an extension.
    assert!(with_agent("catalog:\n  - id: a.x\n    extends: zz.top\n")
        .unwrap_err()
        .to_string()
        .contains("extends unknown tool 'zz.top'"));
    assert!(with_agent(
        "catalog:\n  - id: a.x\n    extends: fs.read\n    capabilities: [file_write]\n"
    )
    .unwrap_err()
    .to_string()
    .contains("+file_write"));
    // Invalid Rego.
    let files = [
        ("org/org.yaml", ORG),
        ("org/bad.rego", "package tappass.compile.bad\nsettings := {"),
        ("projects/p/p.yaml", PROJECT),
        ("agents/bot/a.yaml", &agent_yaml("")),
    ];
    let err = compile_tree(&files, "bot").unwrap_err();
    assert!(
        matches!(&err, PolicyError::Rego { file, .. } if file == "org/bad.rego"),
        "{err}"
    );
    // Rego with a package outside the two namespaces; runtime without decision.
    let files = [
        ("org/org.yaml", ORG),
        ("org/x.rego", "package other\nx := 1\n"),
        ("projects/p/p.yaml", PROJECT),
        ("agents/bot/a.yaml", &agent_yaml("")),
    ];
    assert!(compile_tree(&files, "bot")
        .unwrap_err()
        .to_string()
        .contains("must start with tappass.compile."));
    let files = [
        ("org/org.yaml", ORG),
        ("org/x.rego", "package tappass.runtime.x\nx := 1\n"),
        ("projects/p/p.yaml", PROJECT),
        ("agents/bot/a.yaml", &agent_yaml("")),
    ];
    assert!(compile_tree(&files, "bot")
        .unwrap_err()
        .to_string()
        .contains("no `decision` rule"));
    // Compile-time Rego producing an unknown key.
    let files = [
        ("org/org.yaml", ORG),
        (
            "org/x.rego",
            "package tappass.compile.x\nsettings := {\"budgte\": 1}\n",
        ),
        ("projects/p/p.yaml", PROJECT),
        ("agents/bot/a.yaml", &agent_yaml("")),
    ];
    assert!(compile_tree(&files, "bot")
        .unwrap_err()
        .to_string()
        .contains("budgte"));
    // Huge file.
    let huge = format!("compliance_tags:\n{}", "  - GDPR:Art32\n".repeat(100_000));
    let files = [
        ("org/org.yaml", ORG),
        ("org/huge.yaml", &huge),
        ("projects/p/p.yaml", PROJECT),
        ("agents/bot/a.yaml", &agent_yaml("")),
    ];
    assert!(matches!(
        compile_tree(&files, "bot").unwrap_err(),
        PolicyError::TooLarge { .. }
    ));
    // Deeply nested YAML.
    let deep = format!("budget: {}1{}\n", "[".repeat(100), "]".repeat(100));
    let files = [
        ("org/org.yaml", ORG),
        ("org/deep.yaml", &deep),
        ("projects/p/p.yaml", PROJECT),
        ("agents/bot/a.yaml", &agent_yaml("")),
    ];
    assert!(compile_tree(&files, "bot")
        .unwrap_err()
        .to_string()
        .contains("depth"));
    // Binary garbage and wrong types.
    assert!(with_agent("budget: [1, 2]\n").is_err());
    assert!(compile_tree(&[("agents/bot/a.yaml", "\u{0}\u{1}\u{2}")], "bot").is_err());
    // Bad compliance tag.
    assert!(with_agent("compliance_tags: [\"not a tag\"]\n")
        .unwrap_err()
        .to_string()
        .contains("FRAMEWORK:Control"));
}

#[test]
fn layout_errors() {
    let err = compile_tree(
        &[
            ("org/org.yaml", ORG),
            ("agents/bot/a.yaml", &agent_yaml("")),
        ],
        "bot",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("project 'p' has no files"),
        "{err}"
    );
    let err = compile_tree(
        &[
            ("org/org.yaml", ORG),
            ("projects/p/p.yaml", PROJECT),
            ("agents/bot/a.yaml", &agent_yaml("")),
        ],
        "nobody",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no such agent (agents: bot)"),
        "{err}"
    );
    let err = compile_tree(
        &[
            ("projects/p/p.yaml", PROJECT),
            ("agents/bot/a.yaml", "agent:\n  name: other\n  project: p\n"),
        ],
        "bot",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("does not match its directory"),
        "{err}"
    );
    let err = compile_tree(
        &[("stray.yaml", "{}"), ("agents/bot/a.yaml", &agent_yaml(""))],
        "bot",
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Layout { .. }), "{err}");
    let err = compile_tree(
        &[
            ("projects/p/p.yaml", "agent:\n  name: bot\n  project: p\n"),
            ("agents/bot/a.yaml", &agent_yaml("")),
        ],
        "bot",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("`agent:` belongs in agents/"),
        "{err}"
    );
    // Non-policy files are ignored.
    let ok = compile(
        &PolicySource::new(vec![
            SourceFile {
                path: "README.md".into(),
                text: "hello".into(),
            },
            SourceFile {
                path: "projects/p/p.yaml".into(),
                text: PROJECT.into(),
            },
            SourceFile {
                path: "agents/bot/a.yaml".into(),
                text: agent_yaml(""),
            },
        ]),
        "bot",
        &CompileOptions::default(),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn packs_compose_in_any_order() {
    let a = with_agent("packs: [gdpr-baseline, pci-dss, hipaa, owasp-llm-top10]\n")
        .unwrap()
        .policy;
    let b = with_agent("packs: [owasp-llm-top10, hipaa, pci-dss, gdpr-baseline]\n")
        .unwrap()
        .policy;
    assert_eq!(
        a.to_canonical_json().unwrap(),
        b.to_canonical_json().unwrap()
    );
    assert_eq!(
        a.step("audit").unwrap().params["retention_days"],
        2190,
        "HIPAA's retention floor wins"
    );
    for tag in [
        "GDPR:Art32",
        "PCI-DSS:3.4",
        "HIPAA:164.312(b)",
        "OWASP-LLM:LLM01",
    ] {
        assert!(a.compliance_tags.iter().any(|t| t == tag), "{tag}");
    }
}

/// Both evaluations give the same value, or both refuse the call (a failed
/// evaluation refuses it, as a deny does).
fn same_outcome(
    vm: Result<Option<serde_json::Value>, PolicyError>,
    interpreted: Result<Option<serde_json::Value>, PolicyError>,
    what: &str,
) {
    match (vm, interpreted) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
        (Err(_), Err(_)) => {}
        // A failed evaluation refuses the call, as a deny does.
        (Ok(Some(d)), Err(_)) | (Err(_), Ok(Some(d))) if d["action"] == "deny" => {}
        (a, b) => panic!("{what}: the VM gave {a:?}, the interpreter {b:?}"),
    }
}

/// The runtime entry points run on the Rego VM, and the VM decides exactly
/// as the interpreter does: every golden policy's entry points, on tool
/// calls inside and outside their constraints, malformed arguments, and
/// whole-call inputs, plus modules exercising sets, comprehensions, `some`,
/// `every`, `sprintf` and defaults.
#[test]
fn the_rego_vm_agrees_with_the_interpreter() {
    use tappass_policies::PreparedRego;
    let inputs = [
        json!({"tool": "stripe.create_refund", "args": {"amount": 120, "charge": "ch_1"}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": 450}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": 5000}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": "5000"}}),
        json!({"tool": "stripe.create_refund", "args": {}}),
        json!({"tool": "gmail.send", "args": {"to": "a@b.example", "destination": "x.acme.com"}}),
        json!({"tool": "gmail.send", "args": {"destination": "evil.example"}}),
        json!({"tool": "gmail.send", "args": {"to": 7, "body": "hi"}}),
        json!({"tool": "gmail.send", "args": {"to": ["a@b.example"], "body": {"x": 1}}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": {"value": 5000}}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": [5000]}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": null}}),
        json!({"tool": "stripe.create_refund", "args": {"amount": 1e300}}),
        json!({"tool": "", "args": {}}),
        json!({"tool": 7, "args": null}),
        json!({}),
        json!({"kind": "llm_call", "model": "gpt-4o", "tools": ["a", "b"], "prompt_bytes": 2048}),
    ];
    let mut checked = 0;
    for agent in AGENTS {
        let p = compile_example(agent).policy;
        let prepared = PreparedRego::new(&p).unwrap();
        for ep in &p.rego.entrypoints {
            assert!(prepared.runs_on_vm(ep), "{agent}: {ep} is interpreted");
            for input in &inputs {
                same_outcome(
                    prepared.eval(ep, input),
                    prepared.eval_interpreted(ep, input),
                    &format!("{agent}: {ep} on {input}"),
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
    let module = r#"package tappass.runtime.shapes

import rego.v1

default decision := {"action": "allow"}

denied := {"shell_exec", "drop_table"}

hits contains t if {
	some t in input.tools
	t in denied
}

sizes := [n | some m in input.messages; n := count(m)]

decision := {"action": "deny", "reasons": sort([sprintf("tool %v", [t]) | some t in hits])} if count(hits) > 0

decision := {"action": "require_approval", "reason": "long conversation"} if {
	count(hits) == 0
	sum(sizes) > 10
	every s in sizes { s > 0 }
}
"#;
    let modules = vec![tappass_policies::compiled::RegoModule {
        path: "shapes.rego".into(),
        level: tappass_policies::rules::Level::Agent,
        package: "data.tappass.runtime.shapes".into(),
        text: module.into(),
    }];
    let ep = "data.tappass.runtime.shapes.decision".to_string();
    let prepared =
        PreparedRego::from_modules(&modules, std::slice::from_ref(&ep), &json!({})).unwrap();
    assert!(prepared.runs_on_vm(&ep));
    for input in [
        json!({"tools": ["shell_exec", "read", "drop_table"], "messages": ["ab"]}),
        json!({"tools": ["read"], "messages": ["abcdef", "ghijkl"]}),
        json!({"tools": ["read"], "messages": ["abc", ""]}),
        json!({"tools": [], "messages": []}),
        json!(null),
    ] {
        same_outcome(
            prepared.eval(&ep, &input),
            prepared.eval_interpreted(&ep, &input),
            &input.to_string(),
        );
    }
    // The one difference: iterating over something that is not a
    // collection yields nothing, as in OPA, where the interpreter raised an
    // error.
    let not_a_list = json!({"tools": "not a list", "messages": []});
    assert_eq!(
        prepared.eval(&ep, &not_a_list).unwrap(),
        Some(json!({"action": "allow"}))
    );
    assert!(prepared.eval_interpreted(&ep, &not_a_list).is_err());
}
