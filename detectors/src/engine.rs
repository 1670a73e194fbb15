//! The compiled rule set: one Hyperscan database per mode, confirmation with
//! an anchored second pass, validators, merging.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};
use serde::Serialize;

use crate::evidence::{Evidence, EvidenceKey};
use crate::hs::{self, Database, Scratch};
use crate::normalize;
use crate::rules::{self, Categories, Category, Decode, RuleSpec};
use crate::validators;
use crate::{BuildError, ScanError};

/// Maximum length in bytes of a Hyperscan (prefilter) match, checked for
/// every rule when a rule set is built. A streaming scanner never holds back
/// more than this many bytes of normalized text, except while a longer
/// confirmed match (a PEM private-key block, a JWT) is still open; such a
/// match is bounded by [`MAX_EXTENDED_LEN`].
pub const MAX_MATCH_LEN: usize = 1024;

/// Maximum length in bytes of a confirmed match (`pattern`), e.g. a PEM key
/// block that starts with a short prefilter header.
pub const MAX_EXTENDED_LEN: usize = 16 * 1024;

/// While streaming, a match is final only once this many bytes follow it
/// (or the stream ended, or the match reached its maximum length).
const STABLE_MARGIN: usize = 80;

/// Injection rules whose required literals are all at least this long
/// (rare phrases such as `regardless of`) use them as their prefilter.
const INJECTION_MIN_LITERAL: usize = 7;

/// Decoded blobs are scanned again at most this deep.
const MAX_DECODE_DEPTH: u8 = 1;

/// Values that are never reported as secrets although a rule matches them:
/// keys that are public by design (a web app's Google API key, a sample
/// key published in vendor documentation) which an operator has reviewed.
/// Matched exactly against the value a secret rule extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedValues(std::collections::HashSet<Box<str>>);

impl AllowedValues {
    /// One value per line; blank lines and lines starting with `#` are
    /// skipped, surrounding whitespace is trimmed.
    pub fn parse(text: &str) -> AllowedValues {
        Self::from_values(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
    }

    pub fn from_values<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> AllowedValues {
        AllowedValues(
            values
                .into_iter()
                .filter(|v| !v.as_ref().is_empty())
                .map(|v| Box::from(v.as_ref()))
                .collect(),
        )
    }

    pub fn contains(&self, value: &str) -> bool {
        self.0.contains(value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One detection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub category: Category,
    pub rule_id: Arc<str>,
    /// Redaction label (`EMAIL`, `CARD`, `AWS_KEY`, …).
    pub label: Arc<str>,
    /// Injection family, exfiltration class or PII type, when the rule has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<Arc<str>>,
    /// Byte span in the scanned text (absolute stream offsets when streaming).
    pub span: Range<usize>,
    pub score: f32,
    /// When the value was found inside an encoded blob, the blob's encoding;
    /// `span` then covers the whole blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Decode>,
    pub evidence: Evidence,
}

pub(crate) struct CompiledRule {
    pub id: Arc<str>,
    pub label: Arc<str>,
    pub family: Option<Arc<str>>,
    pub category: Category,
    pub score: f32,
    pub priority: i32,
    pub prefix: Option<String>,
    pub validators: Vec<String>,
    pub min_entropy: Option<f64>,
    pub decode: Option<Decode>,
    pub regex: Regex,
    pub value_group: bool,
    /// How far before a prefilter end a match may start: the prefilter's
    /// maximum length, or the rule's `lookbehind` if larger.
    pub hs_max_len: usize,
    /// Maximum length of the confirmed match.
    pub max_len: usize,
    /// How far after a prefilter end the confirmed match may extend.
    pub ahead: usize,
    /// The base64 decoder ([`BASE64_RUN_PATTERN`] on the base64-run
    /// trigger): a trigger end opens a confirmation window only when its own
    /// run may decode to text ([`base64_run_may_be_text`]).
    pub base64_run: bool,
    pub spec: RuleSpec,
}

pub(crate) struct Inner {
    pub uid: u64,
    pub rules: Vec<CompiledRule>,
    pub block_db: Database,
    pub stream_db: Database,
    /// Block database over injection rules only (for [`RuleSet::score_injection`]).
    pub injection_db: Option<(Database, Vec<u32>)>,
    pub proto_scratch: Mutex<Scratch>,
    pub key: EvidenceKey,
    pub allowed: AllowedValues,
    pub hold_back: usize,
    pub hs_exprs: Vec<(String, String, bool)>,
    /// Rules of each Hyperscan expression id.
    pub group_rules: Vec<Vec<u32>>,
    /// Groups whose prefilter is evaluated by byte scanning instead of by
    /// Hyperscan ([`crate::trigger`]), with their group id.
    pub triggers: Vec<(crate::trigger::Trigger, u32)>,
    pub groups: Vec<Group>,
}

/// Rules sharing one Hyperscan expression.
pub(crate) struct Group {
    /// Largest `hs_max_len` of its rules (the gap that separates clusters).
    pub back: usize,
    /// Multi-pattern regex selecting, near a trigger, which of the `picked`
    /// rules can match (when two or more are picked).
    pub set: Option<Regex>,
    /// The rules `set` selects from, in its pattern order, and the largest
    /// `hs_max_len` / `ahead` among them (the window of the set's pass).
    pub picked: Vec<u32>,
    pub set_back: usize,
    pub set_ahead: usize,
    /// Rules confirmed near every trigger without selection: those whose
    /// window reaches further than [`SELECT_REACH`] (a pass of the set over
    /// such a window costs as much as confirming the rule).
    pub always: Vec<u32>,
}

/// Longest window (`hs_max_len + ahead`) of a rule that a shared trigger's
/// multi-pattern pass selects; rules reaching further are always confirmed.
const SELECT_REACH: usize = 256;

/// A compiled rule set. Cheap to clone (shared, `Send + Sync`); build it once
/// per policy snapshot, never on the hot path.
#[derive(Clone)]
pub struct RuleSet {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.inner.rules.len())
            .field("hold_back", &self.inner.hold_back)
            .finish()
    }
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A raw detection in normalized-text coordinates.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub rule: u32,
    pub span: Range<usize>,
    pub evidence: Evidence,
    pub encoding: Option<Decode>,
}

pub(crate) enum Confirm {
    Done,
    /// Needs more data. `retry_at`: the result cannot change before this
    /// much data (absolute offset) is available, when that is known.
    Pending {
        retry_at: Option<usize>,
    },
    /// The matches found so far are final and were reported, but the window
    /// is not complete yet: confirm again from `resume` (absolute) when more
    /// data has arrived.
    Partial {
        resume: usize,
    },
}

fn regex_syntax_config(caseless: bool) -> regex_automata::util::syntax::Config {
    regex_automata::util::syntax::Config::new()
        .unicode(false)
        .utf8(false)
        .case_insensitive(caseless)
}

fn hir_max_len(id: &str, pattern: &str, caseless: bool) -> Result<(usize, usize), BuildError> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .case_insensitive(caseless)
        .build()
        .parse(pattern)
        .map_err(|e| BuildError::Regex {
            id: id.to_string(),
            message: e.to_string(),
        })?;
    let props = hir.properties();
    let max = props
        .maximum_len()
        .ok_or_else(|| BuildError::Unbounded { id: id.to_string() })?;
    Ok((props.minimum_len().unwrap_or(0), max))
}

