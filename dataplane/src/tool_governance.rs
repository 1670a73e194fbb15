//! Tool-call governance: checks on the tool calls a model emits (streamed
//! or not, OpenAI chat, Anthropic messages, OpenAI Responses) and on the
//! calls submitted to `POST /v1/tools/check` and `/v1/tools/execute`.
//!
//! Steps, in order, each recording one audit fragment (aspect `tools`):
//! `tools_allowed`, `tools_denied` (globs on the called name and on its
//! catalog id), `tool_discovery` (a tool the catalog does not know),
//! `denied_tool_categories` (the catalog capabilities of the tool),
//! `tool_arg_validation` (the arguments are a JSON object, match the JSON
//! schema the request declared for the tool, and respect the catalog slot
//! constraints: amount ceilings, destination lists, content size),
//! `schemas_acl` (the data schema a catalog tool names against the access
//! granted per schema) and `loop_guard` (the same call repeated, destructive
//! calls in a row, calls per response; a session that trips it is ended and
//! every further call in it is refused). The first deny ends the checks.
//!
//! In a stream, the frames of a tool call are held by the relay from the
//! call's first fragment until its arguments are complete; the call is then
//! checked and the held frames are released unchanged, or the stream ends
//! with an error event in the client's format (`tool_denied`, `loop_guard`).
//!
//! Evidence names tools, catalog ids, schemas, steps and counts; it never
//! holds argument values other than a schema name or an amount.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::auth::{Caller, ToolScope};
use crate::call_record::CallRecord;
use crate::config::{GuardAction, ToolsConfig};
use crate::error::GatewayError;
use crate::events::EventInfo;
use crate::pipeline::Guardrails;
use crate::providers::glob_match;
use crate::relay::{HoldControl, StreamHook, Verdict};
use crate::sse::SseFrame;
use crate::wire::{Call, Endpoint};
use tappass_detectors::Category;

/// The request header naming the caller's session (for `loop_guard`).
pub const SESSION_HEADER: &str = "x-tappass-session";
/// Longest accepted session id.
const MAX_SESSION_ID: usize = 200;
/// Capabilities whose calls count as destructive for `loop_guard`.
pub const DESTRUCTIVE_CAPABILITIES: &[&str] = &[
    "file_write",
    "sor_write",
    "sor_arbitrary_write",
    "financial_transaction",
    "code_execution",
    "external_messaging",
];
/// Capabilities that need write access to the schema a tool names.
const WRITE_CAPABILITIES: &[&str] = &["sor_write", "sor_arbitrary_write", "file_write"];
/// Deepest JSON schema / argument nesting that is checked.
const MAX_SCHEMA_DEPTH: usize = 64;

const FROM_CONFIG: &str = "config:guardrails.tools";
const FROM_POLICY: &str = "policy:tools";
const CATALOG: &str = "catalog";

// ---- catalog ----

/// A tool the catalog knows: its capabilities and argument slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogTool {
    pub id: String,
    pub capabilities: Vec<String>,
    pub native: Vec<String>,
    pub schema_param: Option<String>,
    pub amount_param: Option<String>,
    pub destination_param: Option<String>,
    pub content_param: Option<String>,
}

static BUILTIN_CATALOG: OnceLock<Result<BTreeMap<String, CatalogTool>, String>> = OnceLock::new();

/// The built-in tool catalog (parsed once per process).
fn builtin_catalog() -> Result<BTreeMap<String, CatalogTool>, String> {
    BUILTIN_CATALOG
        .get_or_init(|| {
            let b = tappass_policies::builtin::Builtins::load().map_err(|e| e.to_string())?;
            Ok(b.catalog
                .tools
                .iter()
                .map(|t| {
                    let slots = t.slots.clone().unwrap_or_default();
                    (
                        t.id.clone(),
                        CatalogTool {
                            id: t.id.clone(),
                            capabilities: t.capabilities.clone(),
                            native: t.native.clone(),
                            schema_param: slots.schema_param,
                            amount_param: slots.amount_param,
                            destination_param: slots.destination_param,
                            content_param: slots.content_param,
                        },
                    )
                })
                .collect())
        })
        .clone()
}

/// Access granted to a data schema; strictest wins (`Deny < Read < ReadWrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Deny,
    Read,
    ReadWrite,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Deny => "none",
            Access::Read => "read",
            Access::ReadWrite => "read_write",
        }
    }
}

/// Constraints on one catalog tool, bound to its argument slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraint {
    pub amount_param: Option<String>,
    pub max_amount: Option<u64>,
    pub destination_param: Option<String>,
    pub allowed_destinations: Option<Vec<String>>,
    pub denied_destinations: Vec<String>,
    pub content_param: Option<String>,
    pub max_content_bytes: Option<u64>,
}

/// Loop-guard limits (0 turns one off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopLimits {
    pub action: GuardAction,
    pub max_repeats: u32,
    pub max_destructive_in_a_row: u32,
    pub max_tool_calls_per_turn: u32,
    pub idle: Duration,
}

/// The tool governance of one caller (part of its [`Guardrails`]).
#[derive(Debug, Clone)]
pub struct ToolPolicy {
    /// `Block` refuses a failing call, `Log` records it, `Off` skips the checks.
    pub action: GuardAction,
    /// Allow-lists (globs); a call must match every one of them.
    pub allow: Vec<(Vec<String>, &'static str)>,
    pub denied_capabilities: BTreeSet<String>,
    pub denied_capabilities_provenance: &'static str,
    pub schemas: BTreeMap<String, Access>,
    pub schemas_provenance: &'static str,
    pub constraints: BTreeMap<String, Constraint>,
    pub catalog: BTreeMap<String, CatalogTool>,
    pub discovery: GuardAction,
    pub validate_arguments: bool,
    pub loop_limits: LoopLimits,
    pub provenance: &'static str,
    pub loop_provenance: &'static str,
}

fn parse_access(list: &[String], schema: &str) -> Result<Access, String> {
    let mut read = false;
    let mut write = false;
    for a in list {
        match a.as_str() {
            "read" => read = true,
            "write" | "read_write" => write = true,
            other => {
                return Err(format!(
                    "guardrails.tools.schemas.{schema}: unknown access `{other}` (read, write)"
                ))
            }
        }
    }
    Ok(match (read, write) {
        (_, true) => Access::ReadWrite,
        (true, false) => Access::Read,
        _ => Access::Deny,
    })
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("`{what}` is not a list"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`{what}` holds a non-string"))
        })
        .collect()
}

