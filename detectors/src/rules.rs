//! Rule model and the built-in rule files (embedded at compile time; the
//! crate does no I/O).

use serde::{Deserialize, Serialize};

/// Detection category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Pii,
    Secret,
    Injection,
    Exfil,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Pii,
        Category::Secret,
        Category::Injection,
        Category::Exfil,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Pii => "pii",
            Category::Secret => "secret",
            Category::Injection => "injection",
            Category::Exfil => "exfil",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "pii" => Ok(Category::Pii),
            "secret" | "secrets" => Ok(Category::Secret),
            "injection" | "prompt-injection" | "jailbreak" => Ok(Category::Injection),
            "exfil" | "exfiltration" => Ok(Category::Exfil),
            other => Err(format!("unknown category `{other}`")),
        }
    }
}

/// Which categories a rule set contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Categories {
    pub pii: bool,
    pub secrets: bool,
    pub injection: bool,
    pub exfil: bool,
    /// Injection rules only feed [`crate::RuleSet::score_injection`]: block
    /// and streaming scans neither match nor report them. For callers that
    /// score injection separately (the gateway), this keeps the injection
    /// phrases out of every other scan.
    pub injection_scoring_only: bool,
}

impl Categories {
    pub const fn all() -> Self {
        Categories {
            pii: true,
            secrets: true,
            injection: true,
            exfil: true,
            injection_scoring_only: false,
        }
    }
    pub const fn none() -> Self {
        Categories {
            pii: false,
            secrets: false,
            injection: false,
            exfil: false,
            injection_scoring_only: false,
        }
    }
    pub fn only(c: Category) -> Self {
        let mut s = Self::none();
        s.set(c, true);
        s
    }
    pub fn set(&mut self, c: Category, on: bool) {
        match c {
            Category::Pii => self.pii = on,
            Category::Secret => self.secrets = on,
            Category::Injection => self.injection = on,
            Category::Exfil => self.exfil = on,
        }
    }
    pub fn contains(&self, c: Category) -> bool {
        match c {
            Category::Pii => self.pii,
            Category::Secret => self.secrets,
            Category::Injection => self.injection,
            Category::Exfil => self.exfil,
        }
    }
}

impl Default for Categories {
    fn default() -> Self {
        Self::all()
    }
}

/// How a confirmed match is post-processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    Base64,
    Hex,
    Url,
}

/// One detection rule as written in `detectors/rules/*.yaml`.
///
/// `pattern` is the confirming regex (Rust `regex` syntax, ASCII mode, no
/// look-around) and, unless `prefilter` is given, also the Hyperscan pattern;
/// rule authors keep to the syntax both engines share. A named group `v`
/// selects the reported value inside the match. `{domains}` in a pattern is
/// replaced by the alternation of the rule's domain list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    pub name: String,
    pub category: Category,
    /// Redaction label, e.g. `EMAIL` -> `[REDACTED:EMAIL]`.
    pub label: String,
    pub pattern: String,
    /// Hyperscan pattern when it differs from `pattern` (e.g. a header that
    /// starts a longer match). Must be bounded by [`crate::MAX_MATCH_LEN`].
    #[serde(default)]
    pub prefilter: Option<String>,
    #[serde(default)]
    pub caseless: bool,
    #[serde(default)]
    pub validators: Vec<String>,
    /// Minimum Shannon entropy (bits/byte) of the value.
    #[serde(default)]
    pub min_entropy: Option<f64>,
    #[serde(default = "default_score")]
    pub score: f32,
    /// Overlap resolution: a finding inside a higher-priority one is dropped.
    #[serde(default)]
    pub priority: i32,
    /// Literal public prefix of the value (shown in evidence previews).
    #[serde(default)]
    pub prefix: Option<String>,
    /// For rules with a `prefilter`: how many bytes before the prefilter's
    /// end the confirmed match may start (default: the prefilter's maximum
    /// length). Counts towards the streaming hold-back.
    #[serde(default)]
    pub lookbehind: Option<usize>,
    /// For rules with a `prefilter`: how many bytes after the prefilter's
    /// end the confirmed match may extend (default: the pattern's maximum
    /// length).
    #[serde(default)]
    pub lookahead: Option<usize>,
    /// Injection family / exfiltration class / PII type.
    #[serde(default)]
    pub family: Option<String>,
    /// Domain list substituted for `{domains}`.
    #[serde(default)]
    pub domains: Option<String>,
    /// Matched blobs are decoded and the decoded text scanned again.
    #[serde(default)]
    pub decode: Option<Decode>,
    /// Strings that must be detected (tested).
    #[serde(default)]
    pub examples: Vec<String>,
    /// Strings that must not be detected by this rule (tested).
    #[serde(default)]
    pub counter_examples: Vec<String>,
}

fn default_score() -> f32 {
    0.9
}

/// Built-in rule files, embedded.
pub const BUILTIN_RULE_FILES: &[(&str, &str)] = &[
    ("pii.yaml", include_str!("../rules/pii.yaml")),
    ("secrets.yaml", include_str!("../rules/secrets.yaml")),
    (
        "secrets-more.yaml",
        include_str!("../rules/secrets-more.yaml"),
    ),
    ("injection.yaml", include_str!("../rules/injection.yaml")),
    ("exfil.yaml", include_str!("../rules/exfil.yaml")),
    ("encoded.yaml", include_str!("../rules/encoded.yaml")),
];

/// Built-in domain lists, embedded (one domain per line, `#` comments).
pub const BUILTIN_DOMAIN_LISTS: &[(&str, &str)] = &[
    ("paste", include_str!("../rules/domains/paste.txt")),
    (
        "request-catcher",
        include_str!("../rules/domains/request-catcher.txt"),
    ),
    ("oob", include_str!("../rules/domains/oob.txt")),
    (
        "file-sharing",
        include_str!("../rules/domains/file-sharing.txt"),
    ),
    ("tunnel", include_str!("../rules/domains/tunnel.txt")),
    (
        "url-shortener",
        include_str!("../rules/domains/url-shortener.txt"),
    ),
    (
        "dynamic-dns",
        include_str!("../rules/domains/dynamic-dns.txt"),
    ),
];

/// Parse a YAML rule file.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<RuleSpec>, crate::BuildError> {
    serde_norway::from_str::<Vec<RuleSpec>>(text).map_err(|e| crate::BuildError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })
}

/// All built-in rules (every category).
pub fn builtin_rules() -> Result<Vec<RuleSpec>, crate::BuildError> {
    let mut all = Vec::new();
    for (file, text) in BUILTIN_RULE_FILES {
        all.extend(parse_rules(file, text)?);
    }
    Ok(all)
}

/// Domains of a built-in list.
pub fn domain_list(name: &str) -> Option<Vec<&'static str>> {
    BUILTIN_DOMAIN_LISTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| {
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .collect()
        })
}