/// Required literals of `pattern` selective enough to be its Hyperscan
/// prefilter (each at least three bytes).
fn required_literals(
    id: &str,
    pattern: &str,
    caseless: bool,
) -> Result<Option<crate::literals::RequiredLiterals>, BuildError> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .case_insensitive(caseless)
        .build()
        .parse(pattern)
        .map_err(|e| BuildError::Regex {
            id: id.to_string(),
            message: e.to_string(),
        })?;
    Ok(crate::literals::required(&hir).filter(|l| l.min_len() >= 3))
}

/// Replace `{domains}` with an escaped alternation of the list.
fn expand_domains(spec: &RuleSpec, pattern: &str) -> Result<String, BuildError> {
    match &spec.domains {
        None => Ok(pattern.to_string()),
        Some(list) => {
            let domains = rules::domain_list(list).ok_or_else(|| BuildError::InvalidRule {
                id: spec.id.clone(),
                reason: format!("unknown domain list `{list}`"),
            })?;
            if domains.is_empty() {
                return Err(BuildError::InvalidRule {
                    id: spec.id.clone(),
                    reason: format!("domain list `{list}` is empty"),
                });
            }
            let alt: Vec<String> = domains
                .iter()
                .map(|d| regex_syntax::escape(d.trim_start_matches('.')))
                .collect();
            Ok(pattern.replace("{domains}", &format!("(?:{})", alt.join("|"))))
        }
    }
}

/// Strip named-group syntax for Hyperscan (`(?P<v>` -> `(`).
fn hs_pattern(p: &str) -> String {
    p.replace("(?P<v>", "(").replace("(?<v>", "(")
}

impl RuleSet {
    /// Built-in rules of the chosen categories, with a per-process random
    /// evidence key.
    pub fn builtin(cats: &Categories) -> Result<RuleSet, BuildError> {
        Self::builtin_with_key(cats, EvidenceKey::random())
    }

    /// Built-in rules with a deployment evidence key.
    pub fn builtin_with_key(cats: &Categories, key: EvidenceKey) -> Result<RuleSet, BuildError> {
        Self::builtin_allowing(cats, key, AllowedValues::default())
    }

    /// Built-in rules with a deployment evidence key; secret rules do not
    /// report the `allowed` values.
    pub fn builtin_allowing(
        cats: &Categories,
        key: EvidenceKey,
        allowed: AllowedValues,
    ) -> Result<RuleSet, BuildError> {
        let all = rules::builtin_rules()?;
        let chosen: Vec<RuleSpec> = all
            .into_iter()
            .filter(|r| r.decode.is_some() || cats.contains(r.category))
            .collect();
        Self::build(chosen, key, allowed, !cats.injection_scoring_only)
    }

    /// Compile a rule set. Any rule that does not parse, is unbounded, too
    /// long, or rejected by Hyperscan fails the build with its id.
    pub fn from_rules(specs: Vec<RuleSpec>, key: EvidenceKey) -> Result<RuleSet, BuildError> {
        Self::from_rules_allowing(specs, key, AllowedValues::default())
    }

    /// [`RuleSet::from_rules`], with values secret rules do not report.
    pub fn from_rules_allowing(
        specs: Vec<RuleSpec>,
        key: EvidenceKey,
        allowed: AllowedValues,
    ) -> Result<RuleSet, BuildError> {
        Self::build(specs, key, allowed, true)
    }

