//! Budgets on the request path: the rules of a gateway state (config plus
//! the agents' pushed policies), the reservation taken before the upstream
//! call, the meter that counts a stream's output, and the settlement with
//! the provider's reported usage when the call ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tappass_budget::{
    CallScopes, Clock, Ledger, Limit, Metric, Reservation, Rules, ScopeRule, ScopeSelector, Spend,
    Store, TokenCounter, WindowKind,
};
use tappass_policies::pricing::{Price, PriceTable, TokenCounts};

use crate::auth::{AuthMethod, Caller};
use crate::call_record::CallRecord;
use crate::config::{BudgetsConfig, ModelLimitsConfig, ScopeLimitsConfig};
use crate::control::PushedPolicy;
use crate::error::GatewayError;
use crate::events::{EventInfo, Usage};
use crate::relay::{HoldControl, StreamHook, Verdict};
use crate::sse::SseFrame;
use crate::wire::{Call, Endpoint};

/// Dollars → micro-dollars, rounded down (a limit never grows).
fn micro(dollars: f64) -> u64 {
    (dollars * 1_000_000.0).floor() as u64
}

fn limits_of(c: &ScopeLimitsConfig) -> Vec<Limit> {
    let mut out = Vec::new();
    let mut push = |metric, window, max: Option<u64>, model: Option<&String>| {
        if let Some(max) = max {
            out.push(Limit {
                metric,
                window,
                max,
                model: model.cloned(),
            });
        }
    };
    push(Metric::Tokens, WindowKind::Day, c.tokens_per_day, None);
    push(
        Metric::MicroDollars,
        WindowKind::Month,
        c.dollars_per_month.map(micro),
        None,
    );
    push(
        Metric::Requests,
        WindowKind::Minute,
        c.requests_per_minute,
        None,
    );
    push(
        Metric::ToolCalls,
        WindowKind::Minute,
        c.tool_calls_per_minute,
        None,
    );
    for (pattern, m) in &c.models {
        let ModelLimitsConfig {
            tokens_per_day,
            dollars_per_month,
            requests_per_minute,
        } = m;
        push(
            Metric::Tokens,
            WindowKind::Day,
            *tokens_per_day,
            Some(pattern),
        );
        push(
            Metric::MicroDollars,
            WindowKind::Month,
            dollars_per_month.map(micro),
            Some(pattern),
        );
        push(
            Metric::Requests,
            WindowKind::Minute,
            *requests_per_minute,
            Some(pattern),
        );
    }
    out
}