fn opt_string(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl ToolPolicy {
    /// The tool policy of a `guardrails:` section (defaults when it has no
    /// `tools:` section).
    pub fn from_config(c: Option<&ToolsConfig>) -> Result<ToolPolicy, String> {
        let default = ToolsConfig::default();
        let c = c.unwrap_or(&default);
        let catalog = builtin_catalog().map_err(|e| format!("tool catalog: {e}"))?;
        let mut schemas = BTreeMap::new();
        for (name, list) in &c.schemas {
            schemas.insert(name.clone(), parse_access(list, name)?);
        }
        let mut constraints = BTreeMap::new();
        for (id, k) in &c.constraints {
            let slots = catalog.get(id).cloned().unwrap_or_default();
            if k.max_amount.is_some() && slots.amount_param.is_none() {
                return Err(format!(
                    "guardrails.tools.constraints.{id}.max_amount: the catalog tool has no amount argument"
                ));
            }
            constraints.insert(
                id.clone(),
                Constraint {
                    amount_param: slots.amount_param,
                    max_amount: k.max_amount,
                    destination_param: slots.destination_param,
                    allowed_destinations: k.allowed_destinations.clone(),
                    denied_destinations: k.denied_destinations.clone(),
                    content_param: slots.content_param,
                    max_content_bytes: k.max_content_bytes,
                },
            );
        }
        let l = &c.loop_guard;
        Ok(ToolPolicy {
            action: c.action,
            allow: c
                .allow
                .clone()
                .map(|a| vec![(a, FROM_CONFIG)])
                .unwrap_or_default(),
            denied_capabilities: c.denied_categories.iter().cloned().collect(),
            denied_capabilities_provenance: FROM_CONFIG,
            schemas,
            schemas_provenance: FROM_CONFIG,
            constraints,
            catalog,
            discovery: c.discovery,
            validate_arguments: c.validate_arguments,
            loop_limits: LoopLimits {
                action: GuardAction::Block,
                max_repeats: l.max_repeats,
                max_destructive_in_a_row: l.max_destructive_in_a_row,
                max_tool_calls_per_turn: l.max_tool_calls_per_turn,
                idle: Duration::from_secs(l.session_idle_seconds.max(1)),
            },
            provenance: FROM_CONFIG,
            loop_provenance: "config:guardrails.tools.loop_guard",
        })
    }

    /// Apply the `tools`, `capabilities` and tool steps of a Compiled
    /// Policy (the payload object). Lists are merged strictest-wins.
    pub fn apply_policy(&mut self, doc: &Value) -> Result<(), String> {
        if let Some(steps) = doc.get("pipeline").and_then(Value::as_array) {
            for s in steps {
                let action = match s.get("action").and_then(Value::as_str) {
                    Some("block") => GuardAction::Block,
                    Some("log") | Some("notify") => GuardAction::Log,
                    _ => GuardAction::Block,
                };
                match s.get("step").and_then(Value::as_str) {
                    Some("tool_guard") => {
                        self.action = action;
                        self.provenance = FROM_POLICY;
                    }
                    Some("loop_guard") => {
                        let l = &mut self.loop_limits;
                        l.action = action;
                        let param = |k: &str| {
                            s.pointer(&format!("/params/{k}"))
                                .and_then(Value::as_u64)
                                .map(|v| v.min(u32::MAX as u64) as u32)
                        };
                        let lower = |cur: u32, new: Option<u32>| match (cur, new) {
                            (_, None) => cur,
                            (0, Some(n)) => n,
                            (c, Some(n)) => c.min(n),
                        };
                        l.max_repeats = lower(l.max_repeats, param("max_repeats"));
                        l.max_tool_calls_per_turn =
                            lower(l.max_tool_calls_per_turn, param("max_tool_calls_per_turn"));
                        l.max_destructive_in_a_row = lower(
                            l.max_destructive_in_a_row,
                            param("max_destructive_in_a_row"),
                        );
                        self.loop_provenance = "policy:pipeline.loop_guard";
                    }
                    _ => {}
                }
            }
        }
        if let Some(forbidden) = doc.pointer("/capabilities/forbidden") {
            let f = strings(forbidden, "capabilities.forbidden")?;
            if !f.is_empty() {
                self.denied_capabilities.extend(f);
                self.denied_capabilities_provenance = "policy:capabilities.forbidden";
            }
        }
        let Some(tools) = doc.get("tools").filter(|t| !t.is_null()) else {
            return Ok(());
        };
        if let Some(allow) = tools.get("allow").filter(|a| !a.is_null()) {
            self.allow
                .push((strings(allow, "tools.allow")?, FROM_POLICY));
        }
        if let Some(acl) = tools.get("schemas_acl").filter(|a| !a.is_null()) {
            let acl = acl.as_object().ok_or("`tools.schemas_acl` is not a map")?;
            for (schema, a) in acl {
                let access = match a.as_str() {
                    Some("deny") => Access::Deny,
                    Some("read") => Access::Read,
                    Some("read_write") => Access::ReadWrite,
                    other => {
                        return Err(format!(
                            "`tools.schemas_acl.{schema}` has an unknown access {other:?}"
                        ))
                    }
                };
                let e = self.schemas.entry(schema.clone()).or_insert(access);
                *e = (*e).min(access);
                self.schemas_provenance = "policy:tools.schemas_acl";
            }
        }
        if let Some(cat) = tools.get("catalog").filter(|a| !a.is_null()) {
            let cat = cat.as_object().ok_or("`tools.catalog` is not a map")?;
            for (id, info) in cat {
                let caps = match info.get("capabilities") {
                    Some(c) => strings(c, "tools.catalog.*.capabilities")?,
                    None => Vec::new(),
                };
                let native = match info.get("native") {
                    Some(c) if !c.is_null() => strings(c, "tools.catalog.*.native")?,
                    _ => Vec::new(),
                };
                let base = self.catalog.get(id).cloned().unwrap_or_default();
                self.catalog.insert(
                    id.clone(),
                    CatalogTool {
                        id: id.clone(),
                        capabilities: caps,
                        native,
                        schema_param: opt_string(info, "schema_param").or(base.schema_param),
                        amount_param: base.amount_param,
                        destination_param: base.destination_param,
                        content_param: base.content_param,
                    },
                );
            }
        }
        if let Some(cons) = tools.get("constraints").filter(|a| !a.is_null()) {
            let cons = cons.as_object().ok_or("`tools.constraints` is not a map")?;
            for (id, k) in cons {
                let denied = match k.get("denied_destinations") {
                    Some(d) if !d.is_null() => strings(d, "denied_destinations")?,
                    _ => Vec::new(),
                };
                let allowed = match k.get("allowed_destinations") {
                    Some(d) if !d.is_null() => Some(strings(d, "allowed_destinations")?),
                    _ => None,
                };
                let c = Constraint {
                    amount_param: opt_string(k, "amount_param"),
                    max_amount: k.get("max_amount").and_then(Value::as_u64),
                    destination_param: opt_string(k, "destination_param"),
                    allowed_destinations: allowed,
                    denied_destinations: denied,
                    content_param: opt_string(k, "content_param"),
                    max_content_bytes: k.get("max_content_bytes").and_then(Value::as_u64),
                };
                match self.constraints.get_mut(id) {
                    Some(cur) => merge_constraint(cur, c),
                    None => {
                        self.constraints.insert(id.clone(), c);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether tool calls are checked at all.
    pub fn enabled(&self) -> bool {
        self.action != GuardAction::Off
    }

    /// The catalog entry of a called tool: by id, by the id with `.`
    /// written as `_` or `__` (function names cannot hold dots), or by a
    /// native tool name.
    pub fn resolve(&self, name: &str) -> Option<&CatalogTool> {
        if let Some(t) = self.catalog.get(name) {
            return Some(t);
        }
        self.catalog.values().find(|t| {
            t.id.replace('.', "_") == name
                || t.id.replace('.', "__") == name
                || t.native.iter().any(|n| n == name)
        })
    }
}

fn merge_constraint(cur: &mut Constraint, new: Constraint) {
    let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    cur.max_amount = lower(cur.max_amount, new.max_amount);
    cur.max_content_bytes = lower(cur.max_content_bytes, new.max_content_bytes);
    cur.amount_param = cur.amount_param.take().or(new.amount_param);
    cur.destination_param = cur.destination_param.take().or(new.destination_param);
    cur.content_param = cur.content_param.take().or(new.content_param);
    cur.denied_destinations.extend(new.denied_destinations);
    cur.allowed_destinations = match (cur.allowed_destinations.take(), new.allowed_destinations) {
        (Some(a), Some(b)) => Some(a.into_iter().filter(|x| b.contains(x)).collect()),
        (a, b) => a.or(b),
    };
}

// ---- tools declared by the request ----

/// The tools the request offered the model, with their JSON schemas.
#[derive(Debug, Clone, Default)]
pub struct DeclaredTools {
    /// `None`: not known (a direct check); `Some`: the offered tools.
    offered: Option<HashMap<String, Option<Value>>>,
}

impl DeclaredTools {
    /// The tools of a request body in any of the three formats.
    pub fn from_body(body: &Map<String, Value>) -> DeclaredTools {
        let mut offered = HashMap::new();
        if let Some(tools) = body.get("tools").and_then(Value::as_array) {
            for t in tools {
                let (name, schema) = if let Some(f) = t.get("function").filter(|f| f.is_object()) {
                    (f.get("name"), f.get("parameters"))
                } else {
                    (
                        t.get("name"),
                        t.get("input_schema").or_else(|| t.get("parameters")),
                    )
                };
                if let Some(n) = name.and_then(Value::as_str) {
                    offered.insert(n.to_string(), schema.filter(|s| s.is_object()).cloned());
                }
            }
        }
        // Legacy OpenAI `functions`.
        if let Some(fs) = body.get("functions").and_then(Value::as_array) {
            for f in fs {
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    offered.insert(
                        n.to_string(),
                        f.get("parameters").filter(|s| s.is_object()).cloned(),
                    );
                }
            }
        }
        DeclaredTools {
            offered: Some(offered),
        }
    }

    /// Nothing is known about the offered tools.
    pub fn unknown() -> DeclaredTools {
        DeclaredTools { offered: None }
    }

    /// One tool with a schema (a direct check that names it).
    pub fn single(name: &str, schema: Option<Value>) -> DeclaredTools {
        DeclaredTools {
            offered: Some(HashMap::from([(name.to_string(), schema)])),
        }
    }
}

// ---- sessions (loop guard) ----

#[derive(Debug)]
struct SessionState {
    last_seen: Instant,
    ended: Option<&'static str>,
    counts: HashMap<u64, u32>,
    destructive_run: u32,
}

const SHARDS: usize = 32;
const MAX_SESSIONS_PER_SHARD: usize = 4096;
const MAX_FINGERPRINTS: usize = 4096;

/// Loop-guard state of every session seen by this process, sharded so that
/// calls of different sessions rarely share a lock.
struct SessionStore {
    shards: Vec<Mutex<HashMap<String, SessionState>>>,
}

static SESSIONS: OnceLock<SessionStore> = OnceLock::new();

fn sessions() -> &'static SessionStore {
    SESSIONS.get_or_init(|| SessionStore {
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
    })
}

/// What the loop guard decided about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoopOutcome {
    Allowed {
        repeats: u32,
        destructive_run: u32,
    },
    /// The session was already ended.
    Ended(&'static str),
    /// This call ended the session.
    Ends(&'static str, u32),
}

impl SessionStore {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, SessionState>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self, key: &str, idle: Duration) -> Option<&'static str> {
        let shard = self.shard(key);
        shard
            .get(key)
            .filter(|s| s.last_seen.elapsed() < idle)
            .and_then(|s| s.ended)
    }

    fn record(
        &self,
        key: &str,
        fingerprint: u64,
        destructive: bool,
        limits: &LoopLimits,
    ) -> LoopOutcome {
        let now = Instant::now();
        let mut shard = self.shard(key);
        if !shard.contains_key(key) && shard.len() >= MAX_SESSIONS_PER_SHARD {
            shard.retain(|_, s| now.duration_since(s.last_seen) < limits.idle);
            if shard.len() >= MAX_SESSIONS_PER_SHARD {
                if let Some(oldest) = shard
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(k, _)| k.clone())
                {
                    shard.remove(&oldest);
                }
            }
        }
        let s = shard
            .entry(key.to_string())
            .or_insert_with(|| SessionState {
                last_seen: now,
                ended: None,
                counts: HashMap::new(),
                destructive_run: 0,
            });
        if now.duration_since(s.last_seen) >= limits.idle {
            s.ended = None;
            s.counts.clear();
            s.destructive_run = 0;
        }
        if let Some(why) = s.ended {
            return LoopOutcome::Ended(why);
        }
        s.last_seen = now;
        let known = s.counts.contains_key(&fingerprint);
        let count = if known || s.counts.len() < MAX_FINGERPRINTS {
            let c = s.counts.entry(fingerprint).or_insert(0);
            *c = c.saturating_add(1);
            *c
        } else {
            1
        };
        s.destructive_run = if destructive {
            s.destructive_run.saturating_add(1)
        } else {
            0
        };
        let enforce = limits.action == GuardAction::Block;
        if limits.max_repeats > 0 && count > limits.max_repeats {
            if enforce {
                s.ended = Some("repeated_call");
            }
            return LoopOutcome::Ends("repeated_call", count);
        }
        if limits.max_destructive_in_a_row > 0
            && s.destructive_run > limits.max_destructive_in_a_row
        {
            if enforce {
                s.ended = Some("destructive_calls_in_a_row");
            }
            return LoopOutcome::Ends("destructive_calls_in_a_row", s.destructive_run);
        }
        LoopOutcome::Allowed {
            repeats: count,
            destructive_run: s.destructive_run,
        }
    }
}

/// Structural hash of a JSON value with object keys in sorted order.
fn hash_value(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            a.iter().for_each(|x| hash_value(x, h));
        }
        Value::Object(m) => {
            (5u8, m.len()).hash(h);
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                k.hash(h);
                hash_value(&m[k], h);
            }
        }
    }
}