    /// Compile `specs`; with `scan_injection` false, injection rules go to
    /// the injection database only (see [`Categories::injection_scoring_only`]).
    fn build(
        specs: Vec<RuleSpec>,
        key: EvidenceKey,
        allowed: AllowedValues,
        scan_injection: bool,
    ) -> Result<RuleSet, BuildError> {
        if specs.iter().all(|s| s.decode.is_some()) {
            return Err(BuildError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        let mut compiled = Vec::with_capacity(specs.len());
        let mut hs_patterns = Vec::with_capacity(specs.len());
        let mut full_patterns: Vec<String> = Vec::with_capacity(specs.len());
        for spec in specs {
            if !seen.insert(spec.id.clone()) {
                return Err(BuildError::DuplicateId(spec.id));
            }
            for v in &spec.validators {
                if !validators::VALIDATORS.contains(&v.as_str()) {
                    return Err(BuildError::InvalidRule {
                        id: spec.id.clone(),
                        reason: format!("unknown validator `{v}`"),
                    });
                }
            }
            if !(0.0..=1.0).contains(&spec.score) {
                return Err(BuildError::InvalidRule {
                    id: spec.id.clone(),
                    reason: "score must be within 0..=1".into(),
                });
            }
            let pattern = expand_domains(&spec, &spec.pattern)?;
            let full_hs = match &spec.prefilter {
                Some(p) => expand_domains(&spec, p)?,
                None => hs_pattern(&pattern),
            };
            let (min_hs, full_max) = hir_max_len(&spec.id, &full_hs, spec.caseless)?;
            if min_hs == 0 {
                return Err(BuildError::InvalidRule {
                    id: spec.id.clone(),
                    reason: "pattern can match the empty string".into(),
                });
            }
            if full_max > MAX_MATCH_LEN {
                return Err(BuildError::TooLong {
                    id: spec.id.clone(),
                    max: full_max,
                    limit: MAX_MATCH_LEN,
                });
            }
            let (_, max_len) = hir_max_len(&spec.id, &pattern, spec.caseless)?;
            if max_len > MAX_EXTENDED_LEN {
                return Err(BuildError::TooLong {
                    id: spec.id.clone(),
                    max: max_len,
                    limit: MAX_EXTENDED_LEN,
                });
            }
            // Hyperscan prefilter: the rule's required literals when it has
            // selective ones, else its prefilter / pattern as written.
            // Injection rules are phrases of common words joined by bounded
            // gaps: their literals alone report on most prose, so Hyperscan
            // matches the whole pattern and only real matches are confirmed,
            // unless every required literal is a long (rare) phrase.
            let lits = if spec.prefilter.is_none() && spec.decode.is_none() {
                let l = required_literals(&spec.id, &pattern, spec.caseless)?;
                if spec.category == Category::Injection {
                    l.filter(|l| l.min_len() >= INJECTION_MIN_LITERAL)
                } else {
                    l
                }
            } else {
                None
            };
            let (prefilter, hs_caseless, back, ahead) = match lits {
                Some(l) => {
                    let back = l.before + l.max_len();
                    (l.hs_pattern(), l.caseless || spec.caseless, back, l.after)
                }
                None => {
                    let back = full_max.max(spec.lookbehind.unwrap_or(0));
                    let ahead = if spec.prefilter.is_some() {
                        spec.lookahead.unwrap_or(max_len)
                    } else {
                        0
                    };
                    (full_hs.clone(), spec.caseless, back, ahead)
                }
            };
            if back > MAX_MATCH_LEN {
                return Err(BuildError::TooLong {
                    id: spec.id.clone(),
                    max: back,
                    limit: MAX_MATCH_LEN,
                });
            }
            let hs_max_len = back;
            let regex = Regex::builder()
                .syntax(regex_syntax_config(spec.caseless))
                .configure(Regex::config().utf8_empty(false))
                .build(&pattern)
                .map_err(|e| BuildError::Regex {
                    id: spec.id.clone(),
                    message: e.to_string(),
                })?;
            let value_group = regex
                .group_info()
                .to_index(regex_automata::PatternID::ZERO, "v")
                .is_some();
            let base64_run = spec.decode == Some(Decode::Base64)
                && pattern == BASE64_RUN_PATTERN
                && spec.validators.is_empty()
                && spec.min_entropy.is_none()
                && crate::trigger::Trigger::recognize(&prefilter, hs_caseless)
                    == Some(crate::trigger::Trigger::Base64Run);
            hs_patterns.push((prefilter, hs_caseless));
            full_patterns.push(full_hs);
            compiled.push(CompiledRule {
                id: Arc::from(spec.id.as_str()),
                label: Arc::from(spec.label.as_str()),
                family: spec.family.as_deref().map(Arc::from),
                category: spec.category,
                score: spec.score,
                priority: spec.priority,
                prefix: spec.prefix.clone(),
                validators: spec.validators.clone(),
                min_entropy: spec.min_entropy,
                decode: spec.decode,
                regex,
                value_group,
                hs_max_len,
                max_len: max_len.max(hs_max_len),
                ahead,
                base64_run,
                spec,
            });
        }
        // Rules with the same prefilter share one Hyperscan expression (a
        // shared trigger such as a run of digits); a report fans out to all.
        let scanned = |r: &CompiledRule| scan_injection || r.category != Category::Injection;
        let mut groups: Vec<(&str, bool, Vec<u32>)> = Vec::new();
        for (i, (p, c)) in hs_patterns.iter().enumerate() {
            if !scanned(&compiled[i]) {
                continue;
            }
            match groups.iter_mut().find(|g| g.0 == p && g.1 == *c) {
                Some(g) => g.2.push(i as u32),
                None => groups.push((p, *c, vec![i as u32])),
            }
        }
        // Class-based triggers run as byte scans (unless nothing would be
        // left for Hyperscan); everything else goes to the database.
        let mut triggers: Vec<(crate::trigger::Trigger, u32)> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, (p, c, _))| {
                crate::trigger::Trigger::recognize(p, *c).map(|t| (t, i as u32))
            })
            .collect();
        if triggers.len() == groups.len() {
            triggers.clear();
        }
        let exprs: Vec<hs::Expr<'_>> = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| !triggers.iter().any(|t| t.1 as usize == *i))
            .map(|(i, (p, c, _))| hs::Expr {
                pattern: p,
                id: i as u32,
                caseless: *c,
            })
            .collect();
        let group_rules: Vec<Vec<u32>> = groups.iter().map(|g| g.2.clone()).collect();
        let mut group_info = Vec::with_capacity(groups.len());
        for g in &groups {
            // a selecting pass pays off for two or more short-reaching rules
            let (always, picked): (Vec<u32>, Vec<u32>) = g.2.iter().partition(|&&i| {
                let r = &compiled[i as usize];
                r.hs_max_len + r.ahead > SELECT_REACH
            });
            let (always, picked) = if picked.len() > 1 {
                (always, picked)
            } else {
                (g.2.clone(), Vec::new())
            };
            let rs: Vec<&CompiledRule> = picked.iter().map(|&i| &compiled[i as usize]).collect();
            let set = if rs.len() > 1 {
                let pats: Vec<String> = rs
                    .iter()
                    .map(|r| {
                        let p = expand_domains(&r.spec, &r.spec.pattern)?;
                        Ok(if r.spec.caseless {
                            format!("(?i:{p})")
                        } else {
                            p
                        })
                    })
                    .collect::<Result<_, BuildError>>()?;
                Some(
                    Regex::builder()
                        .syntax(regex_syntax_config(false))
                        .configure(
                            Regex::config()
                                .utf8_empty(false)
                                .match_kind(regex_automata::MatchKind::All)
                                // most selected rules begin with a digit
                                // or a class: a prefilter of their first
                                // bytes stops at every digit of the window
                                // and costs more than it skips
                                .auto_prefilter(false),
                        )
                        .build_many(&pats)
                        .map_err(|e| BuildError::Regex {
                            id: rs[0].id.to_string(),
                            message: e.to_string(),
                        })?,
                )
            } else {
                None
            };
            group_info.push(Group {
                back: g
                    .2
                    .iter()
                    .map(|&i| compiled[i as usize].hs_max_len)
                    .max()
                    .unwrap_or(0),
                set,
                set_back: rs.iter().map(|r| r.hs_max_len).max().unwrap_or(0),
                set_ahead: rs.iter().map(|r| r.ahead).max().unwrap_or(0),
                picked,
                always,
            });
        }
        let map_err = |e: hs::HsError| BuildError::Hyperscan {
            id: e
                .expression
                .and_then(|i| exprs.get(i))
                .and_then(|x| group_rules.get(x.id as usize))
                .and_then(|g| compiled.get(g[0] as usize))
                .map(|r| r.id.to_string())
                .unwrap_or_else(|| "<database>".into()),
            message: e.message,
        };
        let (inj_exprs, inj_rules): (Vec<hs::Expr<'_>>, Vec<u32>) = compiled
            .iter()
            .enumerate()
            .filter(|(_, r)| r.category == Category::Injection)
            .map(|(i, _)| {
                let e = hs::Expr {
                    pattern: &full_patterns[i],
                    id: i as u32,
                    caseless: true,
                };
                (e, i as u32)
            })
            .unzip();
        // The three databases are independent: compiling them side by side
        // cuts a rule set's build time (what a policy swap that turns a
        // detector on waits for) where cores are free.
        let (block_db, stream_db, inj_db) = compile_concurrently(
            || Database::compile(&exprs, hs::Mode::Block),
            || Database::compile(&exprs, hs::Mode::Stream),
            || (!inj_exprs.is_empty()).then(|| Database::compile(&inj_exprs, hs::Mode::Block)),
        );
        let block_db = block_db.map_err(map_err)?;
        let stream_db = stream_db.map_err(map_err)?;
        let map_err = |e: hs::HsError| BuildError::Hyperscan {
            id: e
                .expression
                .and_then(|i| inj_rules.get(i))
                .and_then(|&r| compiled.get(r as usize))
                .map(|r| r.id.to_string())
                .unwrap_or_else(|| "<database>".into()),
            message: e.message,
        };
        let injection_db = match inj_db {
            None => None,
            Some(db) => Some((db.map_err(map_err)?, inj_rules)),
        };
        let hs_err = |e: hs::HsError| BuildError::Hyperscan {
            id: "<scratch>".into(),
            message: e.message,
        };
        let mut scratch = block_db.alloc_scratch().map_err(hs_err)?;
        stream_db.grow_scratch(&mut scratch).map_err(hs_err)?;
        if let Some((db, _)) = &injection_db {
            db.grow_scratch(&mut scratch).map_err(hs_err)?;
        }
        let mut hold_back = compiled
            .iter()
            .filter(|r| scanned(r))
            .map(|r| r.hs_max_len)
            .max()
            .unwrap_or(0);
        if !triggers.is_empty() {
            // a streaming scan rescans this much of the held text
            hold_back = hold_back.max(crate::trigger::LOOKBACK);
        }
        drop(exprs);
        let hs_exprs = groups
            .iter()
            .map(|(p, c, ids)| {
                let names: Vec<&str> = ids.iter().map(|&i| &*compiled[i as usize].id).collect();
                (names.join("+"), p.to_string(), *c)
            })
            .collect();
        drop(groups);
        Ok(RuleSet {
            inner: Arc::new(Inner {
                uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
                rules: compiled,
                block_db,
                stream_db,
                injection_db,
                proto_scratch: Mutex::new(scratch),
                key,
                allowed,
                hold_back,
                hs_exprs,
                group_rules,
                triggers,
                groups: group_info,
            }),
        })
    }

    /// Number of rules (including internal decoding rules).
    pub fn len(&self) -> usize {
        self.inner.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    /// The Hyperscan expressions of this set as compiled (rule id, pattern,
    /// caseless), for profiling.
    #[doc(hidden)]
    pub fn hs_expressions(&self) -> Vec<(String, String, bool)> {
        self.inner.hs_exprs.clone()
    }

    /// Every rule's own pattern in Hyperscan syntax (rule id, pattern,
    /// caseless): what a scan without prefilters and confirmation would
    /// compile, for profiling.
    #[doc(hidden)]
    pub fn hs_rule_patterns(&self) -> Vec<(String, String, bool)> {
        self.inner
            .rules
            .iter()
            .filter_map(|r| {
                let pattern = expand_domains(&r.spec, &r.spec.pattern).ok()?;
                Some((r.spec.id.clone(), hs_pattern(&pattern), r.spec.caseless))
            })
            .collect()
    }

    /// Rule specs in this set.
    pub fn rules(&self) -> impl Iterator<Item = &RuleSpec> {
        self.inner.rules.iter().map(|r| &r.spec)
    }

    /// Bytes a streaming scanner holds back (the longest prefilter match of
    /// this set, ≤ [`MAX_MATCH_LEN`]).
    pub fn hold_back(&self) -> usize {
        self.inner.hold_back
    }

    /// Size of the compiled block-mode database in bytes.
    pub fn database_size(&self) -> usize {
        self.inner.block_db.size()
    }

    pub(crate) fn take_scratch(&self) -> Result<Scratch, ScanError> {
        let uid = self.inner.uid;
        let cached = SCRATCH.with(|c| {
            let mut c = c.borrow_mut();
            c.iter()
                .position(|(u, _)| *u == uid)
                .map(|i| c.swap_remove(i).1)
        });
        match cached {
            Some(s) => Ok(s),
            None => {
                let proto = self
                    .inner
                    .proto_scratch
                    .lock()
                    .map_err(|_| ScanError("scratch prototype poisoned".into()))?;
                proto.try_clone().map_err(|e| ScanError(e.message))
            }
        }
    }

    pub(crate) fn put_scratch(&self, s: Scratch) {
        let uid = self.inner.uid;
        SCRATCH.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= 8 {
                c.remove(0);
            }
            c.push((uid, s));
        });
    }