/// Check a `budgets` section: `(key, problem)` on the first error.
pub fn validate(c: &BudgetsConfig) -> Result<(), (String, String)> {
    Clock::new(&c.time_zone).map_err(|e| ("budgets.time_zone".into(), e.to_string()))?;
    if c.default_max_tokens == 0 {
        return Err((
            "budgets.default_max_tokens".into(),
            "must be at least 1".into(),
        ));
    }
    let mut table = PriceTable::default();
    table
        .add_all("budgets.prices", c.prices.clone())
        .map_err(|e| ("budgets.prices".into(), e.to_string()))?;
    for (scope, limits) in &c.scopes {
        let key = format!("budgets.scopes.{scope}");
        ScopeSelector::parse(scope).map_err(|e| (key.clone(), e.to_string()))?;
        let dollars = std::iter::once(limits.dollars_per_month)
            .chain(limits.models.values().map(|m| m.dollars_per_month))
            .flatten();
        for d in dollars {
            if !d.is_finite() || d < 0.0 {
                return Err((
                    format!("{key}.dollars_per_month"),
                    format!("must be a non-negative number, got {d}"),
                ));
            }
        }
        for pattern in limits.models.keys() {
            if pattern.trim().is_empty() {
                return Err((format!("{key}.models"), "empty model pattern".into()));
            }
        }
    }
    if let Some(f) = &c.fleet {
        for (i, scope) in f.scopes.iter().enumerate() {
            ScopeSelector::parse(scope)
                .map_err(|e| (format!("budgets.fleet.scopes[{i}]"), e.to_string()))?;
        }
        if !(f.lease_fraction > 0.0 && f.lease_fraction <= 1.0) {
            return Err((
                "budgets.fleet.lease_fraction".into(),
                "must be more than 0 and at most 1".into(),
            ));
        }
        if f.renew_every_ms == 0 {
            return Err((
                "budgets.fleet.renew_every_ms".into(),
                "must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// The budget rules of one gateway state, built with it (never per call).
#[derive(Debug)]
pub struct BudgetPolicy {
    pub rules: Rules,
    pub prices: PriceTable,
    pub default_max_tokens: u64,
    pub default_org: Option<String>,
    /// Where each agent's pushed budget came from (for the audit).
    pushed_agents: BTreeMap<String, u64>,
}

/// The `budget` block of a pushed Compiled Policy.
fn pushed_limits(document: &str) -> Result<Vec<Limit>, String> {
    let doc: Value = serde_json::from_str(document)
        .map_err(|e| format!("the compiled policy is not valid JSON: {e}"))?;
    let doc = doc.get("payload").filter(|p| p.is_object()).unwrap_or(&doc);
    let Some(b) = doc.get("budget").filter(|b| !b.is_null()) else {
        return Ok(Vec::new());
    };
    let field = |name: &str| -> Result<Option<u64>, String> {
        match b.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("budget.{name} must be a non-negative integer")),
        }
    };
    let c = ScopeLimitsConfig {
        tokens_per_day: field("tokens_per_day")?,
        dollars_per_month: field("dollars_per_month")?.map(|d| d as f64),
        requests_per_minute: field("requests_per_minute")?,
        tool_calls_per_minute: field("tool_calls_per_minute")?,
        models: BTreeMap::new(),
    };
    Ok(limits_of(&c))
}

impl BudgetPolicy {
    /// The rules for `config` and the agents' pushed policies, or `None`
    /// when no budget applies anywhere. Limits of the same scope from both
    /// sources are merged; the stricter wins.
    pub fn build(
        config: Option<&BudgetsConfig>,
        policies: &BTreeMap<String, PushedPolicy>,
    ) -> Result<Option<Arc<BudgetPolicy>>, String> {
        let mut rules = Vec::new();
        let mut prices = PriceTable::builtin().map_err(|e| e.to_string())?;
        if let Some(c) = config {
            prices
                .add_all("budgets.prices", c.prices.clone())
                .map_err(|e| e.to_string())?;
            for (scope, limits) in &c.scopes {
                rules.push(ScopeRule {
                    scope: ScopeSelector::parse(scope).map_err(|e| e.to_string())?,
                    limits: limits_of(limits),
                });
            }
        }
        let mut pushed_agents = BTreeMap::new();
        for (agent, p) in policies {
            let limits = pushed_limits(&p.document).map_err(|e| format!("agent `{agent}`: {e}"))?;
            if !limits.is_empty() {
                pushed_agents.insert(agent.clone(), p.version);
                rules.push(ScopeRule {
                    scope: ScopeSelector {
                        kind: tappass_budget::ScopeKind::Agent,
                        name: Some(agent.clone()),
                    },
                    limits,
                });
            }
        }
        if config.is_none() && rules.is_empty() {
            return Ok(None);
        }
        let shared = match config.and_then(|c| c.fleet.as_ref()) {
            Some(f) => f
                .scopes
                .iter()
                .map(|s| ScopeSelector::parse(s).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(Some(Arc::new(BudgetPolicy {
            rules: Rules::new(rules).with_shared(shared),
            prices,
            default_max_tokens: config.map_or(4096, |c| c.default_max_tokens),
            default_org: config.and_then(|c| c.default_org.clone()),
            pushed_agents,
        })))
    }

    /// The price of a call to `model` (the configured name first, then the
    /// name the provider is called with).
    pub fn price(&self, model: &str, upstream_model: Option<&str>) -> Option<Price> {
        self.prices
            .price(model)
            .or_else(|| upstream_model.and_then(|m| self.prices.price(m)))
            .copied()
    }
}

/// The ledger of a gateway process: persisted when `state_dir` is set.
pub fn open_ledger(config: Option<&BudgetsConfig>) -> Result<Arc<Ledger>, String> {
    let tz = config.map_or("UTC", |c| c.time_zone.as_str());
    let clock = Clock::new(tz).map_err(|e| e.to_string())?;
    // The tokenizer is needed only with budgets (and, for a call, only
    // near a limit); its tables are loaded off the start-up path.
    if config.is_some() {
        tappass_budget::estimate::warm_in_background();
    }
    match config.and_then(|c| c.state_dir.as_deref()) {
        Some(dir) => open_persistent(dir, clock),
        None => Ok(Ledger::in_memory(clock)),
    }
}

fn open_persistent(dir: &Path, clock: Clock) -> Result<Arc<Ledger>, String> {
    let (store, loaded) = Store::open(dir, &clock).map_err(|e| e.to_string())?;
    if loaded.charged_reservations > 0 {
        tracing::warn!(
            reservations = loaded.charged_reservations,
            dir = %dir.display(),
            "calls in flight at the last stop were charged their full reservation"
        );
    }
    Ok(Ledger::persistent(clock, store, loaded.totals))
}

/// What a call holds of its budgets, from the reservation to settlement.
pub struct CallBudget {
    reservation: Reservation,
    price: Option<Price>,
    prompt_estimate: u64,
    output_cap: u64,
    /// Output tokens counted on the stream (shared with the meter).
    streamed_output: Arc<AtomicU64>,
    /// Tool calls the model emitted (shared with the meter).
    tool_calls: Arc<AtomicU64>,
    /// The status the upstream answered with, once it did.
    pub upstream_status: Option<u16>,
}

impl std::fmt::Debug for CallBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBudget")
            .field("reservation", &self.reservation)
            .field("output_cap", &self.output_cap)
            .finish()
    }
}

fn scopes_of(caller: &Caller, default_org: Option<&String>) -> CallScopes {
    CallScopes {
        org: caller.org.clone().or_else(|| default_org.cloned()),
        project: caller.project.clone(),
        agent: Some(caller.agent.clone()),
        api_key: matches!(caller.method, AuthMethod::ApiKey).then(|| caller.agent.clone()),
    }
}

/// Whether the body names an output cap at all (valid or not).
fn has_cap_field(call: &Call) -> bool {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .any(|k| call.body().contains_key(*k))
}

/// The field that caps output on each endpoint, when the caller set none.
fn cap_field(endpoint: Endpoint, model: &str) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions => {
            let reasoning = ["o1", "o3", "o4", "gpt-5"]
                .iter()
                .any(|p| model.starts_with(p));
            Some(if reasoning {
                "max_completion_tokens"
            } else {
                "max_tokens"
            })
        }
        Endpoint::Responses => Some("max_output_tokens"),
        Endpoint::AnthropicMessages => Some("max_tokens"),
        _ => None,
    }
}

/// Reserve the call's estimated cost in every scope that applies, before
/// the upstream call. Records `enforce_rate_limit`, `enforce_token_budget`
/// and `enforce_dollar_budget` in the audit; refuses with 429 when a scope
/// cannot cover the call. A shared limit whose lease runs short waits for
/// one lease renewal (bounded) before it refuses.
pub async fn reserve(
    ledger: &Arc<Ledger>,
    fleet: Option<&crate::budget_fleet::FleetLeases>,
    policy: &BudgetPolicy,
    caller: &Caller,
    call: &mut Call,
    upstream_model: Option<&str>,
    rec: &mut CallRecord,
) -> Result<CallBudget, GatewayError> {
    let who = scopes_of(caller, policy.default_org.as_ref());
    let applicable = policy.rules.applicable(&who, &call.model);
    let model_counter = TokenCounter::for_model(upstream_model.unwrap_or(&call.model));
    // For a model with a real tokenizer, first reserve the byte bound (an
    // upper bound, costing a length); tokenize only when that does not fit.
    let mut counter = if model_counter.is_exact() {
        TokenCounter::ByteBound
    } else {
        model_counter
    };
    // The default cap is set on the request only when a token or dollar
    // limit applies: a call only rate-limited goes upstream unchanged.
    let metered = applicable
        .iter()
        .any(|a| matches!(a.limit.metric, Metric::Tokens | Metric::MicroDollars));
    let produces_output = cap_field(call.endpoint, &call.model).is_some();
    let output_cap = match (call.max_tokens, produces_output) {
        (_, false) => 0,
        (Some(n), true) => n,
        (None, true) if !metered => 0,
        // A cap field the caller sent but that is not a whole number is
        // left for the provider to refuse; the call reserves the default.
        (None, true) if has_cap_field(call) => policy.default_max_tokens,
        (None, true) => {
            let field = cap_field(call.endpoint, &call.model).unwrap_or("max_tokens");
            call.body_mut()
                .insert(field.into(), Value::from(policy.default_max_tokens));
            call.max_tokens = Some(policy.default_max_tokens);
            policy.default_max_tokens
        }
    };
    let price = policy.price(&call.model, upstream_model);
    let provenance = if policy.pushed_agents.contains_key(&caller.agent) {
        "config:budgets,control_plane"
    } else {
        "config:budgets"
    };
    let wants_dollars = applicable
        .iter()
        .any(|a| a.limit.metric == Metric::MicroDollars);
    if wants_dollars && price.is_none() {
        let e = GatewayError::GuardrailFailed {
            step: "enforce_dollar_budget",
            reason: format!(
                "model `{}` has no price, so its dollar budget cannot be enforced; add it to budgets.prices",
                call.model
            ),
        };
        rec.step(
            "enforce_dollar_budget",
            "error",
            "budget",
            provenance,
            json!({"error": e.code(), "model": call.model}),
        );
        return Err(e);
    }
    let demand_for = |prompt: u64| Spend {
        tokens: prompt.saturating_add(output_cap),
        micro_dollars: price.map_or(0, |p| {
            p.micro_dollars(TokenCounts {
                input: prompt,
                cached_input: 0,
                output: output_cap,
            })
        }),
        requests: 1,
        tool_calls: 0,
    };
    let mut prompt_estimate = counter.prompt_tokens(call.body());
    let mut demand = demand_for(prompt_estimate);
    let names = |m: &[Metric]| -> Vec<String> {
        applicable
            .iter()
            .filter(|a| m.contains(&a.limit.metric))
            .map(|a| format!("{}:{} {}", a.kind.as_str(), a.name, a.limit.name()))
            .collect()
    };
    let rate = names(&[Metric::Requests, Metric::ToolCalls]);
    let tokens = names(&[Metric::Tokens]);
    let dollars = names(&[Metric::MicroDollars]);
    let mut attempt = ledger.reserve(&policy.rules, &who, &call.model, demand);
    // Only a token or dollar limit can be helped by a smaller estimate.
    let estimate_matters = attempt
        .as_ref()
        .err()
        .is_some_and(|x| matches!(x.metric, Metric::Tokens | Metric::MicroDollars));
    if estimate_matters && model_counter.is_exact() {
        counter = model_counter;
        prompt_estimate = counter.prompt_tokens(call.body());
        demand = demand_for(prompt_estimate);
        attempt = ledger.reserve(&policy.rules, &who, &call.model, demand);
    }
    if let (Err(x), Some(f)) = (&attempt, fleet) {
        if x.lease_short && f.renew_now().await {
            attempt = ledger.reserve(&policy.rules, &who, &call.model, demand);
        }
    }
    let reservation = match attempt {
        Ok(r) => r,
        Err(x) => {
            let step = x.metric.step();
            let evidence = json!({
                "scope": x.scope, "limit": x.limit, "max": x.max, "used": x.used,
                "requested": x.requested, "resets_at": x.resets_at,
            });
            rec.step(step, "deny", "budget", provenance, evidence);
            return Err(GatewayError::BudgetExceeded(Box::new(x)));
        }
    };
    rec.step(
        "enforce_rate_limit",
        "allow",
        "budget",
        provenance,
        json!({"limits": rate}),
    );
    rec.step(
        "enforce_token_budget",
        "allow",
        "budget",
        provenance,
        json!({"limits": tokens, "reserved": demand.tokens, "prompt_estimate": prompt_estimate,
        "output_cap": output_cap, "prompt_count": match counter {
            TokenCounter::Exact(_) => "tokenizer",
            TokenCounter::ByteBound => "byte_bound",
            TokenCounter::Approx => "estimate",
        }}),
    );
    rec.step(
        "enforce_dollar_budget",
        "allow",
        "budget",
        provenance,
        json!({"limits": dollars, "reserved_usd": demand.micro_dollars as f64 / 1e6, "priced": price.is_some()}),
    );
    Ok(CallBudget {
        reservation,
        price,
        prompt_estimate,
        output_cap,
        streamed_output: Arc::new(AtomicU64::new(0)),
        tool_calls: Arc::new(AtomicU64::new(0)),
        upstream_status: None,
    })
}

impl CallBudget {
    /// The stream meter for this call. It counts text at 3 bytes per token
    /// (no tokenizer per delta: the count only guards against a provider
    /// that ignores its cap, and prices a stream cut short).
    pub fn meter(&self) -> BudgetMeter {
        BudgetMeter {
            counter: TokenCounter::Approx,
            cap: self.output_cap,
            counted: self.streamed_output.clone(),
            reported: 0,
            tool_calls: self.tool_calls.clone(),
            seen_calls: Vec::new(),
        }
    }

    /// Count the tool calls of a whole (non-streamed) response body,
    /// parsed once by the caller (`None`: not JSON, no tool calls).
    pub fn count_tool_calls(&self, endpoint: Endpoint, body: Option<&Value>) {
        let n = body.map_or(0, |v| tool_calls_in_value(endpoint, v));
        self.tool_calls.store(n, Ordering::Relaxed);
    }

    /// Settle with what the call spent, and put its cost on the record.
    /// - Usage reported: that usage, priced.
    /// - The upstream answered with an error status, or never answered:
    ///   nothing spent (the request still counts against request rates).
    /// - It answered but reported no usage: the prompt estimate plus the
    ///   output counted on the stream, or the whole reservation for a
    ///   response that was not streamed.
    /// - A stream cut short (blocked, failed, or left by the client) is
    ///   charged at least the output counted on it: the usage reported so
    ///   far may predate what was delivered.
    pub fn settle(self, usage: Option<Usage>, streamed: bool, complete: bool) -> Option<u64> {
        let tool_calls = self.tool_calls.load(Ordering::Relaxed);
        let priced = |t: TokenCounts| self.price.map_or(0, |p| p.micro_dollars(t));
        let ok = self.upstream_status.is_some_and(|s| s < 400);
        let counted = self.streamed_output.load(Ordering::Relaxed);
        let spent = match usage.filter(|u| *u != Usage::default()) {
            Some(u) if ok => {
                let (input, output) = if streamed && !complete {
                    let input = if u.input_tokens > 0 {
                        u.input_tokens
                    } else {
                        self.prompt_estimate
                    };
                    (input, u.output_tokens.max(counted))
                } else {
                    (u.input_tokens, u.output_tokens)
                };
                let t = TokenCounts {
                    input,
                    cached_input: u.cached_input_tokens,
                    output,
                };
                Some((input.saturating_add(output), priced(t)))
            }
            _ if !ok => None,
            _ => {
                let output = if streamed { counted } else { self.output_cap };
                let t = TokenCounts {
                    input: self.prompt_estimate,
                    cached_input: 0,
                    output,
                };
                Some((self.prompt_estimate.saturating_add(output), priced(t)))
            }
        };
        match spent {
            Some((tokens, micro_dollars)) => {
                self.reservation.settle(Spend {
                    tokens,
                    micro_dollars,
                    requests: 1,
                    tool_calls,
                });
                Some(micro_dollars)
            }
            None => {
                self.reservation.release();
                None
            }
        }
    }
}

/// Tool calls in a complete response body.
pub fn tool_calls_in_value(endpoint: Endpoint, v: &Value) -> u64 {
    let count = |items: Option<&Value>, pred: &dyn Fn(&Value) -> bool| {
        items
            .and_then(Value::as_array)
            .map_or(0, |a| a.iter().filter(|x| pred(x)).count() as u64)
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            v.get("choices")
                .and_then(Value::as_array)
                .map_or(0, |choices| {
                    choices
                        .iter()
                        .map(|c| count(c.pointer("/message/tool_calls"), &|_| true))
                        .sum()
                })
        }
        Endpoint::AnthropicMessages => count(v.get("content"), &|b| {
            b.get("type").and_then(Value::as_str) == Some("tool_use")
        }),
        Endpoint::Responses => count(v.get("output"), &|o| {
            o.get("type").and_then(Value::as_str) == Some("function_call")
        }),
        _ => 0,
    }
}

