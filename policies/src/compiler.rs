//! The cascade compiler: policy source tree → [`CompiledPolicy`] for one agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::builtin::{self, Builtins, ParamKind};
use crate::catalog::{self, Extension, ResolvedTool};
use crate::compiled::*;
use crate::error::{ForbiddenGrant, PolicyError, RelaxAttempt, Result};
use crate::model::{AgentHeader, Rules, Tier};
use crate::parse::{self, LineIndex};
use crate::rego;
use crate::rules::{
    combine_level, stack_level, Because, Contribution, EffectiveRule, Level, RuleValue,
};

/// One source file, already read by the caller. `path` is relative to the
/// policy directory, with `/` separators (e.g. `agents/bot/agent.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// A policy source tree: `org/`, `projects/<name>/`, `agents/<name>/`, each
/// holding `*.yaml` (or `*.yml`) and `*.rego`. Other files are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySource {
    files: Vec<SourceFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Org,
    Project(String),
    Agent(String),
}

impl PolicySource {
    pub fn new(mut files: Vec<SourceFile>) -> PolicySource {
        for f in &mut files {
            f.path = f
                .path
                .replace('\\', "/")
                .trim_start_matches("./")
                .to_string();
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        PolicySource { files }
    }

    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// Whether a path is a policy file the compiler reads.
    pub fn is_policy_file(path: &str) -> bool {
        path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".rego")
    }

    fn place(path: &str) -> Result<Place> {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["org", _] => Ok(Place::Org),
            ["projects", p, _] => Ok(Place::Project((*p).to_string())),
            ["agents", a, _] => Ok(Place::Agent((*a).to_string())),
            _ => Err(PolicyError::Layout {
                file: path.into(),
                message: "policy files belong in org/, projects/<name>/ or agents/<name>/".into(),
            }),
        }
    }

    /// Names of the agents in the tree.
    pub fn agents(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .files
            .iter()
            .filter_map(|f| match Self::place(&f.path) {
                Ok(Place::Agent(a)) => Some(a),
                _ => None,
            })
            .collect();
        v.dedup();
        v
    }
}

/// Options of one compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The version to stamp; callers keep it monotonic per agent.
    pub policy_version: u64,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { policy_version: 1 }
    }
}

/// The result of a compilation: the policy and the effective rules behind it.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub policy: CompiledPolicy,
    pub rules: BTreeMap<String, EffectiveRule>,
}

fn builtins() -> Result<&'static Builtins> {
    static B: OnceLock<std::result::Result<Builtins, PolicyError>> = OnceLock::new();
    B.get_or_init(Builtins::load).as_ref().map_err(Clone::clone)
}

/// The built-in content (taxonomy, catalog, packs).
pub fn builtin_content() -> Result<&'static Builtins> {
    builtins()
}

struct Doc<'a> {
    level: Level,
    file: &'a str,
    lines: LineIndex,
    /// Prefix of rule paths in the file (`overlay.` for the overlay).
    prefix: &'static str,
    rules: Rules,
}

struct Grant {
    capability: String,
    because: Because,
    by: String,
}

struct Ctx<'a> {
    b: &'a Builtins,
    tools: &'a BTreeMap<String, ResolvedTool>,
    tax_lines: LineIndex,
    contributions: BTreeMap<Level, Vec<Contribution>>,
    grants: Vec<Grant>,
    categories: BTreeSet<String>,
    concerns: BTreeSet<String>,
    packs: BTreeSet<String>,
    pack_cites: BTreeSet<String>,
}

/// Where the selection or rule is: `file:line`.
#[derive(Clone)]
struct Origin<'a> {
    level: Level,
    via: Vec<String>,
    /// The operator file and the selection's line (for defaults) …
    selection: Option<String>,
    /// … or the operator file's line index (for direct rules).
    file: &'a str,
    lines: Option<&'a LineIndex>,
    prefix: String,
    /// Built-in definition (file, line index, path prefix).
    defined: Option<(&'a str, &'a LineIndex, String)>,
    direct: bool,
}

impl Origin<'_> {
    fn because(&self, path: &str) -> Because {
        let source = match (&self.selection, self.lines) {
            (Some(s), _) => s.clone(),
            (None, Some(ix)) => format!(
                "{}:{}",
                self.file,
                ix.line(&format!("{}{}", self.prefix, path))
            ),
            (None, None) => self.file.to_string(),
        };
        let defined_at = self
            .defined
            .as_ref()
            .map(|(f, ix, p)| format!("{f}:{}", ix.line(&format!("{p}{path}"))));
        Because {
            level: self.level,
            via: self.via.clone(),
            source,
            defined_at,
        }
    }

    fn at(&self, path: &str) -> String {
        match &self.defined {
            Some((f, ix, p)) => format!("{f}:{}", ix.line(&format!("{p}{path}"))),
            None => self.because(path).source,
        }
    }

    fn nested(&self, via: String, selection_path: &str) -> Self {
        let mut o = self.clone();
        if o.selection.is_none() {
            o.selection = Some(self.because(selection_path).source);
        }
        o.via.insert(0, via);
        o.direct = false;
        o
    }
}