    /// Names of the expressions of [`RuleSet::hs_expressions`] that are
    /// evaluated by byte scanning rather than by the Hyperscan database.
    #[doc(hidden)]
    pub fn byte_triggered(&self) -> Vec<String> {
        self.inner
            .triggers
            .iter()
            .map(|t| self.inner.hs_exprs[t.1 as usize].0.clone())
            .collect()
    }

    /// The whole prefilter stage without confirmation: the Hyperscan scan of
    /// the block database plus the byte-scanned triggers. Returns the number
    /// of reported ends.
    pub fn raw_prefilter_count(&self, text: &[u8]) -> Result<u64, ScanError> {
        let mut n = self.raw_hyperscan_count(text)?;
        crate::trigger::scan(&self.inner.triggers, text, 0, true, &mut |_, _| n += 1);
        Ok(n)
    }

    /// Raw Hyperscan scan of the block database without confirmation (for
    /// benchmarks: the "raw" baseline). Returns the number of reported ends.
    pub fn raw_hyperscan_count(&self, text: &[u8]) -> Result<u64, ScanError> {
        let mut scratch = self.take_scratch()?;
        let mut n = 0u64;
        let r = self
            .inner
            .block_db
            .scan(text, &mut scratch, &mut |_, _| n += 1);
        self.put_scratch(scratch);
        r.map_err(|e| ScanError(e.message))?;
        Ok(n)
    }

