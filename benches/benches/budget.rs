//! The budget step per call: reserving a call's estimated cost in the
//! scopes that apply (org tokens per day and dollars per month, agent
//! requests per minute, API-key tokens per day) and settling it with the
//! real usage, against the in-memory ledger and the RocksDB-backed one
//! (whose writes go to a writer thread). The prompt-token estimate is
//! measured apart: the real tokenizer for an OpenAI model and the
//! 3-bytes-per-token estimate, on a 1 KiB chat body.
//!
//! `cargo bench -p tappass-benches --bench budget`

mod common;

use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use tappass_budget::{
    CallScopes, Clock, Ledger, Limit, Metric, Rules, ScopeRule, ScopeSelector, Spend, Store,
    TokenCounter, WindowKind,
};

fn rules() -> Rules {
    let limit = |metric, window, max| Limit {
        metric,
        window,
        max,
        model: None,
    };
    Rules::new(vec![
        ScopeRule {
            scope: ScopeSelector::parse("org:acme").unwrap(),
            limits: vec![
                limit(Metric::Tokens, WindowKind::Day, u64::MAX / 2),
                limit(Metric::MicroDollars, WindowKind::Month, u64::MAX / 2),
            ],
        },
        ScopeRule {
            scope: ScopeSelector::parse("agent:*").unwrap(),
            limits: vec![limit(Metric::Requests, WindowKind::Minute, u64::MAX / 2)],
        },
        ScopeRule {
            scope: ScopeSelector::parse("api_key:*").unwrap(),
            limits: vec![limit(Metric::Tokens, WindowKind::Day, u64::MAX / 2)],
        },
    ])
}

fn who() -> CallScopes {
    CallScopes {
        org: Some("acme".into()),
        project: Some("support".into()),
        agent: Some("support-emailer".into()),
        api_key: Some("support-emailer".into()),
    }
}

fn step(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, ledger: &Arc<Ledger>) {
    let (rules, who) = (rules(), who());
    let demand = Spend {
        tokens: 1300,
        micro_dollars: 3250,
        requests: 1,
        tool_calls: 0,
    };
    let spent = Spend {
        tokens: 480,
        micro_dollars: 1200,
        requests: 1,
        tool_calls: 0,
    };
    g.bench_function(name, |b| {
        b.iter(|| {
            let r = ledger
                .reserve(&rules, &who, "gpt-4o-mini", demand)
                .expect("within the limits");
            r.settle(spent);
        })
    });
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("budget");
    let memory = Ledger::in_memory(Clock::new("Europe/Berlin").unwrap());
    step(&mut g, "reserve_settle_in_memory", &memory);

    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new("Europe/Berlin").unwrap();
    let (store, loaded) = Store::open(dir.path(), &clock).unwrap();
    let persisted = Ledger::persistent(clock, store, loaded.totals);
    step(&mut g, "reserve_settle_rocksdb", &persisted);
    persisted.sync();

    let text = "Please summarise the customer's ticket and draft a polite reply. ".repeat(16);
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a support assistant."},
            {"role": "user", "content": &text[..1024]}
        ]
    });
    let map = body.as_object().unwrap().clone();
    tappass_budget::estimate::warm();
    let exact = TokenCounter::for_model("gpt-4o-mini");
    g.bench_function("prompt_estimate_1KiB_o200k", |b| {
        b.iter(|| exact.prompt_tokens(&map))
    });
    let approx = TokenCounter::for_model("claude-sonnet-4-5");
    g.bench_function("prompt_estimate_1KiB_bytes", |b| {
        b.iter(|| approx.prompt_tokens(&map))
    });
    g.finish();
}

criterion_group! {
    name = budget;
    config = common::criterion();
    targets = benches
}
criterion_main!(budget);
