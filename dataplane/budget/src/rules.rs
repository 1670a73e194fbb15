//! Which limits apply to a call: scopes (org, project, agent, API key),
//! each with limits on tokens, dollars, requests and tool calls per window,
//! optionally only for models matching a pattern.

use std::fmt;

use serde::{Deserialize, Serialize};
use tappass_policies::pricing::glob_match;

use crate::window::WindowKind;
use crate::BudgetError;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Prompt plus output tokens.
    Tokens,
    /// Spend in millionths of a US dollar.
    MicroDollars,
    Requests,
    /// Tool calls the model emitted (counted when the call settles).
    ToolCalls,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Tokens => "tokens",
            Metric::MicroDollars => "micro_dollars",
            Metric::Requests => "requests",
            Metric::ToolCalls => "tool_calls",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "tokens" => Some(Metric::Tokens),
            "micro_dollars" => Some(Metric::MicroDollars),
            "requests" => Some(Metric::Requests),
            "tool_calls" => Some(Metric::ToolCalls),
            _ => None,
        }
    }

    /// The audit step that enforces limits on this metric.
    pub fn step(self) -> &'static str {
        match self {
            Metric::Tokens => "enforce_token_budget",
            Metric::MicroDollars => "enforce_dollar_budget",
            Metric::Requests | Metric::ToolCalls => "enforce_rate_limit",
        }
    }
}

/// The kinds of scope a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    Org,
    Project,
    Agent,
    ApiKey,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 4] = [
        ScopeKind::Org,
        ScopeKind::Project,
        ScopeKind::Agent,
        ScopeKind::ApiKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Org => "org",
            ScopeKind::Project => "project",
            ScopeKind::Agent => "agent",
            ScopeKind::ApiKey => "api_key",
        }
    }

    pub fn parse(s: &str) -> Option<ScopeKind> {
        ScopeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One limit: at most `max` of `metric` per `window`, for calls to models
/// matching `model` (all models when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub metric: Metric,
    pub window: WindowKind,
    pub max: u64,
    pub model: Option<String>,
}

impl Limit {
    /// The limit's name as operators write it: `tokens_per_day`,
    /// `dollars_per_month`, `requests_per_minute`, with `[model]` when it
    /// applies to some models only.
    pub fn name(&self) -> String {
        let metric = match self.metric {
            Metric::MicroDollars => "dollars",
            m => m.as_str(),
        };
        let base = format!("{metric}_per_{}", self.window.as_str());
        match &self.model {
            Some(m) => format!("{base}[{m}]"),
            None => base,
        }
    }

    pub fn applies_to(&self, model: &str) -> bool {
        self.model.as_deref().is_none_or(|p| glob_match(p, model))
    }
}

/// A scope selector: `agent:support-bot`, or `agent:*` for each agent
/// separately.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeSelector {
    pub kind: ScopeKind,
    /// `None`: every scope of this kind, each with its own counters.
    pub name: Option<String>,
}

impl ScopeSelector {
    /// Parse `kind:name` or `kind:*`.
    pub fn parse(s: &str) -> Result<ScopeSelector, BudgetError> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            BudgetError::Config(format!(
                "scope `{s}`: expected `org:NAME`, `project:NAME`, `agent:NAME` or `api_key:NAME` (NAME may be `*`)"
            ))
        })?;
        let kind = ScopeKind::parse(kind).ok_or_else(|| {
            BudgetError::Config(format!(
                "scope `{s}`: unknown kind `{kind}` (org, project, agent, api_key)"
            ))
        })?;
        if name.is_empty() {
            return Err(BudgetError::Config(format!("scope `{s}`: empty name")));
        }
        Ok(ScopeSelector {
            kind,
            name: (name != "*").then(|| name.to_string()),
        })
    }
}

impl fmt::Display for ScopeSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.kind.as_str(),
            self.name.as_deref().unwrap_or("*")
        )
    }
}

/// The scopes one call belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallScopes {
    pub org: Option<String>,
    pub project: Option<String>,
    pub agent: Option<String>,
    pub api_key: Option<String>,
}

impl CallScopes {
    pub fn name(&self, kind: ScopeKind) -> Option<&str> {
        match kind {
            ScopeKind::Org => self.org.as_deref(),
            ScopeKind::Project => self.project.as_deref(),
            ScopeKind::Agent => self.agent.as_deref(),
            ScopeKind::ApiKey => self.api_key.as_deref(),
        }
    }
}

/// A scope's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    pub scope: ScopeSelector,
    pub limits: Vec<Limit>,
}

/// Every scope rule of one configuration snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<ScopeRule>,
    /// Scopes whose day and month limits are shared by a fleet of
    /// gateways (spent only within leases from the control plane).
    shared: Vec<ScopeSelector>,
}

/// A limit that applies to a call, with the scope it is counted in.
#[derive(Debug, Clone, Copy)]
pub struct Applicable<'a> {
    /// The scope's kind and name (for a `*` rule, the call's own name).
    pub kind: ScopeKind,
    pub name: &'a str,
    pub limit: &'a Limit,
    /// The limit is shared by the fleet: spend only within a lease.
    pub shared: bool,
}