fn fingerprint(tool: &str, args: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tool.hash(&mut h);
    hash_value(args, &mut h);
    h.finish()
}

// ---- the checks ----

/// One step's audit fragment.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub step: &'static str,
    pub decision: &'static str,
    pub provenance: &'static str,
    pub evidence: Value,
}

impl Fragment {
    pub fn to_json(&self) -> Value {
        json!({"step": self.step, "decision": self.decision, "evidence": self.evidence,
            "aspect": "tools", "provenance": self.provenance})
    }
}

/// The result of checking one tool call.
#[derive(Debug, Default)]
pub struct CheckResult {
    pub fragments: Vec<Fragment>,
    pub denied: Option<GatewayError>,
    pub catalog_id: Option<String>,
}

/// The per-call context of the checks: the caller's policy, the tools the
/// request offered, the session.
pub struct ToolGate {
    g: Arc<Guardrails>,
    declared: DeclaredTools,
    session_key: String,
    session: Value,
    /// The caller's capability-token tool scope (`enforce_session_scope`).
    scope: Option<Arc<ToolScope>>,
    /// The caller's agent (`human_approval` requests are per agent).
    agent: String,
}

impl ToolGate {
    /// The gate of one call. The session is the `x-tappass-session`
    /// header, else the capability token's sandbox, else the agent.
    pub fn new(
        g: Arc<Guardrails>,
        declared: DeclaredTools,
        caller: &Caller,
        session_header: Option<&str>,
    ) -> ToolGate {
        let header = session_header
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_SESSION_ID);
        let (id, source) = match (header, caller.sandbox.as_deref()) {
            (Some(h), _) => (h.to_string(), "header"),
            (None, Some(s)) => (s.to_string(), "sandbox"),
            (None, None) => (String::new(), "agent"),
        };
        ToolGate {
            session_key: format!("{}\u{1f}{source}\u{1f}{id}", caller.agent),
            session: json!({"id": if id.is_empty() { Value::Null } else { json!(id) }, "source": source}),
            g,
            declared,
            scope: caller.tool_scope.clone(),
            agent: caller.agent.clone(),
        }
    }

    fn policy(&self) -> &ToolPolicy {
        &self.g.tools
    }

    /// Secrets and exfiltration channels in a tool call's arguments, under
    /// the response settings (`detect_secrets_in_response`,
    /// `detect_exfil_in_response`): a tool call passes the same content
    /// steps as text. Its arguments are never rewritten, so `redact` refuses
    /// the call like `block`. (Personal data in arguments is often the
    /// point of the call — a recipient, a customer id — and is left to the
    /// tool steps: schemas, constraints, destinations.)
    fn scan_arguments(
        &self,
        name: &str,
        arguments: &str,
        r: &mut CheckResult,
    ) -> Option<GatewayError> {
        let g = &self.g;
        let steps = [
            (
                Category::Secret,
                g.response_secrets,
                "detect_secrets_in_response",
                "secret_blocked",
            ),
            (
                Category::Exfil,
                g.response_exfil,
                "detect_exfil_in_response",
                "exfil_blocked",
            ),
        ];
        if steps.iter().all(|s| s.1.action == GuardAction::Off) {
            return None;
        }
        let found = match g.rules().scan(arguments) {
            Ok(f) => f,
            Err(e) => {
                r.fragments.push(Fragment {
                    step: "detect_secrets_in_response",
                    decision: "error",
                    provenance: "detectors",
                    evidence: json!({"tool": name, "error": "guardrail_failed"}),
                });
                return Some(GatewayError::GuardrailFailed {
                    step: "detect_secrets_in_response",
                    reason: e.to_string(),
                });
            }
        };
        for (cat, setting, step, code) in steps {
            if setting.action == GuardAction::Off {
                continue;
            }
            let mut rules: Vec<String> = found
                .iter()
                .filter(|f| f.category == cat)
                .map(|f| f.rule_id.to_string())
                .collect();
            rules.sort();
            rules.dedup();
            let n = found.iter().filter(|f| f.category == cat).count();
            let decision = match (n, setting.action) {
                (0, _) => "allow",
                (_, GuardAction::Log) => "log",
                _ => "deny",
            };
            r.fragments.push(Fragment {
                step,
                decision,
                provenance: setting.provenance,
                evidence: json!({"tool": name, "tool_call": true, "count": n, "rules": rules}),
            });
            if decision == "deny" {
                return Some(GatewayError::GuardrailDenied {
                    code,
                    reason: format!(
                        "the tool call `{name}` was refused by {step}: its arguments hold {}",
                        if cat == Category::Secret {
                            "a secret"
                        } else {
                            "an exfiltration channel"
                        }
                    ),
                });
            }
        }
        None
    }

    /// `rego_policy` (and `human_approval` when an entry point asks for
    /// it) on one tool call. Returns the refusal, if any; the fragments go
    /// on `r`. An evaluation error refuses the call (fail closed).
    fn rego_policy(
        &self,
        rego: &tappass_policies::PreparedRego,
        name: &str,
        catalog_id: Option<&str>,
        args: &Value,
        r: &mut CheckResult,
    ) -> Option<GatewayError> {
        use tappass_policies::RegoAction;
        const REGO: &str = "policy:rego";
        let tool = catalog_id.unwrap_or(name);
        let input = json!({"kind": "tool_call", "tool": tool, "name": name, "args": args,
            "agent": self.agent, "session": self.session});
        let d = match rego.decide(&input) {
            Ok(d) => d,
            Err(e) => {
                r.fragments.push(Fragment {
                    step: "rego_policy",
                    decision: "error",
                    provenance: REGO,
                    evidence: json!({"tool": name, "error": "guardrail_failed"}),
                });
                return Some(GatewayError::GuardrailFailed {
                    step: "rego_policy",
                    reason: e.to_string(),
                });
            }
        };
        let evidence = json!({"tool": name, "catalog_id": catalog_id,
            "entrypoints": rego.entrypoints(), "action": d.action, "reasons": d.reasons});
        let refuse = |code: &'static str, why: String| GatewayError::GuardrailDenied {
            code,
            reason: format!("the tool call `{name}` was refused by {why}"),
        };
        match d.action {
            RegoAction::Allow => {
                r.fragments.push(Fragment {
                    step: "rego_policy",
                    decision: "allow",
                    provenance: REGO,
                    evidence,
                });
                None
            }
            RegoAction::Deny => {
                r.fragments.push(Fragment {
                    step: "rego_policy",
                    decision: "deny",
                    provenance: REGO,
                    evidence,
                });
                Some(refuse(
                    "policy_denied",
                    format!("rego_policy: {}", d.reasons.join("; ")),
                ))
            }
            RegoAction::RequireApproval => {
                r.fragments.push(Fragment {
                    step: "rego_policy",
                    decision: "log",
                    provenance: REGO,
                    evidence,
                });
                let id = crate::approvals::Approvals::id_of(&self.agent, tool, args);
                let state =
                    crate::approvals::approvals().consult(&id, &self.agent, tool, &d.reasons);
                use crate::approvals::ApprovalState;
                let decision = match state {
                    ApprovalState::Approved => "allow",
                    _ => "deny",
                };
                r.fragments.push(Fragment {
                    step: "human_approval",
                    decision,
                    provenance: REGO,
                    evidence: json!({"tool": name, "approval": id, "state": format!("{state:?}").to_lowercase()}),
                });
                match state {
                    ApprovalState::Approved => None,
                    ApprovalState::Pending => Some(refuse(
                        "approval_required",
                        format!(
                            "human_approval: {}; a person must approve it first (approval {id}: POST /approvals/{id}/approve on the gateway's admin listener), then retry the same call",
                            d.reasons.join("; ")
                        ),
                    )),
                    ApprovalState::Denied => Some(refuse(
                        "approval_denied",
                        format!("human_approval: a person denied it (approval {id})"),
                    )),
                }
            }
        }
    }

    /// `loop_guard` on the request: a call in an ended session is refused.
    pub fn session_open(&self, rec: &mut CallRecord) -> Result<(), GatewayError> {
        let p = self.policy();
        let l = &p.loop_limits;
        if l.max_repeats == 0 && l.max_destructive_in_a_row == 0 {
            return Ok(());
        }
        if let Some(why) = sessions().ended(&self.session_key, l.idle) {
            rec.step(
                "loop_guard",
                "deny",
                "tools",
                p.loop_provenance,
                json!({"session": self.session, "session_ended": why}),
            );
            return Err(loop_denied(format!(
                "the session was ended by the loop guard ({why}); start a new session"
            )));
        }
        Ok(())
    }

    /// Run every step on one tool call. `calls_in_turn` counts the calls of
    /// the response so far, this one included.
    pub fn check(&self, name: &str, arguments: &str, calls_in_turn: u32) -> CheckResult {
        let p = self.policy();
        let g = &self.g;
        let mut r = CheckResult::default();
        let scans = g.response_secrets.action != GuardAction::Off
            || g.response_exfil.action != GuardAction::Off;
        if !p.enabled() && self.scope.is_none() && g.rego.is_none() && !scans {
            return r;
        }
        let tool = p.resolve(name);
        r.catalog_id = tool.map(|t| t.id.clone());
        let cid = r.catalog_id.clone();
        let ids: Vec<&str> = std::iter::once(name)
            .chain(tool.map(|t| t.id.as_str()))
            .collect();
        // enforce_session_scope: the token's scope narrows the policy and is
        // always enforced, whatever the policy's own action.
        if let Some(scope) = &self.scope {
            let refusal = scope.refuses(&ids).or_else(|| {
                let t = tool.filter(|_| !scope.schemas.is_empty())?;
                let param = t.schema_param.as_ref()?;
                let needed = if t
                    .capabilities
                    .iter()
                    .any(|c| WRITE_CAPABILITIES.contains(&c.as_str()))
                {
                    "write"
                } else {
                    "read"
                };
                let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
                let named = args.get(param).and_then(Value::as_str).unwrap_or_default();
                let granted = scope.schemas.get(named).or_else(|| {
                    named
                        .split(['.', '/'])
                        .next()
                        .and_then(|head| scope.schemas.get(head))
                });
                match granted {
                    Some(g) if g.iter().any(|a| a == needed) => None,
                    _ => Some(format!(
                        "the token does not grant {needed} access to schema `{named}`"
                    )),
                }
            });
            let ev = json!({"tool": name, "catalog_id": cid, "allow": scope.allow,
                "deny": scope.deny, "schemas": scope.schemas.keys().collect::<Vec<_>>()});
            r.fragments.push(Fragment {
                step: "enforce_session_scope",
                decision: if refusal.is_some() { "deny" } else { "allow" },
                provenance: "token:scope",
                evidence: ev,
            });
            if let Some(reason) = refusal {
                r.denied = Some(GatewayError::GuardrailDenied {
                    code: "tool_denied",
                    reason: format!(
                        "the tool call `{name}` was refused by enforce_session_scope: {reason}"
                    ),
                });
                return r;
            }
        }
        if !p.enabled() {
            // Tool governance is off; the content steps and the agent's Rego
            // still decide.
            if let Some(denied) = self.scan_arguments(name, arguments, &mut r) {
                r.denied = Some(denied);
                return r;
            }
            if let Some(rego) = &g.rego {
                let args = serde_json::from_str::<Value>(arguments)
                    .unwrap_or_else(|_| Value::String(arguments.to_string()));
                if let Some(denied) = self.rego_policy(rego, name, cid.as_deref(), &args, &mut r) {
                    r.denied = Some(denied);
                }
            }
            return r;
        }
        let block = p.action == GuardAction::Block;
        // Record a failing step; returns whether the checks stop here.
        let fail = |r: &mut CheckResult,
                    step: &'static str,
                    provenance: &'static str,
                    evidence: Value,
                    code: &'static str,
                    enforce: bool,
                    reason: String|
         -> bool {
            r.fragments.push(Fragment {
                step,
                decision: if enforce { "deny" } else { "log" },
                provenance,
                evidence,
            });
            if enforce {
                r.denied = Some(GatewayError::GuardrailDenied {
                    code,
                    reason: format!("the tool call `{name}` was refused by {step}: {reason}"),
                });
            }
            enforce
        };
        let allow = |r: &mut CheckResult, step, provenance, evidence| {
            r.fragments.push(Fragment {
                step,
                decision: "allow",
                provenance,
                evidence,
            })
        };

        // tools_allowed
        for (list, provenance) in &p.allow {
            let ok = ids
                .iter()
                .any(|n| list.iter().any(|pat| glob_match(pat, n)));
            let ev = json!({"tool": name, "catalog_id": cid});
            if !ok {
                if fail(
                    &mut r,
                    "tools_allowed",
                    provenance,
                    ev,
                    "tool_denied",
                    block,
                    "it is not on the allow-list".into(),
                ) {
                    return r;
                }
            } else {
                allow(&mut r, "tools_allowed", *provenance, ev);
            }
        }
        // tools_denied
        if !g.tools_deny.is_empty() {
            let hit = g
                .tools_deny
                .iter()
                .find(|pat| ids.iter().any(|n| glob_match(pat, n)));
            match hit {
                Some(pat) => {
                    let ev = json!({"tool": name, "catalog_id": cid, "pattern": pat});
                    if fail(
                        &mut r,
                        "tools_denied",
                        g.tools_provenance,
                        ev,
                        "tool_denied",
                        block,
                        format!("it matches the denied pattern `{pat}`"),
                    ) {
                        return r;
                    }
                }
                None => allow(
                    &mut r,
                    "tools_denied",
                    g.tools_provenance,
                    json!({"tool": name, "catalog_id": cid}),
                ),
            }
        }
        // tool_discovery
        if p.discovery != GuardAction::Off {
            match tool {
                Some(t) => allow(
                    &mut r,
                    "tool_discovery",
                    CATALOG,
                    json!({"tool": name, "catalog_id": t.id, "known": true}),
                ),
                None => {
                    let enforce = block && p.discovery == GuardAction::Block;
                    if fail(
                        &mut r,
                        "tool_discovery",
                        CATALOG,
                        json!({"tool": name, "known": false, "discovered": true}),
                        "tool_denied",
                        enforce,
                        "the tool catalog does not know this tool".into(),
                    ) {
                        return r;
                    }
                }
            }
        }
        // denied_tool_categories
        if let (false, Some(t)) = (p.denied_capabilities.is_empty(), tool) {
            let hit: Vec<&String> = t
                .capabilities
                .iter()
                .filter(|c| p.denied_capabilities.contains(*c))
                .collect();
            let ev = json!({"tool": name, "catalog_id": t.id, "capabilities": t.capabilities, "denied": hit});
            if hit.is_empty() {
                allow(
                    &mut r,
                    "denied_tool_categories",
                    p.denied_capabilities_provenance,
                    ev,
                );
            } else if fail(
                &mut r,
                "denied_tool_categories",
                p.denied_capabilities_provenance,
                ev,
                "tool_denied",
                block,
                format!(
                    "it exercises the denied capability {}",
                    hit.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ) {
                return r;
            }
        }
        // tool_arg_validation: the arguments must be a JSON object whatever
        // the setting (no other step can read them otherwise).
        let args: Value = match serde_json::from_str::<Value>(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        }) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                fail(
                    &mut r,
                    "tool_arg_validation",
                    p.provenance,
                    json!({"tool": name, "error": "arguments_not_an_object"}),
                    "tool_denied",
                    true,
                    "its arguments are not a JSON object".into(),
                );
                return r;
            }
            Err(e) => {
                fail(
                    &mut r,
                    "tool_arg_validation",
                    p.provenance,
                    json!({"tool": name, "error": "malformed_arguments", "line": e.line(), "column": e.column()}),
                    "tool_denied",
                    true,
                    format!("its arguments are not valid JSON ({e})"),
                );
                return r;
            }
        };
        if p.validate_arguments {
            let mut problems: Vec<String> = Vec::new();
            let mut schema_checked = false;
            if let Some(offered) = &self.declared.offered {
                match offered.get(name) {
                    None => problems.push("the request did not offer this tool".into()),
                    Some(Some(schema)) => {
                        schema_checked = true;
                        validate_schema(schema, &args, "$", 0, &mut problems);
                    }
                    Some(None) => {}
                }
            }
            let constraint = tool.and_then(|t| p.constraints.get(&t.id));
            if let Some(c) = constraint {
                check_constraint(c, &args, &mut problems);
            }
            problems.truncate(8);
            let ev = json!({"tool": name, "catalog_id": cid, "schema": schema_checked,
                "constraints": constraint.is_some(), "problems": problems});
            if problems.is_empty() {
                allow(&mut r, "tool_arg_validation", p.provenance, ev);
            } else {
                let reason = problems.join("; ");
                if fail(
                    &mut r,
                    "tool_arg_validation",
                    p.provenance,
                    ev,
                    "tool_denied",
                    block,
                    reason,
                ) {
                    return r;
                }
            }
        }
        // schemas_acl
        if let Some(t) = tool.filter(|_| !p.schemas.is_empty()) {
            if let Some(param) = &t.schema_param {
                let need_write = t
                    .capabilities
                    .iter()
                    .any(|c| WRITE_CAPABILITIES.contains(&c.as_str()));
                let needed = if need_write {
                    Access::ReadWrite
                } else {
                    Access::Read
                };
                let named = args.get(param).and_then(Value::as_str);
                let granted = named.and_then(|s| {
                    p.schemas.get(s).copied().or_else(|| {
                        s.split(['.', '/'])
                            .next()
                            .and_then(|head| p.schemas.get(head).copied())
                    })
                });
                let ev = json!({"tool": name, "catalog_id": t.id, "schema": named,
                    "needed": needed.as_str(), "granted": granted.map(Access::as_str)});
                match granted {
                    Some(a) if a < needed => {
                        if fail(
                            &mut r,
                            "schemas_acl",
                            p.schemas_provenance,
                            ev,
                            "tool_denied",
                            block,
                            format!(
                                "schema `{}` grants {} access, the tool needs {}",
                                named.unwrap_or_default(),
                                a.as_str(),
                                needed.as_str()
                            ),
                        ) {
                            return r;
                        }
                    }
                    _ => allow(&mut r, "schemas_acl", p.schemas_provenance, ev),
                }
            }
        }
        // Secrets and exfiltration channels in the arguments.
        if let Some(denied) = self.scan_arguments(name, arguments, &mut r) {
            r.denied = Some(denied);
            return r;
        }
        // rego_policy, then human_approval: the agent's Rego entry points on
        // the call (`input.tool` is its catalog id, else its name).
        if let Some(rego) = &g.rego {
            if let Some(denied) = self.rego_policy(rego, name, cid.as_deref(), &args, &mut r) {
                r.denied = Some(denied);
                return r;
            }
        }
        // loop_guard
        let l = &p.loop_limits;
        let loop_enforce = l.action == GuardAction::Block;
        if l.max_tool_calls_per_turn > 0 && calls_in_turn > l.max_tool_calls_per_turn {
            fail(
                &mut r,
                "loop_guard",
                p.loop_provenance,
                json!({"tool": name, "calls_in_response": calls_in_turn,
                    "max_tool_calls_per_turn": l.max_tool_calls_per_turn}),
                "loop_guard",
                loop_enforce,
                format!(
                    "the response holds more than {} tool calls",
                    l.max_tool_calls_per_turn
                ),
            );
            if loop_enforce {
                return r;
            }
        }
        if l.max_repeats > 0 || l.max_destructive_in_a_row > 0 {
            let id = r.catalog_id.as_deref().unwrap_or(name);
            let destructive = tool.is_some_and(|t| {
                t.capabilities
                    .iter()
                    .any(|c| DESTRUCTIVE_CAPABILITIES.contains(&c.as_str()))
            });
            let outcome =
                sessions().record(&self.session_key, fingerprint(id, &args), destructive, l);
            match outcome {
                LoopOutcome::Allowed {
                    repeats,
                    destructive_run,
                } => allow(
                    &mut r,
                    "loop_guard",
                    p.loop_provenance,
                    json!({"tool": name, "session": self.session, "repeats": repeats,
                        "destructive_in_a_row": destructive_run}),
                ),
                LoopOutcome::Ended(why) => {
                    fail(
                        &mut r,
                        "loop_guard",
                        p.loop_provenance,
                        json!({"tool": name, "session": self.session, "session_ended": why}),
                        "loop_guard",
                        true,
                        format!("the session was already ended ({why})"),
                    );
                }
                LoopOutcome::Ends(why, count) => {
                    fail(
                        &mut r,
                        "loop_guard",
                        p.loop_provenance,
                        json!({"tool": name, "session": self.session, "ends_session": loop_enforce,
                            "reason": why, "count": count, "max_repeats": l.max_repeats,
                            "max_destructive_in_a_row": l.max_destructive_in_a_row}),
                        "loop_guard",
                        loop_enforce,
                        match why {
                            "repeated_call" => format!(
                                "the same call was made {count} times in this session (limit {}); the session is ended",
                                l.max_repeats
                            ),
                            _ => format!(
                                "{count} destructive calls in a row in this session (limit {}); the session is ended",
                                l.max_destructive_in_a_row
                            ),
                        },
                    );
                }
            }
        }
        r
    }

    /// Check the tool calls of a whole (non-streamed) response body, parsed
    /// once by the caller (`None`: it is not JSON).
    pub fn check_body(
        &self,
        endpoint: Endpoint,
        body: Option<&Value>,
        rec: &mut CallRecord,
    ) -> Result<(), GatewayError> {
        let calls = match body_tool_calls(endpoint, body) {
            Ok(c) => c,
            Err(reason) => {
                rec.step(
                    "tool_arg_validation",
                    "error",
                    "tools",
                    self.policy().provenance,
                    json!({"error": "guardrail_failed"}),
                );
                return Err(GatewayError::GuardrailFailed {
                    step: "tool_arg_validation",
                    reason,
                });
            }
        };
        for (n, (name, args)) in calls.iter().enumerate() {
            let r = self.check(name, args, n as u32 + 1);
            record(rec, &r.fragments);
            if let Some(e) = r.denied {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The stream hook of one call, and the report it fills.
    pub fn stream_hook(
        self: &Arc<Self>,
        endpoint: Endpoint,
    ) -> (ToolStream, Arc<Mutex<ToolReport>>) {
        let report = Arc::new(Mutex::new(ToolReport::default()));
        (
            ToolStream {
                gate: self.clone(),
                endpoint,
                pending: BTreeMap::new(),
                checked: BTreeSet::new(),
                calls: 0,
                report: report.clone(),
            },
            report,
        )
    }
}

fn loop_denied(reason: String) -> GatewayError {
    GatewayError::GuardrailDenied {
        code: "loop_guard",
        reason,
    }
}

fn record(rec: &mut CallRecord, fragments: &[Fragment]) {
    for f in fragments {
        rec.step(
            f.step,
            f.decision,
            "tools",
            f.provenance,
            f.evidence.clone(),
        );
    }
}

/// The gate of one LLM call when the caller's guardrails govern tools;
/// refuses the call when its session was ended by the loop guard.
pub fn gate_for_call(
    guard: Option<&Arc<Guardrails>>,
    call: &Call,
    caller: &Caller,
    session_header: Option<&str>,
    rec: &mut CallRecord,
) -> Result<Option<Arc<ToolGate>>, GatewayError> {
    let governs = |g: &&Arc<Guardrails>| {
        g.tools.enabled()
            || g.rego.is_some()
            || caller.tool_scope.is_some()
            || g.response_secrets.action != GuardAction::Off
            || g.response_exfil.action != GuardAction::Off
    };
    let Some(g) = guard.filter(governs) else {
        return Ok(None);
    };
    let gate = ToolGate::new(
        g.clone(),
        DeclaredTools::from_body(call.body()),
        caller,
        session_header,
    );
    gate.session_open(rec)?;
    Ok(Some(Arc::new(gate)))
}

fn check_constraint(c: &Constraint, args: &Value, problems: &mut Vec<String>) {
    if let (Some(param), Some(max)) = (&c.amount_param, c.max_amount) {
        match args.get(param) {
            None => {}
            Some(v) => match v.as_f64() {
                Some(a) if a <= max as f64 => {}
                Some(_) => problems.push(format!("`{param}` is above the ceiling of {max}")),
                None => problems.push(format!("`{param}` is not a number")),
            },
        }
    }
    if let Some(param) = &c.destination_param {
        let dests: Vec<&str> = match args.get(param) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for d in dests {
            if c.denied_destinations.iter().any(|p| glob_match(p, d)) {
                problems.push(format!("`{param}` names a denied destination"));
            } else if let Some(allowed) = &c.allowed_destinations {
                if !allowed.iter().any(|p| glob_match(p, d)) {
                    problems.push(format!(
                        "`{param}` names a destination outside the allow-list"
                    ));
                }
            }
        }
    }
    if let (Some(param), Some(max)) = (&c.content_param, c.max_content_bytes) {
        let len = match args.get(param) {
            Some(Value::String(s)) => s.len() as u64,
            Some(v) => v.to_string().len() as u64,
            None => 0,
        };
        if len > max {
            problems.push(format!("`{param}` is larger than {max} bytes"));
        }
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

/// Check `v` against a JSON schema (the keywords tool definitions use:
/// type, properties, required, additionalProperties, items, enum, const,
/// numeric and length bounds, anyOf/oneOf/allOf). Unknown keywords are not
/// checked.
fn validate_schema(
    schema: &Value,
    v: &Value,
    path: &str,
    depth: usize,
    problems: &mut Vec<String>,
) {
    if problems.len() >= 8 {
        return;
    }
    if depth > MAX_SCHEMA_DEPTH {
        problems.push(format!("{path}: nested too deeply"));
        return;
    }
    let Some(s) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            problems.push(format!("{path}: not allowed"));
        }
        return;
    };
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => {
            problems.push(format!("{path}: expected {t}"));
            return;
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, v)) =>
        {
            problems.push(format!("{path}: wrong type"));
            return;
        }
        _ => {}
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            problems.push(format!("{path}: not one of the allowed values"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            problems.push(format!("{path}: not the required value"));
        }
    }
    if let Some(n) = v.as_f64() {
        let bound = |k: &str| s.get(k).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|m| n < m)
            || bound("exclusiveMinimum").is_some_and(|m| n <= m)
        {
            problems.push(format!("{path}: below the minimum"));
        }
        if bound("maximum").is_some_and(|m| n > m)
            || bound("exclusiveMaximum").is_some_and(|m| n >= m)
        {
            problems.push(format!("{path}: above the maximum"));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            problems.push(format!("{path}: shorter than allowed"));
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            problems.push(format!("{path}: longer than allowed"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(k) {
                    problems.push(format!("{path}: missing required `{k}`"));
                }
            }
        }
        for (k, x) in obj {
            let sub = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate_schema(ps, x, &sub, depth + 1, problems),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        problems.push(format!("{path}: unexpected property `{k}`"))
                    }
                    Some(ap @ Value::Object(_)) => {
                        validate_schema(ap, x, &sub, depth + 1, problems)
                    }
                    _ => {}
                },
            }
        }
    }
    if let Some(arr) = v.as_array() {
        let n = arr.len() as u64;
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            problems.push(format!("{path}: fewer items than allowed"));
        }
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            problems.push(format!("{path}: more items than allowed"));
        }
        if let Some(items) = s.get("items").filter(|i| i.is_object()) {
            for (i, x) in arr.iter().enumerate() {
                validate_schema(items, x, &format!("{path}[{i}]"), depth + 1, problems);
            }
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            validate_schema(sub, v, path, depth + 1, problems);
        }
    }
    for (k, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(alts) = s.get(k).and_then(Value::as_array) {
            let passing = alts
                .iter()
                .filter(|sub| {
                    let mut p = Vec::new();
                    validate_schema(sub, v, path, depth + 1, &mut p);
                    p.is_empty()
                })
                .count();
            if passing == 0 || (exactly_one && passing > 1) {
                problems.push(format!("{path}: does not match {k}"));
            }
        }
    }
}

