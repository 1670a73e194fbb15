//! Built-in content, embedded at build time: the taxonomy, the tool catalog,
//! the compliance packs, the built-in Rego modules, and the step registry.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::model::{Action, CatalogDocument, PackDocument, Taxonomy};
use crate::parse;

pub const TAXONOMY_FILE: &str = "policies/catalog/taxonomy.yaml";
pub const TAXONOMY_YAML: &str = include_str!("../catalog/taxonomy.yaml");
pub const TOOLS_FILE: &str = "policies/catalog/tools.yaml";
pub const TOOLS_YAML: &str = include_str!("../catalog/tools.yaml");

/// The always-applied floor pack.
pub const BASELINE_PACK: &str = "tappass-baseline";

/// `(id, file, text)` of every built-in pack.
pub const PACKS: &[(&str, &str, &str)] = &[
    (
        "tappass-baseline",
        "policies/packs/tappass-baseline.yaml",
        include_str!("../packs/tappass-baseline.yaml"),
    ),
    (
        "eu-ai-act-high-risk",
        "policies/packs/eu-ai-act-high-risk.yaml",
        include_str!("../packs/eu-ai-act-high-risk.yaml"),
    ),
    (
        "owasp-llm-top10",
        "policies/packs/owasp-llm-top10.yaml",
        include_str!("../packs/owasp-llm-top10.yaml"),
    ),
    (
        "gdpr-baseline",
        "policies/packs/gdpr-baseline.yaml",
        include_str!("../packs/gdpr-baseline.yaml"),
    ),
    (
        "pci-dss",
        "policies/packs/pci-dss.yaml",
        include_str!("../packs/pci-dss.yaml"),
    ),
    (
        "hipaa",
        "policies/packs/hipaa.yaml",
        include_str!("../packs/hipaa.yaml"),
    ),
    (
        "nis2-dora",
        "policies/packs/nis2-dora.yaml",
        include_str!("../packs/nis2-dora.yaml"),
    ),
];

/// `(file, text)` of built-in Rego modules (compile-time and runtime).
pub const REGO: &[(&str, &str)] = &[
    ("policies/rego/tier.rego", include_str!("../rego/tier.rego")),
    (
        "policies/rego/tool_constraints.rego",
        include_str!("../rego/tool_constraints.rego"),
    ),
];

/// A parsed built-in pack with its file and text (for line numbers).
#[derive(Debug, Clone)]
pub struct Pack {
    pub file: &'static str,
    pub text: &'static str,
    pub doc: PackDocument,
}

/// All built-in content, parsed.
#[derive(Debug, Clone)]
pub struct Builtins {
    pub taxonomy: Taxonomy,
    pub catalog: CatalogDocument,
    pub packs: BTreeMap<String, Pack>,
}

impl Builtins {
    /// Parse the embedded content. Fails only if the shipped content is broken
    /// (a test covers that).
    pub fn load() -> Result<Builtins> {
        let taxonomy = parse::parse_taxonomy(TAXONOMY_FILE, TAXONOMY_YAML)?;
        let catalog = parse::parse_catalog(TOOLS_FILE, TOOLS_YAML)?;
        let mut packs = BTreeMap::new();
        for (id, file, text) in PACKS {
            let doc = parse::parse_pack(file, text)?;
            packs.insert((*id).to_string(), Pack { file, text, doc });
        }
        Ok(Builtins {
            taxonomy,
            catalog,
            packs,
        })
    }
}

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Request,
    Route,
    Response,
    ToolCall,
    Always,
}

/// Direction of a numeric step parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Ceiling,
    Floor,
}

/// A pipeline step known to the gateway.
#[derive(Debug, Clone, Copy)]
pub struct StepDef {
    pub id: &'static str,
    pub phases: &'static [Phase],
    pub default_action: Action,
    pub params: &'static [(&'static str, ParamKind)],
    pub description: &'static str,
}

