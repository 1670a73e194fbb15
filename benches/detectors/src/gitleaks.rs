//! gitleaks' catalog (`gitleaks.toml`) evaluated the way gitleaks evaluates
//! it: keywords, regex, secret group, entropy (with its digit requirement for
//! generic rules) and allowlists (regexes against the secret, the match or
//! the line; stop words; OR / AND conditions; the global allowlist).
//!
//! The catalog's samples are written per rule: a "no_secret" sample of one
//! rule may well be a secret another rule reports (an admin key listed as
//! "not a user key", a JWT listed as "not a curl credential"). Such a sample
//! is not a negative for a whole scanner, and this module tells which ones
//! the catalog as a whole reports. It also lists the catalog's allowlisted
//! values (allowlist entries that are plain values, not patterns).

use anyhow::{Context, Result};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use tappass_detectors::validators::shannon_entropy;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    id: String,
    regex: Option<String>,
    #[serde(rename = "secretGroup", default)]
    secret_group: usize,
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
struct RawAllowlist {
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(rename = "regexTarget", default)]
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Secret,
    Match,
    Line,
}

struct Allowlist {
    regexes: Vec<Regex>,
    target: Target,
    stopwords: Vec<String>,
    /// `condition = "AND"`: every criterion present must hold.
    all: bool,
    /// Path criteria (never true for a sample, which has no path).
    has_paths: bool,
}

struct Rule {
    id: String,
    regex: Regex,
    secret_group: usize,
    entropy: Option<f64>,
    keywords: Vec<String>,
    allowlists: Vec<Allowlist>,
}

pub struct Catalog {
    rules: Vec<Rule>,
    global: Option<Allowlist>,
    /// Rules whose regex the `regex` crate does not accept.
    pub unparsable: Vec<String>,
    /// Allowlist entries of any rule that are plain values.
    pub allowed_values: Vec<String>,
    /// Every rule's id and regex as written in the catalog.
    pub patterns: Vec<(String, String)>,
}

fn compile(p: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&escape_literal_braces(p))
        .unicode(false)
        .build()
}

