//! Tool catalog resolution: the built-in catalog plus tenant extensions
//! (new tools, `extends:` with `+cap`/`-cap`, `override: true`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};
use crate::model::{Slots, Taxonomy, ToolDef};
use crate::rules::Level;

/// A tool after extensions are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedTool {
    pub id: String,
    pub capabilities: BTreeSet<String>,
    pub destination_param: Option<String>,
    pub content_param: Option<String>,
    pub amount_param: Option<String>,
    pub schema_param: Option<String>,
    pub mcp_server: Option<String>,
    pub native: Vec<String>,
    /// `file:line` of the definition that produced this tool.
    pub defined_at: String,
    /// Level of that definition (`builtin` for the shipped catalog).
    pub level: Level,
    /// Capabilities removed by an extension or override, with where.
    pub removed: Vec<(String, Level, String)>,
}

/// A tenant catalog entry with its location.
#[derive(Debug, Clone)]
pub struct Extension {
    pub level: Level,
    pub at: String,
    pub def: ToolDef,
}

fn slots_of(s: &Option<Slots>) -> Slots {
    s.clone().unwrap_or_default()
}

fn check_caps(tax: &Taxonomy, caps: &[String], at: &str, tool: &str, deltas: bool) -> Result<()> {
    for c in caps {
        let (name, is_delta) = match c.strip_prefix('+').or_else(|| c.strip_prefix('-')) {
            Some(n) => (n, true),
            None => (c.as_str(), false),
        };
        if deltas && !is_delta {
            return Err(invalid(at, format!("tool '{tool}' extends another tool: capability '{c}' must be written +{c} or -{c}")));
        }
        if !deltas && is_delta {
            return Err(invalid(
                at,
                format!("tool '{tool}': '{c}' is a delta, but the tool does not use `extends`"),
            ));
        }
        if !tax.capabilities.contains_key(name) {
            return Err(invalid(
                at,
                format!("tool '{tool}': unknown capability '{name}'"),
            ));
        }
    }
    Ok(())
}

fn invalid(at: &str, message: String) -> PolicyError {
    let (file, line) = split_at(at);
    PolicyError::Invalid {
        file,
        line,
        message,
    }
}

pub(crate) fn split_at(at: &str) -> (String, u32) {
    match at.rsplit_once(':') {
        Some((f, l)) => (f.to_string(), l.parse().unwrap_or(1)),
        None => (at.to_string(), 1),
    }
}

/// Resolve the catalog for one agent. `extensions` are in level order.
pub fn resolve(
    tax: &Taxonomy,
    builtin: &[ToolDef],
    builtin_file: &str,
    builtin_lines: &crate::parse::LineIndex,
    extensions: &[Extension],
) -> Result<BTreeMap<String, ResolvedTool>> {
    let mut tools: BTreeMap<String, ResolvedTool> = BTreeMap::new();
    for t in builtin {
        let s = slots_of(&t.slots);
        tools.insert(
            t.id.clone(),
            ResolvedTool {
                id: t.id.clone(),
                capabilities: t.capabilities.iter().cloned().collect(),
                destination_param: s.destination_param,
                content_param: s.content_param,
                amount_param: s.amount_param,
                schema_param: s.schema_param,
                mcp_server: t.mcp_server.clone(),
                native: t.native.clone(),
                defined_at: format!(
                    "{builtin_file}:{}",
                    builtin_lines.line(&format!("tools.{}", t.id))
                ),
                level: Level::Builtin,
                removed: vec![],
            },
        );
    }
    // Definitions by id, for `extends` resolution in any order.
    let mut pending: BTreeMap<String, &Extension> = BTreeMap::new();
    for e in extensions {
        if e.def.id.trim().is_empty() {
            return Err(invalid(&e.at, "catalog entry without an id".into()));
        }
        if e.def.r#override {
            continue;
        }
        if tools.contains_key(&e.def.id) || pending.contains_key(&e.def.id) {
            return Err(invalid(
                &e.at,
                format!(
                    "tool '{}' is already in the catalog; use `override: true` to redefine it",
                    e.def.id
                ),
            ));
        }
        pending.insert(e.def.id.clone(), e);
    }
    let ids: Vec<String> = pending.keys().cloned().collect();
    for id in ids {
        let mut chain = Vec::new();
        resolve_one(tax, &id, &pending, &mut tools, &mut chain)?;
    }
    // Overrides, in level order.
    for e in extensions.iter().filter(|e| e.def.r#override) {
        let base = tools.get(&e.def.id).cloned().ok_or_else(|| {
            invalid(
                &e.at,
                format!(
                    "`override: true` for '{}', which is not in the catalog",
                    e.def.id
                ),
            )
        })?;
        let is_delta = e
            .def
            .capabilities
            .iter()
            .any(|c| c.starts_with('+') || c.starts_with('-'));
        check_caps(tax, &e.def.capabilities, &e.at, &e.def.id, is_delta)?;
        let mut t = base.clone();
        if is_delta {
            apply_deltas(&mut t, &e.def.capabilities, e.level, &e.at);
        } else {
            let new: BTreeSet<String> = e.def.capabilities.iter().cloned().collect();
            for c in base.capabilities.difference(&new) {
                t.removed.push((c.clone(), e.level, e.at.clone()));
            }
            t.capabilities = new;
        }
        apply_slots(&mut t, &e.def);
        t.defined_at = e.at.clone();
        t.level = e.level;
        tools.insert(t.id.clone(), t);
    }
    Ok(tools)
}