/// Counts a stream's output tokens and tool calls; ends the stream when
/// the output passes what the call reserved.
///
/// Usage the provider reports inside the stream (Anthropic's running
/// `output_tokens`) is exact and cuts at the reservation. Text counted by
/// the gateway is an estimate (3 bytes per token), so it cuts only past
/// [`ESTIMATE_TOLERANCE`] times the reservation: the provider was sent the
/// same cap and stops itself first.
pub struct BudgetMeter {
    counter: TokenCounter,
    cap: u64,
    counted: Arc<AtomicU64>,
    reported: u64,
    tool_calls: Arc<AtomicU64>,
    seen_calls: Vec<u64>,
}

/// How far a counted (not reported) output may pass the reservation.
pub const ESTIMATE_TOLERANCE: f64 = 1.5;

impl BudgetMeter {
    fn over(&self) -> Option<GatewayError> {
        if self.cap == 0 {
            return None;
        }
        let counted = self.counted.load(Ordering::Relaxed);
        let estimated_over = counted as f64 > self.cap as f64 * ESTIMATE_TOLERANCE + 16.0;
        (self.reported > self.cap || estimated_over).then(|| GatewayError::OutputBudgetReached {
            reserved: self.cap,
            counted: self.reported.max(counted),
        })
    }
}