    /// Scan a complete text. Findings are sorted by span start; spans are byte
    /// ranges of `text` on character boundaries.
    pub fn scan(&self, text: &str) -> Result<Vec<Finding>, ScanError> {
        let raws = if text.is_ascii() {
            self.scan_normalized(text.as_bytes(), 0)?
        } else {
            let (norm, map) = normalize::normalize_for_scan(text);
            let mut raws = self.scan_normalized(norm.as_bytes(), 0)?;
            if !map.is_identity() {
                for r in &mut raws {
                    r.span = map.to_orig(r.span.start)..map.to_orig(r.span.end);
                }
            }
            raws
        };
        Ok(raws
            .into_iter()
            .map(|r| {
                let span = snap(text.as_bytes(), r.span.clone());
                self.finding(r, span)
            })
            .collect())
    }

    pub(crate) fn finding(&self, r: Raw, span: Range<usize>) -> Finding {
        let rule = &self.inner.rules[r.rule as usize];
        Finding {
            category: rule.category,
            rule_id: rule.id.clone(),
            label: rule.label.clone(),
            family: rule.family.clone(),
            span,
            score: rule.score,
            encoding: r.encoding,
            evidence: r.evidence,
        }
    }

    /// Scan normalized bytes (block mode), confirm, decode, merge.
    pub(crate) fn scan_normalized(&self, hay: &[u8], depth: u8) -> Result<Vec<Raw>, ScanError> {
        let mut hits: Vec<(u32, usize)> = Vec::new();
        let mut scratch = self.take_scratch()?;
        let res = self.inner.block_db.scan(hay, &mut scratch, &mut |id, to| {
            hits.push((id, to as usize));
        });
        self.put_scratch(scratch);
        res.map_err(|e| ScanError(e.message))?;
        crate::trigger::scan(&self.inner.triggers, hay, 0, true, &mut |g, e| {
            hits.push((g, e));
        });
        let mut out = Vec::new();
        if hits.is_empty() {
            return Ok(out);
        }
        // By group, then by position: each group's ends arrive in order
        // (Hyperscan reports by end offset, a byte trigger scans forward),
        // so grouping them keeps them sorted; a group that is not is sorted.
        let hits = group_stably(&hits, self.inner.groups.len(), |h| h.0 as usize);
        // Clusters become confirmation windows per rule; overlapping windows
        // of one rule are searched once (dense text has a trigger every few
        // bytes, and each cluster's window reaches `ahead` past it).
        let mut windows: Vec<(u32, usize, usize)> = Vec::new();
        let mut which = None;
        let mut parts: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < hits.len() {
            let (g, first) = hits[i];
            let group = &self.inner.groups[g as usize];
            // Ends closer than `back` form one cluster. A shared trigger's
            // clusters whose windows overlap also share one pass of the
            // group's multi-pattern regex.
            let reach = match group.set {
                Some(_) => group.back.max(group.set_back + group.set_ahead),
                None => group.back,
            };
            parts.clear();
            let (mut part_first, mut last) = (first, first);
            let mut j = i + 1;
            while j < hits.len() && hits[j].0 == g && hits[j].1 <= last + reach {
                if hits[j].1 > last + group.back {
                    parts.push((part_first, last));
                    part_first = hits[j].1;
                }
                last = hits[j].1;
                j += 1;
            }
            parts.push((part_first, last));
            let ends = &hits[i..j];
            i = j;
            let add = |rule: u32, windows: &mut Vec<(u32, usize, usize)>| {
                let r = &self.inner.rules[rule as usize];
                if r.base64_run {
                    // each end on its own: most runs are tokens, not text
                    windows.extend(
                        ends.iter()
                            .filter(|h| base64_run_may_be_text(hay, h.1, r.hs_max_len, true))
                            .map(|h| (rule, h.1, h.1)),
                    );
                } else {
                    windows.extend(parts.iter().map(|&(f, l)| (rule, f, l)));
                }
            };
            for &rule in &group.always {
                add(rule, &mut windows);
            }
            if let Some(set) = &group.set {
                // one pass of the group's multi-pattern regex tells which
                // of its rules can match near these triggers
                let lo = floor_char(hay, first.saturating_sub(group.set_back));
                let hi = (last + group.set_ahead).min(hay.len());
                // one set of pattern ids for all groups, as large as the
                // largest set met so far
                if which
                    .as_ref()
                    .is_some_and(|p: &regex_automata::PatternSet| p.capacity() < set.pattern_len())
                {
                    which = None;
                }
                let pats =
                    which.get_or_insert_with(|| regex_automata::PatternSet::new(set.pattern_len()));
                pats.clear();
                // most windows hold no match of any of them: an earliest-
                // match search says so at a fraction of the cost of the
                // overlapping search that tells which
                let window = Input::new(hay).span(lo..hi);
                if set.is_match(window.clone()) {
                    set.which_overlapping_matches(&window, pats);
                }
                for k in pats.iter() {
                    add(group.picked[k.as_usize()], &mut windows);
                }
            }
        }
        // By rule, then by position (each rule's windows come in order).
        let windows = group_stably(&windows, self.inner.rules.len(), |w| w.0 as usize);
        let mut k = 0;
        while k < windows.len() {
            let (rule, first, mut last) = windows[k];
            let r = &self.inner.rules[rule as usize];
            k += 1;
            while k < windows.len()
                && windows[k].0 == rule
                && windows[k].1.saturating_sub(r.hs_max_len) <= last + r.ahead
            {
                last = last.max(windows[k].2);
                k += 1;
            }
            self.confirm(rule, first, last, 0, hay, 0, true, depth, &mut out);
        }
        Ok(merge(&self.inner.rules, out))
    }

