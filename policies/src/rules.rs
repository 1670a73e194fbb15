//! Flat rules and the strictest-wins merge.
//!
//! Every selection in the authoring model becomes a set of [`Contribution`]s
//! keyed by a dotted rule key (`steps.pii_detection.action`,
//! `budget.tokens_per_day`, `tools.schemas.finance`, …). Contributions of
//! one level combine with [`RuleValue::combine`] (commutative, associative);
//! levels then stack from the top (built-in floor, org, project, agent,
//! overlay) and a lower level whose value is less strict than the inherited
//! one is rejected ([`RuleValue::relaxes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, RelaxAttempt, Result};
use crate::model::{Access, Action, Tier};

/// Cascade level, from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// The built-in floor (`tappass-baseline` pack and built-in Rego).
    Builtin,
    Org,
    Project,
    Agent,
    /// L5 manual overlay of the agent.
    Overlay,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Builtin,
        Level::Org,
        Level::Project,
        Level::Agent,
        Level::Overlay,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Builtin => "builtin",
            Level::Org => "org",
            Level::Project => "project",
            Level::Agent => "agent",
            Level::Overlay => "overlay",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value with its merge semantics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum RuleValue {
    /// `true` wins.
    Flag(bool),
    /// `block > redact > notify > log`.
    Action(Action),
    /// Lowest wins.
    Ceiling(u64),
    /// Highest wins (e.g. audit retention).
    Floor(u64),
    /// Intersect (entries may be `*.domain` globs).
    Allow(BTreeSet<String>),
    /// Union.
    Deny(BTreeSet<String>),
    /// `deny < read < read_write`; least access wins.
    Access(Access),
    /// Lowest tier wins.
    Tier(Tier),
    /// A directory; nested wins, unrelated directories contradict.
    Path(String),
}

/// `pattern` covers `item`: equal, or `*.x` covers `x` and `y.x`, or `*` covers all.
pub fn covers(pattern: &str, item: &str) -> bool {
    if pattern == item || pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let item_base = item.strip_prefix("*.").unwrap_or(item);
        return item_base == suffix || item_base.ends_with(&format!(".{suffix}"));
    }
    false
}

fn path_within(inner: &str, outer: &str) -> bool {
    let o = outer.trim_end_matches('/');
    inner == outer
        || inner.trim_end_matches('/') == o
        || inner.starts_with(&format!("{o}/"))
        || o.is_empty()
}