fn unknown(
    kind: &'static str,
    name: &str,
    at: &str,
    known: impl Iterator<Item = String>,
) -> PolicyError {
    let (file, line) = catalog::split_at(at);
    let known: Vec<String> = known.collect();
    let close: Vec<&String> = known
        .iter()
        .filter(|k| k.contains(name) || name.contains(k.as_str()) || similar(k, name))
        .take(3)
        .collect();
    let hint = if close.is_empty() {
        String::new()
    } else {
        format!(
            " (did you mean {}?)",
            close
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    PolicyError::Unknown {
        kind,
        name: name.into(),
        file,
        line,
        hint,
    }
}

fn similar(a: &str, b: &str) -> bool {
    // Levenshtein distance of at most 2: catches typos.
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

fn valid_tag(t: &str) -> bool {
    match t.split_once(':') {
        Some((a, b)) => {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
                && !b.is_empty()
                && !b.contains(char::is_whitespace)
        }
        None => false,
    }
}

impl<'a> Ctx<'a> {
    fn push(&mut self, o: &Origin<'_>, key: String, path: &str, value: RuleValue) {
        let because = o.because(path);
        self.contributions
            .entry(o.level)
            .or_default()
            .push(Contribution {
                key,
                value,
                because,
                direct: o.direct,
            });
    }

    fn check_tool(&self, id: &str, o: &Origin<'_>, path: &str) -> Result<()> {
        if self.tools.contains_key(id) {
            Ok(())
        } else {
            Err(unknown("tool", id, &o.at(path), self.tools.keys().cloned()))
        }
    }

    fn check_capability(&self, c: &str, o: &Origin<'_>, path: &str) -> Result<()> {
        if self.b.taxonomy.capabilities.contains_key(c) {
            Ok(())
        } else {
            Err(unknown(
                "capability",
                c,
                &o.at(path),
                self.b.taxonomy.capabilities.keys().cloned(),
            ))
        }
    }

    /// Expand one rules fragment (and everything it selects).
    fn expand(
        &mut self,
        rules: &Rules,
        o: &Origin<'_>,
        pack_stack: &mut Vec<String>,
    ) -> Result<()> {
        let b = self.b;
        for p in &rules.packs {
            let path = format!("packs.{p}");
            let pack = b
                .packs
                .get(p)
                .ok_or_else(|| unknown("pack", p, &o.at(&path), b.packs.keys().cloned()))?;
            if pack_stack.contains(p) {
                pack_stack.push(p.clone());
                return Err(PolicyError::Cycle {
                    kind: "packs",
                    chain: pack_stack.join(" → "),
                });
            }
            if !pack.doc.rules.capabilities.is_empty() {
                return Err(PolicyError::Invalid {
                    file: pack.file.into(),
                    line: 1,
                    message: "a pack cannot grant capabilities".into(),
                });
            }
            self.packs.insert(p.clone());
            self.pack_cites.extend(pack.doc.pack.cites.iter().cloned());
            let ix = LineIndex::new(pack.text);
            let mut no = o.nested(format!("pack:{p}"), &path);
            no.defined = Some((pack.file, &ix, String::new()));
            pack_stack.push(p.clone());
            self.expand(&pack.doc.rules, &no, pack_stack)?;
            pack_stack.pop();
        }
        for c in &rules.categories {
            let path = format!("categories.{c}");
            let def = b.taxonomy.categories.get(c).ok_or_else(|| {
                unknown(
                    "category",
                    c,
                    &o.at(&path),
                    b.taxonomy.categories.keys().cloned(),
                )
            })?;
            self.categories.insert(c.clone());
            let tax_lines = self.tax_lines.clone();
            let mut co = o.nested(format!("category:{c}"), &path);
            co.defined = Some((
                builtin::TAXONOMY_FILE,
                &tax_lines,
                format!("categories.{c}."),
            ));
            let concerns = Rules {
                concerns: def.concerns.clone(),
                ..Rules::default()
            };
            self.expand_concerns(&concerns, &co)?;
        }
        self.expand_concerns(rules, o)?;
        for c in &rules.capabilities {
            let path = format!("capabilities.{c}");
            self.check_capability(c, o, &path)?;
            let by = if o.via.is_empty() {
                "capabilities list".to_string()
            } else {
                o.via.join(" ← ")
            };
            self.grants.push(Grant {
                capability: c.clone(),
                because: o.because(&path),
                by,
            });
        }
        self.flatten(rules, o)
    }

    fn expand_concerns(&mut self, rules: &Rules, o: &Origin<'_>) -> Result<()> {
        let b = self.b;
        for k in &rules.concerns {
            let path = format!("concerns.{k}");
            let def = b.taxonomy.concerns.get(k).ok_or_else(|| {
                unknown(
                    "concern",
                    k,
                    &o.at(&path),
                    b.taxonomy.concerns.keys().cloned(),
                )
            })?;
            self.concerns.insert(k.clone());
            let tax_lines = self.tax_lines.clone();
            let mut ko = o.nested(format!("concern:{k}"), &path);
            ko.defined = Some((builtin::TAXONOMY_FILE, &tax_lines, format!("concerns.{k}.")));
            self.flatten(&def.rules, &ko)?;
        }
        Ok(())
    }

    /// Turn the rule fields of a fragment into contributions.
    fn flatten(&mut self, r: &Rules, o: &Origin<'_>) -> Result<()> {
        let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
        if !r.forbidden_capabilities.is_empty() {
            for c in &r.forbidden_capabilities {
                self.check_capability(c, o, &format!("forbidden_capabilities.{c}"))?;
            }
            self.push(
                o,
                "capabilities.forbidden".into(),
                "forbidden_capabilities",
                RuleValue::Deny(set(&r.forbidden_capabilities)),
            );
        }
        if let Some(t) = r.max_tier {
            self.push(
                o,
                "identity.max_tier".into(),
                "max_tier",
                RuleValue::Tier(t),
            );
        }
        if let Some(t) = &r.tools {
            if let Some(allow) = &t.allow {
                for id in allow {
                    self.check_tool(id, o, &format!("tools.allow.{id}"))?;
                }
                self.push(
                    o,
                    "tools.allow".into(),
                    "tools.allow",
                    RuleValue::Allow(set(allow)),
                );
            }
            if !t.deny.is_empty() {
                for id in &t.deny {
                    self.check_tool(id, o, &format!("tools.deny.{id}"))?;
                }
                self.push(
                    o,
                    "tools.deny".into(),
                    "tools.deny",
                    RuleValue::Deny(set(&t.deny)),
                );
            }
            for (schema, access) in &t.schemas {
                self.push(
                    o,
                    format!("tools.schemas.{schema}"),
                    &format!("tools.schemas.{schema}"),
                    RuleValue::Access(*access),
                );
            }
            for (tool, c) in &t.constraints {
                let path = format!("tools.constraints.{tool}");
                self.check_tool(tool, o, &path)?;
                let rt = &self.tools[tool];
                let need = |slot: &Option<String>, what: &str| -> Result<()> {
                    if slot.is_none() {
                        let (file, line) = catalog::split_at(&o.at(&path));
                        return Err(PolicyError::Invalid {
                            file,
                            line,
                            message: format!("tool '{tool}' has no {what} slot in the catalog"),
                        });
                    }
                    Ok(())
                };
                if let Some(m) = c.max_amount {
                    need(&rt.amount_param, "amount_param")?;
                    self.push(
                        o,
                        format!("tools.constraints.{tool}.max_amount"),
                        &format!("{path}.max_amount"),
                        RuleValue::Ceiling(m),
                    );
                }
                if let Some(a) = &c.allowed_destinations {
                    need(&rt.destination_param, "destination_param")?;
                    self.push(
                        o,
                        format!("tools.constraints.{tool}.allowed_destinations"),
                        &format!("{path}.allowed_destinations"),
                        RuleValue::Allow(set(a)),
                    );
                }
                if !c.denied_destinations.is_empty() {
                    need(&rt.destination_param, "destination_param")?;
                    self.push(
                        o,
                        format!("tools.constraints.{tool}.denied_destinations"),
                        &format!("{path}.denied_destinations"),
                        RuleValue::Deny(set(&c.denied_destinations)),
                    );
                }
                if let Some(m) = c.max_content_bytes {
                    need(&rt.content_param, "content_param")?;
                    self.push(
                        o,
                        format!("tools.constraints.{tool}.max_content_bytes"),
                        &format!("{path}.max_content_bytes"),
                        RuleValue::Ceiling(m),
                    );
                }
            }
        }
        if let Some(n) = &r.network {
            if let Some(a) = &n.allow_domains {
                self.push(
                    o,
                    "network.allow_domains".into(),
                    "network.allow_domains",
                    RuleValue::Allow(set(a)),
                );
            }
            if !n.deny_categories.is_empty() {
                self.push(
                    o,
                    "network.deny_categories".into(),
                    "network.deny_categories",
                    RuleValue::Deny(set(&n.deny_categories)),
                );
            }
        }
        if let Some(f) = &r.filesystem {
            if let Some(w) = &f.workspace {
                self.push(
                    o,
                    "filesystem.workspace".into(),
                    "filesystem.workspace",
                    RuleValue::Path(w.clone()),
                );
            }
            if let Some(ro) = f.read_only {
                self.push(
                    o,
                    "filesystem.read_only".into(),
                    "filesystem.read_only",
                    RuleValue::Flag(ro),
                );
            }
            if !f.deny_paths.is_empty() {
                self.push(
                    o,
                    "filesystem.deny_paths".into(),
                    "filesystem.deny_paths",
                    RuleValue::Deny(set(&f.deny_paths)),
                );
            }
        }
        if let Some(i) = &r.interpreter {
            if let Some(h) = &i.host_functions {
                self.push(
                    o,
                    "interpreter.host_functions".into(),
                    "interpreter.host_functions",
                    RuleValue::Allow(set(h)),
                );
            }
            for (k, v) in [
                ("memory_mb", i.memory_mb),
                ("cpu_time_ms", i.cpu_time_ms),
                ("stack_depth", i.stack_depth),
            ] {
                if let Some(v) = v {
                    self.push(
                        o,
                        format!("interpreter.{k}"),
                        &format!("interpreter.{k}"),
                        RuleValue::Ceiling(v),
                    );
                }
            }
        }
        if let Some(bu) = &r.budget {
            for (k, v) in [
                ("tokens_per_day", bu.tokens_per_day),
                ("dollars_per_month", bu.dollars_per_month),
                ("tool_calls_per_minute", bu.tool_calls_per_minute),
                ("requests_per_minute", bu.requests_per_minute),
            ] {
                if let Some(v) = v {
                    self.push(
                        o,
                        format!("budget.{k}"),
                        &format!("budget.{k}"),
                        RuleValue::Ceiling(v),
                    );
                }
            }
        }
        for (id, s) in &r.steps {
            let path = format!("steps.{id}");
            let def = builtin::step(id).ok_or_else(|| {
                unknown(
                    "step",
                    id,
                    &o.at(&path),
                    builtin::STEPS.iter().map(|s| s.id.to_string()),
                )
            })?;
            if let Some(e) = s.enabled {
                self.push(
                    o,
                    format!("{path}.enabled"),
                    &format!("{path}.enabled"),
                    RuleValue::Flag(e),
                );
            }
            if let Some(a) = s.action {
                self.push(
                    o,
                    format!("{path}.action"),
                    &format!("{path}.action"),
                    RuleValue::Action(a),
                );
            }
            for (p, v) in &s.params {
                let kind = def
                    .params
                    .iter()
                    .find(|(n, _)| n == p)
                    .map(|(_, k)| *k)
                    .ok_or_else(|| {
                        unknown(
                            "step parameter",
                            &format!("{id}.{p}"),
                            &o.at(&format!("{path}.params.{p}")),
                            def.params.iter().map(|(n, _)| format!("{id}.{n}")),
                        )
                    })?;
                let v = match kind {
                    ParamKind::Ceiling => RuleValue::Ceiling(*v),
                    ParamKind::Floor => RuleValue::Floor(*v),
                };
                self.push(
                    o,
                    format!("{path}.params.{p}"),
                    &format!("{path}.params.{p}"),
                    v,
                );
            }
            if !s.tags.is_empty() {
                self.check_tags(&s.tags, o, &format!("{path}.tags"))?;
                self.push(
                    o,
                    format!("{path}.tags"),
                    &format!("{path}.tags"),
                    RuleValue::Deny(set(&s.tags)),
                );
            }
        }
        if !r.compliance_tags.is_empty() {
            self.check_tags(&r.compliance_tags, o, "compliance_tags")?;
            self.push(
                o,
                "compliance_tags".into(),
                "compliance_tags",
                RuleValue::Deny(set(&r.compliance_tags)),
            );
        }
        Ok(())
    }

    fn check_tags(&self, tags: &[String], o: &Origin<'_>, path: &str) -> Result<()> {
        for t in tags {
            if !valid_tag(t) {
                let (file, line) = catalog::split_at(&o.at(path));
                return Err(PolicyError::Invalid {
                    file,
                    line,
                    message: format!(
                        "compliance tag '{t}' must look like FRAMEWORK:Control, e.g. GDPR:Art32"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Compile the policy of `agent`.
pub fn compile(src: &PolicySource, agent: &str, opts: &CompileOptions) -> Result<Compiled> {
    let b = builtins()?;
    // 1. Classify and parse.
    let mut yaml_docs: Vec<(Place, &SourceFile, crate::model::PolicyDocument)> = Vec::new();
    let mut rego_files: Vec<(Place, &SourceFile)> = Vec::new();
    for f in &src.files {
        if !PolicySource::is_policy_file(&f.path) {
            continue;
        }
        let place = PolicySource::place(&f.path)?;
        if f.text.len() > parse::MAX_SOURCE_BYTES {
            return Err(PolicyError::TooLarge {
                file: f.path.clone(),
                size: f.text.len(),
                limit: parse::MAX_SOURCE_BYTES,
            });
        }
        if f.path.ends_with(".rego") {
            rego_files.push((place, f));
        } else {
            // Parse every file, so a broken file anywhere is reported.
            let doc = parse::parse_document(&f.path, &f.text)?;
            yaml_docs.push((place, f, doc));
        }
    }
    let agents = src.agents();
    if !agents.iter().any(|a| a == agent) {
        return Err(PolicyError::Layout {
            file: format!("agents/{agent}/"),
            message: format!("no such agent (agents: {})", agents.join(", ")),
        });
    }
    // 2. Headers.
    let mut header: Option<(AgentHeader, String, u32)> = None;
    let mut org_name: Option<String> = None;
    for (place, f, doc) in &yaml_docs {
        let ix = LineIndex::new(&f.text);
        if doc.org.is_some() && *place != Place::Org {
            return Err(PolicyError::Invalid {
                file: f.path.clone(),
                line: ix.line("org"),
                message: "`org:` belongs in org/".into(),
            });
        }
        if doc.agent.is_some() && !matches!(place, Place::Agent(_)) {
            return Err(PolicyError::Invalid {
                file: f.path.clone(),
                line: ix.line("agent"),
                message: "`agent:` belongs in agents/<name>/".into(),
            });
        }
        if doc.overlay.is_some() && !matches!(place, Place::Agent(_)) {
            return Err(PolicyError::Invalid {
                file: f.path.clone(),
                line: ix.line("overlay"),
                message: "`overlay:` (L5) belongs in agents/<name>/".into(),
            });
        }
        if let Some(o) = &doc.org {
            if org_name.replace(o.name.clone()).is_some() {
                return Err(PolicyError::Invalid {
                    file: f.path.clone(),
                    line: ix.line("org"),
                    message: "the org is named twice".into(),
                });
            }
        }
        if let (Place::Agent(a), Some(h)) = (place, &doc.agent) {
            if a == agent {
                if h.name != *a {
                    return Err(PolicyError::Invalid {
                        file: f.path.clone(),
                        line: ix.line("agent.name"),
                        message: format!(
                            "agent name '{}' does not match its directory '{a}'",
                            h.name
                        ),
                    });
                }
                if let Some((_, other, _)) = &header {
                    return Err(PolicyError::Invalid {
                        file: f.path.clone(),
                        line: ix.line("agent"),
                        message: format!("second `agent:` header (first in {other})"),
                    });
                }
                header = Some((h.clone(), f.path.clone(), ix.line("agent.function")));
            }
        }
    }
    let (header, header_file, function_line) = header.ok_or_else(|| PolicyError::Layout {
        file: format!("agents/{agent}/"),
        message: "no file has an `agent:` header (name, project)".into(),
    })?;
    let project = header.project.clone();
    let in_project = |p: &Place| matches!(p, Place::Project(x) if *x == project);
    if !yaml_docs.iter().any(|(p, _, _)| in_project(p))
        && !rego_files.iter().any(|(p, _)| in_project(p))
    {
        let (file, line) = (
            header_file.clone(),
            LineIndex::new(
                &src.files
                    .iter()
                    .find(|f| f.path == header_file)
                    .map(|f| f.text.clone())
                    .unwrap_or_default(),
            )
            .line("agent.project"),
        );
        return Err(PolicyError::Invalid {
            file,
            line,
            message: format!("project '{project}' has no files under projects/{project}/"),
        });
    }
    let level_of = |p: &Place| -> Option<Level> {
        match p {
            Place::Org => Some(Level::Org),
            Place::Project(x) if *x == project => Some(Level::Project),
            Place::Agent(a) if a == agent => Some(Level::Agent),
            _ => None,
        }
    };
    // 3. Documents per level (+ overlay), catalog extensions.
    let mut docs: Vec<Doc<'_>> = Vec::new();
    let mut extensions: Vec<Extension> = Vec::new();
    for (place, f, doc) in &yaml_docs {
        let Some(level) = level_of(place) else {
            continue;
        };
        let ix = LineIndex::new(&f.text);
        for t in &doc.catalog {
            extensions.push(Extension {
                level,
                at: format!("{}:{}", f.path, ix.line(&format!("catalog.{}", t.id))),
                def: t.clone(),
            });
        }
        docs.push(Doc {
            level,
            file: &f.path,
            lines: ix.clone(),
            prefix: "",
            rules: doc.rules.clone(),
        });
        if let Some(ov) = &doc.overlay {
            docs.push(Doc {
                level: Level::Overlay,
                file: &f.path,
                lines: ix,
                prefix: "overlay.",
                rules: ov.clone(),
            });
        }
    }
    extensions.sort_by_key(|e| e.level);
    let tools_lines = LineIndex::new(builtin::TOOLS_YAML);
    let tools = catalog::resolve(
        &b.taxonomy,
        &b.catalog.tools,
        builtin::TOOLS_FILE,
        &tools_lines,
        &extensions,
    )?;

    let mut ctx = Ctx {
        b,
        tools: &tools,
        tax_lines: LineIndex::new(builtin::TAXONOMY_YAML),
        contributions: BTreeMap::new(),
        grants: Vec::new(),
        categories: BTreeSet::new(),
        concerns: BTreeSet::new(),
        packs: BTreeSet::new(),
        pack_cites: BTreeSet::new(),
    };
    // 4. Built-in floor.
    let baseline = Rules {
        packs: vec![builtin::BASELINE_PACK.to_string()],
        ..Rules::default()
    };
    let root = Origin {
        level: Level::Builtin,
        via: vec![],
        selection: Some("builtin".into()),
        file: "builtin",
        lines: None,
        prefix: String::new(),
        defined: None,
        direct: false,
    };
    ctx.expand(&baseline, &root, &mut Vec::new())?;
    // 5. Function (L0), at the agent level.
    let mut tier = header.tier;
    if let Some(fname) = &header.function {
        let at = format!("{header_file}:{function_line}");
        let def =
            b.taxonomy.functions.get(fname).ok_or_else(|| {
                unknown("function", fname, &at, b.taxonomy.functions.keys().cloned())
            })?;
        let tax_lines = ctx.tax_lines.clone();
        let o = Origin {
            level: Level::Agent,
            via: vec![format!("function:{fname}")],
            selection: Some(at),
            file: &header_file,
            lines: None,
            prefix: String::new(),
            defined: Some((
                builtin::TAXONOMY_FILE,
                &tax_lines,
                format!("functions.{fname}."),
            )),
            direct: false,
        };
        ctx.expand(&def.rules, &o, &mut Vec::new())?;
        tier = tier.or(Some(def.tier));
    }
    let tier = tier.unwrap_or(Tier::Worker);
    // 6. Operator documents.
    for d in &docs {
        let o = Origin {
            level: d.level,
            via: vec![],
            selection: None,
            file: d.file,
            lines: Some(&d.lines),
            prefix: d.prefix.to_string(),
            defined: None,
            direct: true,
        };
        ctx.expand(&d.rules, &o, &mut Vec::new())?;
    }
    // 7. Rego: compile-time modules contribute, runtime modules are carried.
    let org = org_name.unwrap_or_else(|| "default".to_string());
    let input = json!({
        "agent": agent,
        "project": project,
        "org": org,
        "function": header.function,
        "tier": tier.as_str(),
        "categories": ctx.categories,
        "concerns": ctx.concerns,
        "packs": ctx.packs,
    });
    let mut rego_inputs: Vec<(Level, &str, &str)> = builtin::REGO
        .iter()
        .map(|(f, t)| (Level::Builtin, *f, *t))
        .collect();
    for (place, f) in &rego_files {
        if let Some(level) = level_of(place) {
            rego_inputs.push((level, &f.path, &f.text));
        }
    }
    let mut modules: Vec<RegoModule> = Vec::new();
    for (level, file, text) in rego_inputs {
        let pkg = rego::package_of(file, text)?;
        if pkg.starts_with(rego::COMPILE_PREFIX) {
            let Some(settings) = rego::eval_compile_module(file, text, &input)? else {
                continue;
            };
            let rules: Rules = serde_json::from_value(settings).map_err(|e| PolicyError::Rego {
                file: file.into(),
                message: format!("`settings` is not a valid rules fragment: {e}"),
            })?;
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("settings"))
                .map(|i| i + 1)
                .unwrap_or(1);
            let o = Origin {
                level,
                via: vec![format!("rego:{pkg}.settings")],
                selection: Some(format!("{file}:{line}")),
                file,
                lines: None,
                prefix: String::new(),
                defined: None,
                direct: level != Level::Builtin,
            };
            ctx.expand(&rules, &o, &mut Vec::new())?;
        } else if pkg.starts_with(rego::RUNTIME_PREFIX) {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("decision"))
                .map(|i| i + 1);
            let Some(line) = line else {
                return Err(PolicyError::Rego {
                    file: file.into(),
                    message: format!("runtime module {pkg} has no `decision` rule"),
                });
            };
            modules.push(RegoModule {
                path: file.to_string(),
                level,
                package: pkg.clone(),
                text: text.to_string(),
            });
            let because = Because {
                level,
                via: vec![format!("rego:{pkg}.decision")],
                source: format!("{file}:{line}"),
                defined_at: None,
            };
            ctx.contributions
                .entry(level)
                .or_default()
                .push(Contribution {
                    key: "steps.rego_policy.enabled".into(),
                    value: RuleValue::Flag(true),
                    because,
                    direct: false,
                });
        } else {
            return Err(PolicyError::Rego {
                file: file.into(),
                message: format!(
                    "package {pkg} must start with tappass.compile. or tappass.runtime."
                ),
            });
        }
    }
    // 8. Merge: combine per level, stack from the top.
    let mut effective: BTreeMap<String, EffectiveRule> = BTreeMap::new();
    for level in Level::ALL {
        let contributions = ctx.contributions.remove(&level).unwrap_or_default();
        let combined = combine_level(level, &contributions)?;
        stack_level(&mut effective, level, combined)?;
    }
    // 9. Post checks: tier, capabilities, tools.
    if let Some(EffectiveRule {
        value: RuleValue::Tier(max),
        trail,
    }) = effective.get("identity.max_tier")
    {
        if tier > *max {
            let hb = trail.last().map(|t| t.because.clone()).unwrap();
            return Err(PolicyError::Relax(Box::new(RelaxAttempt {
                key: "identity.tier".into(),
                higher_level: hb.level.as_str().into(),
                higher_rule: format!("max_tier {}", max.as_str()),
                higher_at: hb.describe(),
                lower_level: "agent".into(),
                lower_rule: format!("tier {}", tier.as_str()),
                lower_at: format!(
                    "{header_file}:{}",
                    LineIndex::new(
                        &src.files
                            .iter()
                            .find(|f| f.path == header_file)
                            .map(|f| f.text.clone())
                            .unwrap_or_default()
                    )
                    .line("agent.tier")
                ),
            })));
        }
    }
    let forbidden: BTreeSet<String> = match effective.get("capabilities.forbidden") {
        Some(EffectiveRule {
            value: RuleValue::Deny(s),
            ..
        }) => s.clone(),
        _ => BTreeSet::new(),
    };
    let forbidding = |cap: &str| -> Because {
        effective["capabilities.forbidden"]
            .trail
            .iter()
            .find(|t| t.set.contains(cap))
            .map(|t| t.because.clone())
            .unwrap_or_else(|| effective["capabilities.forbidden"].trail[0].because.clone())
    };
    let allow: Option<BTreeSet<String>> = match effective.get("tools.allow") {
        Some(EffectiveRule {
            value: RuleValue::Allow(s),
            ..
        }) => Some(s.clone()),
        _ => None,
    };
    let mut grants: Vec<Grant> = std::mem::take(&mut ctx.grants);
    if let (Some(allow), Some(rule)) = (&allow, effective.get("tools.allow")) {
        let last = rule.trail.last().map(|t| t.because.clone()).unwrap();
        for id in allow {
            for c in &tools[id].capabilities {
                grants.push(Grant {
                    capability: c.clone(),
                    because: last.clone(),
                    by: format!("tool {id}"),
                });
            }
        }
    }
    for g in &grants {
        if forbidden.contains(&g.capability) {
            let fb = forbidding(&g.capability);
            return Err(PolicyError::ForbiddenCapability(Box::new(ForbiddenGrant {
                capability: g.capability.clone(),
                forbidden_level: fb.level.as_str().into(),
                forbidden_at: fb.source.clone(),
                forbidden_via: if fb.via.is_empty() {
                    "forbidden_capabilities".into()
                } else {
                    fb.via.join(" ← ")
                },
                granted_level: g.because.level.as_str().into(),
                granted_at: g.because.source.clone(),
                granted_by: g.by.clone(),
            })));
        }
    }
    for t in tools.values() {
        for (cap, level, at) in &t.removed {
            if forbidden.contains(cap) {
                let fb = forbidding(cap);
                if fb.level < *level {
                    return Err(PolicyError::Relax(Box::new(RelaxAttempt {
                        key: format!("catalog.{}.capabilities", t.id),
                        higher_level: fb.level.as_str().into(),
                        higher_rule: format!("forbidden capability {cap}"),
                        higher_at: fb.describe(),
                        lower_level: level.as_str().into(),
                        lower_rule: format!("-{cap} on tool {}", t.id),
                        lower_at: at.clone(),
                    })));
                }
            }
        }
    }
    let mut deny: BTreeSet<String> = match effective.get("tools.deny") {
        Some(EffectiveRule {
            value: RuleValue::Deny(s),
            ..
        }) => s.clone(),
        _ => BTreeSet::new(),
    };
    if let Some(allow) = &allow {
        if let Some(both) = allow.iter().find(|t| deny.contains(*t)) {
            let a = effective["tools.allow"]
                .trail
                .last()
                .unwrap()
                .because
                .clone();
            let d = effective["tools.deny"]
                .trail
                .iter()
                .find(|t| t.set.contains(both.as_str()))
                .unwrap()
                .because
                .clone();
            return Err(PolicyError::Contradiction {
                key: format!("tools.{both}"),
                level: format!("{} / {}", d.level, a.level),
                a: format!("denied at {}", d.describe()),
                b: format!("allowed at {}", a.describe()),
            });
        }
    }
    // Tools that exercise a forbidden capability are denied outright.
    for t in tools.values() {
        if t.capabilities.iter().any(|c| forbidden.contains(c)) {
            deny.insert(t.id.clone());
        }
    }
    let mut granted: BTreeSet<String> = grants.iter().map(|g| g.capability.clone()).collect();
    if allow.is_none() {
        for t in tools.values().filter(|t| !deny.contains(&t.id)) {
            granted.extend(t.capabilities.iter().cloned());
        }
    }
    // Runtime Rego: drop the built-in constraints module when nothing uses it.
    if !effective
        .keys()
        .any(|k| k.starts_with("tools.constraints."))
    {
        modules
            .retain(|m| !(m.level == Level::Builtin && m.path.ends_with("tool_constraints.rego")));
        if modules.is_empty() {
            effective.remove("steps.rego_policy.enabled");
        } else if let Some(r) = effective.get_mut("steps.rego_policy.enabled") {
            r.trail.retain(|t| {
                !t.because
                    .source
                    .starts_with("policies/rego/tool_constraints.rego")
            });
        }
    }
    // 10. Assemble.
    let ceiling = |k: &str| match effective.get(k) {
        Some(EffectiveRule {
            value: RuleValue::Ceiling(n),
            ..
        }) => Some(*n),
        _ => None,
    };
    let allow_list = |k: &str| match effective.get(k) {
        Some(EffectiveRule {
            value: RuleValue::Allow(s),
            ..
        }) => Some(s.iter().cloned().collect::<Vec<_>>()),
        _ => None,
    };
    let deny_list = |k: &str| match effective.get(k) {
        Some(EffectiveRule {
            value: RuleValue::Deny(s),
            ..
        }) => s.iter().cloned().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let flag = |k: &str| {
        matches!(
            effective.get(k),
            Some(EffectiveRule {
                value: RuleValue::Flag(true),
                ..
            })
        )
    };
    let mut schemas_acl = BTreeMap::new();
    let mut constraints: BTreeMap<String, ToolConstraints> = BTreeMap::new();
    for (k, r) in &effective {
        if let (Some(schema), RuleValue::Access(a)) = (k.strip_prefix("tools.schemas."), &r.value) {
            schemas_acl.insert(schema.to_string(), *a);
        }
        if let Some(rest) = k.strip_prefix("tools.constraints.") {
            let (tool, field) = rest.rsplit_once('.').unwrap_or((rest, ""));
            let rt = &tools[tool];
            let c = constraints
                .entry(tool.to_string())
                .or_insert_with(|| ToolConstraints {
                    amount_param: rt.amount_param.clone(),
                    destination_param: rt.destination_param.clone(),
                    content_param: rt.content_param.clone(),
                    ..ToolConstraints::default()
                });
            match (field, &r.value) {
                ("max_amount", RuleValue::Ceiling(n)) => c.max_amount = Some(*n),
                ("max_content_bytes", RuleValue::Ceiling(n)) => c.max_content_bytes = Some(*n),
                ("allowed_destinations", RuleValue::Allow(s)) => {
                    c.allowed_destinations = Some(s.iter().cloned().collect())
                }
                ("denied_destinations", RuleValue::Deny(s)) => {
                    c.denied_destinations = s.iter().cloned().collect()
                }
                _ => {}
            }
        }
    }
    let visible: Vec<&ResolvedTool> = match &allow {
        Some(a) => a.iter().map(|id| &tools[id]).collect(),
        None => tools.values().filter(|t| !deny.contains(&t.id)).collect(),
    };
    let catalog_out: BTreeMap<String, ToolInfo> = visible
        .iter()
        .map(|t| {
            (
                t.id.clone(),
                ToolInfo {
                    capabilities: t.capabilities.iter().cloned().collect(),
                    mcp_server: t.mcp_server.clone(),
                    native: t.native.clone(),
                    schema_param: t.schema_param.clone(),
                },
            )
        })
        .collect();
    let entrypoints: Vec<String> = modules
        .iter()
        .map(|m| format!("{}.decision", m.package))
        .collect();
    if !modules.is_empty() {
        // Fail at compile time, not in the gateway: every entry point must evaluate.
        let prepared = rego::PreparedRego::from_modules(
            &modules,
            &entrypoints,
            &json!({"policy": {"tools": {"constraints": {}}}}),
        )?;
        for ep in &entrypoints {
            prepared.eval(ep, &json!({"tool": "", "args": {}}))?;
        }
    }
    let mut pipeline = Vec::new();
    let mut tags: BTreeSet<String> = deny_list("compliance_tags").into_iter().collect();
    tags.extend(ctx.pack_cites.iter().cloned());
    for s in builtin::STEPS {
        if !flag(&format!("steps.{}.enabled", s.id)) {
            continue;
        }
        let action = match effective.get(&format!("steps.{}.action", s.id)) {
            Some(EffectiveRule {
                value: RuleValue::Action(a),
                ..
            }) => *a,
            _ => s.default_action,
        };
        let mut params = BTreeMap::new();
        for (p, _) in s.params {
            if let Some(EffectiveRule {
                value: RuleValue::Ceiling(n) | RuleValue::Floor(n),
                ..
            }) = effective.get(&format!("steps.{}.params.{p}", s.id))
            {
                params.insert(p.to_string(), *n);
            }
        }
        let step_tags = deny_list(&format!("steps.{}.tags", s.id));
        tags.extend(step_tags.iter().cloned());
        pipeline.push(PipelineStep {
            step: s.id.to_string(),
            phases: s.phases.to_vec(),
            action,
            params,
            compliance_tags: step_tags,
            rego_entrypoints: if s.id == "rego_policy" {
                entrypoints.clone()
            } else {
                vec![]
            },
        });
    }
    let mut policy = CompiledPolicy {
        schema_version: SCHEMA_VERSION,
        identity: Identity {
            agent: agent.to_string(),
            project: project.clone(),
            org,
            function: header.function.clone(),
            tier,
            policy_version: 0,
            content_hash: String::new(),
        },
        network: Network {
            allow_domains: allow_list("network.allow_domains"),
            deny_categories: deny_list("network.deny_categories"),
        },
        filesystem: Filesystem {
            workspace: match effective.get("filesystem.workspace") {
                Some(EffectiveRule {
                    value: RuleValue::Path(p),
                    ..
                }) => Some(p.clone()),
                _ => None,
            },
            read_only: flag("filesystem.read_only"),
            deny_paths: deny_list("filesystem.deny_paths"),
        },
        tools: Tools {
            allow: allow.map(|a| a.into_iter().collect()),
            deny: deny.into_iter().collect(),
            schemas_acl,
            constraints,
            catalog: catalog_out,
        },
        capabilities: Capabilities {
            granted: granted.into_iter().collect(),
            forbidden: forbidden.into_iter().collect(),
        },
        interpreter: Interpreter {
            host_functions: allow_list("interpreter.host_functions"),
            memory_mb: ceiling("interpreter.memory_mb"),
            cpu_time_ms: ceiling("interpreter.cpu_time_ms"),
            stack_depth: ceiling("interpreter.stack_depth"),
        },
        budget: Budget {
            tokens_per_day: ceiling("budget.tokens_per_day"),
            dollars_per_month: ceiling("budget.dollars_per_month"),
            tool_calls_per_minute: ceiling("budget.tool_calls_per_minute"),
            requests_per_minute: ceiling("budget.requests_per_minute"),
        },
        compliance_tags: tags.into_iter().collect(),
        pipeline,
        rego: RegoBundle {
            modules,
            entrypoints,
        },
        provenance: effective
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    r.trail.iter().map(|t| t.because.clone()).collect(),
                )
            })
            .collect(),
    };
    let hash = Sha256::digest(policy.to_canonical_json()?.as_bytes());
    policy.identity.content_hash = hex::encode(hash);
    policy.identity.policy_version = opts.policy_version;
    Ok(Compiled {
        policy,
        rules: effective,
    })
}

/// Human-readable listing of every effective rule with its because-trail.
pub fn preview(c: &Compiled) -> String {
    use std::fmt::Write;
    let p = &c.policy;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "agent {} (project {}, org {}), function {}, tier {}",
        p.identity.agent,
        p.identity.project,
        p.identity.org,
        p.identity.function.as_deref().unwrap_or("-"),
        p.identity.tier.as_str()
    );
    let _ = writeln!(s, "\neffective rules:");
    for (k, r) in &c.rules {
        let _ = writeln!(s, "  {k} = {}", r.value.display());
        for t in &r.trail {
            let _ = writeln!(s, "      because {} (sets {})", t.because.describe(), t.set);
        }
    }
    let _ = writeln!(s, "\npipeline (L4):");
    for st in &p.pipeline {
        let params = st
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "  {} [{}]{}{}",
            st.step,
            st.action.as_str(),
            if params.is_empty() {
                String::new()
            } else {
                format!(" {params}")
            },
            if st.compliance_tags.is_empty() {
                String::new()
            } else {
                format!(" tags {}", st.compliance_tags.join(" "))
            }
        );
        for ep in &st.rego_entrypoints {
            let _ = writeln!(s, "      rego {ep}");
        }
    }
    let _ = writeln!(
        s,
        "\ncapabilities granted: {}",
        p.capabilities.granted.join(", ")
    );
    let _ = writeln!(
        s,
        "capabilities forbidden: {}",
        p.capabilities.forbidden.join(", ")
    );
    let _ = writeln!(s, "compliance tags: {}", p.compliance_tags.join(" "));
    s
}