    /// Confirm one cluster of prefilter ends `[first, last]` of `rule`,
    /// searching from `resume` (absolute) onwards when it is past the
    /// window's start. `hay` holds normalized bytes starting at absolute
    /// offset `base`; reported spans are absolute.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn confirm(
        &self,
        rule_ix: u32,
        first: usize,
        last: usize,
        resume: usize,
        hay: &[u8],
        base: usize,
        finished: bool,
        depth: u8,
        out: &mut Vec<Raw>,
    ) -> Confirm {
        let rule = &self.inner.rules[rule_ix as usize];
        if rule.decode.is_some() && depth >= MAX_DECODE_DEPTH {
            return Confirm::Done;
        }
        let avail = base + hay.len();
        let lo_abs = first.saturating_sub(rule.hs_max_len).max(base).max(resume);
        let hi_abs = (last + rule.ahead).min(avail);
        if lo_abs >= hi_abs {
            return Confirm::Done;
        }
        let lo = floor_char(hay, lo_abs - base);
        let hi = hi_abs - base;
        let input = Input::new(hay).span(lo..hi);
        let mut matches: Vec<Range<usize>> = Vec::new();
        for m in rule.regex.find_iter(input) {
            // A match close to the end of the data may still grow (greedy
            // repeats, optional suffixes such as a PEM END line).
            if !finished && m.len() < rule.max_len && hay.len() - m.end() < STABLE_MARGIN {
                // When the whole window and the byte after it are already
                // available, the matches are final and only the margin
                // after this one is missing.
                let retry_at =
                    (last + rule.ahead < avail).then_some(base + m.end() + STABLE_MARGIN);
                return Confirm::Pending { retry_at };
            }
            matches.push(m.range());
        }
        if matches.is_empty() && rule.ahead > 0 && !finished && last + rule.ahead > avail {
            // No match in the window yet: a match can only appear ending at
            // or after `avail`, and until STABLE_MARGIN more bytes arrive
            // (and while the window is shorter than `max_len`) it would
            // still be pending, so retrying earlier cannot produce a finding
            // (at most it would close an empty window a little sooner).
            let retry_at = (avail + STABLE_MARGIN).min(lo_abs + rule.max_len);
            return Confirm::Pending {
                retry_at: Some(retry_at),
            };
        }
        // Final matches while the window is still incomplete (a long
        // confirmed match such as a PEM block): report them now and continue
        // after the last one later, as one search over the whole window
        // would.
        let partial = (!finished && !matches.is_empty() && last + rule.ahead > avail)
            .then(|| matches.last().map(|m| base + m.end))
            .flatten();
        let mut caps = if rule.value_group && !matches.is_empty() {
            Some(rule.regex.create_captures())
        } else {
            None
        };
        for m in matches {
            let mut v = m.clone();
            if let Some(caps) = caps.as_mut() {
                rule.regex.search_captures(
                    &Input::new(hay).span(m.clone()).anchored(Anchored::Yes),
                    caps,
                );
                if let Some(g) = caps.get_group_by_name("v") {
                    v = g.range();
                } else {
                    continue;
                }
            }
            let v = snap(hay, v);
            if v.is_empty() {
                continue;
            }
            let Some(v) = validate(rule, hay, v, &self.inner.allowed) else {
                continue;
            };
            let value = String::from_utf8_lossy(&hay[v.clone()]);
            if let Some(kind) = rule.decode {
                if let Some(decoded) = decode_as(kind, &value) {
                    let (norm, _) = normalize::normalize_for_scan(&decoded);
                    if let Ok(inner) = self.scan_normalized(norm.as_bytes(), depth + 1) {
                        for r in inner {
                            out.push(Raw {
                                rule: r.rule,
                                span: base + v.start..base + v.end,
                                evidence: r.evidence,
                                encoding: Some(kind),
                            });
                        }
                    }
                }
                continue;
            }
            let evidence =
                Evidence::new(&self.inner.key, &value, rule.prefix.as_deref(), &rule.label);
            out.push(Raw {
                rule: rule_ix,
                span: base + v.start..base + v.end,
                evidence,
                encoding: None,
            });
        }
        match partial {
            Some(resume) => Confirm::Partial { resume },
            None => Confirm::Done,
        }
    }

    pub(crate) fn rule(&self, ix: u32) -> &CompiledRule {
        &self.inner.rules[ix as usize]
    }
}