/// Go's RE2 reads a `{` that does not start a repetition (`{\d+}`) as a
/// literal; the `regex` crate wants it escaped.
fn escape_literal_braces(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    let mut open_rep = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() {
            out.push_str(&p[i..i + 2]);
            i += 2;
            continue;
        }
        if c == b'{' {
            let rest = &p[i + 1..];
            let end = rest.find('}');
            let is_rep = end.is_some_and(|e| {
                let body = &rest[..e];
                let mut parts = body.splitn(2, ',');
                let lo = parts.next().unwrap_or("");
                !lo.is_empty()
                    && lo.bytes().all(|d| d.is_ascii_digit())
                    && parts
                        .next()
                        .is_none_or(|hi| hi.bytes().all(|d| d.is_ascii_digit()))
            });
            if is_rep {
                open_rep = true;
                out.push('{');
            } else {
                out.push_str("\\{");
            }
        } else if c == b'}' {
            if open_rep {
                open_rep = false;
                out.push('}');
            } else {
                out.push_str("\\}");
            }
        } else {
            let ch = p[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        i += 1;
    }
    out
}

/// A pattern with no regex syntax, i.e. one literal value.
fn plain_value(p: &str) -> Option<&str> {
    let plain = p.len() >= 16
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then_some(p)
}

impl Allowlist {
    fn build(raw: &RawAllowlist) -> Result<Allowlist> {
        let target = match raw.regex_target.as_deref() {
            None | Some("secret") => Target::Secret,
            Some("match") => Target::Match,
            Some("line") => Target::Line,
            Some(other) => anyhow::bail!("unknown regexTarget {other}"),
        };
        let regexes = raw
            .regexes
            .iter()
            .map(|r| compile(r).with_context(|| format!("allowlist regex {r}")))
            .collect::<Result<_>>()?;
        Ok(Allowlist {
            regexes,
            target,
            stopwords: raw.stopwords.iter().map(|s| s.to_lowercase()).collect(),
            all: raw.condition.as_deref() == Some("AND"),
            has_paths: !raw.paths.is_empty(),
        })
    }

    fn allows(&self, secret: &str, matched: &str, line: &str) -> bool {
        let hay = match self.target {
            Target::Secret => secret,
            Target::Match => matched,
            Target::Line => line,
        };
        let mut criteria = Vec::with_capacity(3);
        if !self.regexes.is_empty() {
            criteria.push(self.regexes.iter().any(|r| r.is_match(hay.as_bytes())));
        }
        if !self.stopwords.is_empty() {
            let lower = secret.to_lowercase();
            criteria.push(self.stopwords.iter().any(|w| lower.contains(w.as_str())));
        }
        if self.has_paths {
            criteria.push(false);
        }
        if self.all {
            !criteria.is_empty() && criteria.iter().all(|&c| c)
        } else {
            criteria.iter().any(|&c| c)
        }
    }
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Catalog> {
        let file: File = toml::from_str(text).context("parsing gitleaks.toml")?;
        let global = file.allowlist.as_ref().map(Allowlist::build).transpose()?;
        let mut rules = Vec::new();
        let mut unparsable = Vec::new();
        let mut allowed_values = Vec::new();
        let mut patterns = Vec::new();
        for r in file.rules {
            for a in &r.allowlists {
                allowed_values.extend(
                    a.regexes
                        .iter()
                        .filter_map(|p| plain_value(p))
                        .map(str::to_string),
                );
            }
            let Some(pattern) = r.regex.as_deref() else {
                continue; // path-only rules
            };
            patterns.push((r.id.clone(), pattern.to_string()));
            let (Ok(regex), Ok(allowlists)) = (
                compile(pattern),
                r.allowlists
                    .iter()
                    .map(Allowlist::build)
                    .collect::<Result<Vec<_>>>(),
            ) else {
                unparsable.push(r.id);
                continue;
            };
            rules.push(Rule {
                id: r.id,
                regex,
                secret_group: r.secret_group,
                entropy: r.entropy,
                keywords: r.keywords.iter().map(|k| k.to_lowercase()).collect(),
                allowlists,
            });
        }
        Ok(Catalog {
            rules,
            global,
            unparsable,
            allowed_values,
            patterns,
        })
    }

    /// Ids of the catalog rules that report something in `text`.
    pub fn reporting_rules(&self, text: &str) -> Vec<&str> {
        let lower = text.to_lowercase();
        let mut out = Vec::new();
        for rule in &self.rules {
            if !rule.keywords.is_empty()
                && !rule.keywords.iter().any(|k| lower.contains(k.as_str()))
            {
                continue;
            }
            if self.rule_reports(rule, text) {
                out.push(rule.id.as_str());
            }
        }
        out
    }

    fn rule_reports(&self, rule: &Rule, text: &str) -> bool {
        for caps in rule.regex.captures_iter(text.as_bytes()) {
            let whole = caps.get(0).expect("group 0");
            let matched = String::from_utf8_lossy(whole.as_bytes());
            let secret = if caps.len() >= 2 {
                if rule.secret_group > 0 {
                    match caps.get(rule.secret_group) {
                        Some(g) => String::from_utf8_lossy(g.as_bytes()).into_owned(),
                        None => continue,
                    }
                } else {
                    (1..caps.len())
                        .filter_map(|i| caps.get(i))
                        .find(|g| !g.is_empty())
                        .map(|g| String::from_utf8_lossy(g.as_bytes()).into_owned())
                        .unwrap_or_else(|| matched.to_string())
                }
            } else {
                matched.to_string()
            };
            if let Some(min) = rule.entropy {
                // gitleaks counts characters, TapPass bytes: the same on ASCII values
                if shannon_entropy(&secret) <= min {
                    continue;
                }
                if rule.id.starts_with("generic") && !secret.bytes().any(|b| b.is_ascii_digit()) {
                    continue;
                }
            }
            let line = line_of(text, whole.start(), whole.end());
            let allowed = self
                .global
                .iter()
                .chain(rule.allowlists.iter())
                .any(|a| a.allows(&secret, &matched, line));
            if !allowed {
                return true;
            }
        }
        false
    }
}

/// The full line(s) around a match.
fn line_of(text: &str, start: usize, end: usize) -> &str {
    let s = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let e = text[end..].find('\n').map_or(text.len(), |i| end + i);
    &text[s..e]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
[allowlist]
regexes = ['''^\$(?:[A-Z_]+)$''']
stopwords = ["example"]

[[rules]]
id = "demo-key"
regex = '''key=([a-z0-9]{12})'''
entropy = 2.5
keywords = ["key="]
[[rules.allowlists]]
regexes = ['''abcdefabcdef1234''', '''^zz''']

[[rules]]
id = "generic-demo"
regex = '''token=(\w{8,})'''
entropy = 2
keywords = ["token"]
"#;

    #[test]
    fn literal_braces_are_escaped() {
        assert_eq!(
            escape_literal_braces(r"^\$(?:\d+|{\d+})$"),
            r"^\$(?:\d+|\{\d+\})$"
        );
        assert_eq!(
            escape_literal_braces(r"a{2,3}b{4}c{5,}"),
            r"a{2,3}b{4}c{5,}"
        );
        assert_eq!(escape_literal_braces(r"\{x}"), r"\{x\}");
        assert!(compile(r"^\{\{[ \t]*[\w ().|]+[ \t]*}}$").is_ok());
    }

    #[test]
    fn evaluates_like_gitleaks() {
        let c = Catalog::parse(CATALOG).unwrap();
        assert!(c.unparsable.is_empty());
        assert_eq!(c.allowed_values, ["abcdefabcdef1234"]);
        assert_eq!(c.reporting_rules("key=q7w8e9r1t2y3"), ["demo-key"]);
        // entropy too low
        assert!(c.reporting_rules("key=aaaaaaaaaaab").is_empty());
        // rule allowlist, global stop word
        assert!(c.reporting_rules("key=zzq7w8e9r1t2").is_empty());
        assert!(c.reporting_rules("token=example9x").is_empty());
        // keyword missing
        assert!(c.reporting_rules("KEY:q7w8e9r1t2y3").is_empty());
        // generic rules need a digit
        assert!(c.reporting_rules("token=qwertyuiop").is_empty());
        assert_eq!(c.reporting_rules("token=qwer7yuiop"), ["generic-demo"]);
    }
}
