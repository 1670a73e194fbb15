//! The ledger: one counter per scope, limit and window, reserved before a
//! call and settled with its real usage after.
//!
//! A counter keeps `committed` (spent plus reserved) in one atomic, and a
//! reservation is a compare-and-swap that only succeeds while `committed`
//! plus the reservation stays within the limit. Concurrent calls therefore
//! cannot reserve past a limit together; what a limit can be overshot by is
//! only what calls spend beyond their own reservation (see
//! `ARCHITECTURE.md`, "Budgets"). A call that reserves against several
//! scopes and fails on one gives back what it took from the others.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::rules::{Applicable, CallScopes, Limit, Metric, Rules, ScopeKind};
use crate::store::Store;
use crate::window::{Clock, Now, WindowKind};

/// Amounts of each metric: what a call reserves, or what it spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub tokens: u64,
    pub micro_dollars: u64,
    pub requests: u64,
    pub tool_calls: u64,
}

impl Spend {
    pub fn get(&self, m: Metric) -> u64 {
        match m {
            Metric::Tokens => self.tokens,
            Metric::MicroDollars => self.micro_dollars,
            Metric::Requests => self.requests,
            Metric::ToolCalls => self.tool_calls,
        }
    }
}

/// A call that no scope could cover: which scope and limit refused it,
/// and when that limit's window resets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scope} {limit} exceeded: {used} of {max} used or reserved, {requested} more needed; resets in {retry_after}s")]
pub struct Exceeded {
    pub scope: String,
    pub limit: String,
    pub metric: Metric,
    pub max: u64,
    pub used: u64,
    pub requested: u64,
    /// Unix seconds.
    pub resets_at: i64,
    /// Seconds until the window resets (at least 1).
    pub retry_after: u64,
    /// The limit is shared by the fleet and could cover the call, but this
    /// gateway's lease cannot (yet): a renewal may admit it.
    pub lease_short: bool,
}

/// One counter: a scope's limit in one window.
#[derive(Debug)]
pub struct Counter {
    pub key: Arc<str>,
    pub kind: ScopeKind,
    pub scope: String,
    pub metric: Metric,
    pub window: WindowKind,
    pub model: Option<String>,
    pub index: i64,
    /// Spent plus reserved.
    committed: AtomicU64,
    used: AtomicU64,
    reserved: AtomicU64,
    keep_ms: u64,
    /// Shared by the fleet: reservations stay within `lease`.
    pub shared: bool,
    /// The lease from the control plane (cumulative for the window).
    lease: AtomicU64,
    /// The limit last enforced (for lease requests).
    limit: AtomicU64,
    /// Unix ms of the last reservation (to give idle leases back).
    touched_ms: std::sync::atomic::AtomicI64,
    /// The largest shortfall of the lease since the last renewal.
    wanted: AtomicU64,
    /// What the whole fleet had committed at the last renewal.
    fleet_committed: AtomicU64,
}