/// The base64 decoder rule's pattern: a whole run of the alphabet (24 to
/// 1000 symbols, then up to two `=`) after a byte outside it or at the start.
const BASE64_RUN_PATTERN: &str = r"(?:^|[^A-Za-z0-9+/_-])(?P<v>[A-Za-z0-9+/_-]{24,1000}={0,2})";

/// For a rule with [`BASE64_RUN_PATTERN`]: whether the run whose base64-run
/// trigger ends at `end` may decode to text. `false` only when the match the
/// pattern finds for that run in the end's window (reaching `back` bytes
/// before it) is certain and [`normalize::blob_may_be_text`] rules it out;
/// a run reaching back to the start of `hay` when that is not the start of
/// the data (`at_start`), or past the window, is kept. The decoder rejects
/// most runs (tokens, identifiers, hashes), and a run's window reaches a
/// kilobyte back, so confirming only the runs that may be text saves
/// searching those windows.
pub(crate) fn base64_run_may_be_text(hay: &[u8], end: usize, back: usize, at_start: bool) -> bool {
    let alphabet = crate::trigger::is_base64_symbol;
    // the trigger ends after the run, its padding and the byte after them
    // (or at the end of the data)
    let mut t = end.min(hay.len());
    while t > 0 && !alphabet(hay[t - 1]) && end - t < 3 {
        t -= 1;
    }
    if t == 0 || !alphabet(hay[t - 1]) {
        return true;
    }
    let lo = end.saturating_sub(back);
    let mut s = t;
    while s > lo && alphabet(hay[s - 1]) {
        s -= 1;
    }
    let certain = if s == 0 {
        at_start
    } else {
        s > lo && !alphabet(hay[s - 1])
    };
    if !certain || t - s < 24 {
        return true;
    }
    // the pattern's match: at most 1000 symbols, then up to two `=`
    let v_end = if t - s > 1000 {
        s + 1000
    } else {
        t + hay[t..].iter().take(2).take_while(|&&c| c == b'=').count()
    };
    std::str::from_utf8(&hay[s..v_end]).map_or(true, normalize::blob_may_be_text)
}

/// Run three builds, the last two on threads of their own (on this one when
/// no thread can be started); returns their results in order.
fn compile_concurrently<A, B: Send, C: Send>(
    a: impl FnOnce() -> A,
    b: impl Fn() -> B + Sync,
    c: impl Fn() -> C + Sync,
) -> (A, B, C) {
    std::thread::scope(|s| {
        let (b, c) = (&b, &c);
        let start = || std::thread::Builder::new().name("tappass-hs-compile".into());
        let hb = start().spawn_scoped(s, b).ok();
        let hc = start().spawn_scoped(s, c).ok();
        let ra = a();
        fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        }
        let rb = hb.map_or_else(b, join);
        let rc = hc.map_or_else(c, join);
        (ra, rb, rc)
    })
}

/// `items` sorted, where `key` (below `keys`) is their first field: grouped
/// by key keeping their order within a key (a counting sort), then each
/// key's run sorted, should it not be. Fewer items than keys (a short text's
/// few triggers) are sorted directly: the counting sort's pass over every
/// key would cost more than it saves.
fn group_stably<T: Copy + Ord>(items: &[T], keys: usize, key: impl Fn(&T) -> usize) -> Vec<T> {
    if items.len() < keys {
        let mut out = items.to_vec();
        out.sort_unstable();
        return out;
    }
    let mut start = vec![0usize; keys + 1];
    for it in items {
        start[key(it) + 1] += 1;
    }
    for k in 0..keys {
        start[k + 1] += start[k];
    }
    let mut out = items.to_vec();
    let mut next = start.clone();
    for &it in items {
        let k = key(&it);
        out[next[k]] = it;
        next[k] += 1;
    }
    for k in 0..keys {
        let run = &mut out[start[k]..start[k + 1]];
        if !run.is_sorted() {
            run.sort_unstable();
        }
    }
    out
}