/// The step registry, in pipeline order.
pub const STEPS: &[StepDef] = &[
    StepDef {
        id: "injection_guard",
        phases: &[Phase::Request],
        default_action: Action::Block,
        params: &[],
        description: "prompt-injection and jailbreak detection on input and tool results",
    },
    StepDef {
        id: "pii_detection",
        phases: &[Phase::Request, Phase::Response],
        default_action: Action::Redact,
        params: &[],
        description: "personal data detection",
    },
    StepDef {
        id: "secret_detection",
        phases: &[Phase::Request, Phase::Response],
        default_action: Action::Block,
        params: &[],
        description: "API keys, tokens, private keys",
    },
    StepDef {
        id: "pan_detection",
        phases: &[Phase::Request, Phase::Response],
        default_action: Action::Block,
        params: &[],
        description: "card numbers (Luhn-validated)",
    },
    StepDef {
        id: "phi_detection",
        phases: &[Phase::Request, Phase::Response],
        default_action: Action::Redact,
        params: &[],
        description: "protected health information",
    },
    StepDef {
        id: "exfiltration_guard",
        phases: &[Phase::Response],
        default_action: Action::Block,
        params: &[],
        description: "markdown-image and URL exfiltration in output",
    },
    StepDef {
        id: "budget",
        phases: &[Phase::Request],
        default_action: Action::Block,
        params: &[],
        description: "token, dollar and rate budgets",
    },
    StepDef {
        id: "residency",
        phases: &[Phase::Route],
        default_action: Action::Block,
        params: &[],
        description: "route only to providers in allowed regions",
    },
    StepDef {
        id: "tool_guard",
        phases: &[Phase::ToolCall],
        default_action: Action::Block,
        params: &[],
        description: "tool allow/deny, schema ACL, slot constraints",
    },
    StepDef {
        id: "rego_policy",
        phases: &[Phase::ToolCall],
        default_action: Action::Block,
        params: &[],
        description: "the policy's Rego entry points",
    },
    StepDef {
        id: "human_approval",
        phases: &[Phase::ToolCall],
        default_action: Action::Block,
        params: &[("timeout_s", ParamKind::Ceiling)],
        description: "hold consequential tool calls for a human",
    },
    StepDef {
        id: "loop_guard",
        phases: &[Phase::ToolCall],
        default_action: Action::Block,
        params: &[
            ("max_repeats", ParamKind::Ceiling),
            ("max_tool_calls_per_turn", ParamKind::Ceiling),
        ],
        description: "repeated and runaway tool calls",
    },
    StepDef {
        id: "audit",
        phases: &[Phase::Always],
        default_action: Action::Log,
        params: &[("retention_days", ParamKind::Floor)],
        description: "signed, hash-chained audit row",
    },
];

pub fn step(id: &str) -> Option<&'static StepDef> {
    STEPS.iter().find(|s| s.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_content_parses_and_is_consistent() {
        let b = Builtins::load().expect("built-in content parses");
        assert!(b.catalog.tools.len() >= 30);
        for f in [
            "customer_support_emailer",
            "code_reviewer",
            "coding_assistant",
            "internal_kb_assistant",
            "data_engineer_agent",
            "refund_processor",
            "chat_assistant",
        ] {
            assert!(b.taxonomy.functions.contains_key(f), "{f}");
        }
        let caps = &b.taxonomy.capabilities;
        for t in &b.catalog.tools {
            for c in &t.capabilities {
                assert!(
                    caps.contains_key(c),
                    "tool {} has unknown capability {c}",
                    t.id
                );
            }
        }
        for (name, c) in &b.taxonomy.categories {
            for k in &c.concerns {
                assert!(
                    b.taxonomy.concerns.contains_key(k),
                    "category {name}: unknown concern {k}"
                );
            }
        }
        for (name, c) in &b.taxonomy.concerns {
            assert!(
                c.rules.categories.is_empty()
                    && c.rules.concerns.is_empty()
                    && c.rules.packs.is_empty(),
                "concern {name} must be a leaf"
            );
            for s in c.rules.steps.keys() {
                assert!(step(s).is_some(), "concern {name}: unknown step {s}");
            }
        }
        for (id, p) in &b.packs {
            assert_eq!(&p.doc.pack.id, id);
            assert!(!p.doc.pack.cites.is_empty(), "{id} cites nothing");
        }
    }
}
