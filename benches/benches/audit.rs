//! Audit append: the row of a chat call built by the gateway
//! (`CallRecord::to_audit_record`), serialized, hashed into the chain and
//! signed (`chain::seal_encoded`, what the WAL writer does per row), and the
//! WAL append path on a real RocksDB WAL with synced writes (queue, group
//! commit, acknowledgement).
//!
//! `cargo bench -p tappass-benches --bench audit`

mod common;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use tappass_audit::chain::seal_encoded;
use tappass_audit::{AuditKey, AuditWal, WalConfig};
use tappass_dataplane::call_record::CallRecord;
use tappass_dataplane::events::Usage;

/// What the gateway knows about a guarded, streamed chat call at its end.
fn call(i: u64) -> CallRecord {
    let mut r = CallRecord::new(format!("tp-6b02-{i:016x}"));
    r.endpoint = "chat_completions";
    r.model = "gpt-4o".into();
    r.provider = "openai".into();
    r.status = 200;
    r.stream = true;
    r.agent = Some("support-emailer".into());
    r.org = Some("acme".into());
    r.project = Some("support".into());
    r.policy_version = Some(42);
    r.usage = Some(Usage {
        input_tokens: 512,
        output_tokens: 256,
        cached_input_tokens: 0,
    });
    r.upstream_started = Some(Instant::now());
    r.first_byte = Some(Instant::now());
    r.upstream_ended = Some(Instant::now());
    for (step, decision, aspect, evidence) in [
        ("tools_denied", "allow", "tools", json!({"removed": 0})),
        ("detect_secrets", "allow", "request", json!({"findings": 0})),
        (
            "detect_pii",
            "redact",
            "request",
            json!({"findings": 2, "rules": ["pii.email", "pii.phone"]}),
        ),
        (
            "detect_prompt_injection",
            "allow",
            "request",
            json!({"score": 0.04}),
        ),
        (
            "detect_secrets_in_response",
            "allow",
            "response",
            json!({"findings": 0}),
        ),
        (
            "detect_pii_in_response",
            "allow",
            "response",
            json!({"findings": 0}),
        ),
    ] {
        r.step(step, decision, aspect, "config:guardrails", evidence);
    }
    r
}

const PREV: &str = "9f2c4b1e7a06d35c8e41f0b2a97d6c3e5b18f4a2c07e9d61b3a5f8c2e4d7b1a09";

fn benches(c: &mut Criterion) {
    let key = AuditKey::from_seed([5u8; 32]);
    let fresh = || call(1);

    let mut g = c.benchmark_group("audit");
    g.bench_function("row_build", |b| {
        b.iter_batched(
            fresh,
            |mut rec| rec.to_audit_record("gw-bench", false),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("row_build_hash_checkpoint_mode", |b| {
        let mut seq = 0u64;
        b.iter_batched(
            fresh,
            |mut rec| {
                seq += 1;
                let body = serde_json::to_string(&rec.to_audit_record("gw-bench", false))
                    .unwrap_or_default();
                seal_encoded(seq, PREV, body, None)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("row_build_hash_sign_per_row", |b| {
        let mut seq = 0u64;
        b.iter_batched(
            fresh,
            |mut rec| {
                seq += 1;
                let body = serde_json::to_string(&rec.to_audit_record("gw-bench", false))
                    .unwrap_or_default();
                seal_encoded(seq, PREV, body, Some(&key))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The WAL on the local disk (not tmpfs): every batch is a synced write.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("tappass-bench-audit-wal")
        .tempdir_in(&base)
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let wal = AuditWal::open(WalConfig::new(dir.path(), "gw-bench"), key.clone()).expect("wal");
    let mut g = c.benchmark_group("audit_wal");
    g.bench_function("append_one_row_until_durable", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let ack = wal
                .append_blocking(call(i).to_audit_record("gw-bench", false))
                .expect("append");
            ack.blocking_recv()
        })
    });
    const BATCH: u64 = 256;
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("append_256_rows_until_durable", |b| {
        let mut i = 0u64;
        b.iter(|| {
            let acks: Vec<_> = (0..BATCH)
                .map(|_| {
                    i += 1;
                    wal.append_blocking(call(i).to_audit_record("gw-bench", false))
                        .expect("append")
                })
                .collect();
            acks.into_iter()
                .map(|a| a.blocking_recv().ok().and_then(Result::ok).unwrap_or(0))
                .max()
        })
    });
    g.finish();
    let head = wal.head();
    assert!(head.seq > 0, "rows were written");
    wal.close();
}

criterion_group! {
    name = audit;
    config = common::criterion();
    targets = benches
}
criterion_main!(audit);