impl Counter {
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }
    pub fn lease(&self) -> u64 {
        self.lease.load(Ordering::Acquire)
    }
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }
    pub fn touched_ms(&self) -> i64 {
        self.touched_ms.load(Ordering::Acquire)
    }
    /// The largest shortfall since the last call, reset.
    pub fn take_wanted(&self) -> u64 {
        self.wanted.swap(0, Ordering::AcqRel)
    }
    /// Enforce a new lease (from the control plane).
    pub fn set_lease(&self, lease: u64) {
        self.lease.store(lease, Ordering::Release);
    }
    /// Record what the fleet had committed, as the control plane said.
    pub fn set_fleet_committed(&self, n: u64) {
        self.fleet_committed.store(n, Ordering::Release);
    }
    /// Lower the lease to what is committed now, giving the rest back;
    /// returns the new lease.
    ///
    /// A reservation racing with this either sees the lower lease when it
    /// re-checks after taking its share (and gives it back), or took it
    /// before the committed total is read again here (and the lease is
    /// raised to cover it): the lease never ends below what was committed
    /// under it.
    pub fn shrink_lease(&self) -> u64 {
        let old = self.lease.load(Ordering::SeqCst);
        let floor = self.committed.load(Ordering::SeqCst).min(old);
        self.lease.store(floor, Ordering::SeqCst);
        let committed = self.committed.load(Ordering::SeqCst);
        if committed > floor {
            self.lease.fetch_max(committed.min(old), Ordering::SeqCst);
        }
        self.lease.load(Ordering::SeqCst)
    }

    /// Reserve `amount` if `committed + carried + need` stays within `max`
    /// (and, for a shared counter, within its lease).
    fn try_reserve(&self, amount: u64, need: u64, carried: u64, max: u64) -> Result<(), u64> {
        let mut cur = self.committed.load(Ordering::Acquire);
        loop {
            let total = cur.saturating_add(carried);
            let cap = if self.shared {
                max.min(self.lease())
            } else {
                max
            };
            if total.saturating_add(need) > cap {
                return Err(total);
            }
            match self.committed.compare_exchange_weak(
                cur,
                cur.saturating_add(amount),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    // The lease may have been lowered meanwhile
                    // (`shrink_lease`): then give the share back.
                    if self.shared && amount > 0 {
                        let now = self.committed.load(Ordering::SeqCst);
                        if now > self.lease.load(Ordering::SeqCst) {
                            self.committed.fetch_sub(amount, Ordering::SeqCst);
                            return Err(total);
                        }
                    }
                    self.reserved.fetch_add(amount, Ordering::AcqRel);
                    return Ok(());
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Replace a reservation of `reserved` by a spend of `spent`.
    fn settle(&self, reserved: u64, spent: u64) {
        if spent >= reserved {
            self.committed.fetch_add(spent - reserved, Ordering::AcqRel);
        } else {
            self.committed.fetch_sub(reserved - spent, Ordering::AcqRel);
        }
        self.used.fetch_add(spent, Ordering::AcqRel);
        self.reserved.fetch_sub(reserved, Ordering::AcqRel);
    }

    /// Give a reservation back without spending it.
    fn unreserve(&self, amount: u64) {
        self.committed.fetch_sub(amount, Ordering::AcqRel);
        self.reserved.fetch_sub(amount, Ordering::AcqRel);
    }
}

struct KeepUntilWindowEnds;

impl moka::Expiry<String, Arc<Counter>> for KeepUntilWindowEnds {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Counter>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(value.keep_ms))
    }
}

/// Escape `|` and `%` so a counter key splits unambiguously.
fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
}

/// The counter key: `kind:name|metric|window|model|index`.
pub fn counter_key(kind: ScopeKind, name: &str, limit: &Limit, window_index: i64) -> String {
    let mut k = String::with_capacity(48 + name.len());
    k.push_str(kind.as_str());
    k.push(':');
    escape(name, &mut k);
    let _ = write!(k, "|{}|{}|", limit.metric.as_str(), limit.window.as_str());
    if let Some(m) = &limit.model {
        escape(m, &mut k);
    }
    let _ = write!(k, "|{window_index}");
    k
}

fn unescape(s: &str) -> String {
    s.replace("%7C", "|").replace("%25", "%")
}

/// The parts of a counter key: scope kind, scope name, metric, window,
/// model pattern, window index.
pub fn parse_key(
    key: &str,
) -> Option<(ScopeKind, String, Metric, WindowKind, Option<String>, i64)> {
    let mut parts = key.split('|');
    let scope = parts.next()?;
    let metric = Metric::parse(parts.next()?)?;
    let window = WindowKind::parse(parts.next()?)?;
    let model = parts.next()?;
    let index = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let (kind, name) = scope.split_once(':')?;
    Some((
        ScopeKind::parse(kind)?,
        unescape(name),
        metric,
        window,
        (!model.is_empty()).then(|| unescape(model)),
        index,
    ))
}

/// Window and index of a counter key (for pruning old windows).
pub fn key_window(key: &str) -> Option<(WindowKind, i64)> {
    let mut parts = key.rsplitn(3, '|');
    let index = parts.next()?.parse().ok()?;
    let _model = parts.next()?;
    let rest = parts.next()?;
    let window = WindowKind::parse(rest.rsplit('|').next()?)?;
    Some((window, index))
}

