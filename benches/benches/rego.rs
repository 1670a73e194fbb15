//! Rego per-call evaluation: the runtime entry points of a real Compiled
//! Policy (`refund-bot` of the reference tree: the built-in
//! `tool_constraints` module fed by the policy's constraints, and the
//! agent's own `refunds` module), prepared once per snapshot and evaluated
//! per tool call.
//!
//! `cargo bench -p tappass-benches --bench rego`

mod common;
mod example_policy;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use tappass_policies::{PreparedRego, RegoAction};

const CONSTRAINTS: &str = "data.tappass.runtime.builtin.tool_constraints.decision";

fn benches(c: &mut Criterion) {
    let policy = example_policy::compiled("refund-bot", 1);
    let rego = PreparedRego::new(&policy).expect("the policy's Rego prepares");
    assert!(
        rego.entrypoints().iter().any(|e| e == CONSTRAINTS),
        "entry points: {:?}",
        rego.entrypoints()
    );
    let allow =
        json!({"tool": "stripe.create_refund", "args": {"amount": 50, "charge": "ch_3PqR8s"}});
    let approval =
        json!({"tool": "stripe.create_refund", "args": {"amount": 450, "charge": "ch_3PqR8s"}});
    let deny =
        json!({"tool": "stripe.create_refund", "args": {"amount": 5000, "charge": "ch_3PqR8s"}});
    let other = json!({"tool": "zendesk.read_ticket", "args": {"ticket_id": 81723}});
    // The decisions the benchmark measures are the real ones.
    assert_eq!(
        rego.decide(&allow).ok().map(|d| d.action),
        Some(RegoAction::Allow)
    );
    assert_eq!(
        rego.decide(&approval).ok().map(|d| d.action),
        Some(RegoAction::RequireApproval)
    );
    assert_eq!(
        rego.decide(&deny).ok().map(|d| d.action),
        Some(RegoAction::Deny)
    );

    let mut g = c.benchmark_group("rego");
    g.bench_function("tool_constraints_entrypoint_allow", |b| {
        b.iter(|| rego.eval(CONSTRAINTS, std::hint::black_box(&allow)))
    });
    g.bench_function("tool_constraints_entrypoint_deny", |b| {
        b.iter(|| rego.eval(CONSTRAINTS, std::hint::black_box(&deny)))
    });
    g.bench_function("decide_all_entrypoints_allow", |b| {
        b.iter(|| rego.decide(std::hint::black_box(&allow)))
    });
    g.bench_function("decide_all_entrypoints_require_approval", |b| {
        b.iter(|| rego.decide(std::hint::black_box(&approval)))
    });
    g.bench_function("decide_all_entrypoints_unconstrained_tool", |b| {
        b.iter(|| rego.decide(std::hint::black_box(&other)))
    });
    // `apply_compiled_policy`: every entry point once per call, with the
    // call as input (the gateway's input document).
    let call = json!({"kind": "llm_call", "agent": "refund-bot", "org": "acme", "project": "support",
        "sandbox": null, "endpoint": "chat_completions", "model": "gpt-4o-mini", "stream": true,
        "max_tokens": 512, "tools": ["stripe_create_refund", "zendesk_read_ticket"],
        "tool_results": 1, "messages": 4, "prompt_bytes": 1024});
    assert_eq!(
        rego.decide(&call).ok().map(|d| d.action),
        Some(RegoAction::Allow)
    );
    g.bench_function("decide_all_entrypoints_call_input", |b| {
        b.iter(|| rego.decide(std::hint::black_box(&call)))
    });
    g.bench_function("prepare_per_snapshot", |b| {
        b.iter(|| PreparedRego::new(std::hint::black_box(&policy)).map(|r| r.entrypoints().len()))
    });
    g.finish();
}

criterion_group! {
    name = rego;
    config = common::criterion();
    targets = benches
}
criterion_main!(rego);
