//! Detector scan speed on mixed text: the full built-in rule set (PII,
//! secrets, prompt injection, exfiltration) in block mode, and the streaming
//! scanner fed 64-byte chunks as a streamed response delivers them.
//!
//! `cargo bench -p tappass-benches --bench detectors`

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tappass_detectors::{Categories, RuleSet};

/// Benign prose with, per ten lines, one line of personal data and one
/// line holding a credential (the realistic mix of the detector speed runs).
fn mixed_text(size: usize) -> String {
    let benign = [
        "Summarize the quarterly report and list the three largest cost drivers for the board.",
        "Rewrite this paragraph so that it reads well for a customer who is new to the product.",
        "Which of these two database schemas handles many small writes better, and why?",
        "Draft a polite reply declining the meeting on Thursday and propose two other slots.",
        "Explain the difference between a mutex and a read-write lock with a short example.",
        "Translate the release notes into French, keeping the product names in English.",
        "List the steps to rotate the service's TLS certificate without downtime.",
        "What are the trade-offs of streaming responses compared to waiting for the whole body?",
        "Give me a checklist for reviewing a pull request that touches the billing code.",
        "Turn these meeting notes into action items with an owner and a due date each.",
    ];
    let pii = [
        "Contact jane.doe@example.com, +44 20 7946 0958, card 4111 1111 1111 1111.",
        "Bitte überweisen Sie an DE89 3704 0044 0532 0130 00, Steuer-ID 86095742719.",
        "SSN 536-22-1234, born 1984-03-12, server 192.168.10.20.",
        "Mijn BSN is 111222333 en mijn IBAN NL91 ABNA 0417 1643 00.",
    ];
    let secrets = [
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE and the secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "export GITHUB_TOKEN=ghp_1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
        "slack webhook https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "stripe key sk_live_4eC39HqLyjWDarjtT1zdp7dc in the config",
    ];
    let mut text = String::with_capacity(size + 256);
    let mut i = 0usize;
    while text.len() < size {
        text.push_str(benign[i % benign.len()]);
        text.push('\n');
        if i % 10 == 9 {
            text.push_str(pii[(i / 10) % pii.len()]);
            text.push('\n');
            text.push_str(secrets[(i / 10) % secrets.len()]);
            text.push('\n');
        }
        i += 1;
    }
    let mut end = size.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Split `text` into chunks of at most `n` bytes on character boundaries.
fn chunks(text: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / n + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + n).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn benches(c: &mut Criterion) {
    let rules = RuleSet::builtin(&Categories::all()).expect("the built-in rule set compiles");
    let text = mixed_text(64 * 1024);
    // Sanity: the mix really contains findings, so confirmation work is measured.
    let findings = rules.scan(&text).expect("scan");
    assert!(!findings.is_empty(), "the mixed text must produce findings");

    let mut g = c.benchmark_group("detectors");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("scan_block_64KiB_mixed_full_rules", |b| {
        b.iter(|| rules.scan(std::hint::black_box(&text)).map(|f| f.len()))
    });

    // Streaming: one scanner per stream, 64-byte chunks, as the response
    // guard feeds text deltas. Throughput in bytes; per chunk = time / chunks.
    let pieces = chunks(&text, 64);
    g.bench_function("stream_64B_chunks_64KiB_mixed_full_rules", |b| {
        b.iter_batched(
            || rules.stream_scanner().expect("stream scanner"),
            |mut s| {
                let mut n = 0usize;
                for p in &pieces {
                    n += s.feed(p).map(|f| f.findings.len()).unwrap_or(0);
                }
                n + s.finish().map(|f| f.findings.len()).unwrap_or(0)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("detectors_build");
    g.sample_size(10);
    g.bench_function("rule_set_compile_full", |b| {
        b.iter(|| RuleSet::builtin(&Categories::all()).map(|r| r.len()))
    });
    g.finish();
}

criterion_group! {
    name = detectors;
    config = common::criterion();
    targets = benches
}
criterion_main!(detectors);