/// A line of the budget report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    pub scope: String,
    pub limit: String,
    pub metric: Metric,
    pub window: WindowKind,
    pub max: u64,
    pub used: u64,
    pub reserved: u64,
    pub remaining: u64,
    /// Unix seconds.
    pub resets_at: i64,
    /// For a limit shared by the fleet: this gateway's lease, and what the
    /// whole fleet had committed at the last renewal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_committed: Option<u64>,
}

/// Budget counters of one gateway.
pub struct Ledger {
    clock: Clock,
    counters: moka::sync::Cache<String, Arc<Counter>>,
    /// What the store held at start, by counter key.
    baseline: HashMap<String, u64>,
    store: Option<Store>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("time_zone", &self.clock.time_zone())
            .field("counters", &self.counters.entry_count())
            .field("persistent", &self.store.is_some())
            .finish()
    }
}

impl Ledger {
    /// A ledger kept in memory only (lost on restart).
    pub fn in_memory(clock: Clock) -> Arc<Ledger> {
        Arc::new(Ledger::build(clock, HashMap::new(), None))
    }

    /// A ledger whose counters live in `store`, starting from what it holds.
    pub fn persistent(clock: Clock, store: Store, baseline: HashMap<String, u64>) -> Arc<Ledger> {
        Arc::new(Ledger::build(clock, baseline, Some(store)))
    }