impl Rules {
    /// Rules from scope rules; limits of the same scope are merged and the
    /// strictest (lowest) of two equal limits wins.
    pub fn new(rules: Vec<ScopeRule>) -> Rules {
        let mut merged: Vec<ScopeRule> = Vec::new();
        for r in rules {
            let slot = match merged.iter_mut().find(|m| m.scope == r.scope) {
                Some(s) => s,
                None => {
                    merged.push(ScopeRule {
                        scope: r.scope.clone(),
                        limits: Vec::new(),
                    });
                    merged.last_mut().expect("just pushed")
                }
            };
            for l in r.limits {
                let same = slot
                    .limits
                    .iter_mut()
                    .find(|x| x.metric == l.metric && x.window == l.window && x.model == l.model);
                match same {
                    Some(x) => x.max = x.max.min(l.max),
                    None => slot.limits.push(l),
                }
            }
        }
        Rules {
            rules: merged,
            shared: Vec::new(),
        }
    }

    /// Share the day and month limits of scopes matching `selectors` with
    /// the fleet. Minute windows (rates) stay per gateway.
    pub fn with_shared(mut self, selectors: Vec<ScopeSelector>) -> Rules {
        self.shared = selectors;
        self
    }

    pub fn has_shared(&self) -> bool {
        !self.shared.is_empty()
    }

    fn is_shared(&self, kind: ScopeKind, name: &str, limit: &Limit) -> bool {
        limit.window != WindowKind::Minute
            && self
                .shared
                .iter()
                .any(|s| s.kind == kind && s.name.as_deref().is_none_or(|n| n == name))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.iter().all(|r| r.limits.is_empty())
    }

    pub fn rules(&self) -> &[ScopeRule] {
        &self.rules
    }

    /// The limits that apply to a call by `who` to `model`.
    pub fn applicable<'a>(&'a self, who: &'a CallScopes, model: &str) -> Vec<Applicable<'a>> {
        let mut out = Vec::new();
        for r in &self.rules {
            let Some(name) = who.name(r.scope.kind) else {
                continue;
            };
            if r.scope.name.as_deref().is_some_and(|n| n != name) {
                continue;
            }
            for limit in &r.limits {
                if limit.applies_to(model) {
                    out.push(Applicable {
                        kind: r.scope.kind,
                        name,
                        limit,
                        shared: self.is_shared(r.scope.kind, name, limit),
                    });
                }
            }
        }
        out
    }

    /// Whether any limit applies to this call and counts `metric`.
    pub fn counts(&self, who: &CallScopes, model: &str, metric: Metric) -> bool {
        self.applicable(who, model)
            .iter()
            .any(|a| a.limit.metric == metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(metric: Metric, window: WindowKind, max: u64, model: Option<&str>) -> Limit {
        Limit {
            metric,
            window,
            max,
            model: model.map(str::to_string),
        }
    }

    #[test]
    fn selectors_parse_and_refuse_garbage() {
        let s = ScopeSelector::parse("agent:*").unwrap();
        assert_eq!((s.kind, s.name), (ScopeKind::Agent, None));
        let s = ScopeSelector::parse("api_key:ci:runner").unwrap();
        assert_eq!(s.name.as_deref(), Some("ci:runner"));
        for bad in ["agent", "team:x", "org:", "", ":x"] {
            assert!(ScopeSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn applicable_limits_follow_scope_and_model() {
        let rules = Rules::new(vec![
            ScopeRule {
                scope: ScopeSelector::parse("org:acme").unwrap(),
                limits: vec![limit(Metric::Tokens, WindowKind::Day, 100, None)],
            },
            ScopeRule {
                scope: ScopeSelector::parse("agent:*").unwrap(),
                limits: vec![
                    limit(Metric::Requests, WindowKind::Minute, 10, None),
                    limit(Metric::Tokens, WindowKind::Day, 5, Some("gpt-4o*")),
                ],
            },
            ScopeRule {
                scope: ScopeSelector::parse("org:acme").unwrap(),
                limits: vec![limit(Metric::Tokens, WindowKind::Day, 50, None)],
            },
        ]);
        let who = CallScopes {
            org: Some("acme".into()),
            agent: Some("bot".into()),
            ..Default::default()
        };
        let a = rules.applicable(&who, "claude-haiku-4-5");
        let names: Vec<String> = a
            .iter()
            .map(|x| {
                format!(
                    "{}:{} {}={}",
                    x.kind.as_str(),
                    x.name,
                    x.limit.name(),
                    x.limit.max
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "org:acme tokens_per_day=50",
                "agent:bot requests_per_minute=10"
            ]
        );
        assert_eq!(rules.applicable(&who, "gpt-4o-mini").len(), 3);
        let other = CallScopes {
            org: Some("other".into()),
            ..Default::default()
        };
        assert!(rules.applicable(&other, "gpt-4o").is_empty());
    }

    #[test]
    fn limit_names() {
        assert_eq!(
            limit(Metric::MicroDollars, WindowKind::Month, 1, None).name(),
            "dollars_per_month"
        );
        assert_eq!(
            limit(Metric::Tokens, WindowKind::Day, 1, Some("gpt-*")).name(),
            "tokens_per_day[gpt-*]"
        );
    }
}