impl RuleValue {
    pub fn kind(&self) -> &'static str {
        match self {
            RuleValue::Flag(_) => "flag",
            RuleValue::Action(_) => "action",
            RuleValue::Ceiling(_) => "ceiling",
            RuleValue::Floor(_) => "floor",
            RuleValue::Allow(_) => "allow-list",
            RuleValue::Deny(_) => "deny-list",
            RuleValue::Access(_) => "access",
            RuleValue::Tier(_) => "tier",
            RuleValue::Path(_) => "path",
        }
    }

    /// Combine two values of the same level: the strictest wins.
    /// Commutative and associative. `Err` carries a reason for
    /// contradictions (unrelated workspace paths, mismatched kinds).
    pub fn combine(&self, other: &RuleValue) -> std::result::Result<RuleValue, String> {
        use RuleValue::*;
        Ok(match (self, other) {
            (Flag(a), Flag(b)) => Flag(*a || *b),
            (Action(a), Action(b)) => Action(*a.max(b)),
            (Ceiling(a), Ceiling(b)) => Ceiling(*a.min(b)),
            (Floor(a), Floor(b)) => Floor(*a.max(b)),
            (Allow(a), Allow(b)) => Allow(intersect(a, b)),
            (Deny(a), Deny(b)) => Deny(a.union(b).cloned().collect()),
            (Access(a), Access(b)) => Access(*a.min(b)),
            (Tier(a), Tier(b)) => Tier(*a.min(b)),
            (Path(a), Path(b)) => {
                if path_within(a, b) {
                    Path(a.clone())
                } else if path_within(b, a) {
                    Path(b.clone())
                } else {
                    return Err(format!("'{a}' and '{b}' are unrelated directories"));
                }
            }
            (a, b) => {
                return Err(format!(
                    "a {} cannot be merged with a {}",
                    a.kind(),
                    b.kind()
                ))
            }
        })
    }

    /// Whether `lower` (set below) is less strict than `self` (inherited).
    pub fn relaxes(&self, lower: &RuleValue) -> bool {
        use RuleValue::*;
        match (self, lower) {
            (Flag(h), Flag(l)) => *h && !*l,
            (Action(h), Action(l)) => l < h,
            (Ceiling(h), Ceiling(l)) => l > h,
            (Floor(h), Floor(l)) => l < h,
            (Allow(h), Allow(l)) => l.iter().any(|i| !h.iter().any(|p| covers(p, i))),
            (Deny(_), Deny(_)) => false,
            (Access(h), Access(l)) => l > h,
            (Tier(h), Tier(l)) => l > h,
            (Path(h), Path(l)) => !path_within(l, h),
            _ => true,
        }
    }

    /// Short human rendering, used in errors and the preview.
    pub fn display(&self) -> String {
        match self {
            RuleValue::Flag(b) => b.to_string(),
            RuleValue::Action(a) => a.as_str().to_string(),
            RuleValue::Ceiling(n) => format!("≤ {n}"),
            RuleValue::Floor(n) => format!("≥ {n}"),
            RuleValue::Allow(s) => format!(
                "allow [{}]",
                s.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            RuleValue::Deny(s) => format!(
                "deny [{}]",
                s.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            RuleValue::Access(a) => a.as_str().to_string(),
            RuleValue::Tier(t) => format!("≤ {}", t.as_str()),
            RuleValue::Path(p) => p.clone(),
        }
    }
}

fn intersect(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for x in a {
        if b.iter().any(|p| covers(p, x)) {
            out.insert(x.clone());
        }
    }
    for y in b {
        if a.iter().any(|p| covers(p, y)) {
            out.insert(y.clone());
        }
    }
    out
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Because {
    pub level: Level,
    /// The chain from the rule to the selection, innermost first, e.g.
    /// `["concern:pci_dss", "category:payment_data", "function:refund_processor"]`
    /// or `["pack:gdpr-baseline"]`; empty when written directly.
    pub via: Vec<String>,
    /// `file:line` of the selection (or of the rule when written directly).
    pub source: String,
    /// `file:line` of the definition in built-in content (pack, taxonomy), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defined_at: Option<String>,
}

impl Because {
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if !self.via.is_empty() {
            s.push_str(&self.via.join(" ← "));
            s.push_str(" ← ");
        }
        s.push_str(self.level.as_str());
        s.push_str(" @ ");
        s.push_str(&self.source);
        if let Some(d) = &self.defined_at {
            s.push_str(" (defined at ");
            s.push_str(d);
            s.push(')');
        }
        s
    }
}

/// One contributed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub key: String,
    pub value: RuleValue,
    pub because: Because,
    /// Written by the operator at this level (YAML or Rego), as opposed to a
    /// default pulled in through a pack, function, category or concern.
    /// Only direct values can be relax attempts; defaults that are looser
    /// than an inherited value are absorbed by the strictest-wins merge.
    pub direct: bool,
}

/// The combined rules of one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelRule {
    pub rule: EffectiveRule,
    /// The combination of the direct contributions only, with the first one.
    pub direct: Option<(RuleValue, Because)>,
}

/// An effective rule with its because-trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveRule {
    pub value: RuleValue,
    /// Every contribution that shaped the value, top level first.
    pub trail: Vec<TrailEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrailEntry {
    pub because: Because,
    pub set: String,
}