    fn build(clock: Clock, baseline: HashMap<String, u64>, store: Option<Store>) -> Ledger {
        Ledger {
            clock,
            counters: moka::sync::Cache::builder()
                .expire_after(KeepUntilWindowEnds)
                .build(),
            baseline,
            store,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn is_persistent(&self) -> bool {
        self.store.is_some()
    }

    fn counter(&self, a: &Applicable<'_>, now: &Now, index: i64) -> Arc<Counter> {
        let key = counter_key(a.kind, a.name, a.limit, index);
        self.counters.get_with_by_ref(&key, || {
            let start = self.baseline.get(&key).copied().unwrap_or(0);
            Arc::new(Counter {
                key: Arc::from(key.as_str()),
                kind: a.kind,
                scope: format!("{}:{}", a.kind.as_str(), a.name),
                metric: a.limit.metric,
                window: a.limit.window,
                model: a.limit.model.clone(),
                index,
                committed: AtomicU64::new(start),
                used: AtomicU64::new(start),
                reserved: AtomicU64::new(0),
                keep_ms: now.keep_for_ms(a.limit.window),
                shared: a.shared,
                // A shared counter spends nothing before its first lease,
                // except what an earlier run already committed.
                lease: AtomicU64::new(if a.shared { start } else { u64::MAX }),
                limit: AtomicU64::new(a.limit.max),
                touched_ms: std::sync::atomic::AtomicI64::new(now.unix_ms),
                wanted: AtomicU64::new(0),
                fleet_committed: AtomicU64::new(0),
            })
        })
    }

    /// The shared counters of the current windows (for lease renewal).
    pub fn shared_counters(&self) -> Vec<Arc<Counter>> {
        let now = self.clock.now();
        self.counters
            .iter()
            .filter(|(_, c)| c.shared && c.index == now.index(c.window))
            .map(|(_, c)| c)
            .collect()
    }

    /// What the previous minute still weighs in the sliding window.
    fn carried(&self, a: &Applicable<'_>, now: &Now, index: i64) -> u64 {
        if a.limit.window != WindowKind::Minute {
            return 0;
        }
        let key = counter_key(a.kind, a.name, a.limit, index - 1);
        let prev = match self.counters.get(&key) {
            Some(c) => c.committed(),
            None => self.baseline.get(&key).copied().unwrap_or(0),
        };
        (prev as f64 * (1.0 - now.minute_elapsed())).ceil() as u64
    }

    /// Reserve `demand` in every scope whose limits apply to this call, at
    /// the current time.
    pub fn reserve(
        self: &Arc<Self>,
        rules: &Rules,
        who: &CallScopes,
        model: &str,
        demand: Spend,
    ) -> Result<Reservation, Exceeded> {
        self.reserve_at(rules, who, model, demand, self.clock.now())
    }

    /// [`Ledger::reserve`] at a given instant.
    pub fn reserve_at(
        self: &Arc<Self>,
        rules: &Rules,
        who: &CallScopes,
        model: &str,
        demand: Spend,
        now: Now,
    ) -> Result<Reservation, Exceeded> {
        let mut holds: Vec<Hold> = Vec::new();
        for a in rules.applicable(who, model) {
            let index = now.index(a.limit.window);
            let counter = self.counter(&a, &now, index);
            let amount = demand.get(a.limit.metric);
            let carried = self.carried(&a, &now, index);
            // A counter already at its limit refuses even a call that
            // reserves nothing of it (tool calls are counted afterwards).
            let need = amount.max(1);
            counter.limit.store(a.limit.max, Ordering::Release);
            counter.touched_ms.store(now.unix_ms, Ordering::Release);
            if let Err(used) = counter.try_reserve(amount, need, carried, a.limit.max) {
                for h in &holds {
                    h.counter.unreserve(h.amount);
                }
                let w = a.limit.window;
                let lease_short = a.shared && used.saturating_add(need) <= a.limit.max;
                if lease_short {
                    let short = used.saturating_add(need).saturating_sub(counter.lease());
                    counter.wanted.fetch_max(short, Ordering::AcqRel);
                }
                return Err(Exceeded {
                    scope: format!("{}:{}", a.kind.as_str(), a.name),
                    limit: a.limit.name(),
                    metric: a.limit.metric,
                    max: a.limit.max,
                    used,
                    requested: amount,
                    resets_at: now.resets_at(w),
                    // A lease can be renewed long before the window ends.
                    retry_after: if lease_short {
                        1
                    } else {
                        now.seconds_until_reset(w)
                    },
                    lease_short,
                });
            }
            holds.push(Hold {
                counter,
                metric: a.limit.metric,
                amount,
            });
        }
        let id = match &self.store {
            Some(s) if !holds.is_empty() => {
                let entries = holds.iter().map(|h| (Arc::clone(&h.counter.key), h.amount));
                Some(s.reserve(entries.collect()))
            }
            _ => None,
        };
        Ok(Reservation {
            ledger: Arc::clone(self),
            id,
            holds,
            demand,
            done: false,
        })
    }

    /// Wait until every reservation and settlement made so far is in the
    /// store (a no-op in memory).
    pub fn sync(&self) {
        if let Some(s) = &self.store {
            s.barrier();
        }
    }

    /// Spent, reserved and remaining for every limit in `rules`: named
    /// scopes always, `*` scopes for each scope that has a counter.
    pub fn report(&self, rules: &Rules) -> Vec<ReportLine> {
        let now = self.clock.now();
        let mut out = Vec::new();
        let line = |scope: String, limit: &Limit, used: u64, reserved: u64| ReportLine {
            scope,
            limit: limit.name(),
            metric: limit.metric,
            window: limit.window,
            max: limit.max,
            used,
            reserved,
            remaining: limit.max.saturating_sub(used.saturating_add(reserved)),
            resets_at: now.resets_at(limit.window),
            lease: None,
            fleet_committed: None,
        };
        let shared = |mut l: ReportLine, c: &Counter| {
            if c.shared {
                l.lease = Some(c.lease());
                l.fleet_committed = Some(c.fleet_committed.load(Ordering::Acquire));
                l.remaining = l.remaining.min(c.lease().saturating_sub(c.committed()));
            }
            l
        };
        for r in rules.rules() {
            for limit in &r.limits {
                let index = now.index(limit.window);
                match &r.scope.name {
                    Some(name) => {
                        let key = counter_key(r.scope.kind, name, limit, index);
                        match self.counters.get(&key) {
                            Some(c) => out.push(shared(
                                line(format!("{}", r.scope), limit, c.used(), c.reserved()),
                                &c,
                            )),
                            None => {
                                let used = self.baseline.get(&key).copied().unwrap_or(0);
                                out.push(line(format!("{}", r.scope), limit, used, 0));
                            }
                        }
                    }
                    None => {
                        let mut found: Vec<ReportLine> = self
                            .counters
                            .iter()
                            .filter(|(_, c)| {
                                c.kind == r.scope.kind
                                    && c.metric == limit.metric
                                    && c.window == limit.window
                                    && c.model == limit.model
                                    && c.index == index
                            })
                            .map(|(_, c)| {
                                shared(line(c.scope.clone(), limit, c.used(), c.reserved()), &c)
                            })
                            .collect();
                        // Counters persisted by an earlier run that no call
                        // has touched since.
                        for (key, used) in &self.baseline {
                            let Some((kind, name, metric, window, model, i)) = parse_key(key)
                            else {
                                continue;
                            };
                            let scope = format!("{}:{name}", kind.as_str());
                            let same = kind == r.scope.kind
                                && metric == limit.metric
                                && window == limit.window
                                && model == limit.model
                                && i == index;
                            if same && !found.iter().any(|l| l.scope == scope) {
                                found.push(line(scope, limit, *used, 0));
                            }
                        }
                        found.sort_by(|a, b| a.scope.cmp(&b.scope));
                        out.extend(found);
                    }
                }
            }
        }
        out
    }
}

struct Hold {
    counter: Arc<Counter>,
    metric: Metric,
    amount: u64,
}

/// What one call holds of its scopes' budgets until it settles. Dropping
/// it unsettled charges the whole reservation: a call whose outcome is
/// unknown is assumed to have spent what it reserved.
pub struct Reservation {
    ledger: Arc<Ledger>,
    id: Option<u64>,
    holds: Vec<Hold>,
    demand: Spend,
    done: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("demand", &self.demand)
            .field("counters", &self.holds.len())
            .finish()
    }
}

impl Reservation {
    /// What was reserved.
    pub fn demand(&self) -> Spend {
        self.demand
    }