fn decode_as(kind: Decode, value: &str) -> Option<String> {
    match kind {
        Decode::Base64 | Decode::Hex | Decode::Url => normalize::decode_blob(value),
    }
}

fn validate(
    rule: &CompiledRule,
    hay: &[u8],
    mut v: Range<usize>,
    allowed: &AllowedValues,
) -> Option<Range<usize>> {
    for name in &rule.validators {
        let value = std::str::from_utf8(&hay[v.clone()]).ok()?;
        let sub = validators::run(name, value)?;
        v = v.start + sub.start..v.start + sub.end;
        if v.is_empty() {
            return None;
        }
    }
    if rule.category == Category::Secret && rule.decode.is_none() {
        let value = std::str::from_utf8(&hay[v.clone()]).ok()?;
        let body = match &rule.prefix {
            Some(p) if value.len() > p.len() && value.starts_with(p.as_str()) => &value[p.len()..],
            _ => value,
        };
        if validators::looks_placeholder(body)
            || validators::has_placeholder_word(body)
            || allowed.contains(value)
        {
            return None;
        }
    }
    if let Some(min) = rule.min_entropy {
        let value = std::str::from_utf8(&hay[v.clone()]).ok()?;
        if validators::shannon_entropy(value) < min {
            return None;
        }
    }
    Some(v)
}

fn is_cont(b: u8) -> bool {
    (b & 0xC0) == 0x80
}

/// Round `i` down to a UTF-8 character boundary of `b`.
pub(crate) fn floor_char(b: &[u8], mut i: usize) -> usize {
    i = i.min(b.len());
    while i > 0 && i < b.len() && is_cont(b[i]) {
        i -= 1;
    }
    i
}

/// Round `i` up to a UTF-8 character boundary of `b`.
pub(crate) fn ceil_char(b: &[u8], mut i: usize) -> usize {
    i = i.min(b.len());
    while i < b.len() && is_cont(b[i]) {
        i += 1;
    }
    i
}

/// Widen a span to character boundaries.
pub(crate) fn snap(b: &[u8], r: Range<usize>) -> Range<usize> {
    floor_char(b, r.start)..ceil_char(b, r.end.max(r.start))
}

/// Drop repeated matches of one rule and findings contained in a
/// higher-priority finding; sort by position.
pub(crate) fn merge(rules: &[CompiledRule], mut v: Vec<Raw>) -> Vec<Raw> {
    if v.len() < 2 {
        return v;
    }
    v.sort_by(|a, b| {
        a.span
            .start
            .cmp(&b.span.start)
            .then(b.span.end.cmp(&a.span.end))
            .then(a.rule.cmp(&b.rule))
    });
    let mut keep = vec![true; v.len()];
    for i in 0..v.len() {
        if !keep[i] {
            continue;
        }
        let mut j = i + 1;
        while j < v.len() && v[j].span.start < v[i].span.end {
            if keep[j] {
                let (a, b) = (&v[i], &v[j]);
                let (ra, rb) = (&rules[a.rule as usize], &rules[b.rule as usize]);
                let b_inside_a = b.span.end <= a.span.end;
                let same_span = a.span == b.span;
                if a.rule == b.rule && a.encoding == b.encoding {
                    // same rule overlapping itself: keep the first (longest)
                    keep[j] = false;
                } else if b_inside_a
                    && ra.category == rb.category
                    && (ra.priority > rb.priority || ra.label == rb.label)
                {
                    keep[j] = false;
                } else if same_span && ra.category == rb.category && rb.priority > ra.priority {
                    keep[i] = false;
                    break;
                }
            }
            j += 1;
        }
    }
    // a later, higher-priority finding may contain an earlier one that starts
    // at the same position; handled by the same_span branch above.
    v.into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

thread_local! {
    static SCRATCH: RefCell<Vec<(u64, Scratch)>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::{expand_domains, group_stably, hir_max_len};
    use proptest::prelude::*;

    /// A rule with its own prefilter and look-around bounds must let its
    /// longest match fit around the trigger: every match holds a prefilter
    /// match, so it reaches at most `lookbehind` before the trigger's end and
    /// `lookahead` after it. (A pattern edited without its bounds fails here.)
    #[test]
    fn builtin_lookaround_bounds_cover_the_longest_match() {
        let mut short = Vec::new();
        for spec in crate::rules::builtin_rules().unwrap() {
            let (Some(_), Some(back), Some(ahead)) =
                (&spec.prefilter, spec.lookbehind, spec.lookahead)
            else {
                continue;
            };
            let pattern = expand_domains(&spec, &spec.pattern).unwrap();
            let (_, max) = hir_max_len(&spec.id, &pattern, spec.caseless).unwrap();
            if back + ahead < max {
                short.push(format!("{}: {back} + {ahead} < {max}", spec.id));
            }
        }
        assert!(short.is_empty(), "{short:#?}");
    }

    proptest! {
        /// Grouping by key then sorting each key's run is a full sort, for
        /// runs that arrive in order (the usual case) and for any order,
        /// with fewer items than keys (sorted directly) and more.
        #[test]
        fn group_stably_is_a_sort(
            mut v in proptest::collection::vec((0u32..12, 0usize..500), 0..60),
            presorted in any::<bool>(),
        ) {
            if presorted {
                v.sort_by_key(|x| x.1);
            }
            let mut want = v.clone();
            want.sort_unstable();
            prop_assert_eq!(group_stably(&v, 12, |x| x.0 as usize), want);
        }
    }
}