/// The tool calls of a complete response body: (name, arguments JSON text).
fn body_tool_calls(
    endpoint: Endpoint,
    body: Option<&Value>,
) -> Result<Vec<(String, String)>, String> {
    let v = body.ok_or_else(|| "the response body is not JSON".to_string())?;
    let mut out = Vec::new();
    let name_of = |x: &Value| {
        x.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let args_text = |x: Option<&Value>| match x {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let msg = c.get("message");
                for tc in msg
                    .and_then(|m| m.get("tool_calls"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = tc.get("function").unwrap_or(&Value::Null);
                    out.push((name_of(f), args_text(f.get("arguments"))));
                }
                if let Some(f) = msg
                    .and_then(|m| m.get("function_call"))
                    .filter(|f| f.is_object())
                {
                    out.push((name_of(f), args_text(f.get("arguments"))));
                }
            }
        }
        Endpoint::AnthropicMessages => {
            for b in v
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if b.get("type").and_then(Value::as_str) == Some("tool_use") {
                    out.push((name_of(b), args_text(b.get("input"))));
                }
            }
        }
        Endpoint::Responses => {
            for item in v
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    out.push((name_of(item), args_text(item.get("arguments"))));
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

// ---- streams ----

/// What the stream hook decided, read by the gateway when the stream ends.
#[derive(Debug, Default)]
pub struct ToolReport {
    pub fragments: Vec<Fragment>,
}

impl ToolReport {
    /// Record the fragments on the call's audit row.
    pub fn record(&self, rec: &mut CallRecord) {
        record(rec, &self.fragments);
    }
}

#[derive(Debug, Default)]
struct PendingCall {
    name: String,
    args: String,
    /// Argument texts repeated by later events (Responses `*.done`); each
    /// must equal the streamed one.
    repeats: Vec<String>,
    /// Arguments given whole when the call opened (Anthropic `input`).
    initial: Option<String>,
    complete: bool,
}

/// Stream hook holding each tool call until its arguments are complete,
/// then checking it. Held frames are released unchanged when every open
/// call is allowed; a refused call ends the stream with the error event.
pub struct ToolStream {
    gate: Arc<ToolGate>,
    endpoint: Endpoint,
    pending: BTreeMap<u64, PendingCall>,
    /// Calls already allowed: (name, arguments).
    checked: BTreeSet<(String, String)>,
    calls: u32,
    report: Arc<Mutex<ToolReport>>,
}

impl ToolStream {
    fn report(&self) -> std::sync::MutexGuard<'_, ToolReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Check every complete, unchecked call. A deny ends the stream.
    fn check_complete(&mut self) -> Result<(), GatewayError> {
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, c)| c.complete)
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let Some(c) = self.pending.remove(&k) else {
                continue;
            };
            self.calls = self.calls.saturating_add(1);
            let args = match (&c.initial, c.args.is_empty()) {
                (Some(i), true) => i.clone(),
                _ => c.args.clone(),
            };
            if c.repeats.iter().any(|r| *r != args) {
                let f = Fragment {
                    step: "tool_arg_validation",
                    decision: "deny",
                    provenance: self.gate.policy().provenance,
                    evidence: json!({"tool": c.name, "error": "inconsistent_arguments"}),
                };
                self.report().fragments.push(f);
                return Err(GatewayError::GuardrailDenied {
                    code: "tool_denied",
                    reason: format!(
                        "the tool call `{}` was refused by tool_arg_validation: the stream repeated its arguments differently",
                        c.name
                    ),
                });
            }
            let r = self.gate.check(&c.name, &args, self.calls);
            self.report().fragments.extend(r.fragments);
            if let Some(e) = r.denied {
                return Err(e);
            }
            self.checked.insert((c.name, args));
        }
        Ok(())
    }

    fn open(&mut self, key: u64, name: Option<&str>) -> &mut PendingCall {
        let c = self.pending.entry(key).or_default();
        if let Some(n) = name {
            if c.name.is_empty() {
                c.name = n.to_string();
            }
        }
        c
    }

    /// Read the tool-call parts of one frame.
    fn absorb(&mut self, data: &Value, info: &EventInfo) {
        match self.endpoint {
            Endpoint::ChatCompletions => {
                for choice in data
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ci = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let delta = choice.get("delta");
                    for tc in delta
                        .and_then(|d| d.get("tool_calls"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let f = tc.get("function");
                        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                        let args = f
                            .and_then(|f| f.get("arguments"))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        let c = self.open((ci << 32) | (ti & 0xffff_ffff), name);
                        c.args.push_str(args);
                    }
                    if let Some(f) = delta
                        .and_then(|d| d.get("function_call"))
                        .filter(|f| f.is_object())
                    {
                        let name = f.get("name").and_then(Value::as_str);
                        let args = f
                            .get("arguments")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        let c = self.open((ci << 32) | 0xffff_ffff, name);
                        c.args.push_str(args);
                    }
                    if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                        for (k, c) in self.pending.iter_mut() {
                            if k >> 32 == ci {
                                c.complete = true;
                            }
                        }
                    }
                }
            }
            Endpoint::AnthropicMessages => {
                let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                match kind {
                    "content_block_start" => {
                        let b = data.get("content_block").unwrap_or(&Value::Null);
                        if b.get("type").and_then(Value::as_str) == Some("tool_use") {
                            let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                            let initial = b
                                .get("input")
                                .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                                .map(Value::to_string);
                            let c = self.open(index, Some(name));
                            c.initial = initial;
                        }
                    }
                    "content_block_delta" => {
                        if let Some(t) = info.tool_calls.first() {
                            if let Some(c) = self.pending.get_mut(&index) {
                                c.args.push_str(&t.arguments);
                            }
                        }
                    }
                    "content_block_stop" => {
                        if let Some(c) = self.pending.get_mut(&index) {
                            c.complete = true;
                        }
                    }
                    _ => {}
                }
            }
            Endpoint::Responses => {
                let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
                let index = data
                    .get("output_index")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let item = data.get("item").unwrap_or(&Value::Null);
                let is_fc = item.get("type").and_then(Value::as_str) == Some("function_call");
                match kind {
                    "response.output_item.added" if is_fc => {
                        let name = item.get("name").and_then(Value::as_str);
                        let c = self.open(index, name);
                        if let Some(a) = item.get("arguments").and_then(Value::as_str) {
                            c.args.push_str(a);
                        }
                    }
                    "response.function_call_arguments.delta" => {
                        let d = data
                            .get("delta")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        self.open(index, None).args.push_str(d);
                    }
                    "response.function_call_arguments.done" => {
                        let a = data
                            .get("arguments")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        self.open(index, None).repeats.push(a.to_string());
                    }
                    "response.output_item.done" if is_fc => {
                        let name = item.get("name").and_then(Value::as_str);
                        let c = self.open(index, name);
                        if let Some(a) = item.get("arguments").and_then(Value::as_str) {
                            c.repeats.push(a.to_string());
                        }
                        c.complete = true;
                    }
                    "response.completed" | "response.incomplete" => {
                        // The final response repeats every call: each must be
                        // one that was checked, with the same arguments.
                        let mut unseen = Vec::new();
                        for it in data
                            .pointer("/response/output")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter(|i| {
                                i.get("type").and_then(Value::as_str) == Some("function_call")
                            })
                        {
                            let a = it
                                .get("arguments")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            let n = it.get("name").and_then(Value::as_str).unwrap_or_default();
                            let call = (n.to_string(), a.to_string());
                            if !self.checked.contains(&call) {
                                unseen.push(call);
                            }
                        }
                        for (i, (n, a)) in unseen.into_iter().enumerate() {
                            let key = u64::MAX - i as u64;
                            let c = self.open(key, Some(&n));
                            c.args = a;
                            c.complete = true;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

impl StreamHook for ToolStream {
    fn name(&self) -> &'static str {
        "tool_governance"
    }

    fn on_event(&mut self, frame: &SseFrame, info: &EventInfo, hold: &mut HoldControl) -> Verdict {
        let relevant = !info.tool_calls.is_empty()
            || info.tool_call_done.is_some()
            || info.terminal
            || !self.pending.is_empty()
            || (self.endpoint == Endpoint::Responses && !self.checked.is_empty());
        let legacy_function = self.endpoint == Endpoint::ChatCompletions
            && frame
                .data
                .as_ref()
                .is_some_and(|d| memchr::memmem::find(d, b"\"function_call\"").is_some());
        if !relevant && !legacy_function {
            return Verdict::Forward;
        }
        if let Some(data) = frame.data.as_ref() {
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                self.absorb(&v, info);
            }
        }
        if info.terminal {
            for c in self.pending.values_mut() {
                c.complete = true;
            }
        }
        if !self.pending.is_empty() {
            hold.hold();
        }
        if let Err(e) = self.check_complete() {
            return Verdict::Deny(e);
        }
        if self.pending.is_empty() {
            hold.release();
        }
        Verdict::Forward
    }

    fn on_end(&mut self, hold: &mut HoldControl) -> Result<(), GatewayError> {
        for c in self.pending.values_mut() {
            c.complete = true;
        }
        self.check_complete()?;
        hold.release();
        Ok(())
    }
}

// ---- /v1/tools/check and /v1/tools/execute ----

/// Answer a direct check: `{"tool", "arguments", "session_id"?, "schema"?}`.
/// Returns the JSON answer (`decision`, `code`, `reason`, `steps`); an
/// execute request that is allowed gets `ToolExecutorUnavailable`, one that
/// is refused gets the refusal as an error.
pub fn tools_api(
    guard: Option<Result<Arc<Guardrails>, String>>,
    caller: &Caller,
    session_header: Option<&str>,
    body: &[u8],
    execute: bool,
    rec: &mut CallRecord,
) -> Result<Value, GatewayError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidRequest(format!("the body is not valid JSON: {e}")))?;
    let obj = req
        .as_object()
        .ok_or_else(|| GatewayError::InvalidRequest("the body must be a JSON object".into()))?;
    for k in obj.keys() {
        if !["tool", "arguments", "session_id", "schema"].contains(&k.as_str()) {
            return Err(GatewayError::InvalidRequest(format!(
                "unknown field `{k}` (expected tool, arguments, session_id, schema)"
            )));
        }
    }
    let tool = obj
        .get("tool")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| GatewayError::InvalidRequest("`tool` (a tool name) is required".into()))?;
    let arguments = match obj.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let session = match obj.get("session_id") {
        None | Some(Value::Null) => session_header.map(str::to_owned),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_SESSION_ID => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(GatewayError::InvalidRequest(format!(
                "`session_id` must be a non-empty string of at most {MAX_SESSION_ID} bytes"
            )))
        }
    };
    let schema = match obj.get("schema") {
        None | Some(Value::Null) => None,
        Some(s @ Value::Object(_)) => Some(s.clone()),
        Some(_) => {
            return Err(GatewayError::InvalidRequest(
                "`schema` must be a JSON schema object".into(),
            ))
        }
    };
    let g = match guard {
        None => {
            rec.step(
                "tools_check",
                "allow",
                "tools",
                "gateway",
                json!({"tool": tool, "governed": false}),
            );
            return Ok(json!({"decision": "allow", "tool": tool, "governed": false, "steps": []}));
        }
        Some(Err(reason)) => {
            rec.step(
                "apply_compiled_policy",
                "error",
                "policy",
                "control_plane",
                json!({"error": "guardrail_failed"}),
            );
            return Err(GatewayError::GuardrailFailed {
                step: "apply_compiled_policy",
                reason,
            });
        }
        Some(Ok(g)) => g,
    };
    let declared = match schema {
        Some(s) => DeclaredTools::single(tool, Some(s)),
        None => DeclaredTools::unknown(),
    };
    let gate = ToolGate::new(g, declared, caller, session.as_deref());
    let r = gate.check(tool, &arguments, 1);
    record(rec, &r.fragments);
    let steps: Vec<Value> = r.fragments.iter().map(Fragment::to_json).collect();
    match r.denied {
        Some(e) if execute => Err(e),
        Some(e) => Ok(
            json!({"decision": "deny", "tool": tool, "catalog_id": r.catalog_id,
            "session": gate.session, "code": e.code(), "reason": e.to_string(), "steps": steps}),
        ),
        None if execute => Err(GatewayError::ToolExecutorUnavailable),
        None => Ok(
            json!({"decision": "allow", "tool": tool, "catalog_id": r.catalog_id,
            "session": gate.session, "steps": steps}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuardrailsConfig;
    use crate::relay::{RelayLimits, StreamRelay};

    fn caller(agent: &str) -> Caller {
        Caller {
            agent: agent.into(),
            method: crate::auth::AuthMethod::ApiKey,
            org: None,
            project: None,
            sandbox: None,
            models: Vec::new(),
            tool_scope: None,
        }
    }

    fn guard(tools: &str) -> Arc<Guardrails> {
        let mut c = GuardrailsConfig::all_off();
        c.tools_deny = vec!["shell_*".into()];
        c.tools = Some(serde_norway::from_str(tools).expect("tools config"));
        let rules = crate::pipeline::shared_rules().expect("rules");
        Arc::new(Guardrails::from_config(&c, rules).expect("guardrails"))
    }

    const TOOLS: &str = "allow: ['get_*', 'postgres_query', 'collibra_update_asset', 'stripe_create_refund', 'shell_exec']\ndiscovery: block\nschemas: {customers: [read, write], finance: [read], pii_archive: []}\nconstraints: {stripe.create_refund: {max_amount: 1000}}\nloop_guard: {max_repeats: 2, max_destructive_in_a_row: 3}\n";

    fn declared() -> DeclaredTools {
        let body: Map<String, Value> = serde_json::from_value(json!({"tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"], "additionalProperties": false}}},
            {"name": "postgres_query", "input_schema": {"type": "object"}},
            {"type": "function", "name": "collibra_update_asset", "parameters": {"type": "object"}},
            {"type": "function", "name": "stripe_create_refund", "parameters": {"type": "object"}},
            {"type": "function", "name": "shell_exec", "parameters": {"type": "object"}},
        ]}))
        .unwrap();
        DeclaredTools::from_body(&body)
    }

    fn gate(session: &str) -> ToolGate {
        let mut g = (*guard(TOOLS)).clone();
        g.tools.catalog.insert(
            "acme.get_weather".into(),
            CatalogTool {
                id: "acme.get_weather".into(),
                capabilities: vec!["network_egress".into()],
                ..CatalogTool::default()
            },
        );
        ToolGate::new(Arc::new(g), declared(), &caller("t"), Some(session))
    }

    fn decision(r: &CheckResult) -> (Option<&'static str>, Vec<(&'static str, &'static str)>) {
        (
            r.denied.as_ref().map(GatewayError::code),
            r.fragments.iter().map(|f| (f.step, f.decision)).collect(),
        )
    }

    #[test]
    fn each_step_allows_and_denies() {
        let g = gate("s-steps");
        let ok = g.check("acme_get_weather", "{\"city\":\"Paris\"}", 1);
        // `acme_get_weather` is not on the allow-list.
        assert_eq!(
            ok.denied.as_ref().map(GatewayError::code),
            Some("tool_denied")
        );
        let r = g.check("get_weather", "{\"city\":\"Paris\"}", 1);
        // Not in the catalog: discovered and blocked.
        assert_eq!(
            decision(&r),
            (
                Some("tool_denied"),
                vec![
                    ("tools_allowed", "allow"),
                    ("tools_denied", "allow"),
                    ("tool_discovery", "deny")
                ]
            )
        );
        let r = g.check("shell_exec", "{}", 1);
        assert_eq!(r.fragments.last().map(|f| f.step), Some("tools_denied"));
        let r = g.check("slack_post_message", "{}", 1);
        assert_eq!(
            r.fragments.last().map(|f| (f.step, f.decision)),
            Some(("tools_allowed", "deny"))
        );
        let r = g.check("postgres_query", "{\"schema\":\"finance\"}", 1);
        assert!(r.denied.is_none(), "{:?}", r.fragments);
        let r = g.check("collibra_update_asset", "{\"domain\":\"finance\"}", 1);
        assert_eq!(
            r.fragments.last().map(|f| (f.step, f.decision)),
            Some(("schemas_acl", "deny"))
        );
        let r = g.check("postgres_query", "{\"schema\":\"pii_archive.people\"}", 1);
        assert_eq!(
            r.fragments.last().map(|f| (f.step, f.decision)),
            Some(("schemas_acl", "deny"))
        );
        let r = g.check("collibra_update_asset", "{\"domain\":\"customers\"}", 1);
        assert!(r.denied.is_none());
        let r = g.check("stripe_create_refund", "{\"amount\": 1500}", 1);
        assert_eq!(
            r.fragments.last().map(|f| (f.step, f.decision)),
            Some(("tool_arg_validation", "deny"))
        );
        let r = g.check("stripe_create_refund", "{\"amount\": \"1500\"}", 1);
        assert!(r.denied.is_some());
        let r = g.check("stripe_create_refund", "{\"amount\": 900}", 1);
        assert!(r.denied.is_none(), "{:?}", r.fragments);
    }

    #[test]
    fn malformed_arguments_are_refused_with_a_reason() {
        let g = gate("s-bad");
        for bad in [
            "{\"city\":",
            "[1,2]",
            "\"x\"",
            "{\"city\": \"Paris\"}}",
            "nul",
        ] {
            let r = g.check("postgres_query", bad, 1);
            let e = r.denied.expect("denied");
            assert_eq!(e.code(), "tool_denied");
            assert!(e.to_string().contains("tool_arg_validation"), "{e}");
        }
    }

    #[test]
    fn json_schema_is_checked() {
        let mut g = (*guard("discovery: off\n")).clone();
        g.tools.validate_arguments = true;
        let gate = ToolGate::new(Arc::new(g), declared(), &caller("t"), Some("s-schema"));
        assert!(gate
            .check("get_weather", "{\"city\":\"Paris\"}", 1)
            .denied
            .is_none());
        for bad in [
            "{}",
            "{\"city\": 3}",
            "{\"city\": \"Paris\", \"x\": 1}",
            "{\"city\": \"a very long city name, longer than twenty\"}",
        ] {
            let r = gate.check("get_weather", bad, 1);
            assert!(r.denied.is_some(), "{bad}");
        }
    }

    #[test]
    fn loop_guard_ends_the_session() {
        let g = gate("s-loop");
        let args = "{\"schema\":\"finance\"}";
        assert!(g.check("postgres_query", args, 1).denied.is_none());
        assert!(g.check("postgres_query", args, 1).denied.is_none());
        let r = g.check("postgres_query", args, 1);
        assert_eq!(
            r.denied.as_ref().map(GatewayError::code),
            Some("loop_guard")
        );
        // Ended: another call is refused too, and a new request as well.
        let r = g.check("postgres_query", "{\"schema\":\"customers\"}", 1);
        assert_eq!(
            r.denied.as_ref().map(GatewayError::code),
            Some("loop_guard")
        );
        let mut rec = CallRecord::new("r".into());
        assert!(g.session_open(&mut rec).is_err());
        // Another session is not affected.
        let other = gate("s-loop-2");
        assert!(other.check("postgres_query", args, 1).denied.is_none());
        assert!(other.session_open(&mut rec).is_ok());
    }

    #[test]
    fn destructive_calls_in_a_row_end_the_session() {
        let g = gate("s-destructive");
        for i in 0..3 {
            let a = format!("{{\"domain\":\"customers\",\"n\":{i}}}");
            assert!(g.check("collibra_update_asset", &a, 1).denied.is_none());
        }
        let r = g.check(
            "collibra_update_asset",
            "{\"domain\":\"customers\",\"n\":9}",
            1,
        );
        assert_eq!(
            r.denied.as_ref().map(GatewayError::code),
            Some("loop_guard")
        );
    }

    #[test]
    fn policy_tools_apply() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policies/examples/golden/catalog-steward/compiled.json");
        let doc = std::fs::read_to_string(path).unwrap();
        let mut g = (*guard("{}")).clone();
        g.apply_policy(&doc).unwrap();
        let gate = ToolGate::new(
            Arc::new(g),
            DeclaredTools::unknown(),
            &caller("cs"),
            Some("s-pol"),
        );
        let r = gate.check("collibra_update_asset", "{\"domain\":\"pii_archive\"}", 1);
        assert_eq!(
            r.fragments.last().map(|f| (f.step, f.decision)),
            Some(("schemas_acl", "deny"))
        );
        let r = gate.check("collibra_update_asset", "{\"domain\":\"customers\"}", 1);
        assert!(r.denied.is_none(), "{:?}", r.fragments);
        let r = gate.check("acme_crm_lookup", "{\"table\":\"customers\"}", 1);
        assert!(r.denied.is_none(), "{:?}", r.fragments);
        let r = gate.check("gmail_send", "{}", 1);
        assert!(r.denied.is_some());
        let r = gate.check("made_up_tool", "{}", 1);
        assert!(r.denied.is_some());
    }

    // ---- streams at every split ----

    fn chat_stream(name: &str, args: &str, pieces: usize) -> String {
        let mut s =
            String::from("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok \"}}]}\n\n");
        s.push_str(&format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{{\"name\":\"{name}\",\"arguments\":\"\"}}}}]}}}}]}}\n\n"));
        let chars: Vec<char> = args.chars().collect();
        for p in chars.chunks(pieces.max(1)) {
            let p: String = p.iter().collect();
            let frag = serde_json::to_string(&p).unwrap();
            s.push_str(&format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{frag}}}}}]}}}}]}}\n\n"));
        }
        s.push_str(
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        );
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn anthropic_stream(name: &str, args: &str, pieces: usize) -> String {
        let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n");
        s.push_str(&format!("event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"{name}\",\"input\":{{}}}}}}\n\n"));
        let chars: Vec<char> = args.chars().collect();
        for p in chars.chunks(pieces.max(1)) {
            let p: String = p.iter().collect();
            let frag = serde_json::to_string(&p).unwrap();
            s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{frag}}}}}\n\n"));
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        s
    }

    fn responses_stream(name: &str, args: &str, done_args: &str) -> String {
        let a = serde_json::to_string(args).unwrap();
        let d = serde_json::to_string(done_args).unwrap();
        let mut s = format!("event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"{name}\",\"arguments\":\"\"}}}}\n\n");
        s.push_str(&format!("event: response.function_call_arguments.delta\ndata: {{\"type\":\"response.function_call_arguments.delta\",\"output_index\":0,\"delta\":{a}}}\n\n"));
        s.push_str(&format!("event: response.function_call_arguments.done\ndata: {{\"type\":\"response.function_call_arguments.done\",\"output_index\":0,\"arguments\":{d}}}\n\n"));
        s.push_str(&format!("event: response.output_item.done\ndata: {{\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"{name}\",\"arguments\":{d}}}}}\n\n"));
        s.push_str(&format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"{name}\",\"arguments\":{d}}}]}}}}\n\n"));
        s
    }

    fn relay(
        endpoint: Endpoint,
        gate: &Arc<ToolGate>,
        input: &str,
        split: usize,
    ) -> (String, Option<GatewayError>) {
        let (hook, _report) = gate.stream_hook(endpoint);
        let mut r = StreamRelay::new(
            endpoint,
            "id".into(),
            vec![Box::new(hook)],
            RelayLimits::default(),
        );
        let mut out = Vec::new();
        let mut err = None;
        let b = input.as_bytes();
        for part in [&b[..split], &b[split..]] {
            let o = r.push(part);
            out.extend(o.write.iter().flat_map(|x| x.to_vec()));
            err = err.or(o.ended_with);
        }
        let o = r.finish();
        out.extend(o.write.iter().flat_map(|x| x.to_vec()));
        (String::from_utf8(out).unwrap(), err.or(o.ended_with))
    }

    fn stream_gate(session: &str) -> Arc<ToolGate> {
        let mut g =
            (*guard("discovery: off\nloop_guard: {max_repeats: 0, max_destructive_in_a_row: 0}\n"))
                .clone();
        g.tools.validate_arguments = true;
        let body: Map<String, Value> = serde_json::from_value(json!({"tools": [
            {"name": "get_weather", "input_schema": {"type": "object", "required": ["city"]}},
            {"name": "shell_exec", "input_schema": {"type": "object"}}]}))
        .unwrap();
        Arc::new(ToolGate::new(
            Arc::new(g),
            DeclaredTools::from_body(&body),
            &caller("t"),
            Some(session),
        ))
    }

    #[test]
    fn allowed_calls_pass_byte_identical_at_every_split() {
        let gate = stream_gate("s-split-ok");
        let args = "{\"city\":\"Paris\"}";
        for (endpoint, input) in [
            (
                Endpoint::ChatCompletions,
                chat_stream("get_weather", args, 3),
            ),
            (
                Endpoint::AnthropicMessages,
                anthropic_stream("get_weather", args, 3),
            ),
            (
                Endpoint::Responses,
                responses_stream("get_weather", args, args),
            ),
        ] {
            for split in 0..=input.len() {
                let (out, err) = relay(endpoint, &gate, &input, split);
                assert!(err.is_none(), "{endpoint:?} split {split}: {err:?}");
                assert_eq!(out, input, "{endpoint:?} split {split}");
            }
        }
    }

    #[test]
    fn denied_calls_never_reach_the_client_at_every_split() {
        let gate = stream_gate("s-split-deny");
        // The final response names a call the stream never showed.
        let ok = responses_stream(
            "get_weather",
            "{\"city\":\"Paris\"}",
            "{\"city\":\"Paris\"}",
        );
        let at = ok.rfind("\"name\":\"get_weather\"").expect("name");
        let smuggled = format!("{}\"name\":\"shell_exec\"{}", &ok[..at], &ok[at + 20..]);
        for split in 0..=smuggled.len() {
            let (out, err) = relay(Endpoint::Responses, &gate, &smuggled, split);
            assert_eq!(err.map(|e| e.code()), Some("tool_denied"), "split {split}");
            assert!(
                !out.contains("\"name\":\"shell_exec\""),
                "split {split}: {out}"
            );
            assert!(
                out.contains("event: response.failed\n") && !out.contains("response.completed")
            );
        }
        let cases = [
            (
                Endpoint::ChatCompletions,
                chat_stream("shell_exec", "{\"cmd\":\"rm -rf /\"}", 2),
                "data: {\"error\":",
            ),
            (
                Endpoint::AnthropicMessages,
                anthropic_stream("shell_exec", "{\"cmd\":\"rm -rf /\"}", 2),
                "event: error\n",
            ),
            (
                Endpoint::Responses,
                responses_stream("shell_exec", "{}", "{}"),
                "event: response.failed\n",
            ),
            // Malformed arguments.
            (
                Endpoint::ChatCompletions,
                chat_stream("get_weather", "{\"city\":", 1),
                "data: {\"error\":",
            ),
            (
                Endpoint::AnthropicMessages,
                anthropic_stream("get_weather", "{\"city\"", 1),
                "event: error\n",
            ),
            // The done event repeats different arguments than the deltas.
            (
                Endpoint::Responses,
                responses_stream(
                    "get_weather",
                    "{\"city\":\"Paris\"}",
                    "{\"city\":\"x\",\"cmd\":1}",
                ),
                "event: response.failed\n",
            ),
        ];
        for (endpoint, input, error_start) in cases {
            for split in 0..=input.len() {
                let (out, err) = relay(endpoint, &gate, &input, split);
                let e = err.unwrap_or_else(|| panic!("{endpoint:?} split {split}: not denied"));
                assert_eq!(e.code(), "tool_denied");
                assert!(
                    !out.contains("tool_calls")
                        && !out.contains("tool_use")
                        && !out.contains("function_call")
                        && !out.contains("partial_json")
                        && !out.contains("rm -rf"),
                    "{endpoint:?} split {split}: leaked {out}"
                );
                let err_at = out
                    .find(error_start)
                    .unwrap_or_else(|| panic!("{endpoint:?}: no error event in {out}"));
                // Anthropic error events carry a type, not a code.
                let code = if endpoint == Endpoint::AnthropicMessages {
                    "permission_error"
                } else {
                    "tool_denied"
                };
                assert!(
                    out[err_at..].contains(code) && out.ends_with("\n\n"),
                    "{out}"
                );
                // Only the text before the call was released.
                assert!(
                    err_at == 0
                        || out[..err_at].contains("ok ")
                        || out[..err_at].contains("message_start"),
                    "{out}"
                );
            }
        }
    }
}