    /// Whether any limit applied (an empty reservation holds nothing).
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// Settle with what the call really spent.
    pub fn settle(mut self, spent: Spend) {
        self.finish(spent);
    }

    /// The call failed before any spend (before the upstream answered):
    /// give the tokens and dollars back. The request still counts against
    /// request rates.
    pub fn release(mut self) {
        let spent = Spend {
            requests: self.demand.requests,
            ..Spend::default()
        };
        self.finish(spent);
    }

    fn finish(&mut self, spent: Spend) {
        if self.done {
            return;
        }
        self.done = true;
        let mut written = Vec::with_capacity(self.holds.len());
        for h in &self.holds {
            let s = spent.get(h.metric);
            h.counter.settle(h.amount, s);
            written.push((Arc::clone(&h.counter.key), s));
        }
        if let (Some(store), Some(id)) = (&self.ledger.store, self.id) {
            store.settle(id, written);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let all = self.demand;
        self.finish(all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{ScopeRule, ScopeSelector};

    fn rules(scope: &str, limits: Vec<Limit>) -> Rules {
        Rules::new(vec![ScopeRule {
            scope: ScopeSelector::parse(scope).unwrap(),
            limits,
        }])
    }

    fn tokens_per_day(max: u64) -> Limit {
        Limit {
            metric: Metric::Tokens,
            window: WindowKind::Day,
            max,
            model: None,
        }
    }

    fn who() -> CallScopes {
        CallScopes {
            org: Some("acme".into()),
            agent: Some("bot".into()),
            ..Default::default()
        }
    }

    fn tokens(n: u64) -> Spend {
        Spend {
            tokens: n,
            requests: 1,
            ..Spend::default()
        }
    }

    #[test]
    fn reserve_settle_release() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let r = rules("org:acme", vec![tokens_per_day(100)]);
        let a = l.reserve(&r, &who(), "m", tokens(60)).unwrap();
        let e = l.reserve(&r, &who(), "m", tokens(50)).unwrap_err();
        assert_eq!((e.used, e.max, e.requested), (60, 100, 50));
        assert_eq!(e.scope, "org:acme");
        assert_eq!(e.limit, "tokens_per_day");
        a.settle(tokens(30));
        let b = l.reserve(&r, &who(), "m", tokens(50)).unwrap();
        b.release();
        let report = l.report(&r);
        assert_eq!(
            (report[0].used, report[0].reserved, report[0].remaining),
            (30, 0, 70)
        );
    }

    #[test]
    fn dropping_an_unsettled_reservation_charges_it() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let r = rules("agent:*", vec![tokens_per_day(100)]);
        drop(l.reserve(&r, &who(), "m", tokens(40)).unwrap());
        let report = l.report(&r);
        assert_eq!(report[0].scope, "agent:bot");
        assert_eq!(report[0].used, 40);
    }

    #[test]
    fn a_refusal_gives_back_what_other_scopes_reserved() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let r = Rules::new(vec![
            ScopeRule {
                scope: ScopeSelector::parse("org:acme").unwrap(),
                limits: vec![tokens_per_day(1000)],
            },
            ScopeRule {
                scope: ScopeSelector::parse("agent:bot").unwrap(),
                limits: vec![tokens_per_day(10)],
            },
        ]);
        assert!(l.reserve(&r, &who(), "m", tokens(50)).is_err());
        let report = l.report(&r);
        assert!(
            report.iter().all(|x| x.used == 0 && x.reserved == 0),
            "{report:?}"
        );
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let r = Arc::new(rules("org:acme", vec![tokens_per_day(1000)]));
        let granted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, r, g) = (l.clone(), r.clone(), granted.clone());
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..100 {
                        if let Ok(x) = l.reserve(&r, &who(), "m", tokens(7)) {
                            g.fetch_add(7, Ordering::Relaxed);
                            held.push(x);
                        }
                    }
                    held
                })
            })
            .collect();
        let held: Vec<Reservation> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let total = granted.load(Ordering::Relaxed);
        assert!(total <= 1000, "{total}");
        assert!(total > 1000 - 7, "{total}");
        for h in held {
            h.settle(tokens(7));
        }
        assert_eq!(l.report(&r)[0].used, total);
    }

    #[test]
    fn sliding_minute_weighs_the_previous_minute() {
        let clock = Clock::new("UTC").unwrap();
        let l = Ledger::in_memory(clock);
        let limit = Limit {
            metric: Metric::Requests,
            window: WindowKind::Minute,
            max: 10,
            model: None,
        };
        let r = rules("agent:bot", vec![limit]);
        let t0: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let at = |secs: i64| l.clock().at(t0.as_millisecond() + secs * 1000);
        let mut n = 0;
        while l
            .reserve_at(&r, &who(), "m", tokens(0), at(50))
            .map(|x| x.settle(tokens(0)))
            .is_ok()
        {
            n += 1;
        }
        assert_eq!(n, 10);
        // 15 s into the next minute, 3/4 of the previous minute still
        // counts: ceil(10 * 0.75) = 8, so 2 more fit.
        let mut m = 0;
        while l
            .reserve_at(&r, &who(), "m", tokens(0), at(75))
            .map(|x| x.settle(tokens(0)))
            .is_ok()
        {
            m += 1;
        }
        assert_eq!(m, 2);
        let e = l
            .reserve_at(&r, &who(), "m", tokens(0), at(76))
            .unwrap_err();
        assert_eq!(e.limit, "requests_per_minute");
        assert_eq!(e.retry_after, 44);
        // Two minutes later the window is empty again.
        assert!(l.reserve_at(&r, &who(), "m", tokens(0), at(185)).is_ok());
    }

    #[test]
    fn day_windows_reset_at_local_midnight() {
        let l = Ledger::in_memory(Clock::new("Europe/Berlin").unwrap());
        let r = rules("agent:bot", vec![tokens_per_day(100)]);
        let before: jiff::Timestamp = "2026-11-22T22:59:59Z".parse().unwrap();
        let after: jiff::Timestamp = "2026-11-22T23:00:00Z".parse().unwrap();
        let b = l.clock().at(before.as_millisecond());
        let a = l.clock().at(after.as_millisecond());
        l.reserve_at(&r, &who(), "m", tokens(100), b)
            .unwrap()
            .settle(tokens(100));
        let e = l.reserve_at(&r, &who(), "m", tokens(1), b).unwrap_err();
        assert_eq!(e.retry_after, 1);
        assert!(l.reserve_at(&r, &who(), "m", tokens(100), a).is_ok());
    }

    #[test]
    fn tool_call_limits_refuse_once_exhausted() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let limit = Limit {
            metric: Metric::ToolCalls,
            window: WindowKind::Minute,
            max: 3,
            model: None,
        };
        let r = rules("agent:bot", vec![limit]);
        let t0: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let now = l.clock().at(t0.as_millisecond());
        let spent = Spend {
            tool_calls: 3,
            requests: 1,
            ..Spend::default()
        };
        l.reserve_at(&r, &who(), "m", tokens(0), now)
            .unwrap()
            .settle(spent);
        let e = l.reserve_at(&r, &who(), "m", tokens(0), now).unwrap_err();
        assert_eq!(e.limit, "tool_calls_per_minute");
    }

    fn shared_org(max: u64) -> Rules {
        rules("org:acme", vec![tokens_per_day(max)])
            .with_shared(vec![ScopeSelector::parse("org:*").unwrap()])
    }

    #[test]
    fn shared_limits_spend_only_within_the_lease() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let r = shared_org(1000);
        let e = l.reserve(&r, &who(), "m", tokens(10)).unwrap_err();
        assert!(e.lease_short, "{e:?}");
        let c = &l.shared_counters()[0];
        assert_eq!((c.lease(), c.limit()), (0, 1000));
        c.set_lease(100);
        let a = l.reserve(&r, &who(), "m", tokens(60)).unwrap();
        let e = l.reserve(&r, &who(), "m", tokens(60)).unwrap_err();
        assert!(e.lease_short);
        a.settle(tokens(20));
        assert_eq!(c.shrink_lease(), 20);
        assert!(l.reserve(&r, &who(), "m", tokens(1)).is_err());
        // Past the limit itself, a lease would not help.
        c.set_lease(5000);
        let e = l.reserve(&r, &who(), "m", tokens(990)).unwrap_err();
        assert!(!e.lease_short);
    }

    #[test]
    fn shrinking_a_lease_never_strands_a_racing_reservation() {
        let l = Ledger::in_memory(Clock::new("UTC").unwrap());
        let r = Arc::new(shared_org(u64::MAX / 4));
        assert!(l.reserve(&r, &who(), "m", tokens(1)).is_err());
        let c = l.shared_counters()[0].clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (l, r, stop) = (l.clone(), r.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(x) = l.reserve(&r, &who(), "m", tokens(3)) {
                            held.push(x);
                        }
                    }
                    held
                })
            })
            .collect();
        for i in 0..20_000u64 {
            if i % 2 == 0 {
                c.set_lease(c.committed() + 50);
            } else {
                c.shrink_lease();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let held: Vec<Reservation> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        c.shrink_lease();
        assert!(
            c.committed() <= c.lease(),
            "{} > {}",
            c.committed(),
            c.lease()
        );
        assert_eq!(c.committed(), held.len() as u64 * 3);
    }

    #[test]
    fn keys_round_trip_their_window() {
        let limit = Limit {
            metric: Metric::Tokens,
            window: WindowKind::Day,
            max: 1,
            model: Some("gpt|4*".into()),
        };
        let k = counter_key(ScopeKind::Agent, "a|b%c", &limit, 20261122);
        assert_eq!(k, "agent:a%7Cb%25c|tokens|day|gpt%7C4*|20261122");
        assert_eq!(key_window(&k), Some((WindowKind::Day, 20261122)));
        let (kind, name, metric, window, model, index) = parse_key(&k).unwrap();
        assert_eq!((kind, name.as_str()), (ScopeKind::Agent, "a|b%c"));
        assert_eq!(
            (metric, window, index),
            (Metric::Tokens, WindowKind::Day, 20261122)
        );
        assert_eq!(model.as_deref(), Some("gpt|4*"));
        assert!(parse_key("agent:x|tokens|day||1|extra").is_none());
        assert_eq!(key_window("garbage"), None);
    }
}
