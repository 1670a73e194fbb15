//! Snapshot build and swap: what a gateway does when a new signed Compiled
//! Policy arrives (from the control plane or the local policy directory).
//! The signed document is verified (`tappass_policies::verify`), the
//! gateway state is rebuilt with the real `GatewayState::compose` (the
//! rebuild function `server.rs` hands to the control link and the local
//! policy watcher: API keys, token verifier, the guardrail pipeline per
//! agent; the router with its breakers is shared between states) and stored
//! into the `ArcSwap` every call loads from.
//!
//! `cargo bench -p tappass-benches --bench snapshot`

mod common;
mod example_policy;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use tappass_dataplane::config::Config;
use tappass_dataplane::control::{Pushed, PushedPolicy};
use tappass_dataplane::gateway::GatewayState;
use tappass_dataplane::providers::Router;
use tappass_policies::{keypair_from_seed, sign, verify, PublicKeyFile};

const AGENTS: [&str; 4] = [
    "refund-bot",
    "support-emailer",
    "code-reviewer",
    "catalog-steward",
];

fn config() -> Config {
    let yaml = format!(
        "listen: 127.0.0.1:18080\nadmin_listen: 127.0.0.1:19090\n\
         guardrails:\n  secrets: block\n  pii: redact\n  injection: block\n  response_secrets: redact\n  response_pii: redact\n\
         api_keys:\n  - name: bench\n    sha256: {}\n\
         providers:\n  - name: upstream\n    kind: openai-compatible\n    base_url: http://127.0.0.1:18999/v1\n\
         models:\n  - name: gpt-4o\n    provider: upstream\n  - name: claude-*\n    provider: upstream\n",
        tappass_dataplane::auth::hash_key("tp-bench-key")
    );
    Config::from_yaml(&yaml, "<bench>").expect("bench config")
}

/// Verify the signed documents and rebuild + swap the state, as the local
/// policy watcher does on a change.
fn apply(
    docs: &[String],
    keys: &[PublicKeyFile],
    config: &Config,
    router: &Arc<Router>,
    state: &ArcSwap<GatewayState>,
) -> Result<(), String> {
    let mut policies = BTreeMap::new();
    for d in docs {
        let p = verify(d, keys, None).map_err(|e| e.to_string())?;
        policies.insert(
            p.identity.agent.clone(),
            PushedPolicy {
                version: p.identity.policy_version,
                document: d.clone(),
            },
        );
    }
    let pushed = Pushed::with_policies(policies);
    let next = GatewayState::compose(config, router.clone(), &pushed)?;
    state.store(Arc::new(next));
    Ok(())
}

fn benches(c: &mut Criterion) {
    let (secret, public) = keypair_from_seed([3u8; 32]);
    let keys = vec![public];
    let docs: Vec<String> = AGENTS
        .iter()
        .map(|a| {
            sign(&example_policy::compiled(a, 7), &secret)
                .and_then(|s| s.to_canonical_json())
                .expect("sign")
        })
        .collect();
    let config = config();
    let router = Arc::new(Router::from_config(&config, None).expect("router"));
    let initial =
        GatewayState::compose(&config, router.clone(), &Pushed::default()).expect("initial state");
    let state = ArcSwap::from_pointee(initial);
    // The swap installs the pushed agents' guardrails.
    apply(&docs, &keys, &config, &router, &state).expect("apply");
    for a in AGENTS {
        assert!(
            matches!(state.load().pipeline.for_agent(a), Some(Ok(_))),
            "agent {a} has guardrails after the swap"
        );
    }
    let one = &docs[..1];
    let one_pushed = {
        let p = verify(&one[0], &keys, None).expect("verify");
        Pushed::with_policies(BTreeMap::from([(
            p.identity.agent.clone(),
            PushedPolicy {
                version: p.identity.policy_version,
                document: one[0].clone(),
            },
        )]))
    };

    let mut g = c.benchmark_group("snapshot");
    g.bench_function("compose_state_1_agent", |b| {
        b.iter(|| {
            GatewayState::compose(&config, router.clone(), &one_pushed).map(|s| s.policies.len())
        })
    });
    g.bench_function("verify_build_swap_1_agent", |b| {
        b.iter(|| apply(one, &keys, &config, &router, &state))
    });
    g.bench_function("verify_build_swap_4_agents", |b| {
        b.iter(|| apply(&docs, &keys, &config, &router, &state))
    });
    g.bench_function("load_per_call", |b| {
        b.iter(|| state.load().limits.max_request_body_bytes)
    });
    g.finish();
}

criterion_group! {
    name = snapshot;
    config = common::criterion();
    targets = benches
}
criterion_main!(snapshot);