fn apply_deltas(t: &mut ResolvedTool, deltas: &[String], level: Level, at: &str) {
    for d in deltas {
        if let Some(c) = d.strip_prefix('+') {
            t.capabilities.insert(c.to_string());
        } else if let Some(c) = d.strip_prefix('-') {
            if t.capabilities.remove(c) {
                t.removed.push((c.to_string(), level, at.to_string()));
            }
        }
    }
}

fn apply_slots(t: &mut ResolvedTool, def: &ToolDef) {
    if let Some(s) = &def.slots {
        if s.destination_param.is_some() {
            t.destination_param = s.destination_param.clone();
        }
        if s.content_param.is_some() {
            t.content_param = s.content_param.clone();
        }
        if s.amount_param.is_some() {
            t.amount_param = s.amount_param.clone();
        }
        if s.schema_param.is_some() {
            t.schema_param = s.schema_param.clone();
        }
    }
    if def.mcp_server.is_some() {
        t.mcp_server = def.mcp_server.clone();
    }
    if !def.native.is_empty() {
        t.native = def.native.clone();
    }
}

fn resolve_one(
    tax: &Taxonomy,
    id: &str,
    pending: &BTreeMap<String, &Extension>,
    tools: &mut BTreeMap<String, ResolvedTool>,
    chain: &mut Vec<String>,
) -> Result<()> {
    if tools.contains_key(id) {
        return Ok(());
    }
    if chain.iter().any(|c| c == id) {
        chain.push(id.to_string());
        return Err(PolicyError::Cycle {
            kind: "tool extends",
            chain: chain.join(" → "),
        });
    }
    let e = pending[id];
    chain.push(id.to_string());
    let t = match &e.def.extends {
        None => {
            check_caps(tax, &e.def.capabilities, &e.at, id, false)?;
            let s = slots_of(&e.def.slots);
            ResolvedTool {
                id: id.to_string(),
                capabilities: e.def.capabilities.iter().cloned().collect(),
                destination_param: s.destination_param,
                content_param: s.content_param,
                amount_param: s.amount_param,
                schema_param: s.schema_param,
                mcp_server: e.def.mcp_server.clone(),
                native: e.def.native.clone(),
                defined_at: e.at.clone(),
                level: e.level,
                removed: vec![],
            }
        }
        Some(base) => {
            if !tools.contains_key(base) {
                if pending.contains_key(base) {
                    resolve_one(tax, base, pending, tools, chain)?;
                } else {
                    return Err(invalid(
                        &e.at,
                        format!("tool '{id}' extends unknown tool '{base}'"),
                    ));
                }
            }
            check_caps(tax, &e.def.capabilities, &e.at, id, true)?;
            let mut t = tools[base].clone();
            t.id = id.to_string();
            t.removed.clear();
            apply_deltas(&mut t, &e.def.capabilities, e.level, &e.at);
            apply_slots(&mut t, &e.def);
            t.defined_at = e.at.clone();
            t.level = e.level;
            t
        }
    };
    chain.pop();
    tools.insert(id.to_string(), t);
    Ok(())
}