/// Combine contributions of one level; deterministic regardless of order.
pub fn combine_level(
    level: Level,
    contributions: &[Contribution],
) -> Result<BTreeMap<String, LevelRule>> {
    let mut sorted: Vec<&Contribution> = contributions.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.key, &a.because, a.value.display()).cmp(&(&b.key, &b.because, b.value.display()))
    });
    let mut out: BTreeMap<String, LevelRule> = BTreeMap::new();
    for c in sorted {
        let entry = TrailEntry {
            because: c.because.clone(),
            set: c.value.display(),
        };
        let contradiction =
            |a: &RuleValue, a_at: &str, reason: String| PolicyError::Contradiction {
                key: c.key.clone(),
                level: level.as_str().into(),
                a: format!("{} at {}", a.display(), a_at),
                b: format!("{} at {} ({reason})", c.value.display(), c.because.source),
            };
        match out.get_mut(&c.key) {
            None => {
                out.insert(
                    c.key.clone(),
                    LevelRule {
                        rule: EffectiveRule {
                            value: c.value.clone(),
                            trail: vec![entry],
                        },
                        direct: c.direct.then(|| (c.value.clone(), c.because.clone())),
                    },
                );
            }
            Some(e) => {
                let first_at = e.rule.trail[0].because.source.clone();
                e.rule.value = e
                    .rule
                    .value
                    .combine(&c.value)
                    .map_err(|r| contradiction(&e.rule.value, &first_at, r))?;
                if !e.rule.trail.contains(&entry) {
                    e.rule.trail.push(entry);
                }
                if c.direct {
                    e.direct = Some(match e.direct.take() {
                        None => (c.value.clone(), c.because.clone()),
                        Some((v, b)) => (
                            v.combine(&c.value)
                                .map_err(|r| contradiction(&v, &b.source, r))?,
                            b,
                        ),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Stack a lower level's combined rules onto the inherited ones, rejecting
/// any direct relaxation.
pub fn stack_level(
    inherited: &mut BTreeMap<String, EffectiveRule>,
    lower_level: Level,
    lower: BTreeMap<String, LevelRule>,
) -> Result<()> {
    for (key, lr) in lower {
        let LevelRule { rule, direct } = lr;
        match inherited.get_mut(&key) {
            None => {
                inherited.insert(key, rule);
            }
            Some(h) => {
                if let Some((dv, db)) = &direct {
                    if h.value.relaxes(dv) {
                        // Name the inherited rule that the lower one conflicts with.
                        let hb = h
                            .trail
                            .iter()
                            .rev()
                            .find(|t| t.because.level < lower_level)
                            .map(|t| (t.because.clone(), t.set.clone()));
                        let (hb, hset) =
                            hb.unwrap_or_else(|| (h.trail[0].because.clone(), h.value.display()));
                        return Err(PolicyError::Relax(Box::new(RelaxAttempt {
                            key,
                            higher_level: hb.level.as_str().into(),
                            higher_rule: hset,
                            higher_at: hb.describe(),
                            lower_level: lower_level.as_str().into(),
                            lower_rule: dv.display(),
                            lower_at: db.describe(),
                        })));
                    }
                }
                let merged =
                    h.value
                        .combine(&rule.value)
                        .map_err(|reason| PolicyError::Contradiction {
                            key: key.clone(),
                            level: lower_level.as_str().into(),
                            a: h.value.display(),
                            b: format!("{} ({reason})", rule.value.display()),
                        })?;
                h.value = merged;
                for t in rule.trail {
                    if !h.trail.contains(&t) {
                        h.trail.push(t);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn combine_semantics() {
        use RuleValue::*;
        assert_eq!(Flag(false).combine(&Flag(true)).unwrap(), Flag(true));
        assert_eq!(
            Action(crate::model::Action::Log)
                .combine(&Action(crate::model::Action::Redact))
                .unwrap(),
            Action(crate::model::Action::Redact)
        );
        assert_eq!(Ceiling(5).combine(&Ceiling(3)).unwrap(), Ceiling(3));
        assert_eq!(Floor(5).combine(&Floor(3)).unwrap(), Floor(5));
        assert_eq!(
            Allow(set(&["a", "b"]))
                .combine(&Allow(set(&["b", "c"])))
                .unwrap(),
            Allow(set(&["b"]))
        );
        assert_eq!(
            Allow(set(&["*.acme.com"]))
                .combine(&Allow(set(&["api.acme.com", "x.org"])))
                .unwrap(),
            Allow(set(&["api.acme.com"]))
        );
        assert_eq!(
            Deny(set(&["a"])).combine(&Deny(set(&["b"]))).unwrap(),
            Deny(set(&["a", "b"]))
        );
        assert_eq!(
            Path("/w/a".into()).combine(&Path("/w".into())).unwrap(),
            Path("/w/a".into())
        );
        assert!(Path("/w/a".into()).combine(&Path("/v".into())).is_err());
        assert!(Flag(true).combine(&Ceiling(1)).is_err());
    }

    #[test]
    fn relax_semantics() {
        use RuleValue::*;
        assert!(Flag(true).relaxes(&Flag(false)));
        assert!(!Flag(false).relaxes(&Flag(true)));
        assert!(Ceiling(10).relaxes(&Ceiling(11)));
        assert!(!Ceiling(10).relaxes(&Ceiling(10)));
        assert!(Allow(set(&["*.acme.com"])).relaxes(&Allow(set(&["evil.com"]))));
        assert!(!Allow(set(&["*.acme.com"])).relaxes(&Allow(set(&["api.acme.com"]))));
        assert!(
            Access(crate::model::Access::Read).relaxes(&Access(crate::model::Access::ReadWrite))
        );
        assert!(Path("/w".into()).relaxes(&Path("/".into())));
        assert!(!Path("/w".into()).relaxes(&Path("/w/sub".into())));
    }

    #[test]
    fn covers_globs() {
        assert!(covers("*.acme.com", "api.acme.com"));
        assert!(covers("*.acme.com", "acme.com"));
        assert!(covers("*.acme.com", "*.eu.acme.com"));
        assert!(!covers("*.acme.com", "evilacme.com"));
        assert!(!covers("api.acme.com", "*.acme.com"));
    }
}