impl StreamHook for BudgetMeter {
    fn name(&self) -> &'static str {
        "budget_meter"
    }

    fn on_event(
        &mut self,
        _frame: &SseFrame,
        info: &EventInfo,
        _hold: &mut HoldControl,
    ) -> Verdict {
        if let Some(t) = &info.text {
            self.counted
                .fetch_add(self.counter.count(t), Ordering::Relaxed);
        }
        for f in &info.tool_calls {
            if !f.arguments.is_empty() {
                self.counted
                    .fetch_add(self.counter.count(&f.arguments), Ordering::Relaxed);
            }
            if (f.id.is_some() || f.name.is_some()) && !self.seen_calls.contains(&f.index) {
                self.seen_calls.push(f.index);
                self.tool_calls.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(u) = info.usage {
            self.reported = self.reported.max(u.output_tokens);
        }
        match self.over() {
            Some(e) => Verdict::Deny(e),
            None => Verdict::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> BudgetsConfig {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn config_limits_become_rules() {
        let c = cfg("
time_zone: Europe/Berlin
scopes:
  org:acme: { tokens_per_day: 1000, dollars_per_month: 12.5 }
  agent:*: { requests_per_minute: 60, models: { 'gpt-4o*': { tokens_per_day: 10 } } }
");
        assert!(validate(&c).is_ok());
        let p = BudgetPolicy::build(Some(&c), &BTreeMap::new())
            .unwrap()
            .unwrap();
        let who = CallScopes {
            org: Some("acme".into()),
            agent: Some("bot".into()),
            ..Default::default()
        };
        let names: Vec<String> = p
            .rules
            .applicable(&who, "gpt-4o-mini")
            .iter()
            .map(|a| format!("{} {}", a.limit.name(), a.limit.max))
            .collect();
        assert_eq!(
            names,
            [
                "requests_per_minute 60",
                "tokens_per_day[gpt-4o*] 10",
                "tokens_per_day 1000",
                "dollars_per_month 12500000"
            ]
        );
    }

    #[test]
    fn bad_budget_config_names_the_key() {
        for (yaml, key) in [
            ("time_zone: Nowhere/City", "budgets.time_zone"),
            ("default_max_tokens: 0", "budgets.default_max_tokens"),
            ("scopes: { 'team:x': {} }", "budgets.scopes.team:x"),
            (
                "scopes: { 'org:x': { dollars_per_month: -1 } }",
                "budgets.scopes.org:x.dollars_per_month",
            ),
            ("prices: { m: { input: -1, output: 1 } }", "budgets.prices"),
        ] {
            let (k, _) = validate(&cfg(yaml)).unwrap_err();
            assert_eq!(k, key, "{yaml}");
        }
        assert!(
            serde_norway::from_str::<BudgetsConfig>("scopes: { 'org:x': { tokens: 1 } }").is_err()
        );
    }

    #[test]
    fn pushed_policy_budgets_apply_to_their_agent() {
        let mut policies = BTreeMap::new();
        policies.insert(
            "bot".to_string(),
            PushedPolicy {
                version: 3,
                document:
                    json!({"payload": {"budget": {"tokens_per_day": 500, "dollars_per_month": null,
                    "tool_calls_per_minute": 5, "requests_per_minute": null}}, "signature": "x"})
                    .to_string(),
            },
        );
        let p = BudgetPolicy::build(None, &policies).unwrap().unwrap();
        let who = CallScopes {
            agent: Some("bot".into()),
            ..Default::default()
        };
        assert_eq!(p.rules.applicable(&who, "m").len(), 2);
        policies.insert(
            "bad".to_string(),
            PushedPolicy {
                version: 1,
                document: json!({"budget": {"tokens_per_day": -5}}).to_string(),
            },
        );
        assert!(BudgetPolicy::build(None, &policies).is_err());
        assert!(BudgetPolicy::build(None, &BTreeMap::new())
            .unwrap()
            .is_none());
    }

    #[test]
    fn every_model_in_the_shipped_configs_has_a_price() {
        // The example needs provider keys to load; only its model names
        // are read here.
        let example: Value =
            serde_norway::from_str(include_str!("../../deploy/gateway.example.yaml")).unwrap();
        let example_models: Vec<String> = example["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect();
        assert!(example_models.len() >= 3);
        let default = crate::config::Config::embedded_default();
        let default_models: Vec<String> = default.models.iter().map(|m| m.name.clone()).collect();
        let with_default_prices = BudgetPolicy::build(default.budgets.as_ref(), &BTreeMap::new())
            .unwrap()
            .unwrap();
        let builtin = PriceTable::builtin().unwrap();
        for m in &default_models {
            assert!(
                with_default_prices.price(m, None).is_some(),
                "default config: `{m}` has no price"
            );
        }
        // Patterns (`gpt-*`) route families; their members are priced one
        // by one.
        for m in example_models.iter().filter(|m| !m.contains('*')) {
            assert!(
                builtin.price(m).is_some(),
                "example config: `{m}` has no price"
            );
        }
    }

    #[test]
    fn tool_calls_are_counted_in_every_format() {
        let chat = br#"{"choices":[{"message":{"tool_calls":[{"id":"a"},{"id":"b"}]}}]}"#;
        assert_eq!(
            tool_calls_in_value(
                Endpoint::ChatCompletions,
                &serde_json::from_slice(chat).unwrap()
            ),
            2
        );
        let msg = br#"{"content":[{"type":"text"},{"type":"tool_use"}]}"#;
        assert_eq!(
            tool_calls_in_value(
                Endpoint::AnthropicMessages,
                &serde_json::from_slice(msg).unwrap()
            ),
            1
        );
        let resp = br#"{"output":[{"type":"function_call"},{"type":"message"}]}"#;
        assert_eq!(
            tool_calls_in_value(Endpoint::Responses, &serde_json::from_slice(resp).unwrap()),
            1
        );
        assert!(serde_json::from_slice::<Value>(b"not json").is_err());
    }
}
