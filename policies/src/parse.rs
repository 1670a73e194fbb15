//! YAML parsing with clear errors and a line index for because-trails.
//!
//! `serde_norway` gives no spans for values, so [`LineIndex`] reconstructs
//! the line of each key path from the (block-style) YAML text. Flow-style
//! values (`{a: 1}`, `[x, y]`) resolve to the line of their key.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_norway::Value as Yaml;

use crate::error::{PolicyError, Result};
use crate::model::*;

/// Largest accepted source file (YAML or Rego).
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Deepest accepted YAML nesting.
pub const MAX_YAML_DEPTH: usize = 32;

/// Line numbers of key paths in one YAML text.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: BTreeMap<String, u32>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut lines = BTreeMap::new();
        // (indent, key)
        let mut stack: Vec<(usize, String)> = Vec::new();
        for (no, raw) in text.lines().enumerate() {
            let line_no = no as u32 + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let indent = raw.len() - trimmed.len();
            if let Some(item) = trimmed
                .strip_prefix("- ")
                .or_else(|| (trimmed == "-").then_some(""))
            {
                while stack.last().is_some_and(|(i, _)| *i > indent) {
                    stack.pop();
                }
                let item = strip_comment(item).trim();
                let item_indent = indent + 2;
                if let Some((k, v)) = split_key(item) {
                    // A mapping inside a list: name it by its id/name value if any.
                    let v = unquote(v.trim());
                    if (k == "id" || k == "name") && !v.is_empty() {
                        let path = join(&stack, &v);
                        lines.entry(path).or_insert(line_no);
                        stack.push((item_indent - 1, v));
                    }
                } else if !item.is_empty() {
                    let path = join(&stack, &unquote(item));
                    lines.entry(path).or_insert(line_no);
                }
                continue;
            }
            if let Some((k, rest)) = split_key(trimmed) {
                while stack.last().is_some_and(|(i, _)| *i >= indent) {
                    stack.pop();
                }
                let key = unquote(k);
                let path = join(&stack, &key);
                lines.entry(path.clone()).or_insert(line_no);
                // Flow sequence items on the same line: `key: [a, b]`.
                let rest = strip_comment(rest).trim();
                if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                    for item in inner.split(',') {
                        let item = unquote(item.trim());
                        if !item.is_empty() {
                            lines.entry(format!("{path}.{item}")).or_insert(line_no);
                        }
                    }
                }
                stack.push((indent, key));
            }
        }
        LineIndex { lines }
    }

    /// Line of a dotted key path; falls back to the closest ancestor, then 1.
    pub fn line(&self, path: &str) -> u32 {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return 1,
            }
        }
    }

    /// Line of an exact path, if present.
    pub fn exact(&self, path: &str) -> Option<u32> {
        self.lines.get(path).copied()
    }
}

fn join(stack: &[(usize, String)], key: &str) -> String {
    let mut s = String::new();
    for (_, k) in stack {
        s.push_str(k);
        s.push('.');
    }
    s.push_str(key);
    s
}

fn strip_comment(s: &str) -> &str {
    match s.find(" #") {
        Some(i) => &s[..i],
        None => s,
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(s);
    s.to_string()
}

/// `key: rest` where key is a plain or quoted scalar without spaces.
fn split_key(s: &str) -> Option<(&str, &str)> {
    let idx = s.find(':')?;
    let (k, rest) = s.split_at(idx);
    let rest = &rest[1..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    if k.is_empty() || k.contains(' ') || k.starts_with('{') || k.starts_with('[') {
        return None;
    }
    Some((k, rest))
}

fn depth(v: &Yaml) -> usize {
    match v {
        Yaml::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
        Yaml::Mapping(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Yaml::Tagged(t) => 1 + depth(&t.value),
        _ => 0,
    }
}

/// Parse YAML text into a generic value, enforcing size and depth limits.
pub fn parse_yaml(file: &str, text: &str) -> Result<Yaml> {
    if text.len() > MAX_SOURCE_BYTES {
        return Err(PolicyError::TooLarge {
            file: file.into(),
            size: text.len(),
            limit: MAX_SOURCE_BYTES,
        });
    }
    let value: Yaml = serde_norway::from_str(text).map_err(|e| PolicyError::Parse {
        file: file.into(),
        message: e.to_string(),
    })?;
    let d = depth(&value);
    if d > MAX_YAML_DEPTH {
        return Err(PolicyError::Parse {
            file: file.into(),
            message: format!("nesting depth {d} exceeds the limit of {MAX_YAML_DEPTH}"),
        });
    }
    Ok(value)
}

fn from_value<T: DeserializeOwned>(file: &str, text: &str, v: Yaml, context: &str) -> Result<T> {
    serde_norway::from_value(v).map_err(|e| {
        let msg = e.to_string();
        let line = unknown_field_line(text, &msg);
        let ctx = if context.is_empty() {
            String::new()
        } else {
            format!("{context}: ")
        };
        match line {
            Some(l) => PolicyError::Parse {
                file: format!("{file}:{l}"),
                message: format!("{ctx}{msg}"),
            },
            None => PolicyError::Parse {
                file: file.into(),
                message: format!("{ctx}{msg}"),
            },
        }
    })
}

fn unknown_field_line(text: &str, msg: &str) -> Option<u32> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    let field = &msg[start..end];
    text.lines().enumerate().find_map(|(i, l)| {
        let t = l.trim_start().trim_start_matches("- ");
        t.strip_prefix(field)
            .filter(|r| r.starts_with(':'))
            .map(|_| i as u32 + 1)
    })
}

fn as_mapping(file: &str, v: Yaml, what: &str) -> Result<serde_norway::Mapping> {
    match v {
        Yaml::Mapping(m) => Ok(m),
        Yaml::Null => Ok(serde_norway::Mapping::new()),
        other => Err(PolicyError::Parse {
            file: file.into(),
            message: format!("{what} must be a mapping, found {}", kind_of(&other)),
        }),
    }
}

fn kind_of(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a sequence",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// Split the header keys off a mapping; the rest must be [`Rules`].
fn split<H: DeserializeOwned>(
    file: &str,
    text: &str,
    v: Yaml,
    header_keys: &[&str],
    ctx: &str,
) -> Result<(H, Rules)> {
    let mut map = as_mapping(file, v, if ctx.is_empty() { "document" } else { ctx })?;
    let mut header = serde_norway::Mapping::new();
    for k in header_keys {
        if let Some(v) = map.remove(*k) {
            header.insert(Yaml::String((*k).to_string()), v);
        }
    }
    let h: H = from_value(file, text, Yaml::Mapping(header), ctx)?;
    let rules: Rules = from_value(file, text, Yaml::Mapping(map), ctx)?;
    Ok((h, rules))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocHeader {
    #[serde(default)]
    org: Option<OrgHeader>,
    #[serde(default)]
    agent: Option<AgentHeader>,
    #[serde(default)]
    catalog: Vec<ToolDef>,
    #[serde(default)]
    overlay: Option<Rules>,
}

/// Parse one operator policy file.
pub fn parse_document(file: &str, text: &str) -> Result<PolicyDocument> {
    let v = parse_yaml(file, text)?;
    let (h, rules): (DocHeader, Rules) =
        split(file, text, v, &["org", "agent", "catalog", "overlay"], "")?;
    Ok(PolicyDocument {
        org: h.org,
        agent: h.agent,
        catalog: h.catalog,
        rules,
        overlay: h.overlay,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackHead {
    pack: PackHeader,
}

/// Parse a compliance pack file.
pub fn parse_pack(file: &str, text: &str) -> Result<PackDocument> {
    let v = parse_yaml(file, text)?;
    let (h, rules): (PackHead, Rules) = split(file, text, v, &["pack"], "")?;
    Ok(PackDocument {
        pack: h.pack,
        rules,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionHead {
    description: String,
    #[serde(default)]
    tier: Option<Tier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcernHead {
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxonomyRaw {
    functions: serde_norway::Mapping,
    categories: BTreeMap<String, CategoryDef>,
    concerns: serde_norway::Mapping,
    capabilities: BTreeMap<String, CapabilityDef>,
}

fn key_string(file: &str, k: &Yaml) -> Result<String> {
    k.as_str()
        .map(str::to_string)
        .ok_or_else(|| PolicyError::Parse {
            file: file.into(),
            message: format!("expected a string key, found {}", kind_of(k)),
        })
}

/// Parse the taxonomy (functions, categories, concerns, capabilities).
pub fn parse_taxonomy(file: &str, text: &str) -> Result<Taxonomy> {
    let v = parse_yaml(file, text)?;
    let raw: TaxonomyRaw = from_value(file, text, v, "")?;
    let mut functions = BTreeMap::new();
    for (k, v) in raw.functions {
        let name = key_string(file, &k)?;
        let (h, rules): (FunctionHead, Rules) = split(
            file,
            text,
            v,
            &["description", "tier"],
            &format!("functions.{name}"),
        )?;
        functions.insert(
            name,
            FunctionDef {
                description: h.description,
                tier: h.tier.unwrap_or(Tier::Worker),
                rules,
            },
        );
    }
    let mut concerns = BTreeMap::new();
    for (k, v) in raw.concerns {
        let name = key_string(file, &k)?;
        let (h, rules): (ConcernHead, Rules) =
            split(file, text, v, &["description"], &format!("concerns.{name}"))?;
        concerns.insert(
            name,
            ConcernDef {
                description: h.description,
                rules,
            },
        );
    }
    Ok(Taxonomy {
        functions,
        categories: raw.categories,
        concerns,
        capabilities: raw.capabilities,
    })
}

/// Parse a tool catalog file.
pub fn parse_catalog(file: &str, text: &str) -> Result<CatalogDocument> {
    let v = parse_yaml(file, text)?;
    from_value(file, text, v, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_block_and_flow() {
        let text = "agent:\n  name: a\n  function: refund_processor\npacks:\n  - gdpr-baseline\n  - pci-dss\nsteps:\n  pii_detection: { enabled: true }\n  loop_guard:\n    action: block\ntools:\n  deny: [shell.exec, \"fs.write\"]\ncatalog:\n  - id: acme.crm\n    capabilities: [file_read]\n";
        let ix = LineIndex::new(text);
        assert_eq!(ix.line("agent.function"), 3);
        assert_eq!(ix.line("packs.pci-dss"), 6);
        assert_eq!(ix.line("steps.pii_detection.enabled"), 8);
        assert_eq!(ix.line("steps.loop_guard.action"), 10);
        assert_eq!(ix.line("tools.deny.fs.write"), 12);
        assert_eq!(ix.line("catalog.acme.crm.capabilities"), 15);
        assert_eq!(ix.line("nothing.here"), 1);
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let err =
            parse_document("org/a.yaml", "packs: []\nbudgett:\n  tokens_per_day: 3\n").unwrap_err();
        let s = err.to_string();
        assert!(s.contains("org/a.yaml:2"), "{s}");
        assert!(s.contains("budgett"), "{s}");
        let err = parse_document("org/a.yaml", "budget:\n  tokens_per_dya: 3\n").unwrap_err();
        assert!(err.to_string().contains("tokens_per_dya"), "{err}");
    }

    #[test]
    fn deep_nesting_and_size_are_rejected() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let err = parse_document("x.yaml", &deep).unwrap_err();
        assert!(matches!(err, PolicyError::Parse { .. }), "{err}");
        let big = format!(
            "compliance_tags:\n{}",
            "  - GDPR:Art32\n".repeat(MAX_SOURCE_BYTES / 10)
        );
        assert!(matches!(
            parse_document("x.yaml", &big),
            Err(PolicyError::TooLarge { .. })
        ));
    }

    #[test]
    fn non_mapping_document_is_an_error() {
        assert!(parse_document("x.yaml", "- a\n- b\n").is_err());
        assert_eq!(
            parse_document("x.yaml", "").unwrap(),
            PolicyDocument::default()
        );
    }
}
